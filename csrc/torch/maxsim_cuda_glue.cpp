// Torch glue for the CUDA MaxSim kernels (csrc/cuda/maxsim_cuda.cu): the shared argument checks
// (maxsim_checks.h), the device checks, device guard, current stream, launch check. The kernels see
// only maxsim::Params: the checked MaxSimArgs plus the launch plan.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include <limits>

#include "../cuda/maxsim_params.h"
#include "cuda_glue.h"
#include "maxsim_checks.h"

namespace colbert_fast {
namespace {

// maxsim::Params stores the dtype as the int32 value of DType.
static_assert(maxsim::kFloat32 == static_cast<int32_t>(DType::f32) &&
              maxsim::kFloat16 == static_cast<int32_t>(DType::f16) &&
              maxsim::kBFloat16 == static_cast<int32_t>(DType::bf16));

// The kernels' view of a checked call (the plan fields are plan()'s to fill).
maxsim::Params kernel_params(const MaxSimArgs& a) {
  maxsim::Params p{};
  p.mode = a.mode;
  p.dtype = static_cast<int32_t>(a.dtype);
  p.q = a.Q;
  p.q_sb = a.q_stride_b;
  p.q_sl = a.q_stride_l;
  p.B = a.B;
  p.Lq = a.Lq;
  p.dim = a.dim;
  p.q_mask = a.q_mask;
  p.ncols = a.K;
  p.floor = a.floor;
  if (a.mode == ScoringMode::packed) {
    p.embeddings = a.D;
    p.offsets = a.offsets;
    p.lengths = a.lengths;
    p.pids = a.pids;
    p.max_len = a.Ld;
    p.num_docs = a.num_docs;
    p.num_rows = a.num_rows;
  } else {
    p.d = a.D;
    p.d_sb = a.d_stride_b;
    p.d_sk = a.d_stride_k;
    p.d_sl = a.d_stride_l;
    p.Ld = a.Ld;
    p.d_mask = a.d_mask;
    p.d_lengths = a.d_lengths;
  }
  return p;
}

// Plans passes, allocates the output (and the partial-sum workspace), launches on the current stream.
at::Tensor run(const MaxSimArgs& a, const at::Tensor& like, const char* op) {
  const c10::cuda::CUDAGuard guard(like.device());
  maxsim::Params p = kernel_params(a);
  p.smem_limit = smem_limit(like);
  maxsim::plan(p);
  TORCH_CHECK(maxsim::launch_blocks(p) <= std::numeric_limits<int32_t>::max(), op, " (CUDA): ", p.B, " queries x ",
              p.ncols, " docs x ", p.npass, " query passes is too much work for one launch; split the batch");
  const auto fp32 = like.options().dtype(at::kFloat);
  at::Tensor out = at::empty({p.B, p.ncols}, fp32);
  const int64_t ws_bytes = maxsim::workspace_bytes(p);
  at::Tensor ws = ws_bytes > 0 ? at::empty({ws_bytes / 4}, fp32) : at::Tensor();
  maxsim::launch(p, out.data_ptr<float>(), ws_bytes > 0 ? ws.data_ptr<float>() : nullptr,
                 c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor maxsim_cuda_op(const at::Tensor& Q, const at::Tensor& D, const std::optional<at::Tensor>& q_mask,
                          const std::optional<at::Tensor>& d_mask, const std::optional<at::Tensor>& d_lengths,
                          const std::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim";
  const MaxSimCall c = check_maxsim(Q, D, q_mask, d_mask, d_lengths, floor);
  check_cuda(op, {{"Q", &Q},
                  {"D", &D},
                  {"q_mask", optional_arg(q_mask)},
                  {"d_mask", optional_arg(d_mask)},
                  {"d_lengths", optional_arg(d_lengths)},
                  {"floor", optional_arg(floor)}});
  return run(c.args, D, op);
}

at::Tensor maxsim_packed_cuda_op(const at::Tensor& Q, const at::Tensor& embeddings, const at::Tensor& offsets,
                                 const at::Tensor& lengths, const at::Tensor& pids,
                                 const std::optional<at::Tensor>& q_mask, int64_t max_len,
                                 const std::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed";
  const MaxSimCall c = check_maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor);
  check_cuda(op, {{"Q", &Q},
                  {"embeddings", &embeddings},
                  {"offsets", &offsets},
                  {"lengths", &lengths},
                  {"pids", &pids},
                  {"q_mask", optional_arg(q_mask)},
                  {"floor", optional_arg(floor)}});
  return run(c.args, embeddings, op);
}

}  // namespace

TORCH_LIBRARY_IMPL(colbert_fast, CUDA, m) {
  m.impl("maxsim", &maxsim_cuda_op);
  m.impl("maxsim_packed", &maxsim_packed_cuda_op);
}

}  // namespace colbert_fast
