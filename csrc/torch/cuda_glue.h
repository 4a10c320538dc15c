// What every CUDA glue does around the shared argument checks (maxsim_checks.h): the device checks,
// and the device's shared-memory limit the launch plans need. CUDA builds only.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>

#include "maxsim_checks.h"

namespace colbert_fast {

// Every tensor given (null: an absent optional) is a CUDA tensor on the first one's device. Called
// after the shape and dtype checks, so those are testable with CPU tensors (calling the CUDA kernel
// directly through the dispatcher) on machines without a GPU.
inline void check_cuda(const char* op, std::initializer_list<NamedTensor> tensors) {
  const auto& [first_name, first] = *tensors.begin();
  for (const auto& [name, t] : tensors) {
    if (t == nullptr || !t->defined()) continue;
    TORCH_CHECK(t->is_cuda(), op, " (CUDA kernel): ", name, " must be a CUDA tensor, got one on ", t->device());
    TORCH_CHECK(t->device() == first->device(), op, " (CUDA kernel): ", name, " is on ", t->device(), " but ",
                first_name, " is on ", first->device());
  }
}

// The device's opt-in shared memory per block (bytes).
inline int64_t smem_limit(const at::Tensor& t) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, t.device().index()));
  return value;
}

}  // namespace colbert_fast
