// Host test of the CUDA kernels for compressed stores (csrc/cuda/codes_params_cuda.h, codes_cuda.cu).
//
// Built with g++ (with AddressSanitizer when available) and run by tests/backends/test_cuda_build.py; no GPU,
// no CUDA, no torch. It checks:
//   * the decode helpers against values torch computed with colbert_fast.reference (decode_residual,
//     decode_int8, then .to(float16 / bfloat16)), bit for bit, read from the file given as argv[1];
//     and the fp16 <-> fp32 / bf16 conversions against torch's;
//   * the group-of-8 bit layout against codes_field (csrc/codes_params.h, the CPU kernels' decoder);
//   * the gather kernel: its per-unit function run for every unit of random worlds (all nbits, odd
//     dims, empty docs, pid -1, max_len clipping, invalid pids and centroid ids) against a direct
//     decode + pad, bit for bit, every output element written once;
//   * the tensor-core scoring kernel, emulated lane by lane: the item decomposition, the slot guard,
//     the code-bit / id / scale loads and the two-stage centroid ring at the kernel's addresses
//     (cp.async landing at issue time: the worst case for the ring), the decode into the fp16 tile,
//     ldmatrix and mma.sync from the PTX ISA's fragment tables, the per-row scale in the epilogue,
//     masks, floors, pid -1, passes; against a direct evaluation with the same fp16 roundings
//     (tight) and the exact fp32 definition (loose);
//   * the FMA kernel the same way; the geometry (unit coverage, staging swizzle, bank conflicts,
//     shared memory budget) and the plan.
// Shared memory and padding start as NaN, so any read of an unwritten value shows up in a score.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "../codes_params_cuda.h"

using namespace colbert_fast;
using namespace colbert_fast::codes;
namespace ms = colbert_fast::maxsim;

static int failures = 0;
#define CHECK(cond, ...)                                            \
  do {                                                              \
    if (!(cond)) {                                                  \
      ++failures;                                                   \
      if (failures < 30) {                                          \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                   \
        std::printf("\n");                                          \
      }                                                             \
    }                                                               \
  } while (0)

static const float kNaN = std::numeric_limits<float>::quiet_NaN();
static const float kInf = std::numeric_limits<float>::infinity();

static float h2f(uint16_t h) { return half_to_float(h); }
static float round_half(float f) { return half_to_float(float_to_half_rn(f)); }
static bool same_value(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || float_to_bits(a) == float_to_bits(b);
}

// ---- PTX ISA fragment tables for mma.m16n8k16 (.f16 inputs, .f32 accumulators), transcribed
// independently of maxsim_params.h's helpers (tile_math_test.cpp checks those against these). ----
static void ptx_a(int lane, int i, int* row, int* col) {
  const int g = lane / 4, t = lane % 4;
  *row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
  *col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
}
static void ptx_b(int lane, int i, int* k, int* n) {
  const int g = lane / 4, t = lane % 4;
  *k = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
  *n = g;
}
static void ptx_c(int lane, int i, int* row, int* col) {
  const int g = lane / 4, t = lane % 4;
  *row = i < 2 ? g : g + 8;
  *col = t * 2 + (i & 1);
}

// ldmatrix.x4: lane l supplies the address of row l % 8 of matrix l / 8 (ldsm_b_coord); result
// register m of lane t holds matrix m's row t / 4, elements 2 (t % 4) and 2 (t % 4) + 1.
static void emulate_ldsm_x4(const std::vector<float>& tile, int row_elems, int ks, int lane, float out[4][2]) {
  for (int m = 0; m < 4; ++m) {
    int lrow, lcol;
    ms::ldsm_b_coord(m * 8 + lane / 4, &lrow, &lcol);
    const int addr = lrow * row_elems + lcol + ks * 16;
    out[m][0] = tile[addr + 2 * (lane % 4)];
    out[m][1] = tile[addr + 2 * (lane % 4) + 1];
  }
}

// ---------------------------------------------------------------------------------------------
// A store world: exact-size vectors (AddressSanitizer sees any read past them).

struct StoreWorld {
  int nbits = 2;
  int64_t dim = 0, cb = 0, T = 0, C = 0;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
  std::vector<int32_t> ids;
  std::vector<float> centroids, weights;
  std::vector<int64_t> offsets, lengths;

  Store store(const std::vector<int64_t>& pids, int64_t max_len) const {
    Store s{};
    s.c.nbits = nbits;
    s.c.dim = dim;
    s.c.code_bytes = cb;
    s.c.codes = codes.data();
    s.c.scales = scales.data();
    s.c.centroid_ids = nbits == 8 ? nullptr : ids.data();
    s.c.centroids = nbits == 8 ? nullptr : centroids.data();
    s.c.bucket_weights = nbits == 8 ? nullptr : weights.data();
    s.num_centroids = nbits == 8 ? 0 : C;
    s.num_rows = T;
    s.num_docs = static_cast<int64_t>(lengths.size());
    s.offsets = offsets.data();
    s.lengths = lengths.data();
    s.pids = pids.data();
    s.max_len = max_len;
    plan_store(s);
    return s;
  }
};

static uint16_t random_scale(std::mt19937& rng) {
  std::uniform_int_distribution<int> pick(0, 39);
  const int x = pick(rng);
  if (x == 0) return 0;                        // a zero decode
  if (x == 1) return 0x0003;                   // an fp16 subnormal scale
  if (x == 2) return float_to_half_rn(300.f);  // a large one
  return float_to_half_rn(std::uniform_real_distribution<float>(0.3f, 2.f)(rng));
}

static StoreWorld make_store(std::mt19937& rng, int nbits, int64_t dim, const std::vector<int64_t>& lengths,
                             int64_t C = 11) {
  StoreWorld w;
  w.nbits = nbits;
  w.dim = dim;
  w.cb = nbits == 8 ? dim : (dim * nbits + 7) / 8;
  w.lengths = lengths;
  w.offsets.assign(lengths.size() + 1, 0);
  for (size_t i = 0; i < lengths.size(); ++i) w.offsets[i + 1] = w.offsets[i] + lengths[i];
  w.T = w.offsets.back();
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal;
  w.codes.resize(w.T * w.cb);
  for (auto& b : w.codes) b = static_cast<uint8_t>(byte(rng));  // unused high bits are garbage too
  w.scales.resize(w.T);
  for (auto& s : w.scales) s = random_scale(rng);
  if (nbits != 8) {
    w.C = C;
    w.ids.resize(w.T);
    for (auto& id : w.ids) id = std::uniform_int_distribution<int32_t>(0, static_cast<int32_t>(C - 1))(rng);
    w.centroids.resize(C * dim);
    for (auto& x : w.centroids) x = normal(rng) / std::sqrt(static_cast<float>(dim)) + 0.05f;
    w.weights.resize(size_t{1} << nbits);
    for (auto& x : w.weights) x = 0.1f * normal(rng);
  }
  return w;
}

// The CPU kernels' definition (codes_params.h): codes_unscaled(r, k) * scale, in plain fp32.
static float ref_decode(const StoreWorld& w, const CodesParams& c, int64_t r, int64_t k) {
  return codes_unscaled(c, r, k) * half_to_float(w.scales[r]);
}
static bool ref_centroid_ok(const StoreWorld& w, int64_t r) {
  return w.nbits == 8 || (w.ids[r] >= 0 && w.ids[r] < w.C);
}

// ---------------------------------------------------------------------------------------------
// 1. Against torch (file written by tests/backends/test_cuda_build.py).

struct Reader {
  std::vector<uint8_t> data;
  size_t pos = 0;
  bool ok = true;
  template <typename T>
  T get() {
    T v{};
    if (pos + sizeof(T) > data.size()) {
      ok = false;
      return v;
    }
    std::memcpy(&v, data.data() + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  template <typename T>
  std::vector<T> vec(int64_t n) {
    std::vector<T> v(static_cast<size_t>(n));
    if (n < 0 || pos + n * sizeof(T) > data.size()) {
      ok = false;
      return {};
    }
    if (n) std::memcpy(v.data(), data.data() + pos, n * sizeof(T));
    pos += n * sizeof(T);
    return v;
  }
};

static void test_against_torch(const char* path) {
  FILE* f = std::fopen(path, "rb");
  CHECK(f != nullptr, "cannot open %s", path);
  if (!f) return;
  Reader rd;
  std::fseek(f, 0, SEEK_END);
  rd.data.resize(static_cast<size_t>(std::ftell(f)));
  std::fseek(f, 0, SEEK_SET);
  CHECK(std::fread(rd.data.data(), 1, rd.data.size(), f) == rd.data.size(), "short read");
  std::fclose(f);
  CHECK(rd.get<uint32_t>() == 0x54434643u, "bad magic");  // "CFCT"

  // Every fp16 value as torch converts it to fp32.
  const int64_t nh = rd.get<int64_t>();
  const std::vector<float> halves = rd.vec<float>(nh);
  int64_t checked_halves = 0;
  for (int64_t h = 0; h < nh && rd.ok; ++h) {
    CHECK(same_value(half_to_float(static_cast<uint16_t>(h)), halves[h]), "half 0x%04llx -> %g, torch %g", (long long)h,
          half_to_float(static_cast<uint16_t>(h)), halves[h]);
    ++checked_halves;
  }
  // fp32 -> fp16 / bf16 on chosen values.
  const int64_t nc = rd.get<int64_t>();
  const std::vector<uint32_t> fbits = rd.vec<uint32_t>(nc);
  const std::vector<uint16_t> want16 = rd.vec<uint16_t>(nc), wantbf = rd.vec<uint16_t>(nc);
  for (int64_t i = 0; i < nc && rd.ok; ++i) {
    const float x = bits_to_float(fbits[i]);
    CHECK(float_to_half_rn(x) == want16[i], "fp16(%a) = 0x%04x, torch 0x%04x", x, float_to_half_rn(x), want16[i]);
    CHECK(float_to_bf16_rn(x) == wantbf[i], "bf16(%a) = 0x%04x, torch 0x%04x", x, float_to_bf16_rn(x), wantbf[i]);
  }
  // Decoded stores.
  const int64_t ncases = rd.get<int64_t>();
  int64_t values = 0;
  for (int64_t cs = 0; cs < ncases && rd.ok; ++cs) {
    StoreWorld w;
    w.nbits = static_cast<int>(rd.get<int64_t>());
    w.dim = rd.get<int64_t>();
    w.T = rd.get<int64_t>();
    w.C = rd.get<int64_t>();
    w.cb = w.nbits == 8 ? w.dim : (w.dim * w.nbits + 7) / 8;
    w.codes = rd.vec<uint8_t>(w.T * w.cb);
    w.scales = rd.vec<uint16_t>(w.T);
    if (w.nbits != 8) {
      w.ids = rd.vec<int32_t>(w.T);
      w.centroids = rd.vec<float>(w.C * w.dim);
      w.weights = rd.vec<float>(int64_t{1} << w.nbits);
    }
    const std::vector<float> dec = rd.vec<float>(w.T * w.dim);
    const std::vector<uint16_t> dec16 = rd.vec<uint16_t>(w.T * w.dim), decbf = rd.vec<uint16_t>(w.T * w.dim);
    if (!rd.ok) break;
    w.lengths = {w.T};
    w.offsets = {0, w.T};
    const std::vector<int64_t> pids = {0};
    for (int vec = 0; vec < 2; ++vec) {
      Store s = w.store(pids, w.T);
      s.bits_vec = vec && s.bits_vec;
      for (int64_t r = 0; r < w.T; ++r)
        for (int64_t g = 0; g < num_groups(w.dim); ++g) {
          float v[8];
          decode_group(s, s.c.bucket_weights, r, g, v);
          for (int i = 0; i < 8 && g * 8 + i < w.dim; ++i) {
            const int64_t at = r * w.dim + g * 8 + i;
            CHECK(same_value(v[i], dec[at]), "nbits %d dim %lld row %lld dim %lld: %a, torch %a", w.nbits,
                  (long long)w.dim, (long long)r, (long long)(g * 8 + i), v[i], dec[at]);
            CHECK(float_to_half_rn(v[i]) == dec16[at], "fp16 of row %lld dim %lld", (long long)r,
                  (long long)(g * 8 + i));
            CHECK(float_to_bf16_rn(v[i]) == decbf[at], "bf16 of row %lld dim %lld", (long long)r,
                  (long long)(g * 8 + i));
            // The CPU kernels' definition agrees too.
            CHECK(same_value(ref_decode(w, s.c, r, g * 8 + i), dec[at]), "codes_unscaled * scale");
            ++values;
          }
        }
    }
  }
  CHECK(rd.ok && rd.pos == rd.data.size(), "malformed reference file");
  std::printf("against torch: %lld halves, %lld conversions, %lld decoded values in %lld stores\n",
              (long long)checked_halves, (long long)nc, (long long)values, (long long)ncases);
}

// ---------------------------------------------------------------------------------------------
// 2. Bit layout and bounds of the group loads.

static void test_group_bits() {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int nbits : {1, 2, 4, 8})
    for (int64_t dim : {1, 3, 5, 8, 13, 16, 17, 64, 100, 127, 128, 130}) {
      const int64_t cb = nbits == 8 ? dim : (dim * nbits + 7) / 8;
      for (int rep = 0; rep < 4; ++rep) {
        std::vector<uint8_t> row(static_cast<size_t>(cb));  // exact size: an over-read is an ASan error
        for (auto& b : row) b = static_cast<uint8_t>(byte(rng));
        for (int vec = 0; vec < 2; ++vec)
          for (int64_t g = 0; g < num_groups(dim); ++g) {
            const uint64_t bits = load_group_bits(row.data(), cb, nbits, g, vec != 0 && cb % nbits == 0);
            for (int i = 0; i < 8 && g * 8 + i < dim; ++i) {
              const int64_t k = g * 8 + i;
              if (nbits == 8) {
                CHECK(group_int8(bits, i) == static_cast<float>(static_cast<int8_t>(row[k])), "int8 dim %lld",
                      (long long)k);
              } else {
                CHECK(group_field(bits, nbits, i) == codes_field(row.data(), nbits, k), "nbits %d dim %lld field %lld",
                      nbits, (long long)dim, (long long)k);
              }
            }
          }
      }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Slot guards.

static void test_slot_view() {
  std::mt19937 rng(3);
  StoreWorld w = make_store(rng, 2, 16, {5, 0, 7});
  std::vector<int64_t> pids = {0, 1, 2, -1, 3, -2, 1000};
  Store s = w.store(pids, 6);
  SlotView v = slot_view(s, 0);
  CHECK(v.state == kSlotOk && v.row0 == 0 && v.nrows == 5, "doc 0");
  v = slot_view(s, 1);
  CHECK(v.state == kSlotOk && v.row0 == 5 && v.nrows == 0, "empty doc");
  v = slot_view(s, 2);
  CHECK(v.state == kSlotOk && v.row0 == 5 && v.nrows == 6, "clipped to max_len");
  CHECK(slot_view(s, 3).state == kSlotEmpty, "pid -1");
  CHECK(slot_view(s, 4).state == kSlotInvalid, "pid == N");
  CHECK(slot_view(s, 5).state == kSlotInvalid, "pid -2");
  CHECK(slot_view(s, 6).state == kSlotInvalid, "pid far out");
  // Rows outside the store (a direct op call with inconsistent offsets/lengths).
  std::vector<int64_t> offsets = {0, 5, 5, 13}, lengths = {5, 0, 8};
  s.offsets = offsets.data();
  s.lengths = lengths.data();
  CHECK(slot_view(s, 2).state == kSlotInvalid, "doc past the last row (5 + 8 > 12)");
  offsets[1] = -1;
  CHECK(slot_view(s, 1).state == kSlotInvalid, "negative offset");
  offsets[1] = 5;
  lengths[1] = -3;
  CHECK(slot_view(s, 1).state == kSlotInvalid, "negative length");
  lengths[1] = 0;
  offsets[1] = 12;  // an empty doc at the very end is fine
  CHECK(slot_view(s, 1).state == kSlotOk && slot_view(s, 1).nrows == 0, "empty doc at T");
  offsets[2] = std::numeric_limits<int64_t>::max() - 2;  // off + len must not overflow the check
  lengths[2] = 8;
  CHECK(slot_view(s, 2).state == kSlotInvalid, "huge offset");
  // int64 rows past 2^31
  std::vector<int64_t> big_off = {0, 3000000000LL}, big_len = {3000000000LL};
  std::vector<int64_t> big_pid = {0};
  Store b = s;
  b.offsets = big_off.data();
  b.lengths = big_len.data();
  b.pids = big_pid.data();
  b.num_docs = 1;
  b.num_rows = 3000000000LL;
  b.max_len = 4000000000LL;
  v = slot_view(b, 0);
  CHECK(v.state == kSlotOk && v.nrows == 3000000000LL, "int64 lengths");
  CHECK(centroid_ok(s, 0) && centroid_ok(s, 10) && !centroid_ok(s, 11) && !centroid_ok(s, -1), "centroid ids");
}

// ---------------------------------------------------------------------------------------------
// 4. The gather kernel, unit by unit.

static void test_gather() {
  std::mt19937 rng(11);
  int worlds = 0;
  for (int nbits : {1, 2, 4, 8})
    for (int64_t dim : {1, 5, 8, 13, 24, 96, 100, 128})
      for (int dt = 0; dt < 3; ++dt) {
        std::vector<int64_t> lengths = {3, 0, 17, 8, 1};
        StoreWorld w = make_store(rng, nbits, dim, lengths);
        if (nbits != 8 && w.T > 4) w.ids[4] = static_cast<int32_t>(w.C);  // an id past the table: NaN row
        std::vector<int64_t> pids = {2, -1, 0, 1, 3, 4, 5, -7, 2};        // 5 and -7: invalid slots
        const int64_t max_len = 12;                                       // clips doc 2
        GatherParams p{};
        p.s = w.store(pids, max_len);
        p.num_slots = static_cast<int64_t>(pids.size());
        p.out_dtype = dt;
        const int64_t n = p.num_slots * max_len * dim;
        std::vector<float> out(n, 12345.f);
        std::vector<int> writes(n, 0);
        std::vector<int> mask(p.num_slots * max_len, -1);
        for (int64_t slot = 0; slot < p.num_slots; ++slot) {
          const SlotView v = slot_view(p.s, slot);
          for (int64_t u = 0; u < gather_units(p); ++u) {
            float vals[8];
            int64_t e0;
            const int cnt = gather_unit_values(p, v, slot, u, &e0, vals);
            for (int i = 0; i < cnt; ++i) {
              CHECK(e0 + i >= 0 && e0 + i < n, "unit writes out of the slot");
              if (e0 + i < 0 || e0 + i >= n) continue;
              // store_unit's rounding
              out[e0 + i] = dt == ms::kFloat32 ? vals[i]
                            : dt == ms::kFloat16
                                ? h2f(float_to_half_rn(vals[i]))
                                : bits_to_float(static_cast<uint32_t>(float_to_bf16_rn(vals[i])) << 16);
              writes[e0 + i]++;
            }
          }
          for (int64_t j = 0; j < max_len; ++j) mask[slot * max_len + j] = gather_mask(v, j);
        }
        for (int64_t slot = 0; slot < p.num_slots; ++slot) {
          const int64_t pid = pids[slot];
          const bool invalid = pid < -1 || pid >= static_cast<int64_t>(lengths.size());
          const int64_t rows = pid < 0 || invalid ? 0 : std::min(lengths[pid], max_len);
          for (int64_t j = 0; j < max_len; ++j) {
            CHECK(mask[slot * max_len + j] == (j < rows ? 1 : 0), "mask slot %lld row %lld", (long long)slot,
                  (long long)j);
            for (int64_t k = 0; k < dim; ++k) {
              const int64_t at = (slot * max_len + j) * dim + k;
              float want = 0.f;
              if (invalid) {
                want = kNaN;
              } else if (j < rows) {
                const int64_t r = w.offsets[pid] + j;
                want = ref_centroid_ok(w, r) ? ref_decode(w, p.s.c, r, k) : kNaN;
              }
              if (dt == ms::kFloat16) want = h2f(float_to_half_rn(want));
              if (dt == ms::kBFloat16) want = bits_to_float(static_cast<uint32_t>(float_to_bf16_rn(want)) << 16);
              CHECK(writes[at] == 1, "element written %d times", writes[at]);
              CHECK(same_value(out[at], want), "nbits %d dim %lld dtype %d slot %lld row %lld dim %lld: %a want %a",
                    nbits, (long long)dim, dt, (long long)slot, (long long)j, (long long)k, out[at], want);
            }
          }
        }
        ++worlds;
      }
  std::printf("gather: %d worlds\n", worlds);
}

// ---------------------------------------------------------------------------------------------
// 5. The scoring kernels.

struct ScoreWorld {
  StoreWorld st;
  std::vector<float> q;
  std::vector<char> qmask;
  std::vector<float> floors;
  std::vector<int64_t> pids;
  ScoreParams p{};
};

static ScoreWorld make_score_world(std::mt19937& rng, int nbits, int64_t dim, int64_t B, int64_t Lq, int64_t K,
                                   int64_t max_doc, bool use_qmask, bool use_floor, bool corrupt) {
  ScoreWorld w;
  std::uniform_int_distribution<int> coin(0, 9);
  std::vector<int64_t> lengths = {0, 1, 15, 16, 17, 33, max_doc};
  for (int i = 0; i < 3; ++i) lengths.push_back(std::uniform_int_distribution<int64_t>(0, max_doc)(rng));
  w.st = make_store(rng, nbits, dim, lengths);
  if (corrupt && nbits != 8 && w.st.T > 20) w.st.ids[w.st.offsets[4] + 3] = -5;  // doc 4 reads a bad id
  const int64_t ndocs = static_cast<int64_t>(lengths.size());
  w.pids.resize(B * K);
  for (auto& pid : w.pids) pid = std::uniform_int_distribution<int64_t>(-1, ndocs - 1)(rng);
  w.pids[0] = 0;  // an empty doc
  if (K > 1) w.pids[1] = -1;
  if (corrupt) w.pids[B * K - 1] = ndocs + 3;  // a pid past the store
  // Q [B, Lq, dim] with padded strides, ~unit rows pointing the docs' way.
  ms::Params& m = w.p.m;
  m.q_sl = dim + 2;
  m.q_sb = Lq * m.q_sl + 4;
  std::normal_distribution<float> normal;
  w.q.assign(B * m.q_sb, kNaN);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Lq; ++i)
      for (int64_t k = 0; k < dim; ++k)
        w.q[b * m.q_sb + i * m.q_sl + k] = (normal(rng) + 0.3f) / std::sqrt(static_cast<float>(dim));
  m.q = w.q.data();
  m.B = B;
  m.Lq = Lq;
  m.dim = dim;
  m.ncols = K;
  m.dtype = ms::kFloat32;
  m.smem_limit = 227 * 1024;
  if (use_qmask) {
    w.qmask.resize(B * Lq);
    for (auto& x : w.qmask) x = coin(rng) < 7;
    m.q_mask = reinterpret_cast<const bool*>(w.qmask.data());
  }
  if (use_floor) {
    const float choices[] = {-kInf, 0.f, -0.5f, 0.2f};
    w.floors.resize(B * K);
    for (auto& f : w.floors) f = choices[coin(rng) % 4];
    m.floor = w.floors.data();
  }
  w.p.s = w.st.store(w.pids, max_doc - 2);  // clips the longest docs
  plan(w.p);
  return w;
}

static float qval(const ScoreWorld& w, int64_t b, int64_t i, int64_t k) {
  return w.q[b * w.p.m.q_sb + i * w.p.m.q_sl + k];
}

// The unscaled value the tensor-core kernel puts in its tile (before fp16 rounding).
static float tile_value(const ScoreWorld& w, int64_t r, int64_t k) {
  const CodesParams& c = w.p.s.c;
  const uint8_t* row = c.codes + r * c.code_bytes;
  if (c.nbits == 8) return static_cast<float>(static_cast<int8_t>(row[k]));
  return add_rn(c.centroids[static_cast<int64_t>(c.centroid_ids[r]) * c.dim + k],
                c.bucket_weights[codes_field(row, c.nbits, k)]);
}

// Direct evaluation of one slot: exact (fp32 decode, fp32 Q, double sums) or with the tensor-core
// kernel's roundings (Q and the unscaled values in fp16, the scale applied to the dot product).
// magnitude: sum over counted query rows of max_j sum_k |q_ik d_jk|, which bounds the error that
// fp16 rounding of Q and of the values can cause (2^-11 relative per factor).
static double direct_score(const ScoreWorld& w, int64_t b, int64_t col, bool tc_rounding, double* magnitude = nullptr) {
  if (magnitude) *magnitude = 0;
  const ScoreParams& p = w.p;
  const int64_t pid = w.pids[b * p.m.ncols + col];
  const int64_t ndocs = static_cast<int64_t>(w.st.lengths.size());
  if (pid == -1) return -kInf;
  if (pid < -1 || pid >= ndocs) return kNaN;
  const int64_t n = std::min(w.st.lengths[pid], p.s.max_len), r0 = w.st.offsets[pid];
  for (int64_t j = 0; j < n; ++j)
    if (!ref_centroid_ok(w.st, r0 + j)) return kNaN;
  double total = 0;
  for (int64_t i = 0; i < p.m.Lq; ++i) {
    if (!w.qmask.empty() && !w.qmask[b * p.m.Lq + i]) continue;
    double best = -kInf, mag = 0;
    for (int64_t j = 0; j < n; ++j) {
      double s = 0, a = 0;
      for (int64_t k = 0; k < p.m.dim; ++k) {
        if (tc_rounding) {
          s += static_cast<double>(round_half(qval(w, b, i, k))) * round_half(tile_value(w, r0 + j, k));
        } else {
          s += static_cast<double>(qval(w, b, i, k)) * ref_decode(w.st, p.s.c, r0 + j, k);
        }
        a += std::fabs(static_cast<double>(qval(w, b, i, k)) * ref_decode(w.st, p.s.c, r0 + j, k));
      }
      if (tc_rounding) s *= half_to_float(w.st.scales[r0 + j]);
      best = std::max(best, s);
      mag = std::max(mag, a);
    }
    if (magnitude) *magnitude += mag;
    if (!w.floors.empty()) best = std::max(best, static_cast<double>(w.floors[b * p.m.ncols + col]));
    if (best != -kInf) total += best;
  }
  return total;
}

// codes_tc_kernel<nbits, KS> on one item, lane by lane; returns what lane 0 writes.
static float emulate_tc_item(const ScoreWorld& w, int64_t item_idx, int KS) {
  const ScoreParams& p = w.p;
  const CodesParams& c = p.s.c;
  const Item it = ms::decode_item(p.m, item_idx);
  const SlotView dv = slot_view(p.s, ms::doc_index(p.m, it));
  if (dv.state != kSlotOk) return dv.state == kSlotEmpty ? -kInf : kNaN;
  const bool residual = c.nbits != 8;
  const int dim = static_cast<int>(p.m.dim), ksteps = static_cast<int>(ms::tc_ksteps(dim));
  const int ngroups = static_cast<int>(num_groups(dim)), pieces = static_cast<int>(tc_stage_pieces(dim));
  const int real_pieces = (dim + 3) / 4, row_elems = static_cast<int>(tc_tile_row_elems(KS));
  const int row_step = 32 / tc_groups(KS);
  CHECK(ksteps <= KS, "bucket too small");
  std::vector<float> tile(kChunkRows * row_elems, kNaN);
  std::vector<float> stage(kStageCount * kChunkRows * pieces * 4, kNaN);
  const int64_t row0 = dv.row0, nrows = dv.nrows, nch = ceil_div(nrows, kChunkRows);
  const int qrows = static_cast<int>(ms::pass_nrows(p.m, it));
  bool bad[32] = {};

  // A fragments (load_a_f32): element (row, col) of the pass, fp16-rounded; 0 past qrows / dim.
  std::vector<float> a(32 * 2 * KS * 8);
  auto A = [&](int lane, int mt, int ks, int e) -> float& { return a[((lane * 2 + mt) * KS + ks) * 8 + e]; };
  for (int lane = 0; lane < 32; ++lane)
    for (int mt = 0; mt < 2; ++mt)
      for (int ks = 0; ks < KS; ++ks)
        for (int r = 0; r < 4; ++r)
          for (int h = 0; h < 2; ++h) {
            int row, col;
            ms::a_frag_coord(lane, r, h, &row, &col);
            row += mt * 16;
            col += ks * 16;
            A(lane, mt, ks, 2 * r + h) =
                row < qrows && col < dim ? round_half(qval(w, it.b, ms::pass_row0(p.m, it) + row, col)) : 0.f;
          }
  float wreg[32];
  for (int lane = 0; lane < 32; ++lane) wreg[lane] = residual && lane < (1 << c.nbits) ? c.bucket_weights[lane] : 0.f;

  auto load_id = [&](int64_t ch, int32_t (&ids)[32]) {
    for (int lane = 0; lane < 32; ++lane) {
      const int64_t r = ch * kChunkRows + lane;
      ids[lane] = 0;
      if (lane >= kChunkRows || r >= nrows) continue;
      ids[lane] = c.centroid_ids[row0 + r];
      bad[lane] |= !centroid_ok(p.s, ids[lane]);
    }
  };
  auto load_scale = [&](int64_t ch, float (&sc)[32]) {
    for (int lane = 0; lane < 32; ++lane) {
      const int64_t r = ch * kChunkRows + lane;
      sc[lane] = lane < kChunkRows && r < nrows ? half_to_float(c.scales[row0 + r]) : 0.f;
    }
  };
  std::vector<uint64_t> bits_cur(32 * KS), bits_nxt(32 * KS);
  auto load_bits = [&](int64_t ch, std::vector<uint64_t>& bits) {
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < KS; ++i) {
        const int ug = tc_unit_group(lane, KS);
        const int64_t r = ch * kChunkRows + tc_unit_row(lane, i, KS);
        bits[lane * KS + i] = r < nrows && ug < ngroups ? load_group_bits(c.codes + (row0 + r) * c.code_bytes,
                                                                          c.code_bytes, c.nbits, ug, p.s.bits_vec != 0)
                                                        : 0;
      }
  };
  auto stage_centroids = [&](int64_t ch, const int32_t (&ids)[32]) {
    const int st = static_cast<int>(ch % kStageCount) * (kChunkRows * pieces * 4);
    const int rows = static_cast<int>(std::min<int64_t>(kChunkRows, nrows - ch * kChunkRows));
    for (int j = 0; j < rows; ++j) {
      int32_t id = ids[j];  // __shfl_sync(ids, j)
      id = centroid_ok(p.s, id) ? id : 0;
      const float* src = c.centroids + static_cast<int64_t>(id) * dim;
      const int dst = st + j * pieces * 4;
      for (int lane = 0; lane < 32; ++lane) {
        if (p.s.cent_vec) {
          for (int pc = lane; pc < real_pieces; pc += 32)
            for (int x = 0; x < 4; ++x) stage[dst + tc_stage_slot(pc, pieces) * 4 + x] = src[pc * 4 + x];
        } else {
          for (int k = lane; k < dim; k += 32) stage[dst + tc_stage_slot(k / 4, pieces) * 4 + k % 4] = src[k];
        }
      }
    }
  };

  float sc_cur[32] = {}, sc_nxt[32] = {};
  int32_t id_nxt[32] = {}, id_nxt2[32] = {};
  if (nch > 0) {
    if (residual) {
      int32_t id0[32];
      load_id(0, id0);
      load_id(1, id_nxt);
      stage_centroids(0, id0);
    }
    load_bits(0, bits_cur);
    load_scale(0, sc_cur);
  }
  std::vector<float> best(32 * 4, -kInf);  // [lane][mt][h]
  for (int64_t ch = 0; ch < nch; ++ch) {
    if (residual) load_id(ch + 2, id_nxt2);
    load_bits(ch + 1, bits_nxt);
    load_scale(ch + 1, sc_nxt);
    if (residual && ch + 1 < nch) stage_centroids(ch + 1, id_nxt);
    // decode into the tile
    const int st = static_cast<int>(ch % kStageCount) * (kChunkRows * pieces * 4);
    for (int lane = 0; lane < 32; ++lane) {
      const int ug = tc_unit_group(lane, KS);
      for (int i = 0; i < KS; ++i) {
        const int row = tc_unit_row(lane, i, KS);
        CHECK(row == tc_unit_row(lane, 0, KS) + i * row_step, "unit rows step by 32 / groups");
        const uint64_t bits = bits_cur[lane * KS + i];
        float h[8] = {};
        if (ch * kChunkRows + row < nrows && ug < ngroups) {
          for (int e = 0; e < 8; ++e) {
            float u;
            if (residual) {
              const int piece = 2 * ug + e / 4;
              const float cv = stage[st + row * pieces * 4 + tc_stage_slot(piece, pieces) * 4 + e % 4];
              u = add_rn(cv, wreg[group_field(bits, c.nbits, e)]);
            } else {
              u = group_int8(bits, e);
            }
            h[e] = ug * 8 + e < dim ? round_half(u) : 0.f;
          }
        }
        for (int e = 0; e < 8; ++e) tile[row * row_elems + ug * 8 + e] = h[e];
      }
    }
    // mma over the k-steps, then the epilogue
    std::vector<float> acc(32 * 2 * 2 * 4, 0.f);  // [lane][mt][nt][r]
    for (int ks = 0; ks < ksteps; ++ks) {
      float bfrag[32][4][2];
      for (int lane = 0; lane < 32; ++lane) emulate_ldsm_x4(tile, row_elems, ks, lane, bfrag[lane]);
      for (int mt = 0; mt < 2; ++mt)
        for (int nt = 0; nt < 2; ++nt) {
          float At[16][16], Bt[16][8];
          for (int lane = 0; lane < 32; ++lane) {
            for (int e = 0; e < 8; ++e) {
              int row, col;
              ptx_a(lane, e, &row, &col);
              At[row][col] = A(lane, mt, ks, e);
            }
            for (int e = 0; e < 4; ++e) {
              int k, n;
              ptx_b(lane, e, &k, &n);
              Bt[k][n] = bfrag[lane][2 * nt + e / 2][e % 2];
            }
          }
          for (int lane = 0; lane < 32; ++lane)
            for (int e = 0; e < 4; ++e) {
              int row, col;
              ptx_c(lane, e, &row, &col);
              double s = 0;
              for (int k = 0; k < 16; ++k) s += static_cast<double>(At[row][k]) * Bt[k][col];
              acc[((lane * 2 + mt) * 2 + nt) * 4 + e] += static_cast<float>(s);
            }
        }
    }
    for (int lane = 0; lane < 32; ++lane)
      for (int nt = 0; nt < 2; ++nt)
        for (int j = 0; j < 2; ++j) {
          int qrow, col;
          ms::c_frag_coord(lane, j, &qrow, &col);
          const int drow = tc_epilogue_row(nt, col);
          const float s = sc_cur[drow];  // __shfl_sync(sc_cur, drow)
          if (ch * kChunkRows + drow >= nrows) continue;
          for (int mt = 0; mt < 2; ++mt) {
            float& b0 = best[lane * 4 + mt * 2 + 0];
            float& b1 = best[lane * 4 + mt * 2 + 1];
            b0 = std::fmax(b0, acc[((lane * 2 + mt) * 2 + nt) * 4 + j] * s);
            b1 = std::fmax(b1, acc[((lane * 2 + mt) * 2 + nt) * 4 + 2 + j] * s);
          }
        }
    bits_cur = bits_nxt;
    std::memcpy(sc_cur, sc_nxt, sizeof(sc_cur));
    std::memcpy(id_nxt, id_nxt2, sizeof(id_nxt));
  }
  double sum = 0;
  for (int lane = 0; lane < 32; lane += 4)
    for (int mt = 0; mt < 2; ++mt)
      for (int h = 0; h < 2; ++h) {
        float v = -kInf;
        for (int t = 0; t < 4; ++t) v = std::fmax(v, best[(lane + t) * 4 + mt * 2 + h]);
        sum += ms::row_value(p.m, it, mt * 16 + lane / 4 + 8 * h, qrows, v);
      }
  for (int lane = 0; lane < 32; ++lane)
    if (bad[lane]) return kNaN;
  return static_cast<float>(sum);
}

// codes_fma_kernel on one item.
static float emulate_fma_item(const ScoreWorld& w, int64_t item_idx) {
  const ScoreParams& p = w.p;
  constexpr int kRows = ms::kFmaPassRows;
  const Item it = ms::decode_item(p.m, item_idx);
  const SlotView dv = slot_view(p.s, ms::doc_index(p.m, it));
  if (dv.state != kSlotOk) return dv.state == kSlotEmpty ? -kInf : kNaN;
  const int qrows = static_cast<int>(ms::pass_nrows(p.m, it));
  const float* q = static_cast<const float*>(p.m.q) + it.b * p.m.q_sb + ms::pass_row0(p.m, it) * p.m.q_sl;
  bool bad = false;
  std::vector<float> best(32 * kRows, -kInf);
  for (int lane = 0; lane < 32; ++lane)
    for (int64_t j = lane; j < dv.nrows; j += 32) {
      float acc[kRows] = {};
      for (int64_t g = 0; g < num_groups(p.m.dim); ++g) {
        float v[8];
        bad |= !decode_group(p.s, p.s.c.bucket_weights, dv.row0 + j, g, v);
        for (int e = 0; e < 8; ++e) {
          const int64_t k = g * 8 + e;
          if (k >= p.m.dim) continue;
          for (int i = 0; i < kRows; ++i) acc[i] = std::fmaf(q[std::min(i, qrows - 1) * p.m.q_sl + k], v[e], acc[i]);
        }
      }
      for (int i = 0; i < kRows; ++i) best[lane * kRows + i] = std::fmax(best[lane * kRows + i], acc[i]);
    }
  double sum = 0;
  for (int i = 0; i < kRows; ++i) {
    float v = -kInf;
    for (int lane = 0; lane < 32; ++lane) v = std::fmax(v, best[lane * kRows + i]);
    sum += ms::row_value(p.m, it, i, qrows, v);
  }
  return bad ? kNaN : static_cast<float>(sum);
}

static bool close(double got, double want, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::isfinite(got) && std::fabs(got - want) <= tol;
}

static void check_scores(ScoreWorld& w, bool tc, const char* what) {
  ScoreParams& p = w.p;
  p.tc = tc;
  p.m.pass_rows = tc ? kTcPassRows : ms::kFmaPassRows;
  p.m.npass = ms::num_passes(p.m.Lq, p.m.pass_rows);
  const int KS = tc_ks_bucket(p.m.dim);
  std::vector<float> out(p.m.npass * p.m.B * p.m.ncols, kNaN);
  std::vector<int> hits(out.size(), 0);
  for (int64_t idx = 0; idx < ms::num_items(p.m); ++idx) {
    const Item it = ms::decode_item(p.m, idx);
    const int64_t o = ms::out_index(p.m, it);
    CHECK(o >= 0 && o < static_cast<int64_t>(out.size()), "%s: out index %lld", what, (long long)o);
    if (o < 0 || o >= static_cast<int64_t>(out.size())) continue;
    hits[o]++;
    out[o] = tc ? emulate_tc_item(w, idx, KS) : emulate_fma_item(w, idx);
  }
  for (size_t i = 0; i < out.size(); ++i) CHECK(hits[i] == 1, "%s: output %zu written %d times", what, i, hits[i]);
  for (int64_t b = 0; b < p.m.B; ++b)
    for (int64_t col = 0; col < p.m.ncols; ++col) {
      float got = 0;  // reduce_partials_kernel: in pass order
      for (int64_t pass = 0; pass < p.m.npass; ++pass)
        got += p.m.npass == 1 ? out[b * p.m.ncols + col] : out[pass * p.m.B * p.m.ncols + b * p.m.ncols + col];
      double mag = 0;
      const double exact = direct_score(w, b, col, false, &mag);
      const double lq = static_cast<double>(p.m.Lq);
      if (tc) {
        const double same = direct_score(w, b, col, true);
        CHECK(close(got, same, 1e-4 * (1 + std::fabs(same)) + 1e-5 * lq),
              "%s nbits %d dim %lld Lq %lld: (%lld, %lld) = %.7g, same-rounding %.7g", what, p.s.c.nbits,
              (long long)p.m.dim, (long long)p.m.Lq, (long long)b, (long long)col, got, same);
        CHECK(close(got, exact, 2e-3 * mag + 1e-5 * lq), "%s: (%lld, %lld) = %g, exact %g (magnitude %g)", what,
              (long long)b, (long long)col, got, exact, mag);
      } else {
        CHECK(close(got, exact, 1e-4 * (1 + std::fabs(exact)) + 1e-5 * lq),
              "%s nbits %d dim %lld Lq %lld: (%lld, %lld) = %.7g, exact %.7g", what, p.s.c.nbits, (long long)p.m.dim,
              (long long)p.m.Lq, (long long)b, (long long)col, got, exact);
      }
    }
}

static void test_scoring() {
  std::mt19937 rng(2024);
  const int64_t tc_dims[] = {8, 13, 16, 40, 64, 72, 100, 128, 127, 96};
  const int64_t fma_dims[] = {136, 5, 200};  // 5 takes the tensor cores; its FMA path is run anyway
  const int64_t lqs[] = {1, 7, 32, 33, 70};
  int n = 0;
  for (int nbits : {1, 2, 4, 8})
    for (int64_t lq : lqs) {
      const int64_t dim = tc_dims[n % 10];
      const bool qm = n % 2 == 1, fl = n % 3 != 0, corrupt = n % 4 == 2;
      const int64_t max_doc = n % 5 == 0 ? 70 : 40;
      ScoreWorld w = make_score_world(rng, nbits, dim, 2, lq, 4, max_doc, qm, fl, corrupt);
      CHECK(w.p.tc, "dim %lld should take the tensor cores", (long long)dim);
      check_scores(w, true, "tc");
      ScoreWorld w2 = make_score_world(rng, nbits, fma_dims[n % 3], 2, lq, 3, 40, qm, fl, corrupt);
      CHECK(w2.p.tc == (fma_dims[n % 3] <= kTcMaxDim), "dim %lld: kernel choice", (long long)fma_dims[n % 3]);
      check_scores(w2, false, "fma");
      ++n;
    }
  // Every tensor-core dim once more through the FMA kernel (same answer, exact decode).
  for (int64_t dim : {8, 100, 128}) {
    ScoreWorld w = make_score_world(rng, 2, dim, 2, 9, 3, 40, true, true, false);
    check_scores(w, false, "fma at a tensor-core dim");
  }
  // Unaligned loads: 4-byte centroid copies and byte-wise code loads give the same scores.
  {
    ScoreWorld w = make_score_world(rng, 4, 64, 2, 32, 4, 40, false, true, false);
    w.p.s.cent_vec = 0;
    w.p.s.bits_vec = 0;
    check_scores(w, true, "tc unaligned");
  }
  std::printf("scoring: %d worlds x 2 kernels\n", n);
}

// ---------------------------------------------------------------------------------------------
// 6. Geometry and plan.

static void test_geometry() {
  for (int KS : {4, 8}) {
    const int G = tc_groups(KS);
    CHECK(32 % G == 0, "a lane's rows step evenly");
    std::set<int> cells;
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < KS; ++i) {
        const int row = tc_unit_row(lane, i, KS), g = tc_unit_group(lane, KS);
        CHECK(row >= 0 && row < kChunkRows && g >= 0 && g < G, "unit out of the tile");
        cells.insert(row * G + g);
      }
    CHECK(cells.size() == static_cast<size_t>(kChunkRows * G), "KS %d: units cover the tile once (%zu)", KS,
          cells.size());
    const int64_t row_bytes = tc_tile_row_elems(KS) * 2;
    CHECK(row_bytes % 16 == 0 && tc_tile_row_elems(KS) >= 16 * KS, "tile row");
    // tile writes: each 8-lane phase stores 16 bytes per lane into 8 distinct bank groups
    for (int i = 0; i < KS; ++i)
      for (int phase = 0; phase < 4; ++phase) {
        std::set<int64_t> groups;
        for (int lane = phase * 8; lane < phase * 8 + 8; ++lane)
          groups.insert(((tc_unit_row(lane, i, KS) * row_bytes + tc_unit_group(lane, KS) * 16) / 16) % 8);
        CHECK(groups.size() == 8, "KS %d: tile store bank conflict", KS);
      }
    // ldmatrix reads of the tile: conflict-free
    for (int ks = 0; ks < KS; ++ks)
      for (int phase = 0; phase < 4; ++phase) {
        std::set<int64_t> groups;
        for (int l = phase * 8; l < phase * 8 + 8; ++l) {
          int row, col;
          ms::ldsm_b_coord(l, &row, &col);
          groups.insert(((row * row_bytes + (col + ks * 16) * 2) / 16) % 8);
        }
        CHECK(groups.size() == 8, "KS %d ks %d: ldmatrix bank conflict", KS, ks);
      }
  }
  for (int64_t dim = 1; dim <= kTcMaxDim; ++dim) {
    const int KS = tc_ks_bucket(dim);
    CHECK(ms::tc_ksteps(dim) <= KS && tc_groups(KS) >= num_groups(dim), "dim %lld fits its bucket", (long long)dim);
    const int64_t P = tc_stage_pieces(dim);
    CHECK(P % 2 == 0 && P >= 2 * num_groups(dim), "stage pieces of dim %lld", (long long)dim);
    std::set<int64_t> slots;
    for (int64_t pc = 0; pc < P; ++pc) slots.insert(tc_stage_slot(pc, P));
    CHECK(slots.size() == static_cast<size_t>(P) && *slots.rbegin() == P - 1, "swizzle of dim %lld is a permutation",
          (long long)dim);
    // decode reads of the staged centroids: per 8-lane phase, the lanes that read (group < ngroups)
    // hit distinct bank groups, for both of a group's pieces
    for (int i = 0; i < KS; ++i)
      for (int half = 0; half < 2; ++half)
        for (int phase = 0; phase < 4; ++phase) {
          std::set<int64_t> groups;
          int readers = 0;
          for (int lane = phase * 8; lane < phase * 8 + 8; ++lane) {
            const int g = tc_unit_group(lane, KS);
            if (g >= num_groups(dim)) continue;
            ++readers;
            const int64_t byte = (tc_unit_row(lane, i, KS) * P + tc_stage_slot(2 * g + half, P)) * 16;
            groups.insert((byte / 16) % 8);
          }
          CHECK(static_cast<int>(groups.size()) == readers, "dim %lld: staged centroid read bank conflict",
                (long long)dim);
        }
  }
  // Shared memory: residual at dim 128 leaves room for two blocks per SM on sm_80 (164 KB per SM,
  // 1 KB reserved per block) and fits sm_86/89's 99 KB per block.
  CHECK(tc_block_smem_bytes(128, true) == 4 * (16 * 136 * 2 + 2 * 16 * 32 * 16), "smem dim 128");
  CHECK(2 * (tc_block_smem_bytes(128, true) + 1024) <= 164 * 1024, "two residual blocks per sm_80 SM");
  CHECK(tc_block_smem_bytes(128, true) <= 99 * 1024, "sm_86/89 per-block limit");
  CHECK(tc_block_smem_bytes(128, false) == 4 * 16 * 136 * 2, "int8 needs only the tiles");
  CHECK(tc_epilogue_row(0, 0) == 0 && tc_epilogue_row(1, 7) == 15, "epilogue rows");

  // plan
  ScoreParams p{};
  p.s.c.nbits = 2;
  p.m.dim = 128;
  p.m.Lq = 32;
  p.m.B = 3;
  p.m.ncols = 1000;
  p.m.smem_limit = 227 * 1024;
  p.m.q = reinterpret_cast<const void*>(uintptr_t(4096));
  p.m.q_sb = 32 * 128;
  p.m.q_sl = 128;
  plan(p);
  CHECK(p.tc && p.m.pass_rows == 32 && p.m.npass == 1 && p.m.q_pairs && p.m.mode == ScoringMode::packed,
        "plan R1-like");
  CHECK(launch_blocks(p) == ceil_div(3 * 1000, 4), "blocks");
  p.m.Lq = 150;
  plan(p);
  CHECK(p.m.npass == 5 && ms::workspace_bytes(p.m) == 5 * 3 * 1000 * 4, "long query: passes");
  p.m.q = reinterpret_cast<const void*>(uintptr_t(4100));
  plan(p);
  CHECK(!p.m.q_pairs, "Q not 8-byte aligned: single loads");
  p.m.q = reinterpret_cast<const void*>(uintptr_t(4096));
  p.m.q_sl = 129;
  plan(p);
  CHECK(!p.m.q_pairs, "odd Q stride: single loads");
  p.m.dim = 129;
  plan(p);
  CHECK(!p.tc && p.m.pass_rows == ms::kFmaPassRows, "dim 129: FMA kernel");
  p.m.dim = 0;
  plan(p);
  CHECK(!p.tc, "dim 0: FMA kernel");
  p.m.dim = 128;
  p.m.smem_limit = 48 * 1024;
  plan(p);
  CHECK(!p.tc, "shared memory limit respected");
  p.s.c.nbits = 8;
  plan(p);
  CHECK(p.tc, "int8 needs 17 KB");

  Store s{};
  std::vector<uint64_t> buf(64);
  s.c.nbits = 2;
  s.c.dim = 128;
  s.c.code_bytes = 32;
  s.c.codes = reinterpret_cast<const uint8_t*>(buf.data());
  s.c.centroids = reinterpret_cast<const float*>(buf.data());
  plan_store(s);
  CHECK(s.bits_vec && s.cent_vec, "aligned store: vector loads");
  s.c.centroids = reinterpret_cast<const float*>(buf.data()) + 1;
  plan_store(s);
  CHECK(!s.cent_vec, "centroids off 16 bytes: 4-byte copies");
  s.c.dim = 100;
  s.c.code_bytes = 25;
  s.c.centroids = reinterpret_cast<const float*>(buf.data());
  plan_store(s);
  CHECK(!s.bits_vec && s.cent_vec, "dim 100 at 2 bits: byte loads of codes, 16-byte centroid pieces");
  s.c.nbits = 4;
  s.c.dim = 12;
  s.c.code_bytes = 6;
  plan_store(s);
  CHECK(!s.bits_vec, "6 code bytes at 4 bits: groups not 4-byte aligned");
  s.c.nbits = 8;
  s.c.dim = 64;
  s.c.code_bytes = 64;
  s.c.codes = reinterpret_cast<const uint8_t*>(buf.data()) + 4;
  plan_store(s);
  CHECK(!s.bits_vec && !s.cent_vec, "int8 codes off 8 bytes; no centroids");
}

int main(int argc, char** argv) {
  if (argc > 1) test_against_torch(argv[1]);
  test_group_bits();
  test_slot_view();
  test_geometry();
  test_gather();
  test_scoring();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("all codes tests passed%s\n", argc > 1 ? "" : " (no torch reference file given)");
  return 0;
}
