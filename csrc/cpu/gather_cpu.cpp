// Packed -> padded gather on the CPU: one memcpy per selected doc, padding zeroed.
//
// The output is freshly allocated, so for a large gather most of the time is the kernel faulting
// in 4 KB pages on first touch (46 MB of fp16 output: ~17 ms of faults vs ~1.5 ms of copying on
// the 2-core EPYC). Asking for transparent huge pages on the output first (Linux, THP in
// "madvise" mode) cuts that about 5x; where THP is off or unavailable the hint is ignored.
#include <cstdint>
#include <algorithm>
#include <cstring>

#include <ATen/Parallel.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../gather_params.h"

namespace colbert_fast {

namespace {

void advise_huge_pages(void* ptr, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes < static_cast<int64_t>(2 * kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: errors ignored
#else
  (void)ptr;
  (void)bytes;
#endif
}

}  // namespace

void gather_cpu(const GatherParams& p) {
  const int64_t row_bytes = p.dim * p.elem_size;
  const int64_t slot_bytes = p.max_len * row_bytes;
  const auto* src = static_cast<const char*>(p.embeddings);
  auto* dst = static_cast<char*>(p.out);
  advise_huge_pages(dst, p.num_slots * slot_bytes);
  // ~256 KB of output per task: enough to amortize a thread hand-off, small enough to balance.
  const int64_t grain = slot_bytes > 0 ? std::max<int64_t>(1, (int64_t{1} << 18) / slot_bytes) : p.num_slots + 1;
  at::parallel_for(0, p.num_slots, grain, [&](int64_t begin, int64_t end) {
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
