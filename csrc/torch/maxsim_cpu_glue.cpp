// Torch glue for the CPU MaxSim kernels (csrc/cpu/maxsim_*.cpp): the shared argument checks
// (maxsim_checks.h), then what only the CPU glue checks, then the kernels on the checked
// MaxSimArgs. The ops may be called directly through torch.ops, so nothing that would read out of
// bounds gets past here: unlike the CUDA glue, this one can read pids, lengths and centroid ids
// without waiting for a device, and does.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <sstream>
#include <stdexcept>
#include <string>

#include "../cpu/maxsim_cpu.h"
#include "maxsim_checks.h"

namespace colbert_fast {
namespace {

void check_cpu(const char* op, std::initializer_list<NamedTensor> tensors) {
  for (const auto& [name, t] : tensors) {
    if (t == nullptr) continue;
    TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t->device());
  }
}

// Every selected doc's rows lie inside the store's `rows` rows, and (a residual store) point at
// existing centroids: O(tokens of the selected docs), far less than scoring them. `store` names
// the rows in the message.
void check_selected(const MaxSimArgs& a, int64_t slots, int64_t rows, const CodesStore* codes, const char* store,
                    const char* op) {
  const int64_t *o = a.offsets, *n = a.lengths;
  for (int64_t i = 0; i < slots; ++i) {
    const int64_t d = a.pids[i];
    TORCH_CHECK_INDEX(d >= -1 && d < a.num_docs, op, ": pid ", d, " out of range for ", a.num_docs, " docs");
    if (d < 0) continue;
    TORCH_CHECK_INDEX(o[d] >= 0 && n[d] >= 0 && o[d] <= rows - n[d], op, ": doc ", d, " (offset ", o[d], ", length ",
                      n[d], ") lies outside ", store);
    if (codes == nullptr || codes->codes.nbits == 8) continue;
    const int32_t* ids = codes->codes.centroid_ids;
    for (int64_t r = o[d]; r < o[d] + n[d]; ++r)
      TORCH_CHECK_INDEX(ids[r] >= 0 && ids[r] < codes->num_centroids, op, ": centroid id ", ids[r], " of row ", r,
                        " out of range for ", codes->num_centroids, " centroids");
  }
}

// A bad COLBERT_FAST_CPU_ISA surfaces as std::runtime_error; torch would call it an unknown error.
template <typename F>
void run(F&& kernels) {
  try {
    kernels();
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, e.what());
  }
}

at::Tensor score(MaxSimArgs& a, const at::Tensor& like) {
  at::Tensor out = at::empty({a.B, a.K}, like.options().dtype(at::kFloat));
  a.out = out.data_ptr<float>();
  run([&] { cpu::maxsim_cpu(a); });
  return out;
}

at::Tensor maxsim_cpu_op(const at::Tensor& Q, const at::Tensor& D, const std::optional<at::Tensor>& q_mask,
                         const std::optional<at::Tensor>& d_mask, const std::optional<at::Tensor>& d_lengths,
                         const std::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim";
  MaxSimCall c = check_maxsim(Q, D, q_mask, d_mask, d_lengths, floor);
  check_cpu(op, {{"Q", &Q},
                 {"D", &D},
                 {"q_mask", optional_arg(q_mask)},
                 {"d_mask", optional_arg(d_mask)},
                 {"d_lengths", optional_arg(d_lengths)},
                 {"floor", optional_arg(floor)}});
  const MaxSimArgs& a = c.args;
  if (a.d_lengths != nullptr) {
    for (int64_t i = 0; i < c.d_lengths.numel(); ++i)
      TORCH_CHECK(a.d_lengths[i] >= 0 && a.d_lengths[i] <= a.Ld, op, ": d_lengths must be in [0, Ld = ", a.Ld,
                  "], got ", a.d_lengths[i]);
  }
  return score(c.args, D);
}

at::Tensor maxsim_packed_cpu_op(const at::Tensor& Q, const at::Tensor& embeddings, const at::Tensor& offsets,
                                const at::Tensor& lengths, const at::Tensor& pids,
                                const std::optional<at::Tensor>& q_mask, int64_t max_len,
                                const std::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed";
  MaxSimCall c = check_maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor);
  check_cpu(op, {{"Q", &Q},
                 {"embeddings", &embeddings},
                 {"offsets", &offsets},
                 {"lengths", &lengths},
                 {"pids", &pids},
                 {"q_mask", optional_arg(q_mask)},
                 {"floor", optional_arg(floor)}});
  std::ostringstream store;
  store << "embeddings " << embeddings.sizes();
  check_selected(c.args, c.pids.numel(), c.args.num_rows, nullptr, store.str().c_str(), op);
  return score(c.args, Q);
}

at::Tensor maxsim_packed_codes_cpu_op(const at::Tensor& Q, const at::Tensor& codes, const at::Tensor& scales,
                                      const std::optional<at::Tensor>& centroid_ids,
                                      const std::optional<at::Tensor>& centroids,
                                      const std::optional<at::Tensor>& bucket_weights, const at::Tensor& offsets,
                                      const at::Tensor& lengths, const at::Tensor& pids,
                                      const std::optional<at::Tensor>& q_mask, int64_t max_len, int64_t nbits,
                                      const std::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed_codes";
  CodesCall cc = check_maxsim_packed_codes(Q, codes, scales, centroid_ids, centroids, bucket_weights, offsets, lengths,
                                           pids, q_mask, max_len, nbits, floor);
  check_cpu(op, {{"Q", &Q},
                 {"codes", &codes},
                 {"scales", &scales},
                 {"centroid_ids", optional_arg(centroid_ids)},
                 {"centroids", optional_arg(centroids)},
                 {"bucket_weights", optional_arg(bucket_weights)},
                 {"offsets", &offsets},
                 {"lengths", &lengths},
                 {"pids", &pids},
                 {"q_mask", optional_arg(q_mask)},
                 {"floor", optional_arg(floor)}});
  const std::string store = "the store's " + std::to_string(cc.store.num_rows) + " rows";
  check_selected(cc.call.args, cc.call.pids.numel(), cc.store.num_rows, &cc.store, store.c_str(), op);
  cc.call.args.codes = &cc.store.codes;
  return score(cc.call.args, Q);
}

std::tuple<at::Tensor, at::Tensor> gather_codes_cpu_op(const at::Tensor& codes, const at::Tensor& scales,
                                                       const std::optional<at::Tensor>& centroid_ids,
                                                       const std::optional<at::Tensor>& centroids,
                                                       const std::optional<at::Tensor>& bucket_weights,
                                                       const at::Tensor& offsets, const at::Tensor& lengths,
                                                       const at::Tensor& pids, int64_t max_len, int64_t nbits,
                                                       at::ScalarType dtype) {
  constexpr const char* op = "colbert_fast::gather_codes";
  GatherCodesCall g = check_gather_codes(codes, scales, centroid_ids, centroids, bucket_weights, offsets, lengths, pids,
                                         max_len, nbits, dtype);
  check_cpu(op, {{"codes", &codes},
                 {"scales", &scales},
                 {"centroid_ids", optional_arg(centroid_ids)},
                 {"centroids", optional_arg(centroids)},
                 {"bucket_weights", optional_arg(bucket_weights)},
                 {"offsets", &offsets},
                 {"lengths", &lengths},
                 {"pids", &pids}});
  const std::string store = "the store's " + std::to_string(g.store.num_rows) + " rows";
  check_selected(g.call.args, g.call.pids.numel(), g.store.num_rows, &g.store, store.c_str(), op);
  const auto [sizes, mask_sizes] = gather_sizes(pids, max_len, g.store.codes.dim);
  at::Tensor out = at::empty(sizes, codes.options().dtype(dtype));
  at::Tensor mask = at::empty(mask_sizes, codes.options().dtype(at::kBool));
  const MaxSimArgs& a = g.call.args;
  cpu::CodesGatherParams p{&g.store.codes,        a.offsets,   a.lengths,           a.pids, out.data_ptr(),
                           mask.data_ptr<bool>(), g.out_dtype, g.call.pids.numel(), max_len};
  run([&] { cpu::gather_codes_cpu(p); });
  return {out, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(colbert_fast, CPU, m) {
  m.impl("maxsim", &maxsim_cpu_op);
  m.impl("maxsim_packed", &maxsim_packed_cpu_op);
  m.impl("maxsim_packed_codes", &maxsim_packed_codes_cpu_op);
  m.impl("gather_codes", &gather_codes_cpu_op);
}

}  // namespace colbert_fast
