// Packed -> padded gather on the CPU: one memcpy per selected doc, padding zeroed.
#include <cstring>

#include <ATen/Parallel.h>

#include "../gather_params.h"

namespace colbert_fast {

void gather_cpu(const GatherParams& p) {
  const int64_t row_bytes = p.dim * p.elem_size;
  const int64_t slot_bytes = p.max_len * row_bytes;
  const auto* src = static_cast<const char*>(p.embeddings);
  auto* dst = static_cast<char*>(p.out);
  at::parallel_for(0, p.num_slots, 16, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) {
      const int64_t rows = gather_slot_rows(p, slot);
      char* out = dst + slot * slot_bytes;
      if (rows > 0) std::memcpy(out, src + p.offsets[p.pids[slot]] * row_bytes, rows * row_bytes);
      std::memset(out + rows * row_bytes, 0, (p.max_len - rows) * row_bytes);
      bool* m = p.mask + slot * p.max_len;
      std::memset(m, 1, rows);
      std::memset(m + rows, 0, p.max_len - rows);
    }
  });
}

}  // namespace colbert_fast
