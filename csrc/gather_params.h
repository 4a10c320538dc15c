// Parameters of the packed -> padded gather, shared by the CPU and CUDA kernels.
// Plain C++ (no torch headers) so kernels compile and unit-test on their own.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define CF_HOST_DEVICE __host__ __device__
#else
#define CF_HOST_DEVICE
#endif

namespace colbert_fast {

struct GatherParams {
  const void* embeddings;  // [T, dim] rows, row stride = dim elements
  const int64_t* offsets;  // [N + 1] first row of each doc
  const int64_t* lengths;  // [N] rows per doc
  const int64_t* pids;     // [num_slots] doc id per output slot, -1 = empty
  void* out;               // [num_slots, max_len, dim]
  bool* mask;              // [num_slots, max_len]
  int64_t num_slots;
  int64_t max_len;
  int64_t dim;
  int64_t elem_size;  // bytes per element (2 or 4)
  int64_t num_docs;   // N: pids index [0, N)
  int64_t num_rows;   // T: rows of embeddings
};

// Rows of slot `slot` that hold real tokens: the doc's length, clipped to max_len; 0 for pid -1.
// A pid or a doc whose rows lie outside the store (possible only through a direct torch.ops call
// with inconsistent offsets: the CPU op rejects it first, the Python API never passes one) gives
// an all-padding slot, never a read out of bounds (the GPU kernel cannot raise).
CF_HOST_DEVICE inline int64_t gather_slot_rows(const GatherParams& p, int64_t slot) {
  const int64_t pid = p.pids[slot];
  if (pid < 0 || pid >= p.num_docs) return 0;
  const int64_t off = p.offsets[pid], n = p.lengths[pid];
  if (off < 0 || n < 0 || off > p.num_rows || n > p.num_rows - off) return 0;
  return n < p.max_len ? n : p.max_len;
}

void gather_cpu(const GatherParams& p);
#ifdef WITH_CUDA
void gather_cuda(const GatherParams& p, void* stream);
#endif

}  // namespace colbert_fast
