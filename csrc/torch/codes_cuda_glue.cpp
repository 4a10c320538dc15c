// Torch glue for the CUDA kernels of compressed stores (csrc/cuda/codes_cuda.cu): the shared
// argument checks (maxsim_checks.h), the device checks, device guard, current stream, launch check;
// TORCH_LIBRARY_IMPL(colbert_fast, CUDA) for maxsim_packed_codes and gather_codes. The kernels see
// only codes::ScoreParams / GatherParams.
//
// The CPU glue's data-dependent checks (pids in range, each selected doc's rows inside the store,
// centroid ids < C) would read device memory on the host, i.e. wait for the GPU on every call;
// here the kernels guard those reads instead (codes_params_cuda.h: slot_view, centroid_ok) and
// write NaN where the CPU op would raise. The Python API validates pids without a sync
// (torch._assert_async) and CompressedDocs validates centroid ids and lengths when it is built.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include <limits>

#include "../cuda/codes_params_cuda.h"
#include "cuda_glue.h"
#include "maxsim_checks.h"

namespace colbert_fast {
namespace {

using OptTensor = std::optional<at::Tensor>;

// The kernels' view of a checked store and its index; sets the load-width flags.
codes::Store kernel_store(const CodesStore& store, const MaxSimArgs& index) {
  codes::Store s{};
  s.c = store.codes;
  s.num_centroids = store.num_centroids;
  s.num_rows = store.num_rows;
  s.num_docs = index.num_docs;
  s.offsets = index.offsets;
  s.lengths = index.lengths;
  s.pids = index.pids;
  s.max_len = index.Ld;
  codes::plan_store(s);
  return s;
}

at::Tensor maxsim_packed_codes_cuda_op(const at::Tensor& Q, const at::Tensor& codes, const at::Tensor& scales,
                                       const OptTensor& centroid_ids, const OptTensor& centroids,
                                       const OptTensor& bucket_weights, const at::Tensor& offsets,
                                       const at::Tensor& lengths, const at::Tensor& pids, const OptTensor& q_mask,
                                       int64_t max_len, int64_t nbits, const OptTensor& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed_codes";
  const CodesCall cc = check_maxsim_packed_codes(Q, codes, scales, centroid_ids, centroids, bucket_weights, offsets,
                                                 lengths, pids, q_mask, max_len, nbits, floor);
  check_cuda(op, {{"Q", &Q},
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
  const c10::cuda::CUDAGuard guard(Q.device());
  const MaxSimArgs& a = cc.call.args;
  codes::ScoreParams p{};
  p.s = kernel_store(cc.store, a);
  p.m.dtype = maxsim::kFloat32;
  p.m.q = a.Q;
  p.m.q_sb = a.q_stride_b;
  p.m.q_sl = a.q_stride_l;
  p.m.B = a.B;
  p.m.Lq = a.Lq;
  p.m.dim = a.dim;
  p.m.q_mask = a.q_mask;
  p.m.floor = a.floor;
  p.m.ncols = a.K;
  p.m.smem_limit = smem_limit(Q);
  codes::plan(p);
  TORCH_CHECK(codes::launch_blocks(p) <= std::numeric_limits<int32_t>::max(), op, " (CUDA): ", p.m.B, " queries x ",
              p.m.ncols, " candidates x ", p.m.npass, " query passes is too much work for one launch; split the batch");
  const auto fp32 = Q.options().dtype(at::kFloat);
  at::Tensor out = at::empty({p.m.B, p.m.ncols}, fp32);
  const int64_t ws_bytes = maxsim::workspace_bytes(p.m);
  at::Tensor ws = ws_bytes > 0 ? at::empty({ws_bytes / 4}, fp32) : at::Tensor();
  codes::launch_score(p, out.data_ptr<float>(), ws_bytes > 0 ? ws.data_ptr<float>() : nullptr,
                      c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> gather_codes_cuda_op(const at::Tensor& codes, const at::Tensor& scales,
                                                        const OptTensor& centroid_ids, const OptTensor& centroids,
                                                        const OptTensor& bucket_weights, const at::Tensor& offsets,
                                                        const at::Tensor& lengths, const at::Tensor& pids,
                                                        int64_t max_len, int64_t nbits, at::ScalarType dtype) {
  constexpr const char* op = "colbert_fast::gather_codes";
  const GatherCodesCall g = check_gather_codes(codes, scales, centroid_ids, centroids, bucket_weights, offsets, lengths,
                                               pids, max_len, nbits, dtype);
  check_cuda(op, {{"codes", &codes},
                  {"scales", &scales},
                  {"centroid_ids", optional_arg(centroid_ids)},
                  {"centroids", optional_arg(centroids)},
                  {"bucket_weights", optional_arg(bucket_weights)},
                  {"offsets", &offsets},
                  {"lengths", &lengths},
                  {"pids", &pids}});
  const c10::cuda::CUDAGuard guard(codes.device());
  codes::GatherParams p{};
  p.s = kernel_store(g.store, g.call.args);
  p.out_dtype = static_cast<int32_t>(g.out_dtype);
  p.num_slots = pids.numel();
  TORCH_CHECK(p.num_slots <= std::numeric_limits<int32_t>::max(), op, " (CUDA): ", p.num_slots,
              " slots are too many for one launch; split the batch");
  const auto [sizes, mask_sizes] = gather_sizes(pids, max_len, g.store.codes.dim);
  at::Tensor out = at::empty(sizes, codes.options().dtype(dtype));
  at::Tensor mask = at::empty(mask_sizes, codes.options().dtype(at::kBool));
  p.out = out.data_ptr();
  p.mask = mask.data_ptr<bool>();
  codes::launch_gather(p, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(colbert_fast, CUDA, m) {
  m.impl("maxsim_packed_codes", &maxsim_packed_codes_cuda_op);
  m.impl("gather_codes", &gather_codes_cuda_op);
}

}  // namespace colbert_fast
