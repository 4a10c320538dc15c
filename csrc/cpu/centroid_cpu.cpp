// The centroid-interaction pass on the CPU (colbert_fast/ops.py centroid_interaction).
//
// Per query, per counting token i: M[d] = the best score of token i's probed lists that hold doc
// d (-inf where none does), then score[d] += max(M[d], floor_i), positive[d] += max(that, 0),
// hit[d] |= M[d] > -inf. The torch version builds a [Lq, N] table and scatters every expanded list
// entry into it through index tensors (five passes over ~2M entries per query at E1 100k); here
// each thread keeps one row of M for its range of docs (50k floats at 100k docs on 2 threads:
// it stays in L2), walks the lists straight from list_docs, and folds the row into the sums
// before the next token: no entry tensor, no table.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

#include "../centroid_params.h"

namespace colbert_fast {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Docs per thread at least: below this the hand-off costs more than the split saves.
constexpr int64_t kMinDocsPerThread = 8192;

// Raises row[d - d0] to s for every doc of list [lo, hi) in [d0, d1). Returns the first bad entry
// (out of range, not ascending) or -1.
int64_t scatter_list(const int64_t* docs, int64_t lo, int64_t hi, int64_t d0, int64_t d1, int64_t N, float s,
                     float* row) {
  if (d0 > 0) lo = std::lower_bound(docs + lo, docs + hi, d0) - docs;
  const bool nan = s != s;  // a NaN score replaces whatever it meets (torch's max keeps NaN)
  int64_t prev = d0 - 1;
  for (int64_t e = lo; e < hi; ++e) {
    const int64_t d = docs[e];
    if (d >= d1) {
      if (d >= N) return e;
      break;
    }
    if (d <= prev) return e;  // below the range, negative, repeated or out of order
    prev = d;
    float& m = row[d - d0];
    // Branch-free (maxss): whether a doc already holds a better score is a coin flip for the
    // branch predictor. A NaN already in m stays (m < s is false).
    m = nan ? s : (m < s ? s : m);
  }
  return -1;
}

// Folds one token's row into the sums and resets it for the next token: 4 floats and a flag per
// doc, streamed; compiled for AVX-512 and AVX2 too (the loader picks one), where it runs 8-16 docs
// per instruction.
__attribute__((target_clones("avx512f", "avx2", "default"))) void fold_row(float* __restrict row, int64_t n,
                                                                           float floor, float* __restrict score,
                                                                           float* __restrict positive,
                                                                           unsigned char* __restrict hit) {
  if (floor != floor) {  // a NaN floor: every term is NaN
    for (int64_t t = 0; t < n; ++t) {
      hit[t] |= static_cast<unsigned char>(row[t] > kNegInf);
      score[t] += floor;
      positive[t] += floor;
      row[t] = kNegInf;
    }
    return;
  }
  for (int64_t t = 0; t < n; ++t) {
    const float m = row[t];
    hit[t] |= static_cast<unsigned char>(m > kNegInf);  // (as bytes: a bool array would not vectorize)
    const float v = m < floor ? floor : m;              // a NaN m stays NaN
    score[t] += v;
    positive[t] += v < 0.0f ? 0.0f : v;
    row[t] = kNegInf;
  }
}

}  // namespace

CentroidListError centroid_interaction_cpu(const CentroidParams& p) {
  const int64_t N = p.N;
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
  if (N == 0 || p.B == 0) return {};
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t parts = std::max<int64_t>(1, std::min(threads, N / kMinDocsPerThread));
  const int64_t width = (N + parts - 1) / parts;
  at::parallel_for(0, parts, 1, [&](int64_t part0, int64_t part1) {
    std::vector<float> row(width, kNegInf);
    for (int64_t part = part0; part < part1; ++part) {
      const int64_t d0 = part * width, d1 = std::min(N, d0 + width), n = d1 - d0;
      for (int64_t b = 0; b < p.B; ++b) {
        float* score = p.score + b * N + d0;
        float* positive = p.positive + b * N + d0;
        // (bool is one byte holding 0 or 1: written as bytes; char types may alias any object)
        auto* hit = reinterpret_cast<unsigned char*>(p.hit + b * N + d0);
        std::fill(score, score + n, 0.0f);
        std::fill(positive, positive + n, 0.0f);
        std::fill(hit, hit + n, static_cast<unsigned char>(0));
        for (int64_t i = 0; i < p.Lq; ++i) {
          const int64_t token = b * p.Lq + i;
          if (!p.q_mask[token]) continue;
          for (int64_t j = 0; j < p.P; ++j) {
            const int64_t c = p.probe_ids[token * p.P + j];
            const int64_t e = scatter_list(p.list_docs, p.list_offsets[c], p.list_offsets[c + 1], d0, d1, N,
                                           p.probe_scores[token * p.P + j], row.data());
            if (e >= 0) {
              int64_t seen = bad.load();
              while (e < seen && !bad.compare_exchange_weak(seen, e)) {
              }
              return;  // the op raises: the outputs are not used
            }
          }
          fold_row(row.data(), n, p.floor[token], score, positive, hit);
        }
      }
    }
  });
  const int64_t e = bad.load();
  if (e == std::numeric_limits<int64_t>::max()) return {};
  return {e, p.list_docs[e]};
}

}  // namespace colbert_fast
