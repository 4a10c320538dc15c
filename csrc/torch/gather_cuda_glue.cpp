// Torch glue for the CUDA gather: device guard, current stream, launch check.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common.h"

namespace colbert_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> gather_cuda_op(const at::Tensor& embeddings, const at::Tensor& offsets,
                                                  const at::Tensor& lengths, const at::Tensor& pids, int64_t max_len) {
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const auto pids_c = pids.contiguous();
  at::Tensor out, mask;
  const GatherParams p = make_gather_params(embeddings, offsets, lengths, pids_c, max_len, out, mask);
  gather_cuda(p, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(colbert_fast, CUDA, m) { m.impl("gather", &gather_cuda_op); }

}  // namespace colbert_fast
