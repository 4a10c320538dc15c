// Fused MaxSim on the CPU: the per-ISA kernel table and the entry points. Plain C++ (no torch
// headers): the torch glue (csrc/torch/maxsim_cpu_glue.cpp) hands the kernels a checked
// MaxSimArgs (csrc/maxsim_args.h, which states the scoring rule); the driver (maxsim_cpu.cpp) and
// the tiles (maxsim_<isa>.cpp) read it.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "../maxsim_args.h"

namespace colbert_fast {
namespace cpu {

// ---- per-ISA tile kernels --------------------------------------------------------------------
// A query is packed once per call into blocks of `qb` tokens ("lanes"): block-major, then dim,
// then lane: qpack[blk][k][lane] (fp32), so one vector load gives dim k of qb query tokens and a
// broadcast doc value multiplies all of them. With bf16 dot products (pair_bf16) dims go in
// pairs: qpack[blk][k/2][lane][2] (bf16 bits), matching vdpbf16ps. Missing lanes/dims are 0.

struct DocRows {
  const void* rows;    // first valid row, in the params' dtype
  int64_t row_stride;  // elements between rows
  int64_t n;           // rows (>= 1)
};

struct TileArgs {
  DType dtype;
  int64_t dim;
  int64_t qb;                // lanes per query block
  int64_t nblk;              // blocks per query
  int64_t qpack_stride;      // elements (float or uint16) between blocks of one query
  const void* const* qpack;  // [nq] packed queries
  float* const* M;           // [nq] running maxima, nblk * qb floats each, start at the doc's floor (or -inf)
  int64_t nq;
  float* scratch;  // per-thread, >= kTileScratchFloats(dim) floats, 64-byte aligned
};

struct IsaKernels {
  const char* name;  // "avx512_bf16", "avx512", "avx2", "scalar"
  int64_t qb_small;  // lanes per block when Lq <= qb_small
  int64_t qb_large;  // lanes per block otherwise
  bool pair_bf16;    // bf16 docs use the paired-dim layout and dot-product instructions
  // Updates M[q] with the maxima of every packed query against every row of `doc`.
  void (*doc_max)(const TileArgs& a, const DocRows& doc);
  // Decodes rows [row, row + n) of a compressed store into dst (row stride dst_stride elements)
  // as `out` (f32, or f16 / bf16 rounded to nearest even): bit-identical to the reference decode.
  void (*decode)(const CodesParams& c, int64_t row, int64_t n, DType out, void* dst, int64_t dst_stride);
};

// Portable decode (the scalar ISA's, and the reference the SIMD decoders are tested against).
void decode_rows_scalar(const CodesParams& c, int64_t row, int64_t n, DType out, void* dst, int64_t dst_stride);
uint16_t float_to_bf16(float f);  // round to nearest even (finite inputs)
uint16_t float_to_half(float f);  // round to nearest even

constexpr int64_t kMaxTileRows = 16;

// Height of the next tile when `left` rows remain for `tiles_left` tiles: a doc's rows are split
// into tiles of near-equal height, so its last tile is not a sliver of 1-2 rows (too few
// independent accumulators to hide the FMA latency).
inline int64_t tile_rows(int64_t left, int64_t tiles_left) { return (left + tiles_left - 1) / tiles_left; }
inline int64_t tile_scratch_floats(int64_t dim) { return kMaxTileRows * ((dim + 15) / 16 * 16) + 64; }

const IsaKernels* isa_avx512_bf16();  // null when this build or CPU lacks it
const IsaKernels* isa_avx512();
const IsaKernels* isa_avx2();
const IsaKernels* isa_scalar();

// The kernels a call uses: COLBERT_FAST_CPU_ISA (auto|avx512_bf16|avx512|avx2|scalar), read at
// call time, else the best the CPU supports. Throws std::runtime_error for a forced ISA the CPU
// lacks or an unknown name.
const IsaKernels& select_isa();
const char* cpu_isa_name();

void maxsim_cpu(const MaxSimArgs& p);

// The packed -> padded gather of a compressed store: out [num_slots, max_len, dim] in out_dtype,
// mask [num_slots, max_len]; padding rows are zero.
struct CodesGatherParams {
  const CodesParams* codes;
  const int64_t* offsets;
  const int64_t* lengths;
  const int64_t* pids;  // [num_slots], -1 = empty
  void* out;
  bool* mask;
  DType out_dtype;
  int64_t num_slots, max_len;
};
void gather_codes_cpu(const CodesGatherParams& p);

// The CPU's measured arithmetic peak (peak_cpu.cpp): kind "fp32" (vector FMA of the ISA in use)
// or "bf16" (vdpbf16ps; throws std::runtime_error where the kernels in use have none), on
// at::get_num_threads() threads for about `seconds`.
struct PeakResult {
  double gflops;  // all threads together
  int64_t threads;
  const char* loop;  // which instructions were timed, e.g. "avx512 vfmadd"
  float checksum;    // the loops' results (keeps them from being optimised away)
};
PeakResult peak_flops(const std::string& kind, double seconds);

// Scalar conversions shared by the packing code and the scalar kernel.
float half_to_float(uint16_t h);
inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

}  // namespace cpu
}  // namespace colbert_fast
