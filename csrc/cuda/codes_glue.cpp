// Torch glue for the CUDA kernels of compressed stores (codes_cuda.cu): input checks, device
// guard, current stream, launch check; TORCH_LIBRARY_IMPL(colbert_fast, CUDA) for
// maxsim_packed_codes and gather_codes. The kernels see only codes::ScoreParams / GatherParams.
//
// The dtype, shape and device checks are the CPU glue's (csrc/torch/maxsim_cpu_glue.cpp:
// make_codes_params, packed_index), with the same messages and exception types. Its data-dependent
// checks (check_selected: pids in range, each selected doc's rows inside the store, centroid ids
// < C) would read device memory on the host, i.e. wait for the GPU on every call; here the kernels
// guard those reads instead (codes_params_cuda.h: slot_view, centroid_ok) and write NaN where the
// CPU op would raise. The Python API validates pids without a sync (torch._assert_async) and
// CompressedDocs validates centroid ids and lengths when it is built.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include <limits>

#include "codes_params_cuda.h"

namespace colbert_fast {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Device checks come after the shape and dtype checks, so those are testable with CPU tensors
// (calling this kernel directly through the dispatcher) on machines without a GPU.
void check_devices(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const auto& [first_name, first] = *tensors.begin();
  for (const auto& [name, t] : tensors) {
    if (t == nullptr || !t->defined()) continue;
    TORCH_CHECK(t->is_cuda(), op, " (CUDA kernel): ", name, " must be a CUDA tensor, got one on ", t->device());
    TORCH_CHECK(t->device() == first->device(), op, " (CUDA kernel): ", name, " is on ", t->device(), " but ",
                first_name, " is on ", first->device());
  }
}

const at::Tensor* opt(const OptTensor& t) { return t.has_value() ? &*t : nullptr; }

// The store's tensors (make_codes_params in the CPU glue); sets the load-width flags.
codes::Store make_store(const at::Tensor& codes, const at::Tensor& scales, const OptTensor& centroid_ids,
                        const OptTensor& centroids, const OptTensor& bucket_weights, int64_t nbits, const char* op) {
  TORCH_CHECK(nbits == 1 || nbits == 2 || nbits == 4 || nbits == 8, op,
              ": nbits must be 1, 2, 4 (residual) or 8 (int8), got ", nbits);
  TORCH_CHECK(codes.dim() == 2 && codes.is_contiguous(), op, ": codes must be a contiguous [T, bytes] tensor, got ",
              codes.sizes());
  const int64_t T = codes.size(0);
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kHalf && scales.dim() == 1 && scales.size(0) == T &&
                       scales.is_contiguous(),
                   op, ": scales must be contiguous float16 [T] = [", T, "], got ", scales.scalar_type(), " ",
                   scales.sizes());
  codes::Store s{};
  CodesParams& c = s.c;
  c.nbits = static_cast<int32_t>(nbits);
  c.codes = static_cast<const uint8_t*>(codes.data_ptr());
  c.scales = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  s.num_rows = T;
  if (nbits == 8) {
    TORCH_CHECK_TYPE(codes.scalar_type() == at::kChar, op, ": int8 codes must be int8, got ", codes.scalar_type());
    TORCH_CHECK(!centroid_ids.has_value() && !centroids.has_value() && !bucket_weights.has_value(), op,
                ": the int8 codec takes no centroids or buckets");
    c.dim = codes.size(1);
    c.code_bytes = c.dim;
  } else {
    TORCH_CHECK(centroid_ids.has_value() && centroids.has_value() && bucket_weights.has_value(), op,
                ": the residual codec needs centroid_ids, centroids and bucket_weights");
    TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, op, ": residual codes must be uint8, got ",
                     codes.scalar_type());
    TORCH_CHECK_TYPE(centroids->scalar_type() == at::kFloat && centroids->dim() == 2 && centroids->size(0) >= 1 &&
                         centroids->is_contiguous(),
                     op, ": centroids must be contiguous float32 [C >= 1, dim], got ", centroids->sizes());
    c.dim = centroids->size(1);
    c.code_bytes = (c.dim * nbits + 7) / 8;
    TORCH_CHECK(codes.size(1) == c.code_bytes, op, ": codes must be [T, ", c.code_bytes, "] for dim ", c.dim, " at ",
                nbits, " bits, got ", codes.sizes());
    TORCH_CHECK_TYPE(centroid_ids->scalar_type() == at::kInt && centroid_ids->dim() == 1 &&
                         centroid_ids->size(0) == T && centroid_ids->is_contiguous(),
                     op, ": centroid_ids must be contiguous int32 [T] = [", T, "], got ", centroid_ids->sizes());
    TORCH_CHECK_TYPE(bucket_weights->scalar_type() == at::kFloat && bucket_weights->numel() == (int64_t{1} << nbits) &&
                         bucket_weights->is_contiguous(),
                     op, ": bucket_weights must be contiguous float32 [", (1 << nbits), "], got ",
                     bucket_weights->sizes());
    c.centroid_ids = centroid_ids->data_ptr<int32_t>();
    c.centroids = centroids->data_ptr<float>();
    c.bucket_weights = bucket_weights->data_ptr<float>();
    s.num_centroids = centroids->size(0);
  }
  codes::plan_store(s);
  return s;
}

struct PackedIndex {
  at::Tensor off, len, pid;  // contiguous int64, kept alive for the launch
};

PackedIndex packed_index(codes::Store& s, const at::Tensor& offsets, const at::Tensor& lengths, const at::Tensor& pids,
                         int64_t max_len, const char* op) {
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong &&
                       pids.scalar_type() == at::kLong,
                   op, ": offsets, lengths and pids must be int64");
  TORCH_CHECK(offsets.dim() == 1 && lengths.dim() == 1 && offsets.numel() == lengths.numel() + 1, op,
              ": offsets must be [N + 1] and lengths [N], got ", offsets.sizes(), " and ", lengths.sizes());
  TORCH_CHECK(max_len >= 0, op, ": max_len must be >= 0, got ", max_len);
  PackedIndex ix{offsets.contiguous(), lengths.contiguous(), pids.contiguous()};
  s.offsets = ix.off.data_ptr<int64_t>();
  s.lengths = ix.len.data_ptr<int64_t>();
  s.pids = ix.pid.data_ptr<int64_t>();
  s.num_docs = lengths.numel();
  s.max_len = max_len;
  return ix;
}

int64_t smem_limit(const at::Tensor& t) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, t.device().index()));
  return value;
}

at::Tensor maxsim_packed_codes_cuda_op(const at::Tensor& Q, const at::Tensor& codes, const at::Tensor& scales,
                                       const OptTensor& centroid_ids, const OptTensor& centroids,
                                       const OptTensor& bucket_weights, const at::Tensor& offsets,
                                       const at::Tensor& lengths, const at::Tensor& pids, const OptTensor& q_mask,
                                       int64_t max_len, int64_t nbits, const OptTensor& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed_codes";
  TORCH_CHECK(Q.dim() == 3, op, ": Q must be [B, Lq, dim], got ", Q.sizes());
  TORCH_CHECK(Q.size(1) >= 1, op, ": Q must have Lq >= 1, got ", Q.sizes());
  TORCH_CHECK(Q.size(2) <= 1 || Q.stride(2) == 1, op, ": Q must have a contiguous last dim (stride 1), got strides ",
              Q.strides());
  TORCH_CHECK_TYPE(Q.scalar_type() == at::kFloat, op, ": Q must be float32 for a compressed store, got ",
                   Q.scalar_type());
  codes::ScoreParams p{};
  p.s = make_store(codes, scales, centroid_ids, centroids, bucket_weights, nbits, op);
  TORCH_CHECK(p.s.c.dim == Q.size(2), op, ": dim mismatch: Q ", Q.sizes(), ", the store has dim ", p.s.c.dim);
  const PackedIndex ix = packed_index(p.s, offsets, lengths, pids, max_len, op);
  TORCH_CHECK(pids.dim() == 2 && pids.size(0) == Q.size(0), op, ": pids must be [B, K] with B = ", Q.size(0),
              ", got ", pids.sizes());
  at::Tensor qm, fl;
  if (q_mask.has_value()) {
    TORCH_CHECK_TYPE(q_mask->scalar_type() == at::kBool, op, ": q_mask must be bool, got ", q_mask->scalar_type());
    TORCH_CHECK(q_mask->sizes() == Q.sizes().slice(0, 2), op, ": q_mask must have shape ", Q.sizes().slice(0, 2),
                ", got ", q_mask->sizes());
    qm = q_mask->contiguous();
    p.m.q_mask = qm.data_ptr<bool>();
  }
  if (floor.has_value()) {
    TORCH_CHECK_TYPE(floor->scalar_type() == at::kFloat, op, ": floor must be float32, got ", floor->scalar_type());
    TORCH_CHECK(floor->sizes() == pids.sizes(), op, ": floor must have shape ", pids.sizes(),
                " (one value per doc), got ", floor->sizes());
    fl = floor->contiguous();
    p.m.floor = fl.data_ptr<float>();
  }
  check_devices(op, {{"Q", &Q}, {"codes", &codes}, {"scales", &scales}, {"centroid_ids", opt(centroid_ids)},
                     {"centroids", opt(centroids)}, {"bucket_weights", opt(bucket_weights)}, {"offsets", &offsets},
                     {"lengths", &lengths}, {"pids", &pids}, {"q_mask", opt(q_mask)}, {"floor", opt(floor)}});
  const c10::cuda::CUDAGuard guard(Q.device());

  p.m.dtype = maxsim::kFloat32;
  p.m.q = Q.data_ptr();
  p.m.q_sb = Q.stride(0);
  p.m.q_sl = Q.stride(1);
  p.m.B = Q.size(0);
  p.m.Lq = Q.size(1);
  p.m.dim = Q.size(2);
  p.m.ncols = pids.size(1);
  p.m.smem_limit = smem_limit(Q);
  codes::plan(p);
  TORCH_CHECK(codes::launch_blocks(p) <= std::numeric_limits<int32_t>::max(), op, " (CUDA): ", p.m.B,
              " queries x ", p.m.ncols, " candidates x ", p.m.npass,
              " query passes is too much work for one launch; split the batch");
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
  codes::GatherParams p{};
  p.s = make_store(codes, scales, centroid_ids, centroids, bucket_weights, nbits, op);
  const PackedIndex ix = packed_index(p.s, offsets, lengths, pids, max_len, op);
  switch (dtype) {
    case at::kFloat:
      p.out_dtype = maxsim::kFloat32;
      break;
    case at::kHalf:
      p.out_dtype = maxsim::kFloat16;
      break;
    case at::kBFloat16:
      p.out_dtype = maxsim::kBFloat16;
      break;
    default:
      TORCH_CHECK_TYPE(false, op, ": dtype must be float32, float16 or bfloat16, got ", dtype);
  }
  check_devices(op, {{"codes", &codes}, {"scales", &scales}, {"centroid_ids", opt(centroid_ids)},
                     {"centroids", opt(centroids)}, {"bucket_weights", opt(bucket_weights)}, {"offsets", &offsets},
                     {"lengths", &lengths}, {"pids", &pids}});
  const c10::cuda::CUDAGuard guard(codes.device());
  p.num_slots = pids.numel();
  TORCH_CHECK(p.num_slots <= std::numeric_limits<int32_t>::max(), op, " (CUDA): ", p.num_slots,
              " slots are too many for one launch; split the batch");
  auto sizes = pids.sizes().vec();
  auto mask_sizes = sizes;
  sizes.push_back(max_len);
  sizes.push_back(p.s.c.dim);
  mask_sizes.push_back(max_len);
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
