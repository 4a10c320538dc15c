// Parameters, decode math and index arithmetic of the CUDA kernels for compressed stores
// (codes_cuda.cu): gather_codes and maxsim_packed_codes.
//
// Plain C++ (no torch, no CUDA headers), host and device: the glue fills the params, the kernels
// read them, and csrc/cuda/test/codes_test.cpp (built with g++ by tests/backends/test_cuda_build.py) runs
// the same functions on the host. The decoded vectors are defined in colbert_fast/reference.py
// (decode_residual, decode_int8); csrc/codes_params.h states them in C++.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#include "../codes_params.h"
#include "maxsim_params.h"

namespace colbert_fast {
namespace codes {

using maxsim::ceil_div;
using maxsim::Item;
using maxsim::round_up;

// ---- exact fp32 arithmetic and rounding ----------------------------------------------------------
//
// Decoding must give the reference's fp32 values bit for bit: (centroid + weight) * scale, IEEE
// round-to-nearest, no fused multiply-add and no flush of subnormals. The build compiles with
// --use_fast_math, which makes nvcc emit add.rn.ftz / mul.rn.ftz even for __fadd_rn / __fmul_rn
// (checked in the PTX by tests/backends/test_cuda_build.py), so the device side spells the instructions out.

CF_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a + b;  // x86-64 SSE: IEEE single, nearest even, subnormals kept
#endif
}

CF_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a * b;
#endif
}

CF_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

CF_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

// IEEE fp16 bits -> fp32 (exact; fp16 subnormals are fp32 normals).
CF_HD float half_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  // zero or subnormal: mant * 2^-24, exact in fp32
  const float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
  return sign ? -v : v;
#endif
}

// fp32 -> fp16 bits, round to nearest even, overflow to inf, subnormals kept (cvt.rn.f16.f32;
// no .ftz, so a subnormal input is rounded, not flushed).
CF_HD uint16_t float_to_half_rn(float f) {
#if defined(__CUDA_ARCH__)
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  const uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN (quiet)
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (ax >= 0x38800000u) {                                              // a normal fp16
    const uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u) - (112u << 23);  // rebias, round 13 bits
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  // An fp16 subnormal (or zero): the value in units of 2^-24, rounded to nearest even.
  const uint32_t e = ax >> 23;
  if (e < 102) return static_cast<uint16_t>(sign);                   // below 2^-25 (incl. fp32 subnormals): 0
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;  // value = m * 2^(e - 150)
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
#endif
}

// fp32 -> bf16 bits, round to nearest even (cvt.rn.bf16.f32, sm_80+).
CF_HD uint16_t float_to_bf16_rn(float f) {
#if defined(__CUDA_ARCH__)
  uint16_t h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#endif
}

// ---- codes: groups of 8 dims ---------------------------------------------------------------------
//
// The kernels decode 8 consecutive dims at a time: group g (dims 8g .. 8g + 7) of a row occupies
// exactly nbits bytes of its codes, starting at byte g * nbits (8 fields of nbits bits; for int8,
// 8 codes), so its bits form one little-endian word of at most 64 bits and field i is bits
// [i * nbits, (i + 1) * nbits) of it: the same field as codes_field(row, nbits, 8g + i).

CF_HD int64_t num_groups(int64_t dim) { return ceil_div(dim, 8); }

// The bits of group g of the row whose codes start at `row_codes`. Only bytes < code_bytes are
// read: a last group that the row fills partly (dim % 8 != 0) reads what the row has, and its
// missing fields are 0. `vec`: whole groups may be read as one aligned nbits-byte word (the plan
// checks the codes pointer and code_bytes; see plan()).
CF_HD uint64_t load_group_bits(const uint8_t* row_codes, int64_t code_bytes, int nbits, int64_t g, bool vec) {
  const int64_t b0 = g * nbits;
  if (vec && b0 + nbits <= code_bytes) {
#if defined(__CUDA_ARCH__)
    const uint8_t* at = row_codes + b0;
    switch (nbits) {
      case 1:
        return *at;
      case 2:
        return *reinterpret_cast<const uint16_t*>(at);
      case 4:
        return *reinterpret_cast<const uint32_t*>(at);
      default:
        return *reinterpret_cast<const uint64_t*>(at);
    }
#else
    uint64_t v = 0;
    std::memcpy(&v, row_codes + b0, static_cast<size_t>(nbits));  // little-endian host
    return v;
#endif
  }
  uint64_t v = 0;
  for (int i = 0; i < nbits && b0 + i < code_bytes; ++i) v |= static_cast<uint64_t>(row_codes[b0 + i]) << (8 * i);
  return v;
}

// Field i (0..7) of a group's bits: the bucket of dim 8g + i (residual).
CF_HD int group_field(uint64_t bits, int nbits, int i) {
  return static_cast<int>((bits >> (i * nbits)) & ((1u << nbits) - 1));
}

// Code i (0..7) of an int8 group, as a float (exact).
CF_HD float group_int8(uint64_t bits, int i) {
  return static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(bits >> (8 * i))));
}

// ---- the store and the rows a slot selects -----------------------------------------------------

struct Store {
  CodesParams c;
  int64_t num_centroids;   // C (residual); 0 for int8
  int64_t num_rows;        // T: rows of codes / scales / centroid_ids
  int64_t num_docs;        // N
  const int64_t* offsets;  // [N + 1], contiguous
  const int64_t* lengths;  // [N], contiguous
  const int64_t* pids;     // contiguous, one per slot; -1 = empty
  int64_t max_len;         // rows per slot are clipped to it (as the gather does)
  int32_t bits_vec;        // whole groups' code bytes load as one aligned 1/2/4/8-byte word
  int32_t cent_vec;        // centroid rows copy in 16-byte pieces (else 4-byte)
};

enum SlotState : int32_t {
  kSlotOk = 0,
  kSlotEmpty = 1,    // pid -1: scores -inf, gathers as padding
  kSlotInvalid = 2,  // pid out of range, or the doc's rows lie outside the store: NaN
};

struct SlotView {
  int64_t row0;   // first row of the doc in the store
  int64_t nrows;  // rows to read: min(length, max_len)
  int32_t state;
};

// The glue cannot check pids, offsets and lengths against the store without reading device
// memory on the host (a sync), so the kernels guard every read here instead: a slot the CPU op
// would reject (the Python API and CompressedDocs rule these out) gives NaN, never an
// out-of-bounds read.
CF_HD SlotView slot_view(const Store& s, int64_t slot) {
  SlotView v{0, 0, kSlotOk};
  const int64_t pid = s.pids[slot];
  if (pid == -1) {
    v.state = kSlotEmpty;
    return v;
  }
  if (pid < -1 || pid >= s.num_docs) {
    v.state = kSlotInvalid;
    return v;
  }
  const int64_t off = s.offsets[pid], n = s.lengths[pid];
  if (off < 0 || n < 0 || off > s.num_rows || n > s.num_rows - off) {
    v.state = kSlotInvalid;
    return v;
  }
  v.row0 = off;
  v.nrows = n < s.max_len ? n : s.max_len;
  return v;
}

// Centroid ids are validated when the store is built; one that is not (a direct op call) reads
// centroid 0 instead and turns the row into NaN.
CF_HD bool centroid_ok(const Store& s, int32_t id) { return id >= 0 && id < s.num_centroids; }

// The exact decoded values of group g of row r (reference.decode_residual / decode_int8), dims past
// dim as 0. `weights`: the bucket weights (2^nbits floats; unused for int8). Returns false when the
// row's centroid id is out of range (the values are then NaN).
CF_HD bool decode_group(const Store& s, const float* weights, int64_t r, int64_t g, float (&v)[8]) {
  const CodesParams& c = s.c;
  const uint64_t bits = load_group_bits(c.codes + r * c.code_bytes, c.code_bytes, c.nbits, g, s.bits_vec != 0);
  const float scale = half_to_float(c.scales[r]);
  const int64_t k0 = g * 8;
  if (c.nbits == 8) {
    for (int i = 0; i < 8; ++i) v[i] = k0 + i < c.dim ? mul_rn(group_int8(bits, i), scale) : 0.f;
    return true;
  }
  const int32_t id = c.centroid_ids[r];
  const bool ok = centroid_ok(s, id);
  const float* cent = c.centroids + static_cast<int64_t>(ok ? id : 0) * c.dim + k0;
  float cv[8];
#if defined(__CUDA_ARCH__)
  if (s.cent_vec && k0 + 8 <= c.dim) {  // 16-byte aligned rows (plan): two vector loads
    const float4 lo = *reinterpret_cast<const float4*>(cent), hi = *reinterpret_cast<const float4*>(cent + 4);
    cv[0] = lo.x, cv[1] = lo.y, cv[2] = lo.z, cv[3] = lo.w, cv[4] = hi.x, cv[5] = hi.y, cv[6] = hi.z, cv[7] = hi.w;
  } else
#endif
  {
    for (int i = 0; i < 8; ++i) cv[i] = k0 + i < c.dim ? cent[i] : 0.f;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int i = 0; i < 8; ++i) {
    const float u = add_rn(cv[i], weights[group_field(bits, c.nbits, i)]);
    v[i] = k0 + i >= c.dim ? 0.f : ok ? mul_rn(u, scale) : nan;
  }
  return ok;
}

// ---- gather_codes -----------------------------------------------------------------------------
//
// One block per slot; its threads take units (row j of the slot, group g) in order, unit
// u = j * num_groups(dim) + g, so consecutive threads write consecutive output bytes.

struct GatherParams {
  Store s;
  void* out;   // [num_slots, max_len, dim] in out_dtype (maxsim::DType)
  bool* mask;  // [num_slots, max_len]
  int64_t num_slots;
  int32_t out_dtype;
};

CF_HD int64_t gather_units(const GatherParams& p) { return p.s.max_len * num_groups(p.s.c.dim); }

// The (up to) 8 output values of unit u of a slot, and how many of them exist (dim % 8 tail):
// decoded values for the doc's rows, 0 for padding rows, NaN for an invalid slot or centroid id.
CF_HD int gather_unit_values(const GatherParams& p, const SlotView& v, int64_t slot, int64_t u, int64_t* out_elem0,
                             float (&vals)[8]) {
  const int64_t G = num_groups(p.s.c.dim);
  const int64_t j = u / G, g = u - j * G;
  const int64_t dim = p.s.c.dim;
  *out_elem0 = (slot * p.s.max_len + j) * dim + g * 8;
  const int n = dim - g * 8 < 8 ? static_cast<int>(dim - g * 8) : 8;
  if (v.state == kSlotInvalid) {
    for (int i = 0; i < 8; ++i) vals[i] = std::numeric_limits<float>::quiet_NaN();
  } else if (j >= v.nrows) {
    for (int i = 0; i < 8; ++i) vals[i] = 0.f;
  } else {
    decode_group(p.s, p.s.c.bucket_weights, v.row0 + j, g, vals);
  }
  return n;
}

// The mask of row j of a slot: a real token of a valid doc.
CF_HD bool gather_mask(const SlotView& v, int64_t j) { return v.state == kSlotOk && j < v.nrows; }

// ---- maxsim_packed_codes ----------------------------------------------------------------------

struct ScoreParams {
  // Work decomposition, query, q_mask, floor, output and passes (mode ScoringMode::packed; q is fp32, q_pairs
  // means float2 loads of column pairs are 8-byte aligned). The doc fields (embeddings, offsets,
  // ...) are unused: the store below replaces them.
  maxsim::Params m;
  Store s;
  int32_t tc;  // the tensor-core kernel (else the FMA kernel)
};

// Tensor-core kernel geometry. One warp scores one item (query b, candidate, pass of 32 query rows)
// like maxsim_tc_kernel: the query rows stay in registers as fp16 A fragments; the doc is decoded
// kChunkRows rows at a time into a per-warp fp16 tile in shared memory, read with ldmatrix.
//
// The tile holds the *unscaled* values (centroid + weight, or the int8 code, rounded to fp16: int8
// codes are exact) and each product is multiplied by its doc row's fp32 scale before the max:
// s * <q, u> is the reference's <q, s * u> up to rounding, the fp16 range is not spent on the scale,
// and int8 loses nothing. A tile row is kTcGroups(KS) = 2 KS groups of 8 dims (zero past dim) plus
// 8 halves of padding, so ldmatrix's rows fall in distinct bank groups.
//
// Units: lane l decodes group tc_unit_group(l) of rows tc_unit_row(l, i), i < KS, so each lane owns
// one group (its code bits and centroid columns) and 8 consecutive lanes cover 8 consecutive
// groups of one row (conflict-free 16-byte smem reads and writes).
//
// Residual centroid rows go global -> smem by cp.async into a 2-stage fp32 ring (chunk c + 1 in
// flight while chunk c is decoded); a staged row has tc_stage_pieces(dim) 16-byte pieces, stored
// swizzled (tc_stage_slot) so that a group's two pieces sit in two contiguous runs.

constexpr int kChunkRows = 16;
constexpr int kTcPassRows = 32;  // two m16 tiles (MT = 2)
constexpr int kTcMaxDim = 128;   // KS <= 8: A fragments take 64 registers
constexpr int kStageCount = 2;

CF_HD int tc_ks_bucket(int64_t dim) { return maxsim::tc_ksteps(dim) <= 4 ? 4 : 8; }
CF_HD constexpr int tc_groups(int ks) { return 2 * ks; }
CF_HD int64_t tc_tile_row_elems(int ks) { return 16 * ks + 8; }
CF_HD int tc_unit_group(int lane, int ks) { return lane % tc_groups(ks); }
CF_HD int tc_unit_row(int lane, int i, int ks) { return lane / tc_groups(ks) + i * (32 / tc_groups(ks)); }

// fp32 centroid staging: 16-byte pieces per row (even, so the swizzle splits it in halves).
CF_HD int64_t tc_stage_pieces(int64_t dim) { return round_up(ceil_div(dim, 4), 2); }
// Piece p of a staged row is stored at slot tc_stage_slot(p): even pieces in the first half, odd in
// the second, so the 8 lanes reading pieces 2g (then 2g + 1) of groups g .. g + 7 hit 128
// contiguous bytes.
CF_HD int64_t tc_stage_slot(int64_t piece, int64_t pieces) { return (piece & 1) * (pieces / 2) + (piece >> 1); }

CF_HD int64_t tc_tile_bytes(int ks) { return kChunkRows * tc_tile_row_elems(ks) * 2; }
CF_HD int64_t tc_stage_bytes(int64_t dim) { return kChunkRows * tc_stage_pieces(dim) * 16; }
CF_HD int64_t tc_warp_smem_bytes(int64_t dim, bool residual) {
  return tc_tile_bytes(tc_ks_bucket(dim)) + (residual ? kStageCount * tc_stage_bytes(dim) : 0);
}
CF_HD int64_t tc_block_smem_bytes(int64_t dim, bool residual) {
  return maxsim::kWarps * tc_warp_smem_bytes(dim, residual);
}

// Doc row (within chunk c) of C-fragment column `col` (0..7) of n-tile nt: the row whose scale
// multiplies that product; c_frag_coord gives the column of each accumulator.
CF_HD int tc_epilogue_row(int nt, int col) { return nt * 8 + col; }

CF_HD bool use_tensor_cores(const ScoreParams& p) {
  const bool residual = p.s.c.nbits != 8;
  return p.m.dim >= 1 && p.m.dim <= kTcMaxDim && tc_block_smem_bytes(p.m.dim, residual) <= p.m.smem_limit;
}

// Fills the kernel choice, passes and the load-width flags. The flags only look at pointers and
// sizes (never at device memory).
CF_HD void plan(ScoreParams& p) {
  p.tc = use_tensor_cores(p);
  p.m.mode = ScoringMode::packed;
  p.m.pass_rows = p.tc ? kTcPassRows : maxsim::kFmaPassRows;
  p.m.npass = maxsim::num_passes(p.m.Lq, p.m.pass_rows);
  p.m.shared_doc = 0;
  p.m.q_pairs =
      reinterpret_cast<uint64_t>(p.m.q) % 8 == 0 && p.m.q_sb % 2 == 0 && p.m.q_sl % 2 == 0 && p.m.dim % 2 == 0;
}

// Sets the Store's load-width flags (shared by both ops).
CF_HD void plan_store(Store& s) {
  const int nb = s.c.nbits;
  s.bits_vec = reinterpret_cast<uint64_t>(s.c.codes) % 8 == 0 && s.c.code_bytes % nb == 0;
  s.cent_vec = nb != 8 && reinterpret_cast<uint64_t>(s.c.centroids) % 16 == 0 && s.c.dim % 4 == 0;
}

CF_HD int64_t launch_blocks(const ScoreParams& p) { return ceil_div(maxsim::num_items(p.m), maxsim::kWarps); }

// Runs the scoring kernels on `stream` (a cudaStream_t); p went through plan() and plan_store().
// `out` is the contiguous fp32 [B, K] result and `workspace` holds maxsim::workspace_bytes(p.m).
void launch_score(ScoreParams p, float* out, float* workspace, void* stream);
// Runs the gather kernel; p.s went through plan_store().
void launch_gather(const GatherParams& p, void* stream);

}  // namespace codes
}  // namespace colbert_fast
