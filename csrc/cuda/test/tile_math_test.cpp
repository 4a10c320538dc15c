// Host unit test of the CUDA MaxSim index and tile arithmetic (csrc/cuda/maxsim_params.h).
//
// Built with g++ by tests/backends/test_cuda_build.py; no GPU, no CUDA, no torch. Besides direct checks of
// the helpers, it emulates one warp of the tensor-core kernel lane by lane: A fragments gathered
// with a_frag_coord, doc chunks copied into an emulated smem ring the way load_chunk does (rows
// past the doc left as NaN), B fragments read the way ldmatrix.x4 distributes a tile, the mma done
// from the PTX ISA's fragment tables (transcribed here independently of the helpers), and the
// kernel's epilogue. Scores must match a direct evaluation of the MaxSim definition.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "../maxsim_params.h"

using namespace colbert_fast::maxsim;

static int failures = 0;
#define CHECK(cond, ...)                                            \
  do {                                                              \
    if (!(cond)) {                                                  \
      ++failures;                                                   \
      if (failures < 20) {                                          \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                   \
        std::printf("\n");                                          \
      }                                                             \
    }                                                               \
  } while (0)

static const float kNaN = std::numeric_limits<float>::quiet_NaN();
static const float kInf = std::numeric_limits<float>::infinity();

// ---- PTX ISA fragment tables for mma.m16n8k16 with .f16/.bf16 inputs and .f32 accumulators ----
// A: element a_i (i = 0..7; register i / 2, half i % 2), B: b_i (i = 0..3), C: c_i (i = 0..3).
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

static void test_fragment_helpers() {
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      int r1, c1, r2, c2;
      ptx_a(lane, i, &r1, &c1);
      a_frag_coord(lane, i / 2, i % 2, &r2, &c2);
      CHECK(r1 == r2 && c1 == c2, "A lane %d elem %d: ptx (%d,%d) helper (%d,%d)", lane, i, r1, c1, r2, c2);
    }
    for (int i = 0; i < 4; ++i) {
      int r1, c1, r2, c2;
      ptx_c(lane, i, &r1, &c1);
      c_frag_coord(lane, i, &r2, &c2);
      CHECK(r1 == r2 && c1 == c2, "C lane %d elem %d", lane, i);
    }
  }
  // load_a reads a register's two halves as one pair: half 1 sits one column right of half 0,
  // and half 0's column is even (4-byte aligned when Q's pairs are).
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r) {
      int r0, c0, r1, c1;
      a_frag_coord(lane, r, 0, &r0, &c0);
      a_frag_coord(lane, r, 1, &r1, &c1);
      CHECK(r0 == r1 && c1 == c0 + 1 && c0 % 2 == 0, "A register %d of lane %d is not a column pair", r, lane);
    }
  // Each A/C fragment covers its tile exactly once.
  std::set<int> a_cells, c_cells;
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) {
        int row, col;
        a_frag_coord(lane, r, h, &row, &col);
        a_cells.insert(row * 16 + col);
      }
    for (int r = 0; r < 4; ++r) {
      int row, col;
      c_frag_coord(lane, r, &row, &col);
      c_cells.insert(row * 8 + col);
    }
  }
  CHECK(a_cells.size() == 256 && c_cells.size() == 128, "fragments do not tile: %zu %zu", a_cells.size(),
        c_cells.size());
}

// ldmatrix.x4 (non-transposed, b16): lane l supplies the row address of row l % 8 of matrix l / 8;
// result register m of lane t holds matrix m's row t / 4, elements 2 (t % 4) and 2 (t % 4) + 1.
// Emulated over smem given as floats with row_elems per row; `base` is the warp's chunk offset + ks*16.
static void emulate_ldsm_x4(const std::vector<float>& smem, int stage_off, int row_elems, int ks, int lane,
                            float out[4][2]) {
  for (int m = 0; m < 4; ++m) {
    const int src_lane = m * 8 + lane / 4;
    int lrow, lcol;
    ldsm_b_coord(src_lane, &lrow, &lcol);
    const int addr = stage_off + lrow * row_elems + lcol + ks * 16;
    out[m][0] = smem[addr + 2 * (lane % 4)];
    out[m][1] = smem[addr + 2 * (lane % 4) + 1];
  }
}

// ---- a tiny tensor world ----

struct World {
  Params p{};
  std::vector<float> q, d, emb;
  std::vector<char> q_mask_store, d_mask_store;  // char so .data() is addressable as bool
  std::vector<int64_t> d_lengths, offsets, lengths, pids;
  std::vector<float> floors;
};

static float qval(const World& w, int64_t b, int64_t i, int64_t k) { return w.q[b * w.p.q_sb + i * w.p.q_sl + k]; }
static float dval(const World& w, const DocView& v, int64_t j, int64_t k) {
  const std::vector<float>& src = w.p.mode == ScoringMode::packed ? w.emb : w.d;
  return src[v.row0 + j * v.row_stride + k];
}

// Direct evaluation of the scoring contract (SPEC.md), independent of the kernel structure except
// for the doc addressing (doc_view, checked separately).
static float direct_score(const World& w, int64_t b, int64_t col) {
  const Params& p = w.p;
  Item it{b, col, 0};
  const DocView v = doc_view(p, it);
  if (v.empty_slot) return -kInf;
  double total = 0;
  for (int64_t i = 0; i < p.Lq; ++i) {
    if (p.q_mask && !p.q_mask[b * p.Lq + i]) continue;
    double best = -kInf;
    for (int64_t j = 0; j < v.nrows; ++j) {
      if (v.mask0 >= 0 && !p.d_mask[v.mask0 + j]) continue;
      double s = 0;
      for (int64_t k = 0; k < p.dim; ++k) s += double(qval(w, b, i, k)) * dval(w, v, j, k);
      best = std::max(best, s);
    }
    if (!w.floors.empty())
      best = std::max(best, double(w.floors[p.mode == ScoringMode::all_pairs ? col : b * p.ncols + col]));
    if (best != -kInf) total += best;
  }
  return float(total);
}

// One warp of maxsim_tc_kernel<_, KS, MT> (chunk_rows 16, 32 loading threads) or of
// maxsim_tc_shared_kernel (chunk_rows 32, 128 loading threads, 16-row sub-blocks) on item `it`,
// emulated lane by lane. Returns what lane 0 writes.
static float emulate_tc_item(const World& w, const Item& it, int MT, int chunk_rows) {
  const Params& p = w.p;
  const int nthreads = chunk_rows == kChunkRows ? 32 : kWarps * 32;
  const DocView dv = doc_view(p, it);
  if (dv.empty_slot) return -kInf;
  const int dim = int(p.dim), ksteps = int(tc_ksteps(p.dim)), row_elems = int(tc_smem_row_elems(p.dim));
  const int qrows = int(pass_nrows(p, it));
  // smem ring: NaN everywhere (uninitialised), then the zero k-padding the kernel writes once.
  std::vector<float> smem(kStages * chunk_rows * row_elems, kNaN);
  for (int r = 0; r < kStages * chunk_rows; ++r)
    for (int c = dim; c < ksteps * 16; ++c) smem[r * row_elems + c] = 0.f;
  // A fragments per lane.
  std::vector<float> a(32 * MT * 16 * 8);
  auto A = [&](int lane, int mt, int ks, int i) -> float& { return a[((lane * MT + mt) * 16 + ks) * 8 + i]; };
  for (int lane = 0; lane < 32; ++lane)
    for (int mt = 0; mt < MT; ++mt)
      for (int ks = 0; ks < ksteps; ++ks)
        for (int r = 0; r < 4; ++r)
          for (int h = 0; h < 2; ++h) {
            int row, col;
            a_frag_coord(lane, r, h, &row, &col);
            row += mt * 16;
            col += ks * 16;
            A(lane, mt, ks, 2 * r + h) = (row < qrows && col < dim) ? qval(w, it.b, pass_row0(p, it) + row, col) : 0.f;
          }
  std::vector<float> best(32 * MT * 2, -kInf);
  const int64_t nch = ceil_div(dv.nrows, chunk_rows);
  CHECK(chunk_rows != kChunkRows || nch == num_chunks(dv.nrows), "num_chunks");
  const int pieces = dim / 8;
  for (int64_t c = 0; c < nch; ++c) {
    // load_rows (the ring order is the kernel's: chunk c lives in stage c % kStages)
    const int chunk_off = int(c % kStages) * chunk_rows * row_elems;
    const int64_t c0 = c * chunk_rows;
    const int rows = int(std::min<int64_t>(chunk_rows, dv.nrows - c0));
    for (int tid = 0; tid < nthreads; ++tid)
      for (int e = tid; e < rows * pieces; e += nthreads) {
        const int r = e / pieces, piece = e - r * pieces;
        for (int x = 0; x < 8; ++x)
          smem[chunk_off + r * row_elems + piece * 8 + x] = dval(w, dv, c0 + r, piece * 8 + x);
      }
    for (int sub = 0; sub < chunk_rows / 16; ++sub) {
      const int64_t r0 = c0 + sub * 16;
      if (r0 >= dv.nrows) continue;  // the shared kernel skips an all-padding sub-block
      const int stage_off = chunk_off + sub * 16 * row_elems;
      // mma over k-steps: rebuild each lane's B fragment from the ldmatrix emulation, then the
      // product from the PTX tables.
      std::vector<float> acc(32 * MT * 2 * 4, 0.f);
      for (int ks = 0; ks < ksteps; ++ks) {
        float bfrag[32][4][2];
        for (int lane = 0; lane < 32; ++lane) emulate_ldsm_x4(smem, stage_off, row_elems, ks, lane, bfrag[lane]);
        for (int mt = 0; mt < MT; ++mt)
          for (int nt = 0; nt < 2; ++nt) {
            float At[16][16], Bt[16][8];
            for (int lane = 0; lane < 32; ++lane) {
              for (int i = 0; i < 8; ++i) {
                int row, col;
                ptx_a(lane, i, &row, &col);
                At[row][col] = A(lane, mt, ks, i);
              }
              for (int i = 0; i < 4; ++i) {  // b0 = reg 2nt (halves b_0, b_1), b1 = reg 2nt + 1 (b_2, b_3)
                int k, n;
                ptx_b(lane, i, &k, &n);
                Bt[k][n] = bfrag[lane][2 * nt + i / 2][i % 2];
              }
            }
            for (int lane = 0; lane < 32; ++lane)
              for (int i = 0; i < 4; ++i) {
                int row, col;
                ptx_c(lane, i, &row, &col);
                float s = 0;
                for (int k = 0; k < 16; ++k) s += At[row][k] * Bt[k][col];
                acc[((lane * MT + mt) * 2 + nt) * 4 + i] += s;
              }
          }
      }
      // fold into the running max (kernel's epilogue of a chunk)
      for (int lane = 0; lane < 32; ++lane)
        for (int nt = 0; nt < 2; ++nt)
          for (int j = 0; j < 2; ++j) {
            int qrow, dcol;
            c_frag_coord(lane, j, &qrow, &dcol);
            const int64_t drow = r0 + nt * 8 + dcol;
            const bool valid = drow < dv.nrows && (dv.mask0 < 0 || p.d_mask[dv.mask0 + drow]);
            if (!valid) continue;
            for (int mt = 0; mt < MT; ++mt) {
              float& b0 = best[(lane * MT + mt) * 2 + 0];
              float& b1 = best[(lane * MT + mt) * 2 + 1];
              b0 = std::fmax(b0, acc[((lane * MT + mt) * 2 + nt) * 4 + j]);
              b1 = std::fmax(b1, acc[((lane * MT + mt) * 2 + nt) * 4 + 2 + j]);
            }
          }
    }
  }
  // quad max, then the sum over rows by lanes with tig == 0 (butterfly sum order is irrelevant here)
  double sum = 0;
  for (int lane = 0; lane < 32; lane += 4) {
    const int g = lane / 4;
    for (int mt = 0; mt < MT; ++mt)
      for (int h = 0; h < 2; ++h) {
        float v = -kInf;
        for (int t = 0; t < 4; ++t) v = std::fmax(v, best[((lane + t) * MT + mt) * 2 + h]);
        sum += row_value(p, it, mt * 16 + g + 8 * h, qrows, v);
      }
  }
  return float(sum);
}

// maxsim_fma_kernel on item `idx`: lane l takes doc rows l, l + 32, ...
static float emulate_fma_item(const World& w, int64_t idx) {
  const Params& p = w.p;
  const Item it = decode_item(p, idx);
  const DocView dv = doc_view(p, it);
  if (dv.empty_slot) return -kInf;
  const int qrows = int(pass_nrows(p, it));
  std::vector<float> best(32 * kFmaPassRows, -kInf);
  for (int lane = 0; lane < 32; ++lane)
    for (int64_t j = lane; j < dv.nrows; j += 32) {
      if (!(dv.mask0 < 0 || p.d_mask[dv.mask0 + j])) continue;
      for (int i = 0; i < kFmaPassRows; ++i) {
        const int iq = i < qrows ? i : qrows - 1;
        float acc = 0;
        for (int64_t k = 0; k < p.dim; ++k) acc += qval(w, it.b, pass_row0(p, it) + iq, k) * dval(w, dv, j, k);
        best[lane * kFmaPassRows + i] = std::fmax(best[lane * kFmaPassRows + i], acc);
      }
    }
  double sum = 0;
  for (int i = 0; i < qrows; ++i) {
    float v = -kInf;
    for (int lane = 0; lane < 32; ++lane) v = std::fmax(v, best[lane * kFmaPassRows + i]);
    sum += row_value(p, it, i, qrows, v);
  }
  return float(sum);
}

// Builds a world: Q with a padded row stride, docs per mode (padded with padded strides, or packed
// with random lengths and pids including -1), optional masks/lengths and per-doc floors. Padding
// slots hold NaN so any read of padding shows up in the scores.
static World make_world(std::mt19937& rng, ScoringMode mode, int64_t B, int64_t Lq, int64_t dim, int64_t ncols,
                        int64_t Ld, int masking, bool use_q_mask, bool use_floor) {
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> coin(0, 9);
  World w;
  Params& p = w.p;
  p.mode = mode;
  p.dtype = kFloat16;
  p.B = B;
  p.Lq = Lq;
  p.dim = dim;
  p.ncols = ncols;
  p.q_sl = dim + 8;
  p.q_sb = Lq * p.q_sl + 8;
  w.q.assign(B * p.q_sb, kNaN);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Lq; ++i)
      for (int64_t k = 0; k < dim; ++k) w.q[b * p.q_sb + i * p.q_sl + k] = normal(rng) - 0.3f;
  if (use_q_mask) {
    w.q_mask_store.resize(B * Lq);
    for (auto& m : w.q_mask_store) m = coin(rng) < 7;
    p.q_mask = reinterpret_cast<const bool*>(w.q_mask_store.data());
  }
  if (mode == ScoringMode::packed) {
    const int64_t ndocs = 7;
    w.lengths.resize(ndocs);
    w.offsets.assign(ndocs + 1, 0);
    for (int64_t n = 0; n < ndocs; ++n) {
      w.lengths[n] = n == 0 ? 0 : std::uniform_int_distribution<int64_t>(0, Ld)(rng);
      w.offsets[n + 1] = w.offsets[n] + w.lengths[n];
    }
    w.emb.resize(w.offsets[ndocs] * dim + 1);
    for (auto& x : w.emb) x = normal(rng) + 0.3f;
    w.pids.resize(B * ncols);
    for (auto& pid : w.pids) pid = std::uniform_int_distribution<int64_t>(-1, ndocs - 1)(rng);
    p.embeddings = w.emb.data();
    p.offsets = w.offsets.data();
    p.lengths = w.lengths.data();
    p.pids = w.pids.data();
    p.num_docs = ndocs;
    p.num_rows = w.offsets[ndocs];
    p.max_len = Ld > 3 ? Ld - 3 : Ld;  // clips some docs, like the gather does
    p.Ld = 0;
  } else {
    p.Ld = Ld;
    p.d_sl = dim + 8;
    p.d_sk = Ld * p.d_sl + 16;
    p.d_sb = ncols * p.d_sk + 24;
    const int64_t ndocs = mode == ScoringMode::all_pairs ? ncols : B * ncols;
    w.d.assign((mode == ScoringMode::all_pairs ? ncols * p.d_sk : B * p.d_sb) + 1, kNaN);
    for (int64_t doc = 0; doc < ndocs; ++doc) {
      const int64_t b = mode == ScoringMode::all_pairs ? 0 : doc / ncols,
                    k = mode == ScoringMode::all_pairs ? doc : doc % ncols;
      for (int64_t j = 0; j < Ld; ++j)
        for (int64_t x = 0; x < dim; ++x) w.d[b * p.d_sb + k * p.d_sk + j * p.d_sl + x] = normal(rng) + 0.3f;
    }
    if (masking == 1) {
      w.d_lengths.resize(ndocs);
      for (auto& l : w.d_lengths) l = std::uniform_int_distribution<int64_t>(0, Ld)(rng);
      if (ndocs > 1) w.d_lengths[ndocs - 1] = Ld, w.d_lengths[0] = 0;
      p.d_lengths = w.d_lengths.data();
    } else if (masking == 2) {
      w.d_mask_store.resize(ndocs * Ld);
      for (auto& m : w.d_mask_store) m = coin(rng) < 6;
      if (ndocs > 1)
        for (int64_t j = 0; j < Ld; ++j) w.d_mask_store[j] = 0;  // doc 0 has no valid token
      p.d_mask = reinterpret_cast<const bool*>(w.d_mask_store.data());
    }
  }
  if (use_floor) {  // one per doc: none, 0 (wins for many rows: similarities are ~N(0, dim)), -5, -9999
    const float choices[] = {-kInf, 0.f, -5.f, -9999.f};
    w.floors.resize(mode == ScoringMode::all_pairs ? ncols : B * ncols);
    for (auto& f : w.floors) f = choices[coin(rng) % 4];
    p.floor = w.floors.data();
  }
  return w;
}

static void check_world(World& w, bool tc, const char* what) {
  Params& p = w.p;
  p.pass_rows = tc ? tc_pass_rows(p.dim) : kFmaPassRows;
  p.npass = num_passes(p.Lq, p.pass_rows);
  const int MT = int(p.pass_rows / 16);
  std::vector<float> out(std::max<int64_t>(1, p.npass) * p.B * p.ncols, kNaN);
  std::vector<int> hits(out.size(), 0);
  for (int64_t idx = 0; idx < num_items(p); ++idx) {
    const Item it = decode_item(p, idx);
    CHECK(it.b >= 0 && it.b < p.B && it.col >= 0 && it.col < p.ncols && it.pass >= 0 && it.pass < p.npass,
          "%s: item %lld decodes out of range", what, (long long)idx);
    const int64_t o = out_index(p, it);
    CHECK(o >= 0 && o < int64_t(out.size()), "%s: out index %lld", what, (long long)o);
    hits[o]++;
    out[o] = tc ? emulate_tc_item(w, it, MT, kChunkRows) : emulate_fma_item(w, idx);
  }
  if (tc) {
    // The shared-doc kernel: every slot exactly once, every warp of a block on the block's doc, and
    // the same scores through 32-row chunks.
    std::vector<int> shared_hits(hits.size(), 0);
    std::vector<float> shared_out(out.size(), kNaN);
    for (int64_t blk = 0; blk < shared_blocks(p); ++blk) {
      const DocView bv = doc_view(p, shared_doc_item(p, blk));
      for (int warp = 0; warp < kWarps; ++warp) {
        Item it;
        if (!decode_shared(p, blk, warp, &it)) continue;
        const DocView v = doc_view(p, it);
        CHECK(v.row0 == bv.row0 && v.nrows == bv.nrows && v.mask0 == bv.mask0 && v.empty_slot == bv.empty_slot,
              "%s: warp %d of block %lld reads another doc", what, warp, (long long)blk);
        const int64_t o = out_index(p, it);
        shared_hits[o]++;
        shared_out[o] = emulate_tc_item(w, it, MT, kSharedChunkRows);
      }
    }
    for (size_t i = 0; i < size_t(p.npass * p.B * p.ncols); ++i) {
      CHECK(shared_hits[i] == 1, "%s shared: slot %zu hit %d times", what, i, shared_hits[i]);
      const bool same = (std::isinf(out[i]) && out[i] == shared_out[i]) || std::fabs(out[i] - shared_out[i]) <= 1e-3f;
      CHECK(same, "%s shared: slot %zu = %g, independent warps %g", what, i, shared_out[i], out[i]);
    }
  }
  for (size_t i = 0; i < size_t(p.npass * p.B * p.ncols); ++i)
    CHECK(hits[i] == 1, "%s: slot %zu hit %d times", what, i, hits[i]);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t col = 0; col < p.ncols; ++col) {
      float got = 0;  // reduce_partials: sum in pass order
      for (int64_t pass = 0; pass < p.npass; ++pass)
        got += p.npass == 1 ? out[b * p.ncols + col] : out[pass * p.B * p.ncols + b * p.ncols + col];
      const float want = direct_score(w, b, col);
      const bool ok = (std::isinf(want) && got == want) ||
                      (std::isfinite(got) && std::fabs(got - want) <= 1e-3f * (1.f + std::fabs(want)) * p.Lq);
      CHECK(ok, "%s mode %d B %lld Lq %lld dim %lld: score (%lld, %lld) = %g, want %g", what, static_cast<int>(p.mode),
            (long long)p.B, (long long)p.Lq, (long long)p.dim, (long long)b, (long long)col, got, want);
    }
}

static void test_emulated_kernels() {
  std::mt19937 rng(1234);
  const int64_t lqs[] = {1, 7, 32, 33, 70};
  const int64_t dims_tc[] = {8, 24, 64, 96, 128, 136, 256};
  const int64_t dims_fma[] = {1, 5, 64, 130};
  const int64_t lds[] = {0, 1, 17, 40};
  int n = 0;
  for (ScoringMode mode : {ScoringMode::all_pairs, ScoringMode::per_query, ScoringMode::packed})
    for (int64_t lq : lqs)
      for (int64_t ld : lds)
        for (int masking = 0; masking < 3; ++masking) {
          if (mode == ScoringMode::packed && masking) continue;
          const bool qm = (n % 2) == 1, floor = (n % 3) != 0;
          const int64_t dim_tc = dims_tc[n % 7], dim_fma = dims_fma[n % 4];
          ++n;
          World w = make_world(rng, mode, 2, lq, dim_tc, 3, ld, masking, qm, floor);
          check_world(w, true, "tc");
          World w2 = make_world(rng, mode, 2, lq, dim_fma, 3, ld, masking, qm, floor);
          check_world(w2, false, "fma");
        }
  std::printf("emulated %d worlds x 2 kernels\n", n);
}

static void test_doc_view() {
  Params p{};
  p.mode = ScoringMode::packed;
  p.dim = 128;
  int64_t offsets[] = {0, 5, 5, 3000000000LL};
  int64_t lengths[] = {5, 0, 2999999995LL};
  int64_t pids[] = {2, -1, 0, 1};
  p.offsets = offsets;
  p.lengths = lengths;
  p.pids = pids;
  p.num_docs = 3;
  p.num_rows = 6000000000LL;
  p.B = 2;
  p.ncols = 2;
  p.max_len = 300;
  DocView v = doc_view(p, Item{0, 0, 0});
  CHECK(v.row0 == 5LL * 128 && v.nrows == 300 && v.row_stride == 128 && !v.empty_slot, "packed clip, int64");
  CHECK(doc_view(p, Item{0, 1, 0}).empty_slot, "pid -1");
  CHECK(doc_view(p, Item{1, 0, 0}).nrows == 5, "packed short doc");
  CHECK(doc_view(p, Item{1, 1, 0}).nrows == 0, "packed empty doc");
  // offsets past 2^31 rows * dim stay exact
  offsets[2] = 3000000000LL;
  CHECK(doc_view(p, Item{0, 0, 0}).row0 == 3000000000LL * 128, "int64 row offset");
  // rows outside the store (a direct torch.ops call with inconsistent offsets): NaN, nothing read
  p.num_rows = 5000000000LL;
  CHECK(doc_view(p, Item{0, 0, 0}).invalid && doc_view(p, Item{0, 0, 0}).empty_slot, "rows past the store");
  p.num_rows = 6000000000LL;
  lengths[0] = -1;
  CHECK(doc_view(p, Item{1, 0, 0}).invalid, "negative length");
  lengths[0] = 5;
  pids[0] = 3;
  CHECK(doc_view(p, Item{0, 0, 0}).invalid, "pid past num_docs");
  CHECK(!doc_view(p, Item{0, 1, 0}).invalid && doc_view(p, Item{0, 1, 0}).empty_slot, "pid -1 is empty, not invalid");
  pids[0] = 2;

  // docs/spec.md section 10: a NaN or infinite similarity makes the row NaN for good; -inf from no
  // valid row (the start value) is not one.
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(row_max(-inf, 1.f) == 1.f && row_max(2.f, 1.f) == 2.f, "row_max of finite values");
  CHECK(is_nan(row_max(1.f, nan)) && is_nan(row_max(1.f, inf)) && is_nan(row_max(1.f, -inf)), "row_max of NaN/inf");
  CHECK(is_nan(row_max(nan, 5.f)), "row_max keeps a NaN");
  CHECK(merge_max(-inf, 3.f) == 3.f && is_nan(merge_max(nan, 3.f)) && is_nan(merge_max(3.f, nan)), "merge_max");

  Params q{};
  q.mode = ScoringMode::per_query;
  q.B = 3;
  q.ncols = 4;
  q.Ld = 9;
  q.d_sb = 1000000;
  q.d_sk = 5000;
  q.d_sl = 136;
  bool mask[3 * 4 * 9] = {};
  q.d_mask = mask;
  v = doc_view(q, Item{2, 3, 0});
  CHECK(v.row0 == 2 * 1000000 + 3 * 5000 && v.row_stride == 136 && v.nrows == 9 && v.mask0 == (2 * 4 + 3) * 9,
        "per-query view");
  q.mode = ScoringMode::all_pairs;
  v = doc_view(q, Item{2, 3, 0});
  CHECK(v.row0 == 3 * 5000 && v.mask0 == 3 * 9, "all-pairs view ignores b");
  int64_t dl[4] = {1, 2, 3, 4};
  q.d_mask = nullptr;
  q.d_lengths = dl;
  v = doc_view(q, Item{1, 2, 0});
  CHECK(v.nrows == 3 && v.mask0 == -1, "all-pairs lengths");
  dl[1] = 12;  // longer than Ld: clamped (Python rejects it; a direct op call must not read past Ld)
  CHECK(doc_view(q, Item{0, 1, 0}).nrows == 9, "lengths clamped to Ld");
  dl[1] = -4;
  CHECK(doc_view(q, Item{0, 1, 0}).nrows == 0, "negative lengths clamped to 0");
}

static void test_geometry() {
  // ldmatrix: each 8-lane phase reads 8 rows of 16 bytes; conflict-free iff the 8 segments fall in
  // distinct 16-byte bank groups (128-byte lines), for every dim the kernel takes.
  for (int64_t dim = 8; dim <= kTcMaxDim; dim += 8) {
    const int64_t row_bytes = tc_smem_row_elems(dim) * 2;
    CHECK(row_bytes % 16 == 0, "row %lld bytes not 16-aligned", (long long)row_bytes);
    for (int ks = 0; ks < tc_ksteps(dim); ++ks)
      for (int phase = 0; phase < 4; ++phase) {
        std::set<int64_t> groups;
        for (int l = phase * 8; l < phase * 8 + 8; ++l) {
          int row, col;
          ldsm_b_coord(l, &row, &col);
          const int64_t byte = row * row_bytes + (col + ks * 16) * 2;
          CHECK(byte % 16 == 0, "ldmatrix address not 16-byte aligned");
          groups.insert((byte / 16) % 8);
          CHECK(col + ks * 16 + 8 <= round_up(dim, 16), "ldmatrix reads past the k-padding");
        }
        CHECK(groups.size() == 8, "dim %lld ks %d phase %d: bank conflict", (long long)dim, ks, phase);
      }
    CHECK(tc_pass_rows(dim) == (tc_ks_bucket(dim) > 8 ? 16 : 32), "pass rows");
    CHECK(tc_ks_bucket(dim) >= tc_ksteps(dim), "bucket too small for dim %lld", (long long)dim);
  }
  CHECK(tc_block_smem_bytes(128) == 4 * 4 * 16 * 136 * 2, "smem dim 128");
  CHECK(tc_block_smem_bytes(128) <= 99 * 1024, "dim 128 must fit sm_86/89's 99 KB");
  CHECK(tc_block_smem_bytes(kTcMaxDim) <= 163 * 1024, "dim 256 must fit sm_80's 163 KB");
  CHECK(num_chunks(0) == 0 && num_chunks(1) == 1 && num_chunks(16) == 1 && num_chunks(17) == 2, "chunks");
  CHECK(num_passes(1, 32) == 1 && num_passes(32, 32) == 1 && num_passes(33, 32) == 2 && num_passes(1024, 32) == 32,
        "passes");

  // tensor-core eligibility
  CHECK(tc_aligned(256, 128, 2, 136, 5000 * 8, 0), "aligned");
  CHECK(!tc_aligned(258, 128, 2, 128, 0, 0), "misaligned base");
  CHECK(!tc_aligned(256, 128, 2, 129, 0, 0), "odd row stride");
  CHECK(!tc_aligned(256, 100, 2, 100, 0, 0), "dim not a multiple of 8");
  CHECK(!tc_aligned(256, 264, 2, 264, 0, 0), "dim above the register budget");
  CHECK(!tc_aligned(256, 0, 2, 0, 0, 0), "dim 0");
  Params p{};
  p.mode = ScoringMode::packed;
  p.dtype = kBFloat16;
  p.dim = 128;
  p.embeddings = reinterpret_cast<const void*>(uintptr_t(4096));
  p.smem_limit = 227 * 1024;
  p.Lq = 1024;
  p.B = 3;
  p.ncols = 5;
  CHECK(use_tensor_cores(p), "bf16 packed aligned");
  plan(p);
  CHECK(p.pass_rows == 32 && p.npass == 32 && workspace_bytes(p) == 32 * 3 * 5 * 4, "plan ColPali");
  p.smem_limit = 48 * 1024;
  CHECK(!use_tensor_cores(p), "smem limit respected");
  p.smem_limit = 227 * 1024;
  p.dtype = kFloat32;
  CHECK(!use_tensor_cores(p), "fp32 takes the FMA kernel");
  plan(p);
  CHECK(p.pass_rows == kFmaPassRows && p.npass == 64, "plan fp32");
  p.Lq = 7;
  plan(p);
  CHECK(p.npass == 1 && workspace_bytes(p) == 0, "one pass, no workspace");
  p.dtype = kFloat16;
  p.mode = ScoringMode::packed;
  p.Lq = 32;
  plan(p);
  CHECK(!p.shared_doc && launch_blocks(p) == ceil_div(3 * 5, kWarps), "one slot per doc: independent warps");
  p.Lq = 200;  // 7 passes share each doc: 2 groups per doc
  plan(p);
  CHECK(p.shared_doc && shared_groups(p) == 2 && launch_blocks(p) == 3 * 5 * 2, "long queries share the doc");
  p.mode = ScoringMode::all_pairs;
  p.d = reinterpret_cast<const void*>(uintptr_t(4096));
  p.d_sk = 300 * 128;
  p.d_sl = 128;
  p.Lq = 32;
  plan(p);
  CHECK(p.shared_doc && shared_slots(p) == 3 && launch_blocks(p) == 5, "all-pairs: queries share the doc");
  p.q = reinterpret_cast<const void*>(uintptr_t(8192));
  p.q_sb = 32 * 128;
  p.q_sl = 128;
  plan(p);
  CHECK(p.q_pairs, "contiguous Q loads pairs");
  p.q_sl = 129;
  plan(p);
  CHECK(!p.q_pairs, "odd Q row stride loads halves");
  p.q_sl = 128;
  p.q = reinterpret_cast<const void*>(uintptr_t(8194));
  plan(p);
  CHECK(!p.q_pairs, "Q base off by one element loads halves");
  p.dtype = kFloat32;
  plan(p);
  CHECK(!p.shared_doc, "fp32 never takes a tensor-core kernel");
}

int main() {
  test_fragment_helpers();
  test_geometry();
  test_doc_view();
  test_emulated_kernels();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("all tile math tests passed\n");
  return 0;
}
