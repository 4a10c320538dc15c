// Parameters and index/tile arithmetic of the CUDA MaxSim kernels.
//
// Plain C++ (no torch, no CUDA headers): the glue fills MaxsimParams, the kernels read it, and
// tests/backends/test_cuda_build.py compiles this header with g++ to unit-test every index computation on
// the host. All offsets are int64: a packed store of more than 2^31 elements is normal.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#include "../maxsim_args.h"

#if defined(__CUDACC__)
#define CF_HD __host__ __device__ __forceinline__
#else
#define CF_HD inline
#endif

namespace colbert_fast {
namespace maxsim {

// The scoring modes are the shared ScoringMode (csrc/maxsim_args.h): all_pairs, per_query, packed.
using colbert_fast::ScoringMode;

enum DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Params {
  ScoringMode mode;
  int32_t dtype;

  // Q [B, Lq, dim]: element (b, i, k) at q[b * q_sb + i * q_sl + k].
  const void* q;
  int64_t q_sb, q_sl;
  int64_t B, Lq, dim;
  const bool* q_mask;  // nullptr or contiguous [B, Lq]

  // Padded docs (ScoringMode::all_pairs, ScoringMode::per_query): row j of doc (b, k) / (n) starts at
  // d + [b * d_sb] + k * d_sk + j * d_sl (elements). In ScoringMode::all_pairs d_sb is unused.
  const void* d;
  int64_t d_sb, d_sk, d_sl;
  int64_t Ld;
  const bool* d_mask;        // nullptr or contiguous D.shape[:-1]
  const int64_t* d_lengths;  // nullptr or contiguous D.shape[:-2]

  // Packed store (ScoringMode::packed): doc pid's rows are embeddings[offsets[pid] : offsets[pid] + lengths[pid]],
  // clipped to max_len rows (as the gather does); pids contiguous [B, K], -1 = empty slot.
  const void* embeddings;
  const int64_t* offsets;
  const int64_t* lengths;
  const int64_t* pids;
  int64_t max_len;
  int64_t num_docs;  // N: lengths / offsets hold N (+1) entries
  int64_t num_rows;  // T: rows of embeddings

  // nullptr, or one fp32 per doc (contiguous D.shape[:-2]; packed: [B, K]): every query row's max
  // over the doc starts there instead of at -inf (see row_value).
  const float* floor;

  int64_t ncols;  // N (ScoringMode::all_pairs) or K
  // Output: npass == 1 -> out[b * ncols + col]; npass > 1 -> partial sums
  // out[pass * B * ncols + b * ncols + col] that maxsim_reduce_partials adds up in pass order.
  float* out;
  int64_t pass_rows;  // query rows per pass (a kernel constant, stored for the index helpers)
  int64_t npass;
  int64_t smem_limit;  // the device's opt-in shared memory per block (bytes)
  int32_t shared_doc;  // tensor-core path: the block's warps share one doc stream (see below)
  int32_t q_pairs;     // Q's element pairs (2k, 2k + 1) are 4-byte aligned: A fragments load 32 bits
};

// ---- work decomposition: one warp scores one (query, doc, query-pass) item ----

struct Item {
  int64_t b, col, pass;
};

CF_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
CF_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

CF_HD int64_t num_passes(int64_t Lq, int64_t pass_rows) { return ceil_div(Lq, pass_rows); }
CF_HD int64_t num_items(const Params& p) { return p.B * p.ncols * p.npass; }

// The pass index varies fastest so the passes over one doc run side by side (the doc stays in L2).
// In ScoringMode::all_pairs the query varies next: consecutive warps read the same doc.
CF_HD Item decode_item(const Params& p, int64_t i) {
  Item it;
  it.pass = i % p.npass;
  const int64_t t = i / p.npass;
  if (p.mode == ScoringMode::all_pairs) {
    it.b = t % p.B;
    it.col = t / p.B;
  } else {
    it.col = t % p.ncols;
    it.b = t / p.ncols;
  }
  return it;
}

CF_HD int64_t out_index(const Params& p, const Item& it) {
  const int64_t idx = it.b * p.ncols + it.col;
  return p.npass == 1 ? idx : it.pass * p.B * p.ncols + idx;
}

// Query rows [row0, row0 + rows) of query b take part in this pass.
CF_HD int64_t pass_row0(const Params& p, const Item& it) { return it.pass * p.pass_rows; }
CF_HD int64_t pass_nrows(const Params& p, const Item& it) {
  const int64_t left = p.Lq - pass_row0(p, it);
  return left < p.pass_rows ? left : p.pass_rows;
}

// ---- the doc a work item reads ----

struct DocView {
  int64_t row0;        // element offset of the doc's first row in d / embeddings
  int64_t row_stride;  // elements between consecutive rows
  int64_t nrows;       // rows to read: loop bound, never past the real tokens (or Ld with a mask)
  int64_t mask0;       // element offset of the doc's row mask in d_mask, -1 without a mask
  bool empty_slot;     // pid -1: the score is -inf; or an invalid slot (below): NaN
  bool invalid;        // a pid or rows outside the store: the score is NaN, nothing is read
};

// ---- non-finite values (docs/spec.md section 10) ----
// A NaN or infinite similarity between a valid query row and a valid doc row makes the doc's score
// NaN. fmaxf would drop a NaN operand, so the running maxima go through these instead; the bit
// tests cannot be folded away by fast-math flags.

CF_HD uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
CF_HD bool is_nan(float x) { return (float_bits(x) & 0x7fffffffu) > 0x7f800000u; }
CF_HD bool is_finite(float x) { return (float_bits(x) & 0x7f800000u) != 0x7f800000u; }
CF_HD float nan_value() {
  const uint32_t u = 0x7fc00000u;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
// A query row's running max after similarity s: NaN for good once any s was NaN or +-inf.
CF_HD float row_max(float best, float s) {
  return (!is_finite(s) || is_nan(best)) ? nan_value() : (s > best ? s : best);
}
// Two partial maxima of one row (lanes): NaN if either is.
CF_HD float merge_max(float a, float b) { return (is_nan(a) || is_nan(b)) ? nan_value() : (a > b ? a : b); }

// Flat index of the item's doc in D.shape[:-2] (padded) or in pids (packed): lengths, mask rows and
// floors are per doc.
CF_HD int64_t doc_index(const Params& p, const Item& it) {
  return p.mode == ScoringMode::all_pairs ? it.col : it.b * p.ncols + it.col;
}

CF_HD DocView doc_view(const Params& p, const Item& it) {
  DocView v{0, 0, 0, -1, false, false};
  if (p.mode == ScoringMode::packed) {
    const int64_t pid = p.pids[it.b * p.ncols + it.col];
    if (pid < 0) {
      v.empty_slot = true;
      return v;
    }
    // The Python API passes only checked pids and the store's own offsets; a direct torch.ops call
    // may not, and a kernel cannot raise: such a slot scores NaN and reads nothing.
    if (pid >= p.num_docs || p.offsets[pid] < 0 || p.lengths[pid] < 0 || p.offsets[pid] > p.num_rows ||
        p.lengths[pid] > p.num_rows - p.offsets[pid]) {
      v.empty_slot = v.invalid = true;
      return v;
    }
    const int64_t n = p.lengths[pid];
    v.row0 = p.offsets[pid] * p.dim;
    v.row_stride = p.dim;
    v.nrows = n < p.max_len ? n : p.max_len;
    return v;
  }
  const int64_t doc = doc_index(p, it);
  v.row0 = p.mode == ScoringMode::all_pairs ? it.col * p.d_sk : it.b * p.d_sb + it.col * p.d_sk;
  v.row_stride = p.d_sl;
  // Lengths are validated in Python; clamping keeps a direct torch.ops call from reading past Ld.
  const int64_t n = p.d_lengths != nullptr ? p.d_lengths[doc] : p.Ld;
  v.nrows = n < 0 ? 0 : n > p.Ld ? p.Ld : n;
  if (p.d_mask != nullptr) v.mask0 = doc * p.Ld;
  return v;
}

// What query row `row` of the item (0-based within its pass) adds to the score, given its running
// max `best` over the doc's valid rows (-inf when none was valid): max(best, the doc's floor), or 0
// when that is still -inf (no valid doc token and no floor), the row lies past the pass, or q_mask
// masks it.
CF_HD float row_value(const Params& p, const Item& it, int64_t row, int64_t qrows, float best) {
  constexpr float neg_inf = -std::numeric_limits<float>::infinity();
  if (row >= qrows) return 0.f;
  if (p.q_mask != nullptr && !p.q_mask[it.b * p.Lq + pass_row0(p, it) + row]) return 0.f;
  if (p.floor != nullptr) {
    const float f = p.floor[doc_index(p, it)];
    best = f > best ? f : best;
  }
  return best == neg_inf ? 0.f : best;
}

// ---- tensor-core tile geometry (mma.sync m16n8k16, fp16/bf16) ----
//
// A warp holds its pass of 32 query rows (two m16 tiles; 16 rows for dims above 128) as A fragments in registers
// and streams the doc through shared memory kChunkRows = 16 rows at a time (two n8 tiles per
// ldmatrix.x4), kStages chunks in flight per warp (cp.async). The smem row is the dim rounded up to
// 16 (zero columns, written once) plus 8 halves so ldmatrix's 8 row addresses hit 8 distinct
// 16-byte bank groups.

constexpr int kWarps = 4;  // warps per block; each warp works on its own item
constexpr int kChunkRows = 16;
constexpr int kStages = 4;
constexpr int kFmaPassRows = 16;

CF_HD int64_t tc_ksteps(int64_t dim) { return ceil_div(dim, 16); }
CF_HD int64_t tc_smem_row_elems(int64_t dim) { return round_up(dim, 16) + 8; }
CF_HD int64_t tc_warp_smem_bytes(int64_t dim) { return kStages * kChunkRows * tc_smem_row_elems(dim) * 2; }
CF_HD int64_t tc_block_smem_bytes(int64_t dim) { return kWarps * tc_warp_smem_bytes(dim); }
CF_HD int64_t num_chunks(int64_t nrows) { return ceil_div(nrows, kChunkRows); }

// The largest dim the register-resident A fragments allow (KS = 16 k-steps).
constexpr int64_t kTcMaxDim = 256;

// Template k-step count for a dim: A fragments live in registers, so the kernel is instantiated
// for a few upper bounds and loops to the runtime tc_ksteps(dim) <= that bound.
CF_HD int tc_ks_bucket(int64_t dim) {
  const int64_t ks = tc_ksteps(dim);
  return ks <= 4 ? 4 : ks <= 8 ? 8 : 16;
}

// Query rows per pass of the tensor-core kernel: two m16 tiles, one for the largest k bucket (its
// A fragments alone would take 128 registers per m-tile pair).
CF_HD int64_t tc_pass_rows(int64_t dim) { return tc_ks_bucket(dim) > 8 ? 16 : 32; }

// Whether the tensor-core kernel can read these docs: 16-byte cp.async needs 16-byte aligned rows,
// i.e. dim a multiple of 8 and every row start (base + row0 + j * row_stride) aligned.
CF_HD bool tc_aligned(uint64_t base_addr, int64_t dim, int64_t elem_size, int64_t stride_a, int64_t stride_b,
                      int64_t stride_c) {
  if (dim <= 0 || dim % 8 != 0 || dim > kTcMaxDim || elem_size != 2) return false;
  if (base_addr % 16 != 0) return false;
  return (stride_a * elem_size) % 16 == 0 && (stride_b * elem_size) % 16 == 0 && (stride_c * elem_size) % 16 == 0;
}

// mma.sync.m16n8k16 fragment coordinates (PTX ISA, "Matrix fragments for mma.m16n8k16").
// g = lane / 4 ("groupID"), t = lane % 4 ("threadID_in_group").
// A (16 x 16, row-major) register r in 0..3, half h in 0..1 -> (row, col) of the m16 x k16 tile.
CF_HD void a_frag_coord(int lane, int r, int h, int* row, int* col) {
  const int g = lane >> 2, t = lane & 3;
  *row = g + ((r & 1) ? 8 : 0);
  *col = t * 2 + h + ((r & 2) ? 8 : 0);
}
// C/D (16 x 8, fp32) register r in 0..3 -> (row, col).
CF_HD void c_frag_coord(int lane, int r, int* row, int* col) {
  const int g = lane >> 2, t = lane & 3;
  *row = g + ((r & 2) ? 8 : 0);
  *col = t * 2 + (r & 1);
}
// ldmatrix.x4 over a 16-row x 16-col doc chunk slice: lane supplies the address of row
// (lane % 8) of matrix (lane / 8); matrix m covers doc rows 8 * (m / 2) + 0..7 and dims
// 8 * (m % 2) + 0..7, so the four result registers are b0, b1 of n-tile 0, then b0, b1 of n-tile 1.
CF_HD void ldsm_b_coord(int lane, int* row, int* col) {
  const int m = lane >> 3;
  *row = (m >> 1) * 8 + (lane & 7);
  *col = (m & 1) * 8;
}

}  // namespace maxsim
}  // namespace colbert_fast

namespace colbert_fast {
namespace maxsim {

// ---- shared-doc variant: the kWarps warps of a block score one doc against kWarps query slots ----
//
// When several (query, pass) slots read the same doc (all-pairs: every query and pass; per-query and
// packed: the passes of a long query), the block streams the doc once through one smem ring of
// kSharedChunkRows-row chunks and each warp multiplies it with its own slot's query rows: L2 traffic
// drops by up to kWarps. A warp without a slot (the last group) still loads and synchronises.

constexpr int kSharedChunkRows = 32;

CF_HD int64_t tc_shared_smem_bytes(int64_t dim) { return kStages * kSharedChunkRows * tc_smem_row_elems(dim) * 2; }
CF_HD int64_t shared_slots(const Params& p) { return p.mode == ScoringMode::all_pairs ? p.B * p.npass : p.npass; }
CF_HD int64_t shared_groups(const Params& p) { return ceil_div(shared_slots(p), kWarps); }
CF_HD int64_t shared_docs(const Params& p) { return p.mode == ScoringMode::all_pairs ? p.ncols : p.B * p.ncols; }
CF_HD int64_t shared_blocks(const Params& p) { return shared_docs(p) * shared_groups(p); }

// The doc block `blk` reads, as an item with pass 0 (doc_view depends only on b and col).
CF_HD Item shared_doc_item(const Params& p, int64_t blk) {
  const int64_t doc = blk / shared_groups(p);
  Item it{0, doc, 0};
  if (p.mode != ScoringMode::all_pairs) {
    it.b = doc / p.ncols;
    it.col = doc % p.ncols;
  }
  return it;
}

// Warp `warp` of block `blk`: its (query, doc, pass) item; false when the group has no slot for it.
CF_HD bool decode_shared(const Params& p, int64_t blk, int warp, Item* it) {
  const int64_t slot = (blk % shared_groups(p)) * kWarps + warp;
  if (slot >= shared_slots(p)) return false;
  *it = shared_doc_item(p, blk);
  if (p.mode == ScoringMode::all_pairs) {
    it->b = slot / p.npass;
    it->pass = slot % p.npass;
  } else {
    it->pass = slot;
  }
  return true;
}

// Whether the docs can go through the tensor-core kernel (else the FMA kernel, exact in fp32).
CF_HD bool use_tensor_cores(const Params& p) {
  if (p.dtype == kFloat32) return false;
  if (tc_block_smem_bytes(p.dim) > p.smem_limit || tc_shared_smem_bytes(p.dim) > p.smem_limit) return false;
  if (p.mode == ScoringMode::packed) return tc_aligned(reinterpret_cast<uint64_t>(p.embeddings), p.dim, 2, p.dim, 0, 0);
  const int64_t sb = p.mode == ScoringMode::per_query ? p.d_sb : 0;
  return tc_aligned(reinterpret_cast<uint64_t>(p.d), p.dim, 2, sb, p.d_sk, p.d_sl);
}

// Fills pass_rows and npass for the kernel use_tensor_cores(p) picks.
CF_HD void plan(Params& p) {
  const bool tc = use_tensor_cores(p);
  p.pass_rows = tc ? tc_pass_rows(p.dim) : kFmaPassRows;
  p.npass = num_passes(p.Lq, p.pass_rows);
  // Share the doc stream once two or more slots read each doc (R1-like single-query work keeps the
  // independent warps: one slot per doc would leave three warps of a shared block idle).
  p.shared_doc = tc && shared_slots(p) >= 2;
  p.q_pairs = reinterpret_cast<uint64_t>(p.q) % 4 == 0 && p.q_sb % 2 == 0 && p.q_sl % 2 == 0 && p.dim % 2 == 0;
}

// Blocks of the launch plan(p) chose.
CF_HD int64_t launch_blocks(const Params& p) {
  return p.shared_doc ? shared_blocks(p) : ceil_div(num_items(p), kWarps);
}

// Bytes of fp32 partial sums the launch needs (0 when one pass covers the query).
CF_HD int64_t workspace_bytes(const Params& p) { return p.npass > 1 ? p.npass * p.B * p.ncols * 4 : 0; }

// Runs the kernels on `stream` (a cudaStream_t). p must have gone through plan(); `out` is the
// contiguous fp32 [B, ncols] result and `workspace` holds workspace_bytes(p) bytes (or is null).
void launch(Params p, float* out, float* workspace, void* stream);

}  // namespace maxsim
}  // namespace colbert_fast
