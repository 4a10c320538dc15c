// Parameters of the centroid-interaction op (PLAID's approximate pass over inverted lists),
// plain C++ (no torch headers). colbert_fast/ops.py's centroid_interaction documents the values.
#pragma once
#include <cstdint>

namespace colbert_fast {

struct CentroidParams {
  const int64_t* probe_ids;     // [B, Lq, P] list (centroid) ids, each in [0, C)
  const float* probe_scores;    // [B, Lq, P] the score a doc of that list gets for the token
  const float* floor;           // [B, Lq] each token's value where none of its lists holds the doc
  const bool* q_mask;           // [B, Lq] false: the token probes nothing and counts for nothing
  const int64_t* list_offsets;  // [C + 1] list c is list_docs[list_offsets[c] : list_offsets[c + 1]]
  const int64_t* list_docs;     // [nnz] doc rows, strictly ascending within each list
  float* score;                 // [B, N] out: sum over tokens of max(floor, best listed score)
  float* positive;              // [B, N] out: the same sum of each term's positive part
  bool* hit;                    // [B, N] out: some counting token's lists hold the doc
  int64_t B, Lq, P, N;
};

// The first list entry found out of range or out of order: where, and what it held.
struct CentroidListError {
  int64_t entry = -1;  // -1: none found
  int64_t doc = 0;
};

// Runs on torch's threads, each over its own range of docs (so the sums are the same for any
// number of threads). Entries the walk visits are checked (in [0, N), ascending); the first bad
// one is reported and nothing is written outside the outputs.
CentroidListError centroid_interaction_cpu(const CentroidParams& p);

}  // namespace colbert_fast
