// Torch glue for the CPU build: op schemas (TORCH_LIBRARY), CPU implementations, input checks,
// and the Python module's build information. Kernels live in csrc/cpu and csrc/cuda.
#include <torch/extension.h>
#include <torch/library.h>

#include "../cpu/maxsim_cpu.h"
#include "../gather_params.h"
#include "common.h"

#ifdef WITH_CUDA
#include <cuda.h>  // CUDA_VERSION
#endif

namespace colbert_fast {

GatherParams make_gather_params(const at::Tensor& embeddings, const at::Tensor& offsets, const at::Tensor& lengths,
                                const at::Tensor& pids, int64_t max_len, at::Tensor& out, at::Tensor& mask) {
  TORCH_CHECK(embeddings.dim() == 2, "gather: embeddings must be [T, dim], got ", embeddings.sizes());
  TORCH_CHECK(embeddings.is_contiguous(), "gather: embeddings must be contiguous");
  TORCH_CHECK(
      offsets.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong && pids.scalar_type() == at::kLong,
      "gather: offsets, lengths and pids must be int64");
  TORCH_CHECK(offsets.dim() == 1 && lengths.dim() == 1 && offsets.numel() == lengths.numel() + 1,
              "gather: offsets must be [N + 1] and lengths [N], got ", offsets.sizes(), " and ", lengths.sizes());
  TORCH_CHECK(max_len >= 0, "gather: max_len must be >= 0, got ", max_len);
  for (const auto* t : {&offsets, &lengths, &pids}) {
    TORCH_CHECK(t->device() == embeddings.device(), "gather: all tensors must be on ", embeddings.device());
  }
  const int64_t dim = embeddings.size(1);
  auto sizes = pids.sizes().vec();
  auto mask_sizes = sizes;
  sizes.push_back(max_len);
  sizes.push_back(dim);
  mask_sizes.push_back(max_len);
  out = at::empty(sizes, embeddings.options());
  mask = at::empty(mask_sizes, embeddings.options().dtype(at::kBool));
  GatherParams p{};
  p.embeddings = embeddings.data_ptr();
  p.offsets = offsets.data_ptr<int64_t>();
  p.lengths = lengths.data_ptr<int64_t>();
  p.pids = pids.data_ptr<int64_t>();
  p.out = out.data_ptr();
  p.mask = mask.data_ptr<bool>();
  p.num_slots = pids.numel();
  p.max_len = max_len;
  p.dim = dim;
  p.elem_size = embeddings.element_size();
  p.num_docs = lengths.numel();
  p.num_rows = embeddings.size(0);
  return p;
}

namespace {

std::tuple<at::Tensor, at::Tensor> gather_cpu_op(const at::Tensor& embeddings, const at::Tensor& offsets,
                                                 const at::Tensor& lengths, const at::Tensor& pids, int64_t max_len) {
  const auto pids_c = pids.contiguous();
  for (const auto* t : {&embeddings, &offsets, &lengths, &pids})
    TORCH_CHECK(t->device().is_cpu(), "gather: every tensor must be on the CPU, got ", t->device());
  at::Tensor out, mask;
  const GatherParams p = make_gather_params(embeddings, offsets, lengths, pids_c, max_len, out, mask);
  // O(slots): every selected doc's rows lie inside embeddings (the op may be called directly
  // through torch.ops with offsets that do not match the store) and fit max_len.
  for (int64_t i = 0; i < p.num_slots; ++i) {
    const int64_t d = p.pids[i];
    TORCH_CHECK_INDEX(d >= -1 && d < p.num_docs, "gather: pid ", d, " out of range for ", p.num_docs, " docs");
    if (d < 0) continue;
    const int64_t o = p.offsets[d], n = p.lengths[d];
    TORCH_CHECK_INDEX(o >= 0 && n >= 0 && o <= p.num_rows - n, "gather: doc ", d, " (offset ", o, ", length ", n,
                      ") lies outside embeddings ", embeddings.sizes());
    TORCH_CHECK(n <= max_len, "gather: doc ", d, " has ", n, " rows but max_len is ", max_len);
  }
  gather_cpu(p);
  return {out, mask};
}

}  // namespace

TORCH_LIBRARY(colbert_fast, m) {
  m.def("gather(Tensor embeddings, Tensor offsets, Tensor lengths, Tensor pids, int max_len) -> (Tensor, Tensor)");
  // floor: optional fp32, one value per doc (D.shape[:-2]; packed: pids' shape): every query token's
  // max starts there instead of at -inf (colbert_fast/ops.py documents the rule).
  m.def("maxsim(Tensor Q, Tensor D, Tensor? q_mask, Tensor? d_mask, Tensor? d_lengths, Tensor? floor=None) -> Tensor");
  m.def(
      "maxsim_packed(Tensor Q, Tensor embeddings, Tensor offsets, Tensor lengths, Tensor pids, Tensor? q_mask, "
      "int max_len, Tensor? floor=None) -> Tensor");
  // A compressed store (colbert_fast/compressed.py, csrc/codes_params.h): nbits 1/2/4 residual
  // (centroid_ids, centroids, bucket_weights given) or 8 (int8 codes, none given). Q is float32.
  m.def(
      "maxsim_packed_codes(Tensor Q, Tensor codes, Tensor scales, Tensor? centroid_ids, Tensor? centroids, "
      "Tensor? bucket_weights, Tensor offsets, Tensor lengths, Tensor pids, Tensor? q_mask, int max_len, int nbits, "
      "Tensor? floor=None) -> Tensor");
  m.def(
      "gather_codes(Tensor codes, Tensor scales, Tensor? centroid_ids, Tensor? centroids, Tensor? bucket_weights, "
      "Tensor offsets, Tensor lengths, Tensor pids, int max_len, int nbits, ScalarType dtype) -> (Tensor, Tensor)");
  // PLAID's centroid interaction over inverted lists (colbert_fast/ops.py centroid_interaction):
  // (score, positive, hit), each [B, num_docs].
  m.def(
      "centroid_interaction(Tensor probe_ids, Tensor probe_scores, Tensor floor, Tensor q_mask, Tensor list_offsets, "
      "Tensor list_docs, int num_docs) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(colbert_fast, CPU, m) { m.impl("gather", &gather_cpu_op); }

}  // namespace colbert_fast

#ifndef COLBERT_FAST_TORCH_VERSION
#define COLBERT_FAST_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "colbert_fast compiled kernels (ops are registered under torch.ops.colbert_fast)";
  m.def(
      "cpu_isa", [] { return std::string(colbert_fast::cpu::cpu_isa_name()); },
      "SIMD kernels the CPU ops use now: avx512_bf16, avx512, avx2 or scalar (COLBERT_FAST_CPU_ISA overrides)");
  m.def(
      "cpu_peak_gflops",
      [](const std::string& kind, double seconds) {
        colbert_fast::cpu::PeakResult r{};
        try {
          r = colbert_fast::cpu::peak_flops(kind, seconds);
        } catch (const std::runtime_error& e) {
          throw pybind11::value_error(e.what());
        }
        return std::make_tuple(r.gflops, r.threads, std::string(r.loop));
      },
      pybind11::arg("kind"), pybind11::arg("seconds") = 0.3,
      "Measured arithmetic peak of this CPU on torch's threads: (GFLOP/s, threads, loop). kind 'fp32' "
      "(vector FMA) or 'bf16' (bf16 dot products; ValueError where the CPU kernels have none)");
  m.def(
      "torch_version", [] { return std::string(COLBERT_FAST_TORCH_VERSION); }, "torch version this was built against");
#ifdef _OPENMP
  m.def(
      "with_openmp", [] { return true; },
      "whether the CPU kernels were compiled with OpenMP (parallel_for runs threads)");
#else
  m.def(
      "with_openmp", [] { return false; },
      "whether the CPU kernels were compiled with OpenMP (parallel_for runs threads)");
#endif
#ifdef WITH_CUDA
  m.def("with_cuda", [] { return true; }, "whether the CUDA kernels were built");
  m.def("cuda_version", [] { return CUDA_VERSION; }, "CUDA toolkit version used for the build");
#else
  m.def("with_cuda", [] { return false; }, "whether the CUDA kernels were built");
  m.def("cuda_version", [] { return 0; }, "CUDA toolkit version used for the build");
#endif
}
