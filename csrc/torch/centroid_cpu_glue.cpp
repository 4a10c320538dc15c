// Torch glue of the CPU centroid-interaction op (schema in ops.cpp; kernel in csrc/cpu/centroid_cpu.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "../centroid_params.h"

namespace colbert_fast {

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> centroid_interaction_cpu_op(
    const at::Tensor& probe_ids, const at::Tensor& probe_scores, const at::Tensor& floor, const at::Tensor& q_mask,
    const at::Tensor& list_offsets, const at::Tensor& list_docs, int64_t num_docs) {
  for (const auto* t : {&probe_ids, &probe_scores, &floor, &q_mask, &list_offsets, &list_docs})
    TORCH_CHECK(t->device().is_cpu(), "centroid_interaction: every tensor must be on the CPU, got ", t->device());
  TORCH_CHECK(probe_ids.dim() == 3 && probe_ids.scalar_type() == at::kLong,
              "centroid_interaction: probe_ids must be int64 [B, Lq, P], got ", probe_ids.scalar_type(), " ",
              probe_ids.sizes());
  TORCH_CHECK(probe_scores.scalar_type() == at::kFloat && probe_scores.sizes() == probe_ids.sizes(),
              "centroid_interaction: probe_scores must be float32 ", probe_ids.sizes(), ", got ",
              probe_scores.scalar_type(), " ", probe_scores.sizes());
  const int64_t B = probe_ids.size(0), Lq = probe_ids.size(1), P = probe_ids.size(2);
  TORCH_CHECK(floor.scalar_type() == at::kFloat && floor.dim() == 2 && floor.size(0) == B && floor.size(1) == Lq,
              "centroid_interaction: floor must be float32 [", B, ", ", Lq, "], got ", floor.scalar_type(), " ",
              floor.sizes());
  TORCH_CHECK(q_mask.scalar_type() == at::kBool && q_mask.sizes() == floor.sizes(),
              "centroid_interaction: q_mask must be bool [", B, ", ", Lq, "]");
  TORCH_CHECK(list_offsets.scalar_type() == at::kLong && list_offsets.dim() == 1 && list_offsets.numel() >= 1,
              "centroid_interaction: list_offsets must be int64 [C + 1]");
  TORCH_CHECK(list_docs.scalar_type() == at::kLong && list_docs.dim() == 1,
              "centroid_interaction: list_docs must be int64 [nnz]");
  TORCH_CHECK(num_docs >= 0, "centroid_interaction: num_docs must be >= 0, got ", num_docs);
  const auto ids = probe_ids.contiguous(), scores = probe_scores.contiguous(), fl = floor.contiguous(),
             mask = q_mask.contiguous(), offsets = list_offsets.contiguous(), docs = list_docs.contiguous();
  // O(C + B Lq P): the lists tile list_docs in order, and every probe names a list.
  const int64_t C = offsets.numel() - 1, nnz = docs.numel();
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[C] == nnz, "centroid_interaction: list_offsets must run from 0 to ", nnz,
              " (list_docs' length), got ", off[0], " .. ", off[C]);
  for (int64_t c = 0; c < C; ++c)
    TORCH_CHECK(off[c] <= off[c + 1], "centroid_interaction: list_offsets must not decrease (list ", c, ")");
  const int64_t* id = ids.data_ptr<int64_t>();
  for (int64_t k = 0; k < ids.numel(); ++k)
    TORCH_CHECK_INDEX(id[k] >= 0 && id[k] < C, "centroid_interaction: probe id ", id[k], " out of range for ", C,
                      " lists");
  auto score = at::empty({B, num_docs}, scores.options());
  auto positive = at::empty({B, num_docs}, scores.options());
  auto hit = at::empty({B, num_docs}, mask.options());
  CentroidParams p{};
  p.probe_ids = id;
  p.probe_scores = scores.data_ptr<float>();
  p.floor = fl.data_ptr<float>();
  p.q_mask = mask.data_ptr<bool>();
  p.list_offsets = off;
  p.list_docs = docs.data_ptr<int64_t>();
  p.score = score.data_ptr<float>();
  p.positive = positive.data_ptr<float>();
  p.hit = hit.data_ptr<bool>();
  p.B = B;
  p.Lq = Lq;
  p.P = P;
  p.N = num_docs;
  const CentroidListError err = centroid_interaction_cpu(p);
  TORCH_CHECK_INDEX(err.entry < 0, "centroid_interaction: list_docs[", err.entry, "] = ", err.doc,
                    " is out of range for ", num_docs, " docs or not above the entry before it in its list");
  return {score, positive, hit};
}

}  // namespace

TORCH_LIBRARY_IMPL(colbert_fast, CPU, m) { m.impl("centroid_interaction", &centroid_interaction_cpu_op); }

}  // namespace colbert_fast
