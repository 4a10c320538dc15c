// Compressed stores on the CPU: the portable decoder (the scalar ISA's; the reference the SIMD
// decoders are tested against), float -> bf16 / fp16 rounding, and the packed -> padded gather,
// which decodes straight into its output with the ISA's decoder. Baseline x86-64 code.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "maxsim_cpu.h"

namespace colbert_fast {
namespace cpu {

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

uint16_t float_to_half(float f) {
  // IEEE fp32 -> fp16, round to nearest even, overflow to inf, subnormals kept.
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (x < 0x38800000u) {                         // below fp16's smallest normal: a subnormal (or zero)
    const float a = std::fabs(f) * 16777216.0f;  // in units of 2^-24, the subnormal step
    const float r = std::nearbyint(a);           // the current rounding mode: to nearest even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  const uint32_t mant_odd = (x >> 13) & 1u;
  x += 0xc8000fffu + mant_odd;  // rebias the exponent (-112 << 23) and round the 13 dropped bits
  return static_cast<uint16_t>(sign | (x >> 13));
}

void decode_rows_scalar(const CodesParams& c, int64_t row, int64_t n, DType out, void* dst, int64_t dst_stride) {
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = row + j;
    const float s = half_to_float(c.scales[r]);
    for (int64_t k = 0; k < c.dim; ++k) {
      const float v = codes_unscaled(c, r, k) * s;
      const int64_t at = j * dst_stride + k;
      if (out == DType::f32)
        static_cast<float*>(dst)[at] = v;
      else
        static_cast<uint16_t*>(dst)[at] = out == DType::bf16 ? float_to_bf16(v) : float_to_half(v);
    }
  }
}

void gather_codes_cpu(const CodesGatherParams& p) {
  const IsaKernels& isa = select_isa();
  const int64_t dim = p.codes->dim;
  const size_t esz = p.out_dtype == DType::f32 ? 4 : 2;
  const int64_t slot_elems = p.max_len * dim;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, slot_elems * esz));
  at::parallel_for(0, p.num_slots, grain, [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot) {
      const int64_t pid = p.pids[slot];
      const int64_t rows = pid < 0 ? 0 : std::min(p.lengths[pid], p.max_len);
      char* out = static_cast<char*>(p.out) + slot * slot_elems * esz;
      if (rows > 0) isa.decode(*p.codes, p.offsets[pid], rows, p.out_dtype, out, dim);
      std::memset(out + rows * dim * esz, 0, (p.max_len - rows) * dim * esz);
      bool* m = p.mask + slot * p.max_len;
      std::memset(m, 1, rows);
      std::memset(m + rows, 0, p.max_len - rows);
    }
  });
}

}  // namespace cpu
}  // namespace colbert_fast
