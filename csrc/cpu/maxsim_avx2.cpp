// AVX2 + FMA MaxSim tiles: the same scheme as maxsim_avx512.cpp with 8-lane vectors and 16
// registers (2 x 6 or 1 x 12 accumulators). fp16 rows convert with F16C, bf16 rows by a shift;
// both into a per-thread fp32 tile that every query block then reuses.
#include <immintrin.h>

#include <algorithm>

#include <cstdint>

#include "maxsim_cpu.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define CF_HAVE_AVX2 1
#define CF_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace colbert_fast {
namespace cpu {

#ifdef CF_HAVE_AVX2
namespace {

template <int NV, int NJ>
CF_AVX2 inline void tile_f32(const float* qp, int64_t dim, const float* rows, int64_t rs, float* M) {
  __m256 acc[NV][NJ];
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[v][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < dim; ++k) {
    if ((k & 15) == 0) {  // the next tile's rows, one cache line per row per 16 dims (never faults)
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) _mm_prefetch(reinterpret_cast<const char*>(rows + (j + NJ) * rs + k), _MM_HINT_T0);
    }
    __m256 q[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) q[v] = _mm256_load_ps(qp + k * 8 * NV + 8 * v);
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      const __m256 b = _mm256_broadcast_ss(rows + j * rs + k);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v][j] = _mm256_fmadd_ps(q[v], b, acc[v][j]);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    __m256 m = _mm256_loadu_ps(M + 8 * v);
    __m256 nonfinite = _mm256_setzero_ps();  // stays 0, or NaN once a product was NaN or +-inf (spec section 10)
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      m = _mm256_max_ps(acc[v][j], m);  // a NaN m is kept (maxps returns its 2nd operand on NaN)
      nonfinite = _mm256_add_ps(nonfinite, _mm256_sub_ps(acc[v][j], acc[v][j]));  // x - x: 0, or NaN for NaN/inf
    }
    _mm256_storeu_ps(M + 8 * v, _mm256_add_ps(m, nonfinite));
  }
}

// Rows per tile: NV * rows accumulators + NV query vectors + 1 broadcast <= 16 registers.
template <int NV>
constexpr int rows_for() {
  return NV == 1 ? 12 : 6;
}

template <int NV>
CF_AVX2 void tile_f32_n(int nj, const float* qp, int64_t dim, const float* rows, int64_t rs, float* M) {
  switch (nj) {
    case 1:
      return tile_f32<NV, 1>(qp, dim, rows, rs, M);
    case 2:
      return tile_f32<NV, 2>(qp, dim, rows, rs, M);
    case 3:
      return tile_f32<NV, 3>(qp, dim, rows, rs, M);
    case 4:
      return tile_f32<NV, 4>(qp, dim, rows, rs, M);
    case 5:
      return tile_f32<NV, 5>(qp, dim, rows, rs, M);
    default:
      break;
  }
  if constexpr (rows_for<NV>() == 6) {
    return tile_f32<NV, 6>(qp, dim, rows, rs, M);
  } else {
    switch (nj) {
      case 6:
        return tile_f32<NV, 6>(qp, dim, rows, rs, M);
      case 7:
        return tile_f32<NV, 7>(qp, dim, rows, rs, M);
      case 8:
        return tile_f32<NV, 8>(qp, dim, rows, rs, M);
      case 9:
        return tile_f32<NV, 9>(qp, dim, rows, rs, M);
      case 10:
        return tile_f32<NV, 10>(qp, dim, rows, rs, M);
      case 11:
        return tile_f32<NV, 11>(qp, dim, rows, rs, M);
      default:
        return tile_f32<NV, 12>(qp, dim, rows, rs, M);
    }
  }
}

CF_AVX2 void convert_rows(DType dtype, const uint16_t* rows, int64_t rs, int64_t nj, int64_t ahead, int64_t dim,
                          float* out, int64_t out_stride) {
  const int64_t full = dim & ~int64_t{7};
  for (int64_t j = 0; j < nj; ++j) {
    const uint16_t* src = rows + j * rs;
    float* dst = out + j * out_stride;
    for (int64_t k = 0; k < dim; k += 32)  // the next tile's row j (prefetches never fault)
      _mm_prefetch(reinterpret_cast<const char*>(src + ahead * rs + k), _MM_HINT_T0);
    if (dtype == DType::f16) {
      for (int64_t k = 0; k < full; k += 8)
        _mm256_store_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
      for (int64_t k = full; k < dim; ++k) dst[k] = half_to_float(src[k]);
    } else {
      for (int64_t k = 0; k < full; k += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
        _mm256_store_ps(dst + k, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
      }
      for (int64_t k = full; k < dim; ++k) dst[k] = bf16_to_float(src[k]);
    }
  }
}

template <int NV>
CF_AVX2 void doc_max_f32(const TileArgs& a, const DocRows& doc) {
  constexpr int kRows = rows_for<NV>();
  const int64_t out_stride = (a.dim + 15) / 16 * 16;
  const int64_t tiles = (doc.n + kRows - 1) / kRows;
  for (int64_t t = 0, j0 = 0, nj = 0; t < tiles; ++t, j0 += nj) {
    nj = tile_rows(doc.n - j0, tiles - t);
    const float* rows;
    int64_t rs;
    if (a.dtype == DType::f32) {
      rows = static_cast<const float*>(doc.rows) + j0 * doc.row_stride;
      rs = doc.row_stride;
    } else {
      convert_rows(a.dtype, static_cast<const uint16_t*>(doc.rows) + j0 * doc.row_stride, doc.row_stride, nj, kRows,
                   a.dim, a.scratch, out_stride);
      rows = a.scratch;
      rs = out_stride;
    }
    for (int64_t q = 0; q < a.nq; ++q) {
      const float* qp = static_cast<const float*>(a.qpack[q]);
      for (int64_t blk = 0; blk < a.nblk; ++blk)
        tile_f32_n<NV>(static_cast<int>(nj), qp + blk * a.qpack_stride, a.dim, rows, rs, a.M[q] + blk * 8 * NV);
    }
  }
}

CF_AVX2 void doc_max_avx2(const TileArgs& a, const DocRows& doc) {
  if (a.qb == 8) return doc_max_f32<1>(a, doc);
  return doc_max_f32<2>(a, doc);
}

// ---- compressed stores: 8 dims per step in registers, the tail scalar (csrc/codes_params.h) -------

CF_AVX2 void decode_avx2(const CodesParams& c, int64_t row, int64_t n, DType out, void* dst, int64_t dst_stride) {
  const int nb = c.nbits;
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i shift = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(nb == 8 ? 0 : nb));
  const __m256i field_mask = _mm256_set1_epi32(nb == 8 ? 0 : (1 << nb) - 1);
  float w[16] = {};
  if (nb != 8) std::memcpy(w, c.bucket_weights, sizeof(float) * (size_t{1} << nb));
  const __m256 w_lo = _mm256_loadu_ps(w), w_hi = _mm256_loadu_ps(w + 8);
  const int64_t full = c.dim / 8 * 8;
  alignas(32) float vals[8];
  alignas(32) uint32_t bits16[8];
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = row + j;
    const float s = _cvtsh_ss(c.scales[r]);
    const __m256 scale = _mm256_set1_ps(s);
    const uint8_t* code = c.codes + r * c.code_bytes;
    const float* centroid = nb == 8 ? nullptr : c.centroids + static_cast<int64_t>(c.centroid_ids[r]) * c.dim;
    for (int64_t k = 0; k < full; k += 8) {
      __m256 v;
      if (nb == 8) {
        int64_t eight;
        std::memcpy(&eight, code + k, 8);
        v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(eight)));
      } else {
        uint32_t word = 0;  // 8 fields: 8 * nb <= 32 bits from byte k * nb / 8
        std::memcpy(&word, code + k * nb / 8, static_cast<size_t>(std::min<int64_t>(4, c.code_bytes - k * nb / 8)));
        const __m256i idx =
            _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(word)), shift), field_mask);
        __m256 wv = _mm256_permutevar8x32_ps(w_lo, idx);
        if (nb == 4)  // 16 weights: bit 3 of the index picks the upper table (blendv reads the sign bit)
          wv = _mm256_blendv_ps(wv, _mm256_permutevar8x32_ps(w_hi, idx),
                                _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
        v = _mm256_add_ps(_mm256_loadu_ps(centroid + k), wv);
      }
      v = _mm256_mul_ps(v, scale);
      const int64_t at = j * dst_stride + k;
      if (out == DType::f32) {
        _mm256_storeu_ps(static_cast<float*>(dst) + at, v);
      } else if (out == DType::f16) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(dst) + at),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      } else {  // bf16, nearest even
        __m256i u = _mm256_castps_si256(v);
        const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        u = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), 16);
        _mm256_store_si256(reinterpret_cast<__m256i*>(bits16), u);
        for (int l = 0; l < 8; ++l) static_cast<uint16_t*>(dst)[at + l] = static_cast<uint16_t>(bits16[l]);
      }
    }
    if (full < c.dim) {  // the last dim % 8 values, scalar (same operations, same order)
      for (int64_t k = full; k < c.dim; ++k) vals[k - full] = codes_unscaled(c, r, k) * s;
      for (int64_t k = full; k < c.dim; ++k) {
        const int64_t at = j * dst_stride + k;
        if (out == DType::f32)
          static_cast<float*>(dst)[at] = vals[k - full];
        else
          static_cast<uint16_t*>(dst)[at] =
              out == DType::bf16 ? float_to_bf16(vals[k - full]) : float_to_half(vals[k - full]);
      }
    }
  }
}

const IsaKernels kAvx2{"avx2", 8, 16, false, &doc_max_avx2, &decode_avx2};

}  // namespace

const IsaKernels* isa_avx2() { return &kAvx2; }

#else

const IsaKernels* isa_avx2() { return nullptr; }

#endif

}  // namespace cpu
}  // namespace colbert_fast
