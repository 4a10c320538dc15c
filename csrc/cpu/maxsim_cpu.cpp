// MaxSim driver for the CPU: picks the ISA at call time, packs the queries once, splits the
// (query, doc) work over threads, resolves each doc's valid rows, and hands them to the ISA's
// tile kernel. Baseline x86-64 code (no ISA-specific instructions here).
//
// Extra memory per call: the packed queries (the size of Q) plus, per thread, the running maxima
// of the queries in flight, one converted tile, and (only for d_mask with holes) one compacted doc.
#include "maxsim_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace colbert_fast {
namespace cpu {

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0 && man == 0) {
    bits = sign;
  } else if (exp == 0) {  // subnormal half: normalize into an fp32 exponent
    uint32_t shift = 0;
    while (!(man & 0x400u)) {
      man <<= 1;
      ++shift;
    }
    bits = sign | ((113u - shift) << 23) | ((man & 0x3ffu) << 13);
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

namespace {

// ---- ISA selection ---------------------------------------------------------------------------

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool cpu_has_avx512_bf16() { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
bool cpu_has_avx512_bf16() { return false; }
#endif

struct IsaChoice {
  const char* name;
  const IsaKernels* (*kernels)();
  bool (*supported)();
};

bool always() { return true; }

// Best first: "auto" takes the first one this CPU (and build) supports.
const IsaChoice kChoices[] = {
    {"avx512_bf16", &isa_avx512_bf16, &cpu_has_avx512_bf16},
    {"avx512", &isa_avx512, &cpu_has_avx512},
    {"avx2", &isa_avx2, &cpu_has_avx2},
    {"scalar", &isa_scalar, &always},
};

}  // namespace

const IsaKernels& select_isa() {
  const char* env = std::getenv("COLBERT_FAST_CPU_ISA");
  std::string want = env ? env : "";
  std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
  if (want.empty() || want == "auto") {
    for (const auto& c : kChoices)
      if (c.kernels() != nullptr && c.supported()) return *c.kernels();
  }
  for (const auto& c : kChoices) {
    if (want != c.name) continue;
    if (c.kernels() == nullptr || !c.supported())
      throw std::runtime_error(std::string("COLBERT_FAST_CPU_ISA=") + want +
                               " but this CPU or build does not support it; use auto, or one of the ISAs it has");
    return *c.kernels();
  }
  throw std::runtime_error(
      std::string("COLBERT_FAST_CPU_ISA must be auto, avx512_bf16, avx512, avx2 or scalar; got '") + want + "'");
}

const char* cpu_isa_name() { return select_isa().name; }

namespace {

// ---- scratch ---------------------------------------------------------------------------------

// 64-byte aligned, uninitialized, freed on scope exit (vector loads of packed queries are aligned).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t bytes) : ptr_(bytes ? ::operator new(bytes, std::align_val_t(64)) : nullptr) {}
  ~AlignedBuffer() {
    if (ptr_) ::operator delete(ptr_, std::align_val_t(64));
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_;
};

size_t elem_size(DType dt) { return dt == DType::f32 ? 4 : 2; }

float load_float(const void* base, DType dt, int64_t idx) {
  if (dt == DType::f32) return static_cast<const float*>(base)[idx];
  const uint16_t h = static_cast<const uint16_t*>(base)[idx];
  return dt == DType::f16 ? half_to_float(h) : bf16_to_float(h);
}

// ---- query packing (see TileArgs in maxsim_cpu.h for the layout) -----------------------------

struct QueryLayout {
  bool pair;            // bf16 pairs (uint16 elements) instead of fp32
  int64_t qb, nblk;     // lanes per block, blocks per query
  int64_t kdim;         // dims (fp32) or dim pairs (bf16) per block
  int64_t block_elems;  // elements per block
  int64_t query_elems;  // elements per query
  int64_t elem_bytes;
};

QueryLayout query_layout(const MaxSimArgs& p, const IsaKernels& isa) {
  QueryLayout l{};
  l.pair = isa.pair_bf16 && p.dtype == DType::bf16;
  l.qb = p.Lq <= isa.qb_small ? isa.qb_small : isa.qb_large;
  l.nblk = (p.Lq + l.qb - 1) / l.qb;
  l.kdim = l.pair ? (p.dim + 1) / 2 : p.dim;
  l.block_elems = l.kdim * l.qb * (l.pair ? 2 : 1);
  l.query_elems = l.nblk * l.block_elems;
  l.elem_bytes = l.pair ? 2 : 4;
  return l;
}

void pack_queries(const MaxSimArgs& p, const QueryLayout& l, void* out) {
  at::parallel_for(0, p.B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const char* qb_base = static_cast<const char*>(p.Q) + b * p.q_stride_b * elem_size(p.q_dtype);
      if (l.pair) {
        uint16_t* dst = static_cast<uint16_t*>(out) + b * l.query_elems;
        std::memset(dst, 0, l.query_elems * sizeof(uint16_t));
        for (int64_t i = 0; i < p.Lq; ++i) {
          const int64_t row = i * p.q_stride_l;
          const auto* bits = reinterpret_cast<const uint16_t*>(qb_base) + row;
          uint16_t* blk = dst + (i / l.qb) * l.block_elems + (i % l.qb) * 2;
          for (int64_t k = 0; k < p.dim; ++k)  // fp32 queries of a compressed store: rounded to bf16
            blk[(k / 2) * l.qb * 2 + (k & 1)] =
                p.q_dtype == DType::bf16 ? bits[k] : float_to_bf16(load_float(qb_base, p.q_dtype, row + k));
        }
      } else {
        float* dst = static_cast<float*>(out) + b * l.query_elems;
        std::memset(dst, 0, l.query_elems * sizeof(float));
        for (int64_t i = 0; i < p.Lq; ++i) {
          const int64_t row = i * p.q_stride_l;
          float* blk = dst + (i / l.qb) * l.block_elems + (i % l.qb);
          for (int64_t k = 0; k < p.dim; ++k) blk[k * l.qb] = load_float(qb_base, p.q_dtype, row + k);
        }
      }
    }
  });
}

// ---- one doc's valid rows --------------------------------------------------------------------

// rows of the doc at `base` (n_rows padded rows, or a valid prefix when mask is null) -> DocRows.
// A mask whose valid rows are one contiguous run is read in place; one with holes is compacted
// into `compact` (this thread's buffer) so the tiles always see evenly strided rows.
bool valid_rows(const char* base, int64_t n_rows, const bool* mask, int64_t rs, int64_t dim, size_t esz,
                std::vector<char>& compact, DocRows& out) {
  if (mask == nullptr) {
    out = DocRows{base, rs, n_rows};
    return n_rows > 0;
  }
  int64_t first = -1, last = -1, count = 0;
  for (int64_t j = 0; j < n_rows; ++j) {
    if (!mask[j]) continue;
    if (first < 0) first = j;
    last = j;
    ++count;
  }
  if (count == 0) return false;
  if (count == last - first + 1) {
    out = DocRows{base + first * rs * esz, rs, count};
    return true;
  }
  const size_t row_bytes = dim * esz;
  compact.resize(count * row_bytes);
  char* dst = compact.data();
  for (int64_t j = first; j <= last; ++j) {
    if (!mask[j]) continue;
    std::memcpy(dst, base + j * rs * esz, row_bytes);
    dst += row_bytes;
  }
  out = DocRows{compact.data(), dim, count};
  return true;
}

// One work item: the doc it reads and the queries (b0 .. b0 + nq) and outputs it fills.
struct ItemShape {
  int64_t group, groups;  // all_pairs: queries per item, query groups per doc
};

struct DocRef {
  const char* base;               // the doc's first (padded) row
  int64_t row0;                   // packed: the doc's first row in the store (a compressed store's row index)
  bool empty_slot;                // pid -1: scores -inf
  float floor;                    // where every running max starts (-inf: no floor)
  int64_t n_rows;                 // rows to consider (valid prefix length, or Ld with a mask)
  const bool* mask;               // per-row validity, or null
  int64_t b0, nq;                 // queries
  int64_t out_index, out_stride;  // out[out_index + q * out_stride] for q < nq
};

DocRef resolve(const MaxSimArgs& p, const ItemShape& s, int64_t item) {
  const char* D = static_cast<const char*>(p.D);
  const size_t esz = elem_size(p.dtype);
  DocRef r{};
  r.floor = -std::numeric_limits<float>::infinity();
  if (p.mode == ScoringMode::all_pairs) {
    const int64_t n = item / s.groups;
    if (p.floor) r.floor = p.floor[n];
    r.b0 = (item % s.groups) * s.group;
    r.nq = std::min(s.group, p.B - r.b0);
    r.out_index = r.b0 * p.K + n;
    r.out_stride = p.K;
    r.base = D + n * p.d_stride_k * esz;
    r.n_rows = p.d_lengths ? p.d_lengths[n] : p.Ld;
    if (p.d_mask) r.mask = p.d_mask + n * p.Ld;
    return r;
  }
  r.b0 = item / p.K;
  r.nq = 1;
  r.out_index = item;
  if (p.floor) r.floor = p.floor[item];
  if (p.mode == ScoringMode::packed) {
    const int64_t pid = p.pids[item];
    r.empty_slot = pid < 0;
    if (!r.empty_slot) {
      r.row0 = p.offsets[pid];
      r.base = p.codes ? nullptr : D + r.row0 * p.d_stride_l * esz;
      r.n_rows = p.lengths[pid];
    }
    return r;
  }
  r.base = D + (r.b0 * p.d_stride_b + (item % p.K) * p.d_stride_k) * esz;
  r.n_rows = p.d_lengths ? p.d_lengths[item] : p.Ld;
  if (p.d_mask) r.mask = p.d_mask + item * p.Ld;
  return r;
}

// The first tile's worth of rows (the tile kernels prefetch the rest one tile ahead).
void prefetch_rows(const char* base, int64_t n_rows, int64_t row_stride_bytes, int64_t row_bytes) {
  const int64_t rows = std::min<int64_t>(n_rows, kMaxTileRows);
  for (int64_t j = 0; j < rows; ++j)
    for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(base + j * row_stride_bytes + b, 0, 3);
}

}  // namespace

void maxsim_cpu(const MaxSimArgs& params) {
  const IsaKernels& isa = select_isa();
  MaxSimArgs p = params;
  // A compressed store is decoded into tiles the ISA computes fastest: bf16 pairs (vdpbf16ps)
  // where it has them, else fp32 (no per-tile conversion on top of the decode).
  if (p.codes != nullptr) p.dtype = isa.pair_bf16 ? DType::bf16 : DType::f32;
  if (p.B == 0 || p.K == 0) return;
  const QueryLayout l = query_layout(p, isa);
  AlignedBuffer qbuf(static_cast<size_t>(p.B * l.query_elems * l.elem_bytes));
  pack_queries(p, l, qbuf.as<void>());

  // All pairs: one item = one doc x a group of up to 32 queries, so a tile of doc rows is read
  // (and converted) once for the group; groups shrink only when there are too few docs to keep
  // every thread busy. Other layouts: one item = one (query, doc).
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t group = 1;
  if (p.mode == ScoringMode::all_pairs) {
    group = std::min<int64_t>(p.B, 32);
    while (group > 1 && p.K * ((p.B + group - 1) / group) < 4 * threads) group = (group + 1) / 2;
  }
  const int64_t groups = (p.B + group - 1) / group;
  const int64_t items = p.mode == ScoringMode::all_pairs ? p.K * groups : p.B * p.K;
  const int64_t work_per_item = std::max<int64_t>(1, group * l.nblk * l.qb * std::max<int64_t>(p.Ld, 1) * p.dim);
  // Items are handed out in chunks from a shared counter rather than split statically: docs
  // differ in length and the cores may be shared, so a thread that finishes early takes more.
  // A chunk is ~1/16 of a thread's share, but at least 2^18 multiply-adds.
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{1} << 18) / work_per_item);
  const int64_t chunk = std::max(min_chunk, items / (threads * 16));
  const int64_t workers = std::min(threads, (items + chunk - 1) / chunk);
  std::atomic<int64_t> next{0};
  const size_t esz = elem_size(p.dtype);
  const ItemShape item_shape{group, groups};
  const int64_t m_floats = l.nblk * l.qb;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // A compressed store's docs are decoded this many rows at a time: at dim 128 a tile of 32 rows
  // is 16 KB in fp32, 8 KB in bf16, so it stays in L1 while every query lane reads it.
  constexpr int64_t kDecodeRows = 2 * kMaxTileRows;

  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    AlignedBuffer mbuf(static_cast<size_t>(group * m_floats) * sizeof(float));
    AlignedBuffer scratch(static_cast<size_t>(tile_scratch_floats(p.dim)) * sizeof(float));
    AlignedBuffer decoded(p.codes ? static_cast<size_t>(kDecodeRows * p.dim) * esz : 0);
    std::vector<char> compact;
    std::vector<const void*> qptrs(group);
    std::vector<float*> mptrs(group);
    TileArgs a{p.dtype, p.dim, l.qb, l.nblk, l.block_elems, qptrs.data(), mptrs.data(), 0, scratch.as<float>()};

    // Sum of the counting query tokens' maxima, a max still at -inf (no valid token, no floor)
    // counting 0. Lane i of M is query token i; padding lanes (i >= Lq) are skipped.
    auto write_sum = [&](const DocRef& d, int64_t q, const float* M, int64_t m_step) {
      const bool* qm = p.q_mask ? p.q_mask + (d.b0 + q) * p.Lq : nullptr;
      float s = 0.0f;
      for (int64_t i = 0; i < p.Lq; ++i) {
        const float m = M[i * m_step];
        if ((qm == nullptr || qm[i]) && m != kNegInf) s += m;
      }
      p.out[d.out_index + q * d.out_stride] = s;
    };

    auto score = [&](const DocRef& d) {
      if (d.empty_slot) {
        p.out[d.out_index] = kNegInf;
        return;
      }
      DocRows doc;
      const bool has_rows =
          p.codes ? d.n_rows > 0 : valid_rows(d.base, d.n_rows, d.mask, p.d_stride_l, p.dim, esz, compact, doc);
      if (!has_rows) {
        // No valid token: every query token's max is the floor itself (0 without one).
        for (int64_t q = 0; q < d.nq; ++q) write_sum(d, q, &d.floor, 0);
        return;
      }
      for (int64_t q = 0; q < d.nq; ++q) {
        qptrs[q] = qbuf.as<char>() + (d.b0 + q) * l.query_elems * l.elem_bytes;
        mptrs[q] = mbuf.as<float>() + q * m_floats;
        std::fill(mptrs[q], mptrs[q] + m_floats, d.floor);  // the floor is where every max starts
      }
      a.nq = d.nq;
      if (p.codes) {
        for (int64_t j0 = 0; j0 < d.n_rows; j0 += kDecodeRows) {
          const int64_t nj = std::min(kDecodeRows, d.n_rows - j0);
          isa.decode(*p.codes, d.row0 + j0, nj, p.dtype, decoded.as<void>(), p.dim);
          isa.doc_max(a, DocRows{decoded.as<void>(), p.dim, nj});
        }
      } else {
        isa.doc_max(a, doc);
      }
      for (int64_t q = 0; q < d.nq; ++q) write_sum(d, q, mptrs[q], 1);
    };

    for (int64_t begin; (begin = next.fetch_add(chunk, std::memory_order_relaxed)) < items;) {
      const int64_t end = std::min(items, begin + chunk);
      DocRef cur = resolve(p, item_shape, begin);
      for (int64_t item = begin; item < end; ++item) {
        DocRef following{};
        if (item + 1 < end) {  // start the next doc's first rows on their way from memory
          following = resolve(p, item_shape, item + 1);
          if (!following.empty_slot && following.mask == nullptr && following.base != nullptr)
            prefetch_rows(following.base, following.n_rows, p.d_stride_l * esz, p.dim * esz);
          else if (!following.empty_slot && p.codes != nullptr)
            prefetch_rows(reinterpret_cast<const char*>(p.codes->codes) + following.row0 * p.codes->code_bytes, 1, 0,
                          std::min(following.n_rows, kDecodeRows) * p.codes->code_bytes);
        }
        score(cur);
        cur = following;
      }
    }
  });
}

}  // namespace cpu
}  // namespace colbert_fast
