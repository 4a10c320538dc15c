// Portable MaxSim tiles: the fallback for CPUs without AVX2 (and the reference the SIMD paths
// are tested against under COLBERT_FAST_CPU_ISA=scalar). Same packed-query layout with 8 lanes;
// plain loops the compiler may vectorize for the baseline ISA.
#include <cstdint>

#include "maxsim_cpu.h"

namespace colbert_fast {
namespace cpu {
namespace {

constexpr int kLanes = 8;
constexpr int kRows = 4;

template <int NJ>
void tile_f32(const float* qp, int64_t dim, const float* rows, int64_t rs, float* M) {
  float acc[NJ][kLanes] = {};
  for (int64_t k = 0; k < dim; ++k) {
    const float* q = qp + k * kLanes;
    for (int j = 0; j < NJ; ++j) {
      const float b = rows[j * rs + k];
      for (int l = 0; l < kLanes; ++l) acc[j][l] += q[l] * b;
    }
  }
  // A NaN or infinite product makes the lane NaN for good (docs/spec.md section 10): the compare
  // keeps a NaN M, and x - x (0 for finite x, NaN otherwise) carries a NaN or infinite product in.
  for (int j = 0; j < NJ; ++j)
    for (int l = 0; l < kLanes; ++l) M[l] = (acc[j][l] > M[l] ? acc[j][l] : M[l]) + (acc[j][l] - acc[j][l]);
}

void tile_f32_n(int nj, const float* qp, int64_t dim, const float* rows, int64_t rs, float* M) {
  switch (nj) {
    case 1:
      return tile_f32<1>(qp, dim, rows, rs, M);
    case 2:
      return tile_f32<2>(qp, dim, rows, rs, M);
    case 3:
      return tile_f32<3>(qp, dim, rows, rs, M);
    default:
      return tile_f32<kRows>(qp, dim, rows, rs, M);
  }
}

void doc_max_scalar(const TileArgs& a, const DocRows& doc) {
  const int64_t out_stride = (a.dim + 15) / 16 * 16;
  for (int64_t j0 = 0; j0 < doc.n; j0 += kRows) {
    const int nj = static_cast<int>(doc.n - j0 < kRows ? doc.n - j0 : kRows);
    const float* rows;
    int64_t rs;
    if (a.dtype == DType::f32) {
      rows = static_cast<const float*>(doc.rows) + j0 * doc.row_stride;
      rs = doc.row_stride;
    } else {
      const auto* src = static_cast<const uint16_t*>(doc.rows) + j0 * doc.row_stride;
      for (int j = 0; j < nj; ++j)
        for (int64_t k = 0; k < a.dim; ++k) {
          const uint16_t h = src[j * doc.row_stride + k];
          a.scratch[j * out_stride + k] = a.dtype == DType::f16 ? half_to_float(h) : bf16_to_float(h);
        }
      rows = a.scratch;
      rs = out_stride;
    }
    for (int64_t q = 0; q < a.nq; ++q) {
      const float* qp = static_cast<const float*>(a.qpack[q]);
      for (int64_t blk = 0; blk < a.nblk; ++blk)
        tile_f32_n(nj, qp + blk * a.qpack_stride, a.dim, rows, rs, a.M[q] + blk * kLanes);
    }
  }
}

const IsaKernels kScalar{"scalar", kLanes, kLanes, false, &doc_max_scalar, &decode_rows_scalar};

}  // namespace

const IsaKernels* isa_scalar() { return &kScalar; }

}  // namespace cpu
}  // namespace colbert_fast
