// AVX-512 MaxSim tiles (fp32 FMA, and bf16 pairs via vdpbf16ps where the CPU has AVX512_BF16).
//
// Compiled with the same flags as every other file: the target attributes below let these
// functions use AVX-512 while the rest of the build stays baseline x86-64; maxsim_cpu.cpp only
// calls them after __builtin_cpu_supports said yes. Everything here has internal linkage except
// the two table getters, so no AVX-512 code can leak into a shared (ODR-merged) symbol.
//
// Tile = up to NV x 16 query tokens (a block of the packed query, in registers as NV vectors per
// dim) x NJ doc rows, accumulated over dim into NV*NJ fp32 vectors: for each dim k one vector
// load per 16 query tokens and one broadcast per doc row feed NV*NJ FMAs, so the loop is
// compute-bound. The row maxima are vertical max instructions into M; no score matrix is stored.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "maxsim_cpu.h"

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* helpers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define CF_HAVE_AVX512 1
#define CF_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define CF_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))
#endif

namespace colbert_fast {
namespace cpu {

#ifdef CF_HAVE_AVX512
namespace {

constexpr int kRows = 12;  // doc rows per tile: 2 x 12 accumulators + 2 query vectors fit in 32 zmm

// M[0 : 16 NV] = max(M, max_j <qpack[:, lane], rows[j]>) for an fp32 query block.
template <int NV, int NJ>
CF_AVX512 inline void tile_f32(const float* qp, int64_t dim, const float* rows, int64_t rs, float* M) {
  __m512 acc[NV][NJ];
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[v][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < dim; ++k) {
    if ((k & 15) == 0) {  // the next tile's rows, one cache line per row per 16 dims (never faults)
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j) _mm_prefetch(reinterpret_cast<const char*>(rows + (j + NJ) * rs + k), _MM_HINT_T0);
    }
    __m512 q[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) q[v] = _mm512_load_ps(qp + k * 16 * NV + 16 * v);
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      const __m512 b = _mm512_set1_ps(rows[j * rs + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v][j] = _mm512_fmadd_ps(q[v], b, acc[v][j]);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    __m512 m = _mm512_loadu_ps(M + 16 * v);
    __m512 nonfinite = _mm512_setzero_ps();  // stays 0, or NaN once a product was NaN or +-inf (spec section 10)
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      m = _mm512_max_ps(acc[v][j], m);  // a NaN m is kept (maxps returns its 2nd operand on NaN)
      nonfinite = _mm512_add_ps(nonfinite, _mm512_sub_ps(acc[v][j], acc[v][j]));  // x - x: 0, or NaN for NaN/inf
    }
    _mm512_storeu_ps(M + 16 * v, _mm512_add_ps(m, nonfinite));
  }
}

// The same over bf16 dim pairs: qp[k/2][lane][2]; each doc row contributes its (d[2k], d[2k+1])
// pair as one broadcast 32-bit word, and vdpbf16ps adds both products in fp32.
template <int NV, int NJ>
CF_AVX512BF16 inline void tile_bf16(const uint16_t* qp, int64_t dim, const uint16_t* rows, int64_t rs, float* M) {
  __m512 acc[NV][NJ];
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[v][j] = _mm512_setzero_ps();
  const int64_t pairs = dim / 2;
  for (int64_t kp = 0; kp < pairs; ++kp) {
    if ((kp & 15) == 0) {
#pragma GCC unroll 16
      for (int j = 0; j < NJ; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(rows + (j + NJ) * rs + 2 * kp), _MM_HINT_T0);
    }
    __m512bh q[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) q[v] = (__m512bh)_mm512_load_si512(qp + (kp * 16 * NV + 16 * v) * 2);
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      uint32_t w;
      std::memcpy(&w, rows + j * rs + 2 * kp, sizeof(w));
      const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(w));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v][j] = _mm512_dpbf16_ps(acc[v][j], q[v], b);
    }
  }
  if (dim & 1) {  // odd dim: the last pair's second half is 0 in the query pack and in the word
    __m512bh q[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) q[v] = (__m512bh)_mm512_load_si512(qp + (pairs * 16 * NV + 16 * v) * 2);
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(rows[j * rs + dim - 1]));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[v][j] = _mm512_dpbf16_ps(acc[v][j], q[v], b);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    __m512 m = _mm512_loadu_ps(M + 16 * v);
    __m512 nonfinite = _mm512_setzero_ps();  // stays 0, or NaN once a product was NaN or +-inf (spec section 10)
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      m = _mm512_max_ps(acc[v][j], m);  // a NaN m is kept (maxps returns its 2nd operand on NaN)
      nonfinite = _mm512_add_ps(nonfinite, _mm512_sub_ps(acc[v][j], acc[v][j]));  // x - x: 0, or NaN for NaN/inf
    }
    _mm512_storeu_ps(M + 16 * v, _mm512_add_ps(m, nonfinite));
  }
}

// Run-time row count -> compile-time tile (the last tile of a doc is usually partial).
template <int NV>
CF_AVX512 void tile_f32_n(int nj, const float* qp, int64_t dim, const float* rows, int64_t rs, float* M) {
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
      return tile_f32<NV, kRows>(qp, dim, rows, rs, M);
  }
}

template <int NV>
CF_AVX512BF16 void tile_bf16_n(int nj, const uint16_t* qp, int64_t dim, const uint16_t* rows, int64_t rs, float* M) {
  switch (nj) {
    case 1:
      return tile_bf16<NV, 1>(qp, dim, rows, rs, M);
    case 2:
      return tile_bf16<NV, 2>(qp, dim, rows, rs, M);
    case 3:
      return tile_bf16<NV, 3>(qp, dim, rows, rs, M);
    case 4:
      return tile_bf16<NV, 4>(qp, dim, rows, rs, M);
    case 5:
      return tile_bf16<NV, 5>(qp, dim, rows, rs, M);
    case 6:
      return tile_bf16<NV, 6>(qp, dim, rows, rs, M);
    case 7:
      return tile_bf16<NV, 7>(qp, dim, rows, rs, M);
    case 8:
      return tile_bf16<NV, 8>(qp, dim, rows, rs, M);
    case 9:
      return tile_bf16<NV, 9>(qp, dim, rows, rs, M);
    case 10:
      return tile_bf16<NV, 10>(qp, dim, rows, rs, M);
    case 11:
      return tile_bf16<NV, 11>(qp, dim, rows, rs, M);
    default:
      return tile_bf16<NV, kRows>(qp, dim, rows, rs, M);
  }
}

// fp16 / bf16 rows -> fp32 rows in the per-thread scratch (row stride = dim rounded up to 16),
// 16 elements per instruction; the tail uses a masked load so no byte past a row is read.
CF_AVX512 void convert_rows(DType dtype, const uint16_t* rows, int64_t rs, int64_t nj, int64_t ahead, int64_t dim,
                            float* out, int64_t out_stride) {
  const int64_t full = dim & ~int64_t{15};
  const __mmask16 tail = static_cast<__mmask16>((1u << (dim - full)) - 1u);
  for (int64_t j = 0; j < nj; ++j) {
    const uint16_t* src = rows + j * rs;
    float* dst = out + j * out_stride;
    for (int64_t k = 0; k < dim; k += 32)  // the next tile's row j (prefetches never fault)
      _mm_prefetch(reinterpret_cast<const char*>(src + ahead * rs + k), _MM_HINT_T0);
    if (dtype == DType::f16) {
      for (int64_t k = 0; k < full; k += 16)
        _mm512_store_ps(dst + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k))));
      if (full < dim) _mm512_store_ps(dst + full, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, src + full)));
    } else {
      for (int64_t k = 0; k < full; k += 16) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k)));
        _mm512_store_ps(dst + k, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
      }
      if (full < dim) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tail, src + full));
        _mm512_store_ps(dst + full, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
      }
    }
  }
}

template <int NV>
CF_AVX512 void doc_max_f32(const TileArgs& a, const DocRows& doc) {
  const int64_t out_stride = (a.dim + 15) / 16 * 16;
  const int64_t tiles = (doc.n + kRows - 1) / kRows;
  for (int64_t t = 0, j0 = 0, nj = 0; t < tiles; ++t, j0 += nj) {
    nj = tile_rows(doc.n - j0, tiles - t);
    const float* rows;
    int64_t rs;
    if (a.dtype == DType::f32) {
      rows = static_cast<const float*>(doc.rows) + j0 * doc.row_stride;
      rs = doc.row_stride;
    } else {  // converted once per tile, then reused by every query block of every query
      convert_rows(a.dtype, static_cast<const uint16_t*>(doc.rows) + j0 * doc.row_stride, doc.row_stride, nj, kRows,
                   a.dim, a.scratch, out_stride);
      rows = a.scratch;
      rs = out_stride;
    }
    for (int64_t q = 0; q < a.nq; ++q) {
      const float* qp = static_cast<const float*>(a.qpack[q]);
      for (int64_t blk = 0; blk < a.nblk; ++blk)
        tile_f32_n<NV>(static_cast<int>(nj), qp + blk * a.qpack_stride, a.dim, rows, rs, a.M[q] + blk * 16 * NV);
    }
  }
}

template <int NV>
CF_AVX512BF16 void doc_max_bf16(const TileArgs& a, const DocRows& doc) {
  const auto* base = static_cast<const uint16_t*>(doc.rows);
  const int64_t tiles = (doc.n + kRows - 1) / kRows;
  for (int64_t t = 0, j0 = 0, nj = 0; t < tiles; ++t, j0 += nj) {
    nj = tile_rows(doc.n - j0, tiles - t);
    const uint16_t* rows = base + j0 * doc.row_stride;
    for (int64_t q = 0; q < a.nq; ++q) {
      const auto* qp = static_cast<const uint16_t*>(a.qpack[q]);
      for (int64_t blk = 0; blk < a.nblk; ++blk)
        tile_bf16_n<NV>(static_cast<int>(nj), qp + blk * a.qpack_stride, a.dim, rows, doc.row_stride,
                        a.M[q] + blk * 16 * NV);
    }
  }
}

// Entry points: fp32 layout (fp32 docs, and fp16/bf16 converted per tile) or bf16 pairs.
CF_AVX512 void doc_max_avx512(const TileArgs& a, const DocRows& doc) {
  if (a.qb == 16) return doc_max_f32<1>(a, doc);
  return doc_max_f32<2>(a, doc);
}

CF_AVX512BF16 void doc_max_avx512_bf16(const TileArgs& a, const DocRows& doc) {
  if (a.dtype != DType::bf16) return doc_max_avx512(a, doc);
  if (a.qb == 16) return doc_max_bf16<1>(a, doc);
  return doc_max_bf16<2>(a, doc);
}

// ---- compressed stores: 16 dims per step, decoded in registers (csrc/codes_params.h) -------------

// Stores 16 (or m's) fp32 values as `out`: fp32, fp16 (vcvtps2ph, nearest even) or bf16 (nearest
// even by integer rounding, which needs no AVX512_BF16).
// Stores 16 fp32 values (the first m's lanes when MASKED: the row's last, short group) as OUT:
// fp32, fp16 (vcvtps2ph, nearest even) or bf16 (nearest even by integer rounding, which needs no
// AVX512_BF16). Full groups store unmasked: masked stores are slow on some cores (Zen 4).
template <DType OUT, bool MASKED>
CF_AVX512 inline void store_as(void* dst, int64_t at, __mmask16 m, __m512 v) {
  if constexpr (OUT == DType::f32) {
    if constexpr (MASKED) return _mm512_mask_storeu_ps(static_cast<float*>(dst) + at, m, v);
    return _mm512_storeu_ps(static_cast<float*>(dst) + at, v);
  }
  __m256i h;
  if constexpr (OUT == DType::f16) {
    h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
    h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
  }
  if constexpr (MASKED) return _mm256_mask_storeu_epi16(static_cast<uint16_t*>(dst) + at, m, h);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(dst) + at), h);
}

// The 16 fields of dims k .. k + 15 (2 * NB bytes from byte k * NB / 8), as fixed-size loads; a
// last group shorter than 16 dims reads only the bytes the row has.
template <int NB, bool TAIL>
CF_AVX512 inline uint64_t field_bits(const uint8_t* code, int64_t k, int64_t code_bytes) {
  const uint8_t* at = code + k * NB / 8;
  uint64_t bits = 0;
  if constexpr (TAIL) {
    std::memcpy(&bits, at, static_cast<size_t>(code_bytes - k * NB / 8));
  } else {
    std::memcpy(&bits, at, 2 * NB);
  }
  return bits;
}

// 16 decoded dims k .. k + 15 of one row, before the scale.
template <int NB, bool TAIL>
CF_AVX512 inline __m512 unscaled16(const uint8_t* code, const float* centroid, int64_t k, int64_t code_bytes,
                                   __mmask16 m, __m512i shift, __m512i field_mask, __m512 weights) {
  if constexpr (NB == 8) {
    const __m128i b =
        TAIL ? _mm_maskz_loadu_epi8(m, code + k) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(code + k));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
  } else {
    const uint64_t bits = field_bits<NB, TAIL>(code, k, code_bytes);
    const __m512i lo = _mm512_set1_epi32(static_cast<int32_t>(bits));
    // 4-bit fields of lanes 8-15 are in the second 32-bit word; fields never straddle a word.
    const __m512i words =
        NB == 4 ? _mm512_mask_blend_epi32(0xff00, lo, _mm512_set1_epi32(static_cast<int32_t>(bits >> 32))) : lo;
    const __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(words, shift), field_mask);
    const __m512 c = TAIL ? _mm512_maskz_loadu_ps(m, centroid + k) : _mm512_loadu_ps(centroid + k);
    return _mm512_add_ps(c, _mm512_permutexvar_ps(idx, weights));
  }
}

template <int NB, DType OUT>
CF_AVX512 void decode_t(const CodesParams& c, int64_t row, int64_t n, void* dst, int64_t dst_stride) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // Field of lane l among 16 consecutive dims: bit l * NB of their bits (4-bit: of its word).
  const __m512i shift = NB == 4 ? _mm512_slli_epi32(_mm512_and_si512(lanes, _mm512_set1_epi32(7)), 2)
                                : _mm512_mullo_epi32(lanes, _mm512_set1_epi32(NB == 8 ? 0 : NB));
  const __m512i field_mask = _mm512_set1_epi32(NB == 8 ? 0 : (1 << NB) - 1);
  __m512 weights = _mm512_setzero_ps();
  if constexpr (NB != 8)
    weights = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (1 << NB)) - 1), c.bucket_weights);
  const int64_t full = c.dim / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (c.dim - full)) - 1);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = row + j;
    const float* centroid = nullptr;
    if constexpr (NB != 8) {
      if (j + 2 < n) {  // centroid rows come from a table larger than L2: ask early
        const auto* next =
            reinterpret_cast<const char*>(c.centroids + static_cast<int64_t>(c.centroid_ids[r + 2]) * c.dim);
        for (int64_t b = 0; b < c.dim * 4; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
      }
      centroid = c.centroids + static_cast<int64_t>(c.centroid_ids[r]) * c.dim;
    }
    const __m512 scale = _mm512_set1_ps(_cvtsh_ss(c.scales[r]));
    const uint8_t* code = c.codes + r * c.code_bytes;
    const int64_t out_row = j * dst_stride;
    for (int64_t k = 0; k < full; k += 16) {
      const __m512 v = unscaled16<NB, false>(code, centroid, k, c.code_bytes, 0xffff, shift, field_mask, weights);
      store_as<OUT, false>(dst, out_row + k, 0xffff, _mm512_mul_ps(v, scale));
    }
    if (full < c.dim) {
      const __m512 v = unscaled16<NB, true>(code, centroid, full, c.code_bytes, tail, shift, field_mask, weights);
      store_as<OUT, true>(dst, out_row + full, tail, _mm512_mul_ps(v, scale));
    }
  }
}

template <int NB>
CF_AVX512 void decode_nb(const CodesParams& c, int64_t row, int64_t n, DType out, void* dst, int64_t dst_stride) {
  if (out == DType::f32) return decode_t<NB, DType::f32>(c, row, n, dst, dst_stride);
  if (out == DType::f16) return decode_t<NB, DType::f16>(c, row, n, dst, dst_stride);
  return decode_t<NB, DType::bf16>(c, row, n, dst, dst_stride);
}

CF_AVX512 void decode_avx512(const CodesParams& c, int64_t row, int64_t n, DType out, void* dst, int64_t dst_stride) {
  switch (c.nbits) {
    case 1:
      return decode_nb<1>(c, row, n, out, dst, dst_stride);
    case 2:
      return decode_nb<2>(c, row, n, out, dst, dst_stride);
    case 4:
      return decode_nb<4>(c, row, n, out, dst, dst_stride);
    default:
      return decode_nb<8>(c, row, n, out, dst, dst_stride);
  }
}

const IsaKernels kAvx512{"avx512", 16, 32, false, &doc_max_avx512, &decode_avx512};
const IsaKernels kAvx512Bf16{"avx512_bf16", 16, 32, true, &doc_max_avx512_bf16, &decode_avx512};

}  // namespace

const IsaKernels* isa_avx512() { return &kAvx512; }
const IsaKernels* isa_avx512_bf16() { return &kAvx512Bf16; }

#else  // not x86 / not GCC-compatible: these kernels do not exist in this build

const IsaKernels* isa_avx512() { return nullptr; }
const IsaKernels* isa_avx512_bf16() { return nullptr; }

#endif

}  // namespace cpu
}  // namespace colbert_fast
