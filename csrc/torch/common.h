// Shared torch glue declarations.
#pragma once
#include <ATen/ATen.h>

#include "../gather_params.h"

namespace colbert_fast {

// Checks gather's inputs, allocates out [*pids.shape, max_len, dim] and mask, fills the params.
GatherParams make_gather_params(const at::Tensor& embeddings, const at::Tensor& offsets, const at::Tensor& lengths,
                                const at::Tensor& pids, int64_t max_len, at::Tensor& out, at::Tensor& mask);

}  // namespace colbert_fast
