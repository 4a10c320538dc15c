// Torch glue for the CUDA MaxSim kernels: input checks, device guard, current stream, launch check.
// The kernels (maxsim_cuda.cu) see only maxsim::Params.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include "maxsim_params.h"

namespace colbert_fast {
namespace {

using maxsim::Params;

int32_t dtype_code(const char* op, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return maxsim::kFloat32;
    case at::kHalf:
      return maxsim::kFloat16;
    case at::kBFloat16:
      return maxsim::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t.scalar_type(), "; supported: float32, float16, bfloat16");
  }
  return -1;  // unreachable
}

// Device checks come after the shape and dtype checks, so those are testable with CPU tensors
// (calling this kernel directly through the dispatcher) on machines without a GPU.
void check_devices(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const at::Tensor& q = *tensors.begin()->second;
  for (const auto& [name, t] : tensors) {
    if (t == nullptr || !t->defined()) continue;
    TORCH_CHECK(t->is_cuda(), op, " (CUDA kernel): ", name, " must be a CUDA tensor, got one on ", t->device());
    TORCH_CHECK(t->device() == q.device(), op, " (CUDA kernel): ", name, " is on ", t->device(), " but Q is on ",
                q.device());
  }
}

// Q [B, Lq, dim] in `dtype`, unit stride along dim; fills the query fields of p.
void set_query(const char* op, Params& p, const at::Tensor& Q, const at::Tensor& docs, int64_t dim) {
  TORCH_CHECK(Q.dim() == 3, op, ": Q must be [B, Lq, dim], got ", Q.sizes());
  TORCH_CHECK(Q.scalar_type() == docs.scalar_type(), op, ": Q must have the docs' dtype ", docs.scalar_type(),
              " (the Python API converts it), got ", Q.scalar_type());
  TORCH_CHECK(Q.size(2) == dim, op, ": dim mismatch: Q ", Q.sizes(), " vs docs dim ", dim);
  TORCH_CHECK(Q.size(1) >= 1, op, ": Q needs Lq >= 1 query tokens, got ", Q.sizes());
  TORCH_CHECK(Q.stride(2) == 1 || dim <= 1, op, ": Q's last dim must have stride 1, got strides ", Q.strides());
  p.dtype = dtype_code(op, docs);
  p.q = Q.data_ptr();
  p.q_sb = Q.stride(0);
  p.q_sl = Q.stride(1);
  p.B = Q.size(0);
  p.Lq = Q.size(1);
  p.dim = dim;
}

// Returns the contiguous q_mask kept alive by the caller (or an undefined tensor).
at::Tensor set_q_mask(const char* op, Params& p, const std::optional<at::Tensor>& q_mask, const at::Tensor& Q) {
  if (!q_mask.has_value()) return {};
  const at::Tensor& m = *q_mask;
  TORCH_CHECK(m.scalar_type() == at::kBool, op, ": q_mask must be bool, got ", m.scalar_type());
  TORCH_CHECK(m.dim() == 2 && m.size(0) == Q.size(0) && m.size(1) == Q.size(1), op, ": q_mask must be [B, Lq] = [",
              Q.size(0), ", ", Q.size(1), "], got ", m.sizes());
  at::Tensor c = m.contiguous();
  p.q_mask = c.data_ptr<bool>();
  return c;
}

// Returns the contiguous floor kept alive by the caller (or an undefined tensor). `shape`: one per doc.
at::Tensor set_floor(const char* op, Params& p, const std::optional<at::Tensor>& floor, at::IntArrayRef shape) {
  if (!floor.has_value()) return {};
  TORCH_CHECK(floor->scalar_type() == at::kFloat, op, ": floor must be float32, got ", floor->scalar_type());
  TORCH_CHECK(floor->sizes() == shape, op, ": floor must have shape ", shape, " (one value per doc), got ",
              floor->sizes());
  at::Tensor c = floor->contiguous();
  p.floor = c.data_ptr<float>();
  return c;
}

const at::Tensor* opt(const std::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; }

int64_t smem_limit(const at::Tensor& t) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, t.device().index()));
  return value;
}

// Plans passes, allocates the output (and the partial-sum workspace), launches on the current stream.
at::Tensor run(Params& p, const at::Tensor& like) {
  p.smem_limit = smem_limit(like);
  maxsim::plan(p);
  TORCH_CHECK(maxsim::launch_blocks(p) <= INT32_MAX, "maxsim (CUDA): ", p.B,
              " queries x ", p.ncols, " docs x ", p.npass, " query passes is too much work for one launch; split the batch");
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
  const char* op = "maxsim";
  TORCH_CHECK(D.dim() == 3 || D.dim() == 4, op, ": D must be [N, Ld, dim] or [B, K, Ld, dim], got ", D.sizes());
  const int64_t dim = D.size(-1);
  TORCH_CHECK(D.stride(-1) == 1 || dim <= 1, op, ": D's last dim must have stride 1, got strides ", D.strides());
  Params p{};
  set_query(op, p, Q, D, dim);
  const bool all_pairs = D.dim() == 3;
  TORCH_CHECK(all_pairs || D.size(0) == Q.size(0), op, ": D [B, K, Ld, dim] must have B = ", Q.size(0),
              " (Q's batch), got ", D.sizes());
  p.mode = all_pairs ? maxsim::kAllPairs : maxsim::kPerQuery;
  p.d = D.data_ptr();
  p.d_sb = all_pairs ? 0 : D.stride(0);
  p.d_sk = D.stride(-3);
  p.d_sl = D.stride(-2);
  p.Ld = D.size(-2);
  p.ncols = D.size(-3);
  const at::Tensor qm = set_q_mask(op, p, q_mask, Q);
  TORCH_CHECK(!(d_mask.has_value() && d_lengths.has_value()), op, ": give d_mask or d_lengths, not both");
  at::Tensor dm, dl;
  if (d_mask.has_value()) {
    TORCH_CHECK(d_mask->scalar_type() == at::kBool, op, ": d_mask must be bool, got ", d_mask->scalar_type());
    TORCH_CHECK(d_mask->sizes() == D.sizes().slice(0, D.dim() - 1), op, ": d_mask must have D's shape without dim ",
                D.sizes().slice(0, D.dim() - 1), ", got ", d_mask->sizes());
    dm = d_mask->contiguous();
    p.d_mask = dm.data_ptr<bool>();
  }
  if (d_lengths.has_value()) {
    TORCH_CHECK(d_lengths->scalar_type() == at::kLong, op, ": d_lengths must be int64, got ",
                d_lengths->scalar_type());
    TORCH_CHECK(d_lengths->sizes() == D.sizes().slice(0, D.dim() - 2), op,
                ": d_lengths must have D's shape without (Ld, dim) ", D.sizes().slice(0, D.dim() - 2), ", got ",
                d_lengths->sizes());
    dl = d_lengths->contiguous();
    p.d_lengths = dl.data_ptr<int64_t>();
  }
  const at::Tensor fl = set_floor(op, p, floor, D.sizes().slice(0, D.dim() - 2));
  check_devices(op, {{"Q", &Q}, {"D", &D}, {"q_mask", opt(q_mask)}, {"d_mask", opt(d_mask)},
                     {"d_lengths", opt(d_lengths)}, {"floor", opt(floor)}});
  const c10::cuda::CUDAGuard guard(D.device());
  return run(p, D);
}

at::Tensor maxsim_packed_cuda_op(const at::Tensor& Q, const at::Tensor& embeddings, const at::Tensor& offsets,
                                 const at::Tensor& lengths, const at::Tensor& pids,
                                 const std::optional<at::Tensor>& q_mask, int64_t max_len,
                                 const std::optional<at::Tensor>& floor) {
  const char* op = "maxsim_packed";
  TORCH_CHECK(embeddings.dim() == 2, op, ": embeddings must be [T, dim], got ", embeddings.sizes());
  TORCH_CHECK(embeddings.is_contiguous(), op, ": embeddings must be contiguous");
  Params p{};
  set_query(op, p, Q, embeddings, embeddings.size(1));
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"offsets", &offsets},
                                {"lengths", &lengths}, {"pids", &pids}}) {
    TORCH_CHECK(t->scalar_type() == at::kLong, op, ": ", name, " must be int64, got ", t->scalar_type());
  }
  TORCH_CHECK(offsets.dim() == 1 && lengths.dim() == 1 && offsets.numel() == lengths.numel() + 1, op,
              ": offsets must be [N + 1] and lengths [N], got ", offsets.sizes(), " and ", lengths.sizes());
  TORCH_CHECK(pids.dim() == 2 && pids.size(0) == Q.size(0), op, ": pids must be [B, K] with B = ", Q.size(0),
              ", got ", pids.sizes());
  TORCH_CHECK(max_len >= 0, op, ": max_len must be >= 0, got ", max_len);
  const at::Tensor offsets_c = offsets.contiguous(), lengths_c = lengths.contiguous(), pids_c = pids.contiguous();
  p.mode = maxsim::kPacked;
  p.embeddings = embeddings.data_ptr();
  p.offsets = offsets_c.data_ptr<int64_t>();
  p.lengths = lengths_c.data_ptr<int64_t>();
  p.pids = pids_c.data_ptr<int64_t>();
  p.max_len = max_len;
  p.num_docs = lengths.numel();
  p.num_rows = embeddings.size(0);
  p.ncols = pids.size(1);
  const at::Tensor qm = set_q_mask(op, p, q_mask, Q);
  const at::Tensor fl = set_floor(op, p, floor, pids.sizes());
  check_devices(op, {{"Q", &Q}, {"embeddings", &embeddings}, {"offsets", &offsets}, {"lengths", &lengths},
                     {"pids", &pids}, {"q_mask", opt(q_mask)}, {"floor", opt(floor)}});
  const c10::cuda::CUDAGuard guard(embeddings.device());
  return run(p, embeddings);
}

}  // namespace

TORCH_LIBRARY_IMPL(colbert_fast, CUDA, m) {
  m.impl("maxsim", &maxsim_cuda_op);
  m.impl("maxsim_packed", &maxsim_packed_cuda_op);
}

}  // namespace colbert_fast
