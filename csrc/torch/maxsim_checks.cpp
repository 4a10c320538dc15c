// The MaxSim ops' argument checks (maxsim_checks.h says what they cover and what they leave to each
// glue). Messages start with the op's name; dtype errors raise TypeError, the rest RuntimeError.
#include "maxsim_checks.h"

namespace colbert_fast {
namespace {

DType element_type(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::f32;
    case at::kHalf:
      return DType::f16;
    case at::kBFloat16:
      return DType::bf16;
    default:
      TORCH_CHECK_TYPE(false, op, ": ", name, " has unsupported dtype ", t.scalar_type(),
                       "; supported: float32, float16 or bfloat16");
  }
  return DType::f32;  // unreachable: the default case throws
}

// Rows are read as contiguous vectors; the other strides are passed to the kernels as they are.
void check_rows(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
              "'s last dim must have stride 1 (a contiguous last dim), got strides ", t.strides());
}

// Q [B, Lq, dim] with a contiguous last dim: the query fields of `a` (its dtype is the caller's).
void check_query(MaxSimArgs& a, const at::Tensor& Q, const char* op) {
  TORCH_CHECK(Q.dim() == 3, op, ": Q must be [B, Lq, dim], got ", Q.sizes());
  TORCH_CHECK(Q.size(1) >= 1, op, ": Q must have Lq >= 1, got ", Q.sizes());
  check_rows(Q, op, "Q");
  a.Q = Q.data_ptr();
  a.B = Q.size(0);
  a.Lq = Q.size(1);
  a.dim = Q.size(2);
  a.q_stride_b = Q.stride(0);
  a.q_stride_l = Q.stride(1);
}

void check_same_dtype(const at::Tensor& Q, const at::Tensor& docs, const char* op) {
  TORCH_CHECK_TYPE(Q.scalar_type() == docs.scalar_type(), op, ": Q must have the docs' dtype ", docs.scalar_type(),
                   " (the Python API converts it), got ", Q.scalar_type());
}

// The name of each dtype an optional input may have, as the messages spell it.
template <typename T>
constexpr const char* dtype_name();
template <>
constexpr const char* dtype_name<bool>() {
  return "bool";
}
template <>
constexpr const char* dtype_name<int64_t>() {
  return "int64";
}
template <>
constexpr const char* dtype_name<float>() {
  return "float32";
}

// An optional tensor of element type T and of `shape` (`meaning` says what that shape is), made
// contiguous in `keep`; returns its data, or null when it is absent.
template <typename T>
const T* optional_input(const std::optional<at::Tensor>& t, at::IntArrayRef shape, const char* meaning, const char* op,
                        const char* name, at::Tensor& keep) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK_TYPE(t->scalar_type() == c10::CppTypeToScalarType<T>::value, op, ": ", name, " must be ", dtype_name<T>(),
                   ", got ", t->scalar_type());
  TORCH_CHECK(t->sizes() == shape, op, ": ", name, " must have shape ", shape, " (", meaning, "), got ", t->sizes());
  keep = t->contiguous();
  return keep.data_ptr<T>();
}

void check_q_mask(MaxSimCall& c, const at::Tensor& Q, const std::optional<at::Tensor>& q_mask, const char* op) {
  c.args.q_mask = optional_input<bool>(q_mask, Q.sizes().slice(0, 2), "Q's [B, Lq]", op, "q_mask", c.q_mask);
}

void check_floor(MaxSimCall& c, const std::optional<at::Tensor>& floor, at::IntArrayRef docs, const char* op) {
  c.args.floor = optional_input<float>(floor, docs, "one value per doc", op, "floor", c.floor);
}

// offsets [N + 1] and lengths [N] of a packed store, pids int64, max_len >= 0: the packed fields.
void check_index(MaxSimCall& c, const at::Tensor& offsets, const at::Tensor& lengths, const at::Tensor& pids,
                 int64_t max_len, const char* op) {
  TORCH_CHECK_TYPE(
      offsets.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong && pids.scalar_type() == at::kLong, op,
      ": offsets, lengths and pids must be int64");
  TORCH_CHECK(offsets.dim() == 1 && lengths.dim() == 1 && offsets.numel() == lengths.numel() + 1, op,
              ": offsets must be [N + 1] and lengths [N], got ", offsets.sizes(), " and ", lengths.sizes());
  TORCH_CHECK(max_len >= 0, op, ": max_len must be >= 0, got ", max_len);
  c.offsets = offsets.contiguous();
  c.lengths = lengths.contiguous();
  c.pids = pids.contiguous();
  MaxSimArgs& a = c.args;
  a.mode = ScoringMode::packed;
  a.offsets = c.offsets.data_ptr<int64_t>();
  a.lengths = c.lengths.data_ptr<int64_t>();
  a.pids = c.pids.data_ptr<int64_t>();
  a.num_docs = lengths.numel();
  a.Ld = max_len;
}

// Scoring: pids [B, K], one row of candidates per query.
void check_candidates(MaxSimArgs& a, const at::Tensor& pids, const char* op) {
  TORCH_CHECK(pids.dim() == 2 && pids.size(0) == a.B, op, ": pids must be [B, K] with B = ", a.B, ", got ",
              pids.sizes());
  a.K = pids.size(1);
}

CodesStore check_codes_store(const at::Tensor& codes, const at::Tensor& scales,
                             const std::optional<at::Tensor>& centroid_ids, const std::optional<at::Tensor>& centroids,
                             const std::optional<at::Tensor>& bucket_weights, int64_t nbits, const char* op) {
  TORCH_CHECK(nbits == 1 || nbits == 2 || nbits == 4 || nbits == 8, op,
              ": nbits must be 1, 2, 4 (residual) or 8 (int8), got ", nbits);
  TORCH_CHECK(codes.dim() == 2 && codes.is_contiguous(), op, ": codes must be a contiguous [T, bytes] tensor, got ",
              codes.sizes());
  const int64_t T = codes.size(0);
  TORCH_CHECK_TYPE(
      scales.scalar_type() == at::kHalf && scales.dim() == 1 && scales.size(0) == T && scales.is_contiguous(), op,
      ": scales must be contiguous float16 [T] = [", T, "], got ", scales.scalar_type(), " ", scales.sizes());
  CodesStore s{};
  CodesParams& c = s.codes;
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
    return s;
  }
  TORCH_CHECK(centroid_ids.has_value() && centroids.has_value() && bucket_weights.has_value(), op,
              ": the residual codec needs centroid_ids, centroids and bucket_weights");
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, op, ": residual codes must be uint8, got ", codes.scalar_type());
  TORCH_CHECK_TYPE(centroids->scalar_type() == at::kFloat && centroids->dim() == 2 && centroids->size(0) >= 1 &&
                       centroids->is_contiguous(),
                   op, ": centroids must be contiguous float32 [C >= 1, dim], got ", centroids->sizes());
  c.dim = centroids->size(1);
  c.code_bytes = (c.dim * nbits + 7) / 8;
  TORCH_CHECK(codes.size(1) == c.code_bytes, op, ": codes must be [T, ", c.code_bytes, "] for dim ", c.dim, " at ",
              nbits, " bits, got ", codes.sizes());
  TORCH_CHECK_TYPE(centroid_ids->scalar_type() == at::kInt && centroid_ids->dim() == 1 && centroid_ids->size(0) == T &&
                       centroid_ids->is_contiguous(),
                   op, ": centroid_ids must be contiguous int32 [T] = [", T, "], got ", centroid_ids->sizes());
  TORCH_CHECK_TYPE(bucket_weights->scalar_type() == at::kFloat && bucket_weights->numel() == (int64_t{1} << nbits) &&
                       bucket_weights->is_contiguous(),
                   op, ": bucket_weights must be contiguous float32 [", (1 << nbits), "], got ",
                   bucket_weights->sizes());
  c.centroid_ids = centroid_ids->data_ptr<int32_t>();
  c.centroids = centroids->data_ptr<float>();
  c.bucket_weights = bucket_weights->data_ptr<float>();
  s.num_centroids = centroids->size(0);
  return s;
}

}  // namespace

MaxSimCall check_maxsim(const at::Tensor& Q, const at::Tensor& D, const std::optional<at::Tensor>& q_mask,
                        const std::optional<at::Tensor>& d_mask, const std::optional<at::Tensor>& d_lengths,
                        const std::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim";
  MaxSimCall c;
  MaxSimArgs& a = c.args;
  check_query(a, Q, op);
  TORCH_CHECK(D.dim() == 3 || D.dim() == 4, op, ": D must be [N, Ld, dim] or [B, K, Ld, dim], got ", D.sizes());
  a.dtype = a.q_dtype = element_type(D, op, "D");
  check_same_dtype(Q, D, op);
  TORCH_CHECK(D.size(-1) == a.dim, op, ": dim mismatch: Q ", Q.sizes(), ", D ", D.sizes());
  check_rows(D, op, "D");
  TORCH_CHECK(!(d_mask.has_value() && d_lengths.has_value()), op, ": give d_mask or d_lengths, not both");
  const bool all_pairs = D.dim() == 3;
  TORCH_CHECK(all_pairs || D.size(0) == a.B, op, ": D [B, K, Ld, dim] must have B = ", a.B, " (Q's batch), got ",
              D.sizes());
  a.mode = all_pairs ? ScoringMode::all_pairs : ScoringMode::per_query;
  a.K = D.size(-3);
  a.Ld = D.size(-2);
  a.D = D.data_ptr();
  a.d_stride_b = all_pairs ? 0 : D.stride(0);
  a.d_stride_k = D.stride(-3);
  a.d_stride_l = D.stride(-2);
  check_q_mask(c, Q, q_mask, op);
  const auto docs = D.sizes().slice(0, D.dim() - 2);
  a.d_mask =
      optional_input<bool>(d_mask, D.sizes().slice(0, D.dim() - 1), "D's shape without dim", op, "d_mask", c.d_mask);
  a.d_lengths = optional_input<int64_t>(d_lengths, docs, "D's shape without (Ld, dim)", op, "d_lengths", c.d_lengths);
  check_floor(c, floor, docs, op);
  return c;
}

MaxSimCall check_maxsim_packed(const at::Tensor& Q, const at::Tensor& embeddings, const at::Tensor& offsets,
                               const at::Tensor& lengths, const at::Tensor& pids,
                               const std::optional<at::Tensor>& q_mask, int64_t max_len,
                               const std::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed";
  MaxSimCall c;
  MaxSimArgs& a = c.args;
  check_query(a, Q, op);
  TORCH_CHECK(embeddings.dim() == 2, op, ": embeddings must be [T, dim], got ", embeddings.sizes());
  // A packed store is one [T, dim] block: the kernels step from row to row by dim.
  TORCH_CHECK(embeddings.is_contiguous(), op, ": embeddings must be contiguous, got strides ", embeddings.strides());
  a.dtype = a.q_dtype = element_type(embeddings, op, "embeddings");
  check_same_dtype(Q, embeddings, op);
  TORCH_CHECK(embeddings.size(1) == a.dim, op, ": dim mismatch: Q ", Q.sizes(), ", embeddings ", embeddings.sizes());
  check_index(c, offsets, lengths, pids, max_len, op);
  check_candidates(a, pids, op);
  a.D = embeddings.data_ptr();
  a.d_stride_l = a.dim;
  a.num_rows = embeddings.size(0);
  check_q_mask(c, Q, q_mask, op);
  check_floor(c, floor, pids.sizes(), op);
  return c;
}

CodesCall check_maxsim_packed_codes(const at::Tensor& Q, const at::Tensor& codes, const at::Tensor& scales,
                                    const std::optional<at::Tensor>& centroid_ids,
                                    const std::optional<at::Tensor>& centroids,
                                    const std::optional<at::Tensor>& bucket_weights, const at::Tensor& offsets,
                                    const at::Tensor& lengths, const at::Tensor& pids,
                                    const std::optional<at::Tensor>& q_mask, int64_t max_len, int64_t nbits,
                                    const std::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed_codes";
  CodesCall cc;
  MaxSimArgs& a = cc.call.args;
  check_query(a, Q, op);
  TORCH_CHECK_TYPE(Q.scalar_type() == at::kFloat, op, ": Q must be float32 for a compressed store, got ",
                   Q.scalar_type());
  a.q_dtype = DType::f32;
  cc.store = check_codes_store(codes, scales, centroid_ids, centroids, bucket_weights, nbits, op);
  TORCH_CHECK(cc.store.codes.dim == a.dim, op, ": dim mismatch: Q ", Q.sizes(), ", the store has dim ",
              cc.store.codes.dim);
  check_index(cc.call, offsets, lengths, pids, max_len, op);
  check_candidates(a, pids, op);
  a.num_rows = cc.store.num_rows;
  check_q_mask(cc.call, Q, q_mask, op);
  check_floor(cc.call, floor, pids.sizes(), op);
  return cc;
}

GatherCodesCall check_gather_codes(const at::Tensor& codes, const at::Tensor& scales,
                                   const std::optional<at::Tensor>& centroid_ids,
                                   const std::optional<at::Tensor>& centroids,
                                   const std::optional<at::Tensor>& bucket_weights, const at::Tensor& offsets,
                                   const at::Tensor& lengths, const at::Tensor& pids, int64_t max_len, int64_t nbits,
                                   at::ScalarType dtype) {
  constexpr const char* op = "colbert_fast::gather_codes";
  GatherCodesCall g{};
  g.store = check_codes_store(codes, scales, centroid_ids, centroids, bucket_weights, nbits, op);
  check_index(g.call, offsets, lengths, pids, max_len, op);
  g.call.args.num_rows = g.store.num_rows;
  switch (dtype) {
    case at::kFloat:
      g.out_dtype = DType::f32;
      break;
    case at::kHalf:
      g.out_dtype = DType::f16;
      break;
    case at::kBFloat16:
      g.out_dtype = DType::bf16;
      break;
    default:
      TORCH_CHECK_TYPE(false, op, ": dtype must be float32, float16 or bfloat16, got ", dtype);
  }
  return g;
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> gather_sizes(const at::Tensor& pids, int64_t max_len,
                                                                   int64_t dim) {
  auto sizes = pids.sizes().vec();
  sizes.push_back(max_len);
  auto mask_sizes = sizes;
  sizes.push_back(dim);
  return {sizes, mask_sizes};
}

}  // namespace colbert_fast
