// The one argument checker of the MaxSim ops (maxsim, maxsim_packed, maxsim_packed_codes,
// gather_codes), shared by the CPU and CUDA glue: the same checks in the same order with the same
// messages and exception types on both devices, and one MaxSimArgs (csrc/maxsim_args.h) out.
//
// These checks read shapes, strides and dtypes only, never tensor values, so the CUDA glue can run
// them without waiting for the GPU. Each glue then checks devices (after these checks, so they are
// testable with CPU tensors through a CUDA-key redispatch) and whatever its kernels cannot guard:
// the CPU glue reads pids, lengths and centroid ids against the store; the CUDA kernels guard those
// reads themselves and write NaN instead (csrc/cuda/README.md).
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "../codes_params.h"
#include "../maxsim_args.h"

namespace colbert_fast {

// A checked call: its arguments, and the contiguous copies of the small tensors they point into
// (kept alive here until the kernels have run).
struct MaxSimCall {
  MaxSimArgs args{};
  at::Tensor q_mask, d_mask, d_lengths, offsets, lengths, pids, floor;
};

// colbert_fast::maxsim: Q [B, Lq, dim] against padded D [N, Ld, dim] (all_pairs) or
// [B, K, Ld, dim] (per_query). Leaves args.out unset.
MaxSimCall check_maxsim(const at::Tensor& Q, const at::Tensor& D, const std::optional<at::Tensor>& q_mask,
                        const std::optional<at::Tensor>& d_mask, const std::optional<at::Tensor>& d_lengths,
                        const std::optional<at::Tensor>& floor);

// colbert_fast::maxsim_packed: Q against its own candidates pids [B, K] in a packed store.
MaxSimCall check_maxsim_packed(const at::Tensor& Q, const at::Tensor& embeddings, const at::Tensor& offsets,
                               const at::Tensor& lengths, const at::Tensor& pids,
                               const std::optional<at::Tensor>& q_mask, int64_t max_len,
                               const std::optional<at::Tensor>& floor);

// A compressed store's tensors (colbert_fast/compressed.py).
struct CodesStore {
  CodesParams codes{};
  int64_t num_rows = 0;       // T
  int64_t num_centroids = 0;  // C (residual), 0 (int8)
};

// colbert_fast::maxsim_packed_codes: like maxsim_packed, scored from a compressed store (Q float32).
// args.codes is left null: it is the caller's to point at its own copy of call.store.
struct CodesCall {
  MaxSimCall call;
  CodesStore store;
};
CodesCall check_maxsim_packed_codes(const at::Tensor& Q, const at::Tensor& codes, const at::Tensor& scales,
                                    const std::optional<at::Tensor>& centroid_ids,
                                    const std::optional<at::Tensor>& centroids,
                                    const std::optional<at::Tensor>& bucket_weights, const at::Tensor& offsets,
                                    const at::Tensor& lengths, const at::Tensor& pids,
                                    const std::optional<at::Tensor>& q_mask, int64_t max_len, int64_t nbits,
                                    const std::optional<at::Tensor>& floor);

// colbert_fast::gather_codes: the store, its index and pids (any shape), and the output dtype.
// Fills the packed fields of call.args (offsets, lengths, pids, num_docs, num_rows, Ld = max_len).
struct GatherCodesCall {
  MaxSimCall call;
  CodesStore store;
  DType out_dtype;
};
GatherCodesCall check_gather_codes(const at::Tensor& codes, const at::Tensor& scales,
                                   const std::optional<at::Tensor>& centroid_ids,
                                   const std::optional<at::Tensor>& centroids,
                                   const std::optional<at::Tensor>& bucket_weights, const at::Tensor& offsets,
                                   const at::Tensor& lengths, const at::Tensor& pids, int64_t max_len, int64_t nbits,
                                   at::ScalarType dtype);

// Output sizes of a gather: [*pids.shape, max_len, dim] and the mask's [*pids.shape, max_len].
std::pair<std::vector<int64_t>, std::vector<int64_t>> gather_sizes(const at::Tensor& pids, int64_t max_len,
                                                                   int64_t dim);

// A tensor argument by name, for the device checks each glue makes (null: an absent optional).
using NamedTensor = std::pair<const char*, const at::Tensor*>;
inline const at::Tensor* optional_arg(const std::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; }

}  // namespace colbert_fast
