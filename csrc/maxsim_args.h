// The arguments of one MaxSim call after the torch glue has checked them (csrc/torch/maxsim_checks.h):
// the one vocabulary the CPU and CUDA glue share. Plain C++ (no torch headers) so kernels compile
// and unit-test on their own. The CPU kernels read this struct as it is; the CUDA glue copies it
// into maxsim::Params, which adds the launch plan (csrc/cuda/maxsim_params.h).
//
//     score(q, d) = sum_{i : q_mask[i]} max(floor_d, max_{j : d valid at j} <Q[i], D[j]>)     (fp32)
//
// floor_d is -inf without a floor; a max that is still -inf (no valid token, no floor) counts 0,
// so a doc with no valid token scores 0 (or n_counting * floor_d); a pid of -1 scores -inf
// (docs/spec.md).
#pragma once
#include <cstdint>

#include "codes_params.h"

namespace colbert_fast {

// Where each doc's rows live, i.e. which of the three scoring modes a call is. The same names and
// values in Python and Triton (colbert_fast/kernels/scoring_mode.py) and in the CUDA kernels.
enum class ScoringMode : int32_t {
  all_pairs = 0,  // D [N, Ld, dim]: every query against every doc -> out [B, N]
  per_query = 1,  // D [B, K, Ld, dim]: query b against its own K docs -> out [B, K]
  packed = 2,     // embeddings [T, dim] rows + offsets/lengths, pids [B, K] -> out [B, K]
};

// Element types of Q and the docs' rows.
enum class DType : int32_t { f32 = 0, f16 = 1, bf16 = 2 };

// All strides are in elements; the last dim is contiguous.
struct MaxSimArgs {
  ScoringMode mode;
  DType dtype;    // the docs' dtype, which the CPU tiles compute in (a compressed store: f32, or bf16 pairs)
  DType q_dtype;  // Q's dtype: the docs', except for a compressed store (f32 queries)
  int64_t B, Lq, dim;
  int64_t K;   // docs per query (per_query, packed); N docs for all_pairs: the columns of out
  int64_t Ld;  // padded doc length (all_pairs, per_query); max_len, the rows a doc is clipped to (packed)

  const void* Q;  // [B, Lq, dim]
  int64_t q_stride_b, q_stride_l;
  const bool* q_mask;  // [B, Lq] contiguous, or null (every token counts)

  const void* D;             // all_pairs: [N, Ld, dim]; per_query: [B, K, Ld, dim]; packed: [T, dim] contiguous
  int64_t d_stride_b;        // per_query only
  int64_t d_stride_k;        // doc stride (all_pairs: dim 0; per_query: dim 1)
  int64_t d_stride_l;        // token (row) stride; packed: dim
  const bool* d_mask;        // contiguous, D.shape[:-1], or null
  const int64_t* d_lengths;  // contiguous, D.shape[:-2], or null

  const int64_t* offsets;  // packed: [N + 1] contiguous
  const int64_t* lengths;  // packed: [N] contiguous
  const int64_t* pids;     // packed: [B, K] contiguous, -1 = empty
  int64_t num_docs;        // packed: N, so a kernel that cannot raise can still bound pids
  int64_t num_rows;        // packed: T, the rows of D (or of the compressed store)

  const float* floor;  // one per doc, contiguous (all_pairs: [N]; per_query, packed: [B, K]), or null

  // packed only: a compressed store instead of D's rows (CPU kernels; the CUDA ones take
  // codes::ScoreParams). Each doc is decoded a few dozen rows at a time into a per-thread tile
  // (L1-resident, in `dtype`) that every query lane then reads.
  const CodesParams* codes;

  float* out;  // [B, K] contiguous
};

}  // namespace colbert_fast
