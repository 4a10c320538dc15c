// Compressed stores on the GPU (colbert_fast/compressed.py): gather_codes (decode the selected docs
// into a padded batch) and maxsim_packed_codes (score each query against its own candidates
// straight from the codes; decoded vectors never reach global memory). See README.md in this
// folder; the decode math, the params and every index computation are in codes_params_cuda.h
// (host-tested by test/codes_test.cpp).
//
//   gather_codes_kernel: one block per slot, one thread per (row, group of 8 dims) unit; exact fp32
//     decode (decode_group), rounded to the output dtype to nearest even.
//   codes_tc_kernel<NBITS, KS> (dim <= 128): tensor cores. As maxsim_tc_kernel: one warp per item
//     (query, candidate, pass of 32 query rows), 4 independent warps per block (4 short docs in
//     flight, no block barrier), A fragments in registers (Q rounded to fp16). Each
//     16-row chunk of the doc is decoded in registers into a per-warp fp16 tile of *unscaled*
//     values (centroid + weight, or the int8 code) and multiplied with mma.sync m16n8k16; every
//     product is scaled by its doc row's fp32 scale before the max. Residual centroid rows arrive
//     by cp.async one chunk ahead, code bits and scales are loaded one chunk ahead into registers,
//     centroid ids two chunks ahead (the centroid copy needs them).
//   codes_fma_kernel (any dim): exact fp32 decode per doc row, fp32 FMA; correct, not tuned.
//
// Pure CUDA over codes::ScoreParams / codes::GatherParams; the torch glue is csrc/torch/codes_cuda_glue.cpp.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "codes_params_cuda.h"
#include "mma_ptx.cuh"

namespace colbert_fast {
namespace codes {
namespace {

using maxsim::kWarps;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fffffff); }

// ---------------------------------------------------------------------------------------------
// gather_codes

// Writes the n (<= 8) values of one unit at element e0 of the output, rounded to the output dtype.
// vec: the 8 elements are 16-byte (fp16/bf16) or 32-byte (fp32) aligned.
template <int kOut>
__device__ __forceinline__ void store_unit(void* out, int64_t e0, const float (&v)[8], int n, bool vec) {
  if constexpr (kOut == maxsim::kFloat32) {
    float* o = static_cast<float*>(out) + e0;
    if (vec && n == 8) {
      reinterpret_cast<float4*>(o)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(o)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (i < n) o[i] = v[i];
    }
  } else {
    uint16_t h[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) h[i] = kOut == maxsim::kFloat16 ? float_to_half_rn(v[i]) : float_to_bf16_rn(v[i]);
    uint16_t* o = static_cast<uint16_t*>(out) + e0;
    if (vec && n == 8) {
      uint4 w;
      w.x = h[0] | static_cast<uint32_t>(h[1]) << 16;
      w.y = h[2] | static_cast<uint32_t>(h[3]) << 16;
      w.z = h[4] | static_cast<uint32_t>(h[5]) << 16;
      w.w = h[6] | static_cast<uint32_t>(h[7]) << 16;
      *reinterpret_cast<uint4*>(o) = w;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (i < n) o[i] = h[i];
    }
  }
}

template <int kOut>
__global__ void __launch_bounds__(128) gather_codes_kernel(const GatherParams p) {
  const int64_t slot = blockIdx.x;
  const SlotView v = slot_view(p.s, slot);
  const int64_t units = gather_units(p);
  const bool vec = p.s.c.dim % 8 == 0 && reinterpret_cast<uintptr_t>(p.out) % 32 == 0;
  for (int64_t u = threadIdx.x; u < units; u += blockDim.x) {
    float vals[8];
    int64_t e0;
    const int n = gather_unit_values(p, v, slot, u, &e0, vals);
    store_unit<kOut>(p.out, e0, vals, n, vec);
  }
  bool* m = p.mask + slot * p.s.max_len;
  for (int64_t j = threadIdx.x; j < p.s.max_len; j += blockDim.x) m[j] = gather_mask(v, j);
}

// ---------------------------------------------------------------------------------------------
// maxsim_packed_codes: tensor cores

// Two fp32 values -> one register of two fp16 (lo in the low half: the smaller column).
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// A fragments of the item's 32 query rows (two m16 tiles) from the fp32 Q, rounded to fp16; zero
// past the pass and past dim. float2 loads of column pairs when plan() found them 8-byte aligned.
template <int KS>
__device__ __forceinline__ void load_a_f32(const ScoreParams& p, const Item& it, int lane, int qrows,
                                           uint32_t (&a)[2][KS][4]) {
  const float* qb = static_cast<const float*>(p.m.q) + it.b * p.m.q_sb + maxsim::pass_row0(p.m, it) * p.m.q_sl;
  const int dim = static_cast<int>(p.m.dim);
  const bool pairs = p.m.q_pairs != 0;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        int row, col;
        maxsim::a_frag_coord(lane, r, 0, &row, &col);  // half 1 is (row, col + 1)
        row += mt * 16;
        col += ks * 16;
        float x = 0.f, y = 0.f;
        if (row < qrows && col < dim) {
          const float* e = qb + row * p.m.q_sl + col;
          if (pairs) {  // col even and dim even: col + 1 < dim too
            const float2 v = *reinterpret_cast<const float2*>(e);
            x = v.x;
            y = v.y;
          } else {
            x = e[0];
            y = col + 1 < dim ? e[1] : 0.f;
          }
        }
        a[mt][ks][r] = pack_half2(x, y);
      }
    }
  }
}

template <int NBITS, int KS>
__global__ void __launch_bounds__(kWarps * 32) codes_tc_kernel(const ScoreParams p) {
  constexpr bool kResidual = NBITS != 8;
  constexpr int kGroups = tc_groups(KS);  // groups of 8 dims per tile row
  constexpr int kRowStep = 32 / kGroups;  // tile rows between a lane's units
  constexpr int kRowElems = 16 * KS + 8;  // tc_tile_row_elems(KS)
  using Bits = std::conditional_t<NBITS == 8, uint64_t, uint32_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const CodesParams& c = p.s.c;

  const int64_t item_idx = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (item_idx >= maxsim::num_items(p.m)) return;  // warp-uniform
  const Item it = maxsim::decode_item(p.m, item_idx);
  const int64_t oidx = maxsim::out_index(p.m, it);
  const SlotView dv = slot_view(p.s, maxsim::doc_index(p.m, it));
  if (dv.state != kSlotOk) {
    if (lane == 0) p.m.out[oidx] = dv.state == kSlotEmpty ? neg_inf() : quiet_nan();
    return;
  }

  const int dim = static_cast<int>(p.m.dim);
  const int ksteps = static_cast<int>(maxsim::tc_ksteps(dim));
  const int ngroups = static_cast<int>(num_groups(dim));
  const int pieces = static_cast<int>(tc_stage_pieces(dim));
  const int real_pieces = (dim + 3) / 4;
  unsigned char* wsm = smem_raw + warp * tc_warp_smem_bytes(dim, kResidual);
  uint16_t* tile = reinterpret_cast<uint16_t*>(wsm);
  float* stage = reinterpret_cast<float*>(wsm + tc_tile_bytes(KS));
  const int64_t row0 = dv.row0, nrows = dv.nrows;
  const int64_t nch = ceil_div(nrows, kChunkRows);
  const int ug = tc_unit_group(lane, KS);  // this lane's group; its rows: tc_unit_row(lane, i, KS)
  const int urow0 = tc_unit_row(lane, 0, KS);
  bool bad = false;  // a centroid id out of range
  // Bucket weights: lane f holds weight f, read with a shuffle (a register table: no shared memory,
  // no block barrier, no bank conflicts).
  const float wreg = kResidual && lane < (1 << NBITS) ? c.bucket_weights[lane] : 0.f;

  const int qrows = static_cast<int>(maxsim::pass_nrows(p.m, it));
  uint32_t a[2][KS][4];
  load_a_f32<KS>(p, it, lane, qrows, a);

  // Lane j < 16 holds row j of a chunk's centroid id and scale.
  auto load_id = [&](int64_t ch) -> int32_t {
    const int64_t r = ch * kChunkRows + lane;
    if (lane >= kChunkRows || r >= nrows) return 0;
    const int32_t id = c.centroid_ids[row0 + r];
    bad |= !centroid_ok(p.s, id);
    return id;
  };
  auto load_scale = [&](int64_t ch) -> float {
    const int64_t r = ch * kChunkRows + lane;
    return lane < kChunkRows && r < nrows ? half_to_float(c.scales[row0 + r]) : 0.f;
  };
  auto load_bits = [&](int64_t ch, Bits(&bits)[KS]) {
#pragma unroll
    for (int i = 0; i < KS; ++i) {
      const int64_t r = ch * kChunkRows + urow0 + i * kRowStep;
      bits[i] = r < nrows && ug < ngroups
                    ? static_cast<Bits>(load_group_bits(c.codes + (row0 + r) * c.code_bytes, c.code_bytes, NBITS, ug,
                                                        p.s.bits_vec != 0))
                    : Bits(0);
    }
  };
  // Chunk ch's centroid rows -> stage ch % 2 (cp.async; the caller commits). ids: from load_id.
  auto stage_centroids = [&](int64_t ch, int32_t ids) {
    float* st = stage + static_cast<int>(ch % kStageCount) * (kChunkRows * pieces * 4);
    const int64_t left = nrows - ch * kChunkRows;
    const int rows = left < kChunkRows ? static_cast<int>(left) : kChunkRows;
    for (int j = 0; j < rows; ++j) {  // warp-uniform bound: every lane takes part in the shuffle
      int32_t id = __shfl_sync(0xffffffffu, ids, j);
      id = centroid_ok(p.s, id) ? id : 0;  // never read past the table (the row turns into NaN)
      const float* src = c.centroids + static_cast<int64_t>(id) * dim;
      float* dst = st + j * pieces * 4;
      if (p.s.cent_vec) {
        for (int pc = lane; pc < real_pieces; pc += 32)
          cp_async16(smem_addr(dst + tc_stage_slot(pc, pieces) * 4), src + pc * 4);
      } else {
        for (int k = lane; k < dim; k += 32)
          cp_async4(smem_addr(dst + tc_stage_slot(k / 4, pieces) * 4 + k % 4), src + k);
      }
    }
  };

  Bits bits_cur[KS], bits_nxt[KS];
  float sc_cur = 0.f, sc_nxt = 0.f;
  int32_t id_nxt = 0, id_nxt2 = 0;
  if (nch > 0) {
    if constexpr (kResidual) {
      const int32_t id0 = load_id(0);
      id_nxt = load_id(1);
      stage_centroids(0, id0);
      cp_async_commit();
    }
    load_bits(0, bits_cur);
    sc_cur = load_scale(0);
  }

  float best[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) best[mt][0] = best[mt][1] = neg_inf();

  int lrow, lcol;
  maxsim::ldsm_b_coord(lane, &lrow, &lcol);
  const uint32_t baddr = smem_addr(tile + lrow * kRowElems + lcol);

  for (int64_t ch = 0; ch < nch; ++ch) {
    // Loads for the chunks ahead (guarded by the doc's length, so no read past it).
    if constexpr (kResidual) id_nxt2 = load_id(ch + 2);
    load_bits(ch + 1, bits_nxt);
    sc_nxt = load_scale(ch + 1);
    if constexpr (kResidual) {
      if (ch + 1 < nch) stage_centroids(ch + 1, id_nxt);
      cp_async_commit();   // one group per chunk, empty or not, keeps wait_group's count exact
      cp_async_wait<1>();  // this lane's copies of chunk ch have landed ...
    }
    __syncwarp();  // ... and every lane's; every lane is done reading the tile (chunk ch - 1)

    // Decode chunk ch into the tile: unscaled values as fp16, 0 past the doc and past dim.
    const float* st = stage + static_cast<int>(ch % kStageCount) * (kChunkRows * pieces * 4);
#pragma unroll
    for (int i = 0; i < KS; ++i) {
      const int row = urow0 + i * kRowStep;
      uint4 w = make_uint4(0, 0, 0, 0);
      float wv[8];  // the fields' weights; every lane shuffles (bits are 0 for units past the doc)
      if constexpr (kResidual) {
#pragma unroll
        for (int e = 0; e < 8; ++e) wv[e] = __shfl_sync(0xffffffffu, wreg, group_field(bits_cur[i], NBITS, e));
      }
      if (ch * kChunkRows + row < nrows && ug < ngroups) {
        float u[8];
        if constexpr (kResidual) {
          const float* srow = st + row * pieces * 4;
          const float4 lo = *reinterpret_cast<const float4*>(srow + tc_stage_slot(2 * ug, pieces) * 4);
          const float4 hi = *reinterpret_cast<const float4*>(srow + tc_stage_slot(2 * ug + 1, pieces) * 4);
          const float cv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
          for (int e = 0; e < 8; ++e) u[e] = add_rn(cv[e], wv[e]);
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) u[e] = group_int8(bits_cur[i], e);
        }
        uint16_t h[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) h[e] = ug * 8 + e < dim ? float_to_half_rn(u[e]) : uint16_t(0);
        w.x = h[0] | static_cast<uint32_t>(h[1]) << 16;
        w.y = h[2] | static_cast<uint32_t>(h[3]) << 16;
        w.z = h[4] | static_cast<uint32_t>(h[5]) << 16;
        w.w = h[6] | static_cast<uint32_t>(h[7]) << 16;
      }
      *reinterpret_cast<uint4*>(tile + row * kRowElems + ug * 8) = w;
    }
    __syncwarp();  // the tile is complete; the stage can be refilled

    // 16 doc rows x 32 query rows on tensor cores.
    float acc[2][2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
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
        for (int mt = 0; mt < 2; ++mt) {
          mma16816<false>(acc[mt][0], a[mt][ks], b[0], b[1]);
          mma16816<false>(acc[mt][1], a[mt][ks], b[2], b[3]);
        }
      }
    }
    // acc[mt][nt][r]: query row mt * 16 + g (+8 for r >= 2), doc row tc_epilogue_row(nt, 2t + (r & 1)).
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        int qrow, col;
        maxsim::c_frag_coord(lane, j, &qrow, &col);
        const int drow = tc_epilogue_row(nt, col);
        const float s = __shfl_sync(0xffffffffu, sc_cur, drow);
        if (ch * kChunkRows + drow < nrows) {
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            best[mt][0] = maxsim::row_max(best[mt][0], acc[mt][nt][j] * s);
            best[mt][1] = maxsim::row_max(best[mt][1], acc[mt][nt][2 + j] * s);
          }
        }
      }
    }

#pragma unroll
    for (int i = 0; i < KS; ++i) bits_cur[i] = bits_nxt[i];
    sc_cur = sc_nxt;
    id_nxt = id_nxt2;
  }

  // The four lanes of a quad hold the same query rows: max across them, then sum the rows.
  float sum = 0.f;
  const int g = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v = best[mt][h];
      v = maxsim::merge_max(v, __shfl_xor_sync(0xffffffffu, v, 1));
      v = maxsim::merge_max(v, __shfl_xor_sync(0xffffffffu, v, 2));
      if (tig == 0) sum += maxsim::row_value(p.m, it, mt * 16 + g + 8 * h, qrows, v);
    }
  }
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  bad = __any_sync(0xffffffffu, bad);
  if (lane == 0) p.m.out[oidx] = bad ? quiet_nan() : sum;
}

// ---------------------------------------------------------------------------------------------
// maxsim_packed_codes: FMA fallback (dims above kTcMaxDim, or not enough shared memory). Lane l
// decodes doc rows l, l + 32, ... exactly (decode_group, fp32) and multiplies them with the pass's
// kFmaPassRows query rows (read through L1: every lane reads the same Q element at once).

__global__ void __launch_bounds__(kWarps * 32) codes_fma_kernel(const ScoreParams p) {
  constexpr int kRows = maxsim::kFmaPassRows;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t item_idx = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (item_idx >= maxsim::num_items(p.m)) return;
  const Item it = maxsim::decode_item(p.m, item_idx);
  const int64_t oidx = maxsim::out_index(p.m, it);
  const SlotView dv = slot_view(p.s, maxsim::doc_index(p.m, it));
  if (dv.state != kSlotOk) {
    if (lane == 0) p.m.out[oidx] = dv.state == kSlotEmpty ? neg_inf() : quiet_nan();
    return;
  }
  const int qrows = static_cast<int>(maxsim::pass_nrows(p.m, it));
  const float* q = static_cast<const float*>(p.m.q) + it.b * p.m.q_sb + maxsim::pass_row0(p.m, it) * p.m.q_sl;
  const int64_t dim = p.m.dim, ngroups = num_groups(dim);
  bool bad = false;

  float best[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) best[i] = neg_inf();

  for (int64_t j = lane; j < dv.nrows; j += 32) {
    float acc[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) acc[i] = 0.f;
    for (int64_t g = 0; g < ngroups; ++g) {
      float v[8];
      bad |= !decode_group(p.s, p.s.c.bucket_weights, dv.row0 + j, g, v);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int64_t k = g * 8 + e;
        if (k < dim) {
#pragma unroll
          for (int i = 0; i < kRows; ++i) {
            const int iq = i < qrows ? i : qrows - 1;  // rows past the pass repeat a real one (ignored)
            acc[i] = fmaf(q[iq * p.m.q_sl + k], v[e], acc[i]);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) best[i] = maxsim::row_max(best[i], acc[i]);
  }

  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    float v = best[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = maxsim::merge_max(v, __shfl_xor_sync(0xffffffffu, v, off));
    sum += maxsim::row_value(p.m, it, i, qrows, v);
  }
  bad = __any_sync(0xffffffffu, bad);
  if (lane == 0) p.m.out[oidx] = bad ? quiet_nan() : sum;
}

// ---------------------------------------------------------------------------------------------
// launch

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

template <int NBITS, int KS>
void launch_tc(const ScoreParams& p, unsigned blocks, cudaStream_t stream) {
  static int configured[64] = {};
  const int64_t smem = tc_block_smem_bytes(p.m.dim, NBITS != 8);
  allow_smem(codes_tc_kernel<NBITS, KS>, smem, configured);
  codes_tc_kernel<NBITS, KS><<<blocks, kWarps * 32, static_cast<size_t>(smem), stream>>>(p);
}

template <int NBITS>
void launch_tc_ks(const ScoreParams& p, unsigned blocks, cudaStream_t stream) {
  if (tc_ks_bucket(p.m.dim) == 4) {
    launch_tc<NBITS, 4>(p, blocks, stream);
  } else {
    launch_tc<NBITS, 8>(p, blocks, stream);
  }
}

}  // namespace

void launch_score(ScoreParams p, float* out, float* workspace, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t n_out = p.m.B * p.m.ncols;
  if (n_out == 0 || p.m.npass == 0) return;
  p.m.out = p.m.npass > 1 ? workspace : out;
  const unsigned blocks = static_cast<unsigned>(launch_blocks(p));
  if (p.tc) {
    switch (p.s.c.nbits) {
      case 1:
        launch_tc_ks<1>(p, blocks, stream);
        break;
      case 2:
        launch_tc_ks<2>(p, blocks, stream);
        break;
      case 4:
        launch_tc_ks<4>(p, blocks, stream);
        break;
      default:
        launch_tc_ks<8>(p, blocks, stream);
        break;
    }
  } else {
    codes_fma_kernel<<<blocks, kWarps * 32, 0, stream>>>(p);
  }
  if (p.m.npass > 1) {
    const unsigned rblocks = static_cast<unsigned>(ceil_div(n_out, 256));
    reduce_partials_kernel<><<<rblocks, 256, 0, stream>>>(workspace, out, n_out, p.m.npass);
  }
}

void launch_gather(const GatherParams& p, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.num_slots == 0) return;
  const unsigned blocks = static_cast<unsigned>(p.num_slots);
  switch (p.out_dtype) {
    case maxsim::kFloat32:
      gather_codes_kernel<maxsim::kFloat32><<<blocks, 128, 0, stream>>>(p);
      break;
    case maxsim::kBFloat16:
      gather_codes_kernel<maxsim::kBFloat16><<<blocks, 128, 0, stream>>>(p);
      break;
    default:
      gather_codes_kernel<maxsim::kFloat16><<<blocks, 128, 0, stream>>>(p);
      break;
  }
}

}  // namespace codes
}  // namespace colbert_fast
