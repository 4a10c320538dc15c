// Packed -> padded gather on the GPU: one block per output slot, 16-byte vector copies when the
// row width allows. Pure CUDA over GatherParams; the torch glue lives in csrc/torch/.
#include <cuda_runtime.h>

#include <cstdint>

#include "../gather_params.h"

namespace colbert_fast {
namespace {

__global__ void gather_kernel(GatherParams p) {
  const int64_t slot = blockIdx.x;
  const int64_t pid = p.pids[slot];
  const int64_t rows = gather_slot_rows(p, slot);
  const int64_t row_bytes = p.dim * p.elem_size;
  const int64_t slot_bytes = p.max_len * row_bytes;
  const int64_t real_bytes = rows * row_bytes;
  char* out = static_cast<char*>(p.out) + slot * slot_bytes;
  // rows > 0 only for a pid whose rows lie inside the store (gather_slot_rows guards them).
  const char* src = rows > 0 ? static_cast<const char*>(p.embeddings) + p.offsets[pid] * row_bytes : nullptr;
  const bool vec = (row_bytes % 16 == 0) && (reinterpret_cast<uintptr_t>(p.embeddings) % 16 == 0) &&
                   (reinterpret_cast<uintptr_t>(p.out) % 16 == 0);
  if (vec) {
    const int64_t n = slot_bytes / 16, real = real_bytes / 16;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      int4 v = make_int4(0, 0, 0, 0);
      if (i < real) v = reinterpret_cast<const int4*>(src)[i];
      reinterpret_cast<int4*>(out)[i] = v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < slot_bytes; i += blockDim.x) out[i] = i < real_bytes ? src[i] : 0;
  }
  bool* m = p.mask + slot * p.max_len;
  for (int64_t i = threadIdx.x; i < p.max_len; i += blockDim.x) m[i] = i < rows;
}

}  // namespace

void gather_cuda(const GatherParams& p, void* stream) {
  if (p.num_slots == 0) return;
  gather_kernel<<<static_cast<unsigned>(p.num_slots), 128, 0, static_cast<cudaStream_t>(stream)>>>(p);
}

}  // namespace colbert_fast
