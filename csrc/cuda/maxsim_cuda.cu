// MaxSim on the GPU: score(q, d) = sum_i max_j <q_i, d_j> over valid tokens, fp32 accumulation.
//
// One warp scores one work item (query b, doc, pass of query rows). Docs are read row by row up to
// their own length (padding is never read); the same kernels serve padded docs (both modes) and the
// packed store (pid -> offset -> rows). See README.md in this folder.
//
//   fp16/bf16, dim % 8 == 0, 16-byte aligned rows: tensor cores (mma.sync m16n8k16, fp32
//     accumulators). The pass's query rows stay in registers as A fragments; doc rows stream through
//     a kStages-deep cp.async ring and are read with ldmatrix.
//     maxsim_tc_kernel: the block's warps run independent items, each with its own ring (several
//       short docs in flight per block, no block barrier).
//     maxsim_tc_shared_kernel: the block's warps share one doc (all-pairs queries, or the passes of
//       a long query) and one ring, so the doc leaves L2 once per block instead of once per warp.
//   everything else (fp32, odd dims, unaligned views): one doc row per lane, plain fp32 FMA.
//
// A per-doc floor (Params::floor) enters only at the end, in row_value: max(floor, the row's max).
//
// Pure CUDA over maxsim::Params; the torch glue is csrc/torch/maxsim_cuda_glue.cpp.
#include <cuda_runtime.h>

#include <cstdint>

#include "maxsim_params.h"
#include "mma_ptx.cuh"

namespace colbert_fast {
namespace maxsim {
namespace {

#define kNegInf (-__int_as_float(0x7f800000))

__device__ __forceinline__ bool doc_row_valid(const Params& p, const DocView& dv, int64_t row) {
  return row < dv.nrows && (dv.mask0 < 0 || p.d_mask[dv.mask0 + row]);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core pieces. KS: upper bound of dim / 16; MT: m16 tiles per pass (the pass has MT * 16
// query rows). Both size register arrays, so they are template parameters.

// Zero the k-padding columns [dim, 16 * ksteps) of `rows` smem rows: cp.async never writes them,
// and A is zero there, but 0 * stale NaN would be NaN.
__device__ __forceinline__ void zero_k_padding(uint16_t* sbuf, int rows, int row_elems, int dim, int ksteps, int tid,
                                               int nthreads) {
  for (int r = tid; r < rows; r += nthreads) {
    for (int c = dim; c < ksteps * 16; ++c) sbuf[r * row_elems + c] = 0;
  }
}

// A fragments of the item's MT * 16 query rows, zero past the pass and past dim. Read once per
// item: a register's two halves are the adjacent columns (2t, 2t + 1), one 32-bit load when Q's
// pairs are 4-byte aligned (plan() checks), else two 16-bit loads (any Q stride works).
template <int KS, int MT>
__device__ __forceinline__ void load_a(const Params& p, const Item& it, int lane, int qrows, uint32_t (&a)[MT][KS][4]) {
  const uint16_t* qb = static_cast<const uint16_t*>(p.q) + it.b * p.q_sb + pass_row0(p, it) * p.q_sl;
  const int dim = static_cast<int>(p.dim);
  const bool pairs = p.q_pairs != 0;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        int row, col;
        a_frag_coord(lane, r, 0, &row, &col);  // half 1 is (row, col + 1)
        row += mt * 16;
        col += ks * 16;
        uint32_t v = 0;
        if (row < qrows && col < dim) {
          const uint16_t* e = qb + row * p.q_sl + col;
          if (pairs) {
            v = *reinterpret_cast<const uint32_t*>(e);  // col even and dim even: col + 1 < dim too
          } else {
            v = static_cast<uint32_t>(e[0]) | (col + 1 < dim ? static_cast<uint32_t>(e[1]) << 16 : 0u);
          }
        }
        a[mt][ks][r] = v;
      }
    }
  }
}

// Copies doc rows [r0, r0 + cap) (clipped to the doc) into `stage`, 16 bytes per cp.async, spread
// over nthreads threads. Rows past the doc are not loaded: their columns are excluded from the max.
__device__ __forceinline__ void load_rows(uint16_t* stage, const uint16_t* dbase, const DocView& dv, int64_t r0,
                                          int cap, int pieces, int row_elems, int tid, int nthreads) {
  const int64_t left = dv.nrows - r0;
  const int rows = left < cap ? static_cast<int>(left) : cap;
  for (int e = tid; e < rows * pieces; e += nthreads) {
    const int r = e / pieces, piece = e - r * pieces;
    cp_async16(smem_addr(stage + r * row_elems + piece * 8), dbase + (r0 + r) * dv.row_stride + piece * 8);
  }
}

// One warp: the 16 doc rows at `rows16` (doc rows r0 .. r0 + 15) times the warp's query rows,
// folded into the running maxima best[mt][h] of query rows mt * 16 + g + 8h.
template <bool kBf16, int KS, int MT>
__device__ __forceinline__ void mma_rows16(const Params& p, const DocView& dv, const uint16_t* rows16, int row_elems,
                                           int ksteps, int lane, int64_t r0, const uint32_t (&a)[MT][KS][4],
                                           float (&best)[MT][2]) {
  int lrow, lcol;
  ldsm_b_coord(lane, &lrow, &lcol);
  const uint32_t baddr = smem_addr(rows16 + lrow * row_elems + lcol);
  float acc[MT][2][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.f;
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    if (ks < ksteps) {
      uint32_t b[4];
      ldsm_x4(b, baddr + ks * 32);  // 16 halves = 32 bytes per k-step
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma16816<kBf16>(acc[mt][0], a[mt][ks], b[0], b[1]);
        mma16816<kBf16>(acc[mt][1], a[mt][ks], b[2], b[3]);
      }
    }
  }
  // acc[mt][nt][r] (c_frag_coord): query row mt * 16 + g (+8 for r >= 2), doc row r0 + 8nt + 2tig + (r & 1).
#pragma unroll
  for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      int qrow, dcol;
      c_frag_coord(lane, j, &qrow, &dcol);
      const bool valid = doc_row_valid(p, dv, r0 + nt * 8 + dcol);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (valid) {
          best[mt][0] = row_max(best[mt][0], acc[mt][nt][j]);
          best[mt][1] = row_max(best[mt][1], acc[mt][nt][2 + j]);
        }
      }
    }
  }
}

// The four lanes of a quad hold the same rows, different doc columns: max across them, then sum
// the rows (each quad once: lanes with tig == 0 contribute, the others add 0). Lane 0 writes.
template <int MT>
__device__ __forceinline__ void write_score(const Params& p, const Item& it, int lane, int qrows,
                                            const float (&best)[MT][2]) {
  float sum = 0.f;
  const int g = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v = best[mt][h];
      v = merge_max(v, __shfl_xor_sync(0xffffffffu, v, 1));
      v = merge_max(v, __shfl_xor_sync(0xffffffffu, v, 2));
      if (tig == 0) sum += row_value(p, it, mt * 16 + g + 8 * h, qrows, v);
    }
  }
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) p.out[out_index(p, it)] = sum;
}

// Independent warps: warp w of block x scores item x * kWarps + w, streaming its doc through its
// own kStages-deep ring of kChunkRows-row chunks; only __syncwarp, no block barrier.
template <bool kBf16, int KS, int MT>
__global__ void __launch_bounds__(kWarps * 32) maxsim_tc_kernel(const Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t item_idx = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (item_idx >= num_items(p)) return;  // warp-uniform; the kernel has no block-wide barrier

  const Item it = decode_item(p, item_idx);
  const DocView dv = doc_view(p, it);
  if (dv.empty_slot) {
    if (lane == 0) p.out[out_index(p, it)] = dv.invalid ? nan_value() : kNegInf;
    return;
  }
  const int ksteps = static_cast<int>(tc_ksteps(p.dim));
  const int row_elems = static_cast<int>(tc_smem_row_elems(p.dim));
  const int qrows = static_cast<int>(pass_nrows(p, it));
  const int pieces = static_cast<int>(p.dim) / 8;  // 16-byte pieces per row
  uint16_t* sbuf = reinterpret_cast<uint16_t*>(smem_raw) + warp * (kStages * kChunkRows * row_elems);
  zero_k_padding(sbuf, kStages * kChunkRows, row_elems, static_cast<int>(p.dim), ksteps, lane, 32);

  uint32_t a[MT][KS][4];
  load_a<KS, MT>(p, it, lane, qrows, a);

  const uint16_t* dbase = static_cast<const uint16_t*>(p.mode == ScoringMode::packed ? p.embeddings : p.d) + dv.row0;
  const int64_t nch = num_chunks(dv.nrows);
  auto stage_of = [&](int64_t c) { return sbuf + static_cast<int>(c % kStages) * (kChunkRows * row_elems); };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nch) load_rows(stage_of(s), dbase, dv, s * kChunkRows, kChunkRows, pieces, row_elems, lane, 32);
    cp_async_commit();  // one group per chunk slot, empty or not, keeps wait_group's count exact
  }

  float best[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) best[mt][0] = best[mt][1] = kNegInf;

  for (int64_t c = 0; c < nch; ++c) {
    cp_async_wait<kStages - 2>();  // this lane's part of chunk c has landed ...
    __syncwarp();                  // ... and every lane's; chunk c - 1's stage is free again
    const int64_t next = c + kStages - 1;
    if (next < nch) load_rows(stage_of(next), dbase, dv, next * kChunkRows, kChunkRows, pieces, row_elems, lane, 32);
    cp_async_commit();
    mma_rows16<kBf16, KS, MT>(p, dv, stage_of(c), row_elems, ksteps, lane, c * kChunkRows, a, best);
  }
  write_score<MT>(p, it, lane, qrows, best);
}

// Shared doc: the block streams one doc through one ring of kSharedChunkRows-row chunks (all 128
// threads load, __syncthreads orders the ring) and warp w multiplies it with its own slot's query
// rows (decode_shared). Every warp runs the same loop (same doc), so the barriers are uniform.
template <bool kBf16, int KS, int MT>
__global__ void __launch_bounds__(kWarps * 32) maxsim_tc_shared_kernel(const Params p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t blk = blockIdx.x;
  Item it;
  const bool active = decode_shared(p, blk, warp, &it);
  const DocView dv = doc_view(p, shared_doc_item(p, blk));
  if (dv.empty_slot) {  // block-uniform
    if (active && lane == 0) p.out[out_index(p, it)] = dv.invalid ? nan_value() : kNegInf;
    return;
  }
  const int ksteps = static_cast<int>(tc_ksteps(p.dim));
  const int row_elems = static_cast<int>(tc_smem_row_elems(p.dim));
  const int qrows = active ? static_cast<int>(pass_nrows(p, it)) : 0;
  const int pieces = static_cast<int>(p.dim) / 8;
  uint16_t* sbuf = reinterpret_cast<uint16_t*>(smem_raw);
  zero_k_padding(sbuf, kStages * kSharedChunkRows, row_elems, static_cast<int>(p.dim), ksteps, tid, kWarps * 32);

  uint32_t a[MT][KS][4];
  if (active) load_a<KS, MT>(p, it, lane, qrows, a);

  const uint16_t* dbase = static_cast<const uint16_t*>(p.mode == ScoringMode::packed ? p.embeddings : p.d) + dv.row0;
  const int64_t nch = ceil_div(dv.nrows, kSharedChunkRows);
  auto stage_of = [&](int64_t c) { return sbuf + static_cast<int>(c % kStages) * (kSharedChunkRows * row_elems); };
  constexpr int kThreads = kWarps * 32;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nch)
      load_rows(stage_of(s), dbase, dv, s * kSharedChunkRows, kSharedChunkRows, pieces, row_elems, tid, kThreads);
    cp_async_commit();
  }

  float best[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) best[mt][0] = best[mt][1] = kNegInf;

  for (int64_t c = 0; c < nch; ++c) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // chunk c is in smem for every warp; every warp is done with chunk c - 1
    const int64_t next = c + kStages - 1;
    if (next < nch)
      load_rows(stage_of(next), dbase, dv, next * kSharedChunkRows, kSharedChunkRows, pieces, row_elems, tid, kThreads);
    cp_async_commit();
    if (active) {
      const int64_t r0 = c * kSharedChunkRows;
#pragma unroll
      for (int sub = 0; sub < kSharedChunkRows / 16; ++sub) {
        if (r0 + sub * 16 < dv.nrows) {
          mma_rows16<kBf16, KS, MT>(p, dv, stage_of(c) + sub * 16 * row_elems, row_elems, ksteps, lane, r0 + sub * 16,
                                    a, best);
        }
      }
    }
  }
  if (active) write_score<MT>(p, it, lane, qrows, best);
}

// ---------------------------------------------------------------------------------------------
// FMA kernel: fp32 (and fp16/bf16 that the tensor-core kernel cannot read). Lane l takes doc rows
// l, l + 32, ...; the pass's kFmaPassRows query rows are read through L1 (every lane reads the
// same Q element at the same time: one broadcast transaction).

struct Half {};
struct BFloat {};

template <typename Tag>
__device__ __forceinline__ float elem(const void* base, int64_t i);
template <>
__device__ __forceinline__ float elem<float>(const void* base, int64_t i) {
  return static_cast<const float*>(base)[i];
}
template <>
__device__ __forceinline__ float elem<BFloat>(const void* base, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16);
}
template <>
__device__ __forceinline__ float elem<Half>(const void* base, int64_t i) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(static_cast<const uint16_t*>(base)[i]));
  return f;
}

template <typename Tag>
__global__ void __launch_bounds__(kWarps * 32) maxsim_fma_kernel(const Params p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t item_idx = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (item_idx >= num_items(p)) return;
  const Item it = decode_item(p, item_idx);
  const int64_t oidx = out_index(p, it);
  const DocView dv = doc_view(p, it);
  if (dv.empty_slot) {
    if (lane == 0) p.out[oidx] = dv.invalid ? nan_value() : kNegInf;
    return;
  }
  const int qrows = static_cast<int>(pass_nrows(p, it));
  const int64_t q0 = it.b * p.q_sb + pass_row0(p, it) * p.q_sl;
  const void* dsrc = p.mode == ScoringMode::packed ? p.embeddings : p.d;

  float best[kFmaPassRows];
#pragma unroll
  for (int i = 0; i < kFmaPassRows; ++i) best[i] = kNegInf;

  for (int64_t j = lane; j < dv.nrows; j += 32) {
    if (!doc_row_valid(p, dv, j)) continue;
    const int64_t d0 = dv.row0 + j * dv.row_stride;
    float acc[kFmaPassRows];
#pragma unroll
    for (int i = 0; i < kFmaPassRows; ++i) acc[i] = 0.f;
    for (int64_t k = 0; k < p.dim; ++k) {
      const float dk = elem<Tag>(dsrc, d0 + k);
#pragma unroll
      for (int i = 0; i < kFmaPassRows; ++i) {
        const int iq = i < qrows ? i : qrows - 1;  // rows past the pass repeat a real one (ignored)
        acc[i] = fmaf(elem<Tag>(p.q, q0 + iq * p.q_sl + k), dk, acc[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < kFmaPassRows; ++i) best[i] = row_max(best[i], acc[i]);
  }

  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kFmaPassRows; ++i) {
    float v = best[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = merge_max(v, __shfl_xor_sync(0xffffffffu, v, off));
    sum += row_value(p, it, i, qrows, v);
  }
  if (lane == 0) p.out[oidx] = sum;
}

// Above 48 KB dynamic smem needs an opt-in per kernel and device; raise it only when needed
// (use_tensor_cores() already checked smem against the device's limit).
template <typename Kernel>
void allow_smem(Kernel kernel, int64_t smem, int (&configured)[64]) {
  int device = 0;
  cudaGetDevice(&device);
  if (device >= 64 || configured[device] < smem) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (device < 64) configured[device] = static_cast<int>(smem);
  }
}

template <bool kBf16, int KS>
void launch_tc(const Params& p, unsigned blocks, cudaStream_t stream) {
  constexpr int MT = KS > 8 ? 1 : 2;
  if (p.shared_doc) {
    static int configured[64] = {};
    const int64_t smem = tc_shared_smem_bytes(p.dim);
    allow_smem(maxsim_tc_shared_kernel<kBf16, KS, MT>, smem, configured);
    maxsim_tc_shared_kernel<kBf16, KS, MT><<<blocks, kWarps * 32, static_cast<size_t>(smem), stream>>>(p);
  } else {
    static int configured[64] = {};
    const int64_t smem = tc_block_smem_bytes(p.dim);
    allow_smem(maxsim_tc_kernel<kBf16, KS, MT>, smem, configured);
    maxsim_tc_kernel<kBf16, KS, MT><<<blocks, kWarps * 32, static_cast<size_t>(smem), stream>>>(p);
  }
}

template <bool kBf16>
void launch_tc_ks(const Params& p, unsigned blocks, cudaStream_t stream) {
  switch (tc_ks_bucket(p.dim)) {
    case 4:
      launch_tc<kBf16, 4>(p, blocks, stream);
      break;
    case 8:
      launch_tc<kBf16, 8>(p, blocks, stream);
      break;
    default:
      launch_tc<kBf16, 16>(p, blocks, stream);
      break;
  }
}

}  // namespace

void launch(Params p, float* out, float* workspace, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t n_out = p.B * p.ncols;
  if (n_out == 0 || p.npass == 0) return;
  p.out = p.npass > 1 ? workspace : out;
  const unsigned blocks = static_cast<unsigned>(launch_blocks(p));
  if (use_tensor_cores(p)) {
    if (p.dtype == kBFloat16) {
      launch_tc_ks<true>(p, blocks, stream);
    } else {
      launch_tc_ks<false>(p, blocks, stream);
    }
  } else if (p.dtype == kFloat32) {
    maxsim_fma_kernel<float><<<blocks, kWarps * 32, 0, stream>>>(p);
  } else if (p.dtype == kBFloat16) {
    maxsim_fma_kernel<BFloat><<<blocks, kWarps * 32, 0, stream>>>(p);
  } else {
    maxsim_fma_kernel<Half><<<blocks, kWarps * 32, 0, stream>>>(p);
  }
  if (p.npass > 1) {
    const unsigned rblocks = static_cast<unsigned>(ceil_div(n_out, 256));
    reduce_partials_kernel<><<<rblocks, 256, 0, stream>>>(workspace, out, n_out, p.npass);
  }
}

}  // namespace maxsim
}  // namespace colbert_fast
