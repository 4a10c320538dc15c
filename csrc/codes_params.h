// A compressed store's rows (colbert_fast/compressed.py), as the CPU and CUDA kernels read them.
// Plain C++ (no torch headers). The decoded value of dimension k of token row r is defined in
// colbert_fast/reference.py (decode_residual, decode_int8):
//
//   residual (nbits 1, 2, 4):  scale[r] * (centroids[centroid_ids[r]][k] + bucket_weights[field k])
//   int8     (nbits 8):        scale[r] * int8 code[r][k]
//
// where field k is the nbits-wide field at bit k * nbits of the row's little-endian code bytes
// (fields never straddle a byte). Computed as (centroid + weight) * scale in fp32, in that order,
// so every kernel decodes bit-identical values.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define CF_CODES_HD __host__ __device__
#else
#define CF_CODES_HD
#endif

namespace colbert_fast {

struct CodesParams {
  int32_t nbits;  // 1, 2, 4 (residual) or 8 (int8)
  int64_t dim;
  int64_t code_bytes;           // bytes per row of codes: ceil(dim * nbits / 8)
  const uint8_t* codes;         // [T, code_bytes] (int8 codes: the same bytes, signed)
  const uint16_t* scales;       // [T] fp16 bits
  const int32_t* centroid_ids;  // [T] (residual)
  const float* centroids;       // [C, dim] (residual)
  const float* bucket_weights;  // [2^nbits] (residual)
};

// Bucket index of dimension k of a residual row's code bytes.
CF_CODES_HD inline int codes_field(const uint8_t* row_codes, int32_t nbits, int64_t k) {
  const int64_t bit = k * nbits;
  return (row_codes[bit >> 3] >> (bit & 7)) & ((1 << nbits) - 1);
}

// Dimension k of row r before the scale: centroid + weight (residual) or the int8 code.
CF_CODES_HD inline float codes_unscaled(const CodesParams& c, int64_t r, int64_t k) {
  const uint8_t* row = c.codes + r * c.code_bytes;
  if (c.nbits == 8) return static_cast<float>(static_cast<int8_t>(row[k]));
  return c.centroids[static_cast<int64_t>(c.centroid_ids[r]) * c.dim + k] +
         c.bucket_weights[codes_field(row, c.nbits, k)];
}

}  // namespace colbert_fast
