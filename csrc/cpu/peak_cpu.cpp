// The CPU's arithmetic ceiling, measured: a register-only loop of independent vector FMAs (and of
// bf16 dot products, vdpbf16ps, where the CPU has AVX512_BF16) on every thread at once.
//
// torch.mm is no ceiling for the MaxSim kernels (they have read 120-155% of its rate on the
// 2-core EPYC); this loop is: each instruction's result feeds only its own next iteration, the
// accumulators outnumber latency x pipes (4-5 cycles x 2 FMA pipes on Zen 4 and recent Intel),
// and nothing touches memory. The benchmark reports kernel FLOP/s as a fraction of it
// (colbert_fast/benchmark/peaks.py). Same dispatch as the kernels: the ISA select_isa() picks
// (COLBERT_FAST_CPU_ISA overrides it), compiled with per-function target attributes so the rest
// of the build stays baseline x86-64.
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "maxsim_cpu.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* helpers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define CF_PEAK_X86 1
#define CF_PEAK_AVX2 __attribute__((target("avx2,fma")))
#define CF_PEAK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define CF_PEAK_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))
#endif

#if defined(__GNUC__) && !defined(__clang__)
// The scalar loop must stay scalar: vectorising its accumulators would measure SIMD instead.
#define CF_PEAK_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize", "no-tree-slp-vectorize")))
#else
#define CF_PEAK_NO_VECTORIZE
#endif

namespace colbert_fast {
namespace cpu {

namespace {

// acc = acc * a + b with a just below 1: every value stays near b / (1 - a), so nothing overflows,
// goes subnormal or becomes a constant the compiler could fold.
constexpr float kA = 0.999999f;
constexpr float kB = 1e-6f;

#ifdef CF_PEAK_X86
constexpr int kAcc512 = 16;  // 16 zmm accumulators + 2 constants of 32 registers
constexpr int kAcc256 = 12;  // 12 ymm accumulators + 2 constants of 16 registers

CF_PEAK_AVX512 float fma_avx512(int64_t iters) {
  __m512 acc[kAcc512];
  for (int i = 0; i < kAcc512; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(kA), b = _mm512_set1_ps(kB);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc512; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAcc512; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

CF_PEAK_AVX512BF16 float dot_bf16_avx512(int64_t iters) {
  __m512 acc[kAcc512];
  for (int i = 0; i < kAcc512; ++i) acc[i] = _mm512_setzero_ps();
  // Pairs of small bf16 values: each vdpbf16ps adds 2 products per lane, so the sums grow by
  // ~2e-6 per iteration and stay far from overflow for any run length here.
  const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kAcc512; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], x, x);
  }
  __m512 s = acc[0];
  for (int i = 1; i < kAcc512; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

CF_PEAK_AVX2 float fma_avx2(int64_t iters) {
  __m256 acc[kAcc256];
  for (int i = 0; i < kAcc256; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(kA), b = _mm256_set1_ps(kB);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kAcc256; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  alignas(32) float lanes[8];
  __m256 s = acc[0];
  for (int i = 1; i < kAcc256; ++i) s = _mm256_add_ps(s, acc[i]);
  _mm256_store_ps(lanes, s);
  float total = 0.f;
  for (float v : lanes) total += v;
  return total;
}
#endif

constexpr int kAccScalar = 8;

CF_PEAK_NO_VECTORIZE float fma_scalar(int64_t iters) {
  float acc[kAccScalar];
  for (int i = 0; i < kAccScalar; ++i) acc[i] = static_cast<float>(i);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 8
    for (int i = 0; i < kAccScalar; ++i) acc[i] = acc[i] * kA + kB;
  }
  float total = 0.f;
  for (float v : acc) total += v;
  return total;
}

struct Loop {
  float (*run)(int64_t iters);
  double flops_per_iter;  // per thread
  const char* name;
};

Loop pick(const std::string& kind) {
  const std::string isa = select_isa().name;
#ifdef CF_PEAK_X86
  if (kind == "bf16") {
    if (isa != "avx512_bf16")
      throw std::runtime_error("bf16 dot-product peak: the kernels in use (" + isa +
                               ") have no bf16 dot products (AVX512_BF16); bf16 is converted to fp32 instead");
    return {&dot_bf16_avx512, kAcc512 * 16 * 4.0, "avx512_bf16 vdpbf16ps"};  // 2 products + 2 adds per lane
  }
  if (kind == "fp32") {
    if (isa == "avx512_bf16" || isa == "avx512") return {&fma_avx512, kAcc512 * 16 * 2.0, "avx512 vfmadd"};
    if (isa == "avx2") return {&fma_avx2, kAcc256 * 8 * 2.0, "avx2 vfmadd"};
    return {&fma_scalar, kAccScalar * 2.0, "scalar"};
  }
#else
  if (kind == "bf16") throw std::runtime_error("bf16 dot-product peak: not an x86 build");
  if (kind == "fp32") return {&fma_scalar, kAccScalar * 2.0, "scalar"};
#endif
  throw std::runtime_error("peak kind must be 'fp32' or 'bf16', got '" + kind + "'");
}

// Seconds for every thread to run `iters` iterations at once (one chunk per thread).
double timed(const Loop& loop, int64_t threads, int64_t iters, std::vector<float>& sink) {
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) sink[t] = loop.run(iters);
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

PeakResult peak_flops(const std::string& kind, double seconds) {
  const Loop loop = pick(kind);
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  std::vector<float> sink(threads);
  // Calibrate: grow the run until it is long enough to time (this also wakes every thread and
  // lets the clocks settle), then best of three runs of about `seconds` each. Best, not median:
  // anything that disturbs a register-only loop (another process, an interrupt) only slows it.
  int64_t iters = 1 << 12;
  double t = timed(loop, threads, iters, sink);
  while (t < 0.02 && iters < (int64_t{1} << 40)) {
    iters *= 4;
    t = timed(loop, threads, iters, sink);
  }
  iters = std::max<int64_t>(iters, static_cast<int64_t>(iters * (seconds / 3) / t));
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    const double s = timed(loop, threads, iters, sink);
    best = std::max(best, loop.flops_per_iter * static_cast<double>(iters) * threads / s);
  }
  float keep = 0.f;
  for (float v : sink) keep += v;
  PeakResult r{};
  r.gflops = best / 1e9;
  r.threads = threads;
  r.loop = loop.name;
  r.checksum = keep;  // returned so the loops cannot be optimised away
  return r;
}

}  // namespace cpu
}  // namespace colbert_fast
