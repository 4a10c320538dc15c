// Torch glue for the CPU MaxSim kernels: input checks (the ops may be called directly through
// torch.ops, so nothing that would read out of bounds gets past here), params, registration.
// The kernels are in csrc/cpu/maxsim_*.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <stdexcept>

#include "../cpu/maxsim_cpu.h"

namespace colbert_fast {
namespace {

using cpu::DocLayout;
using cpu::DType;
using cpu::MaxSimParams;

DType kernel_dtype(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK_TYPE(false, op, ": ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

// Rows are read as contiguous vectors; the other strides are passed to the kernel as they are.
void check_rows(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
              " must have a contiguous last dim (stride 1), got strides ", t.strides());
}

const bool* optional_mask(const c10::optional<at::Tensor>& m, at::IntArrayRef shape, const char* op, const char* name,
                          at::Tensor& keep) {
  if (!m.has_value()) return nullptr;
  check_cpu(*m, op, name);
  TORCH_CHECK_TYPE(m->scalar_type() == at::kBool, op, ": ", name, " must be bool, got ", m->scalar_type());
  TORCH_CHECK(m->sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", m->sizes());
  keep = m->contiguous();
  return keep.data_ptr<bool>();
}

// One fp32 value per doc (or candidate slot), `shape`; kept contiguous in `keep`.
const float* optional_floor(const c10::optional<at::Tensor>& f, at::IntArrayRef shape, const char* op,
                            at::Tensor& keep) {
  if (!f.has_value()) return nullptr;
  check_cpu(*f, op, "floor");
  TORCH_CHECK_TYPE(f->scalar_type() == at::kFloat, op, ": floor must be float32, got ", f->scalar_type());
  TORCH_CHECK(f->sizes() == shape, op, ": floor must have shape ", shape, " (one value per doc), got ", f->sizes());
  keep = f->contiguous();
  return keep.data_ptr<float>();
}

void run(const MaxSimParams& p) {
  try {
    cpu::maxsim_cpu(p);
  } catch (const std::runtime_error& e) {  // a bad COLBERT_FAST_CPU_ISA
    TORCH_CHECK(false, e.what());
  }
}

void fill_query(MaxSimParams& p, const at::Tensor& Q, const char* op) {
  check_cpu(Q, op, "Q");
  TORCH_CHECK(Q.dim() == 3, op, ": Q must be [B, Lq, dim], got ", Q.sizes());
  TORCH_CHECK(Q.size(1) >= 1, op, ": Q must have Lq >= 1, got ", Q.sizes());
  check_rows(Q, op, "Q");
  p.Q = Q.data_ptr();
  p.B = Q.size(0);
  p.Lq = Q.size(1);
  p.dim = Q.size(2);
  p.q_stride_b = Q.stride(0);
  p.q_stride_l = Q.stride(1);
}

at::Tensor maxsim_cpu_op(const at::Tensor& Q, const at::Tensor& D, const c10::optional<at::Tensor>& q_mask,
                         const c10::optional<at::Tensor>& d_mask, const c10::optional<at::Tensor>& d_lengths,
                         const c10::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim";
  MaxSimParams p{};
  fill_query(p, Q, op);
  check_cpu(D, op, "D");
  TORCH_CHECK(D.dim() == 3 || D.dim() == 4, op, ": D must be [N, Ld, dim] or [B, K, Ld, dim], got ", D.sizes());
  p.dtype = p.q_dtype = kernel_dtype(D, op, "D");
  TORCH_CHECK_TYPE(Q.scalar_type() == D.scalar_type(), op, ": Q (", Q.scalar_type(), ") must have D's dtype (",
                   D.scalar_type(), ")");
  TORCH_CHECK(D.size(-1) == p.dim, op, ": dim mismatch: Q ", Q.sizes(), ", D ", D.sizes());
  check_rows(D, op, "D");
  TORCH_CHECK(!(d_mask.has_value() && d_lengths.has_value()), op, ": give d_mask or d_lengths, not both");
  const bool all_pairs = D.dim() == 3;
  if (!all_pairs) TORCH_CHECK(D.size(0) == p.B, op, ": D [B, K, Ld, dim] must have B = ", p.B, ", got ", D.sizes());
  p.layout = all_pairs ? DocLayout::all_pairs : DocLayout::per_query;
  p.K = D.size(-3);
  p.Ld = D.size(-2);
  p.D = D.data_ptr();
  p.d_stride_b = all_pairs ? 0 : D.stride(0);
  p.d_stride_k = D.stride(-3);
  p.d_stride_l = D.stride(-2);

  at::Tensor qm, dm, dl;
  p.q_mask = optional_mask(q_mask, Q.sizes().slice(0, 2), op, "q_mask", qm);
  p.d_mask = optional_mask(d_mask, D.sizes().slice(0, D.dim() - 1), op, "d_mask", dm);
  if (d_lengths.has_value()) {
    check_cpu(*d_lengths, op, "d_lengths");
    TORCH_CHECK_TYPE(d_lengths->scalar_type() == at::kLong, op, ": d_lengths must be int64, got ",
                     d_lengths->scalar_type());
    const auto shape = D.sizes().slice(0, D.dim() - 2);
    TORCH_CHECK(d_lengths->sizes() == shape, op, ": d_lengths must have shape ", shape, ", got ", d_lengths->sizes());
    dl = d_lengths->contiguous();
    const int64_t* len = dl.data_ptr<int64_t>();
    for (int64_t i = 0; i < dl.numel(); ++i)
      TORCH_CHECK(len[i] >= 0 && len[i] <= p.Ld, op, ": d_lengths must be in [0, Ld = ", p.Ld, "], got ", len[i]);
    p.d_lengths = len;
  }
  at::Tensor fl;
  p.floor = optional_floor(floor, D.sizes().slice(0, D.dim() - 2), op, fl);
  at::Tensor out = at::empty({p.B, p.K}, D.options().dtype(at::kFloat));
  p.out = out.data_ptr<float>();
  run(p);
  return out;
}

at::Tensor maxsim_packed_cpu_op(const at::Tensor& Q, const at::Tensor& embeddings, const at::Tensor& offsets,
                                const at::Tensor& lengths, const at::Tensor& pids,
                                const c10::optional<at::Tensor>& q_mask, int64_t max_len,
                                const c10::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed";
  MaxSimParams p{};
  fill_query(p, Q, op);
  for (const auto& [t, name] : {std::pair{&embeddings, "embeddings"}, {&offsets, "offsets"}, {&lengths, "lengths"},
                                {&pids, "pids"}})
    check_cpu(*t, op, name);
  TORCH_CHECK(embeddings.dim() == 2, op, ": embeddings must be [T, dim], got ", embeddings.sizes());
  p.dtype = p.q_dtype = kernel_dtype(embeddings, op, "embeddings");
  TORCH_CHECK_TYPE(Q.scalar_type() == embeddings.scalar_type(), op, ": Q (", Q.scalar_type(),
                   ") must have embeddings' dtype (", embeddings.scalar_type(), ")");
  TORCH_CHECK(embeddings.size(1) == p.dim, op, ": dim mismatch: Q ", Q.sizes(), ", embeddings ", embeddings.sizes());
  check_rows(embeddings, op, "embeddings");
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong &&
                       pids.scalar_type() == at::kLong,
                   op, ": offsets, lengths and pids must be int64");
  TORCH_CHECK(offsets.dim() == 1 && lengths.dim() == 1 && offsets.numel() == lengths.numel() + 1, op,
              ": offsets must be [N + 1] and lengths [N], got ", offsets.sizes(), " and ", lengths.sizes());
  TORCH_CHECK(pids.dim() == 2 && pids.size(0) == p.B, op, ": pids must be [B, K] with B = ", p.B, ", got ",
              pids.sizes());
  TORCH_CHECK(max_len >= 0, op, ": max_len must be >= 0, got ", max_len);

  const at::Tensor off = offsets.contiguous(), len = lengths.contiguous(), pid = pids.contiguous();
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t* n = len.data_ptr<int64_t>();
  const int64_t* id = pid.data_ptr<int64_t>();
  const int64_t num_docs = lengths.numel(), rows = embeddings.size(0);
  // O(B*K): every selected doc's rows must lie inside embeddings.
  for (int64_t i = 0; i < pid.numel(); ++i) {
    const int64_t d = id[i];
    TORCH_CHECK_INDEX(d >= -1 && d < num_docs, op, ": pid ", d, " out of range for ", num_docs, " docs");
    if (d >= 0)
      TORCH_CHECK_INDEX(o[d] >= 0 && n[d] >= 0 && o[d] <= rows - n[d], op, ": doc ", d, " (offset ", o[d], ", length ",
                        n[d], ") lies outside embeddings ", embeddings.sizes());
  }
  p.layout = DocLayout::packed;
  p.K = pids.size(1);
  p.Ld = max_len;
  p.D = embeddings.data_ptr();
  p.d_stride_l = embeddings.stride(0);
  p.offsets = o;
  p.lengths = n;
  p.pids = id;
  at::Tensor qm;
  p.q_mask = optional_mask(q_mask, Q.sizes().slice(0, 2), op, "q_mask", qm);
  at::Tensor fl;
  p.floor = optional_floor(floor, pids.sizes(), op, fl);
  at::Tensor out = at::empty({p.B, p.K}, Q.options().dtype(at::kFloat));
  p.out = out.data_ptr<float>();
  run(p);
  return out;
}

// ---- compressed stores ------------------------------------------------------------------------

// Checks a compressed store's tensors (device, dtypes, shapes) and points the params at them;
// `keep` holds contiguous copies where needed.
cpu::MaxSimParams codes_query(const at::Tensor& Q, const char* op) {
  cpu::MaxSimParams p{};
  fill_query(p, Q, op);
  TORCH_CHECK_TYPE(Q.scalar_type() == at::kFloat, op, ": Q must be float32 for a compressed store, got ",
                   Q.scalar_type());
  p.q_dtype = DType::f32;
  return p;
}

CodesParams make_codes_params(const at::Tensor& codes, const at::Tensor& scales,
                              const c10::optional<at::Tensor>& centroid_ids, const c10::optional<at::Tensor>& centroids,
                              const c10::optional<at::Tensor>& bucket_weights, int64_t nbits, const char* op) {
  TORCH_CHECK(nbits == 1 || nbits == 2 || nbits == 4 || nbits == 8, op, ": nbits must be 1, 2, 4 (residual) or 8 (int8), got ", nbits);
  check_cpu(codes, op, "codes");
  check_cpu(scales, op, "scales");
  TORCH_CHECK(codes.dim() == 2 && codes.is_contiguous(), op, ": codes must be a contiguous [T, bytes] tensor, got ", codes.sizes());
  const int64_t T = codes.size(0);
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kHalf && scales.dim() == 1 && scales.size(0) == T && scales.is_contiguous(),
                   op, ": scales must be contiguous float16 [T] = [", T, "], got ", scales.scalar_type(), " ", scales.sizes());
  CodesParams c{};
  c.nbits = static_cast<int32_t>(nbits);
  c.codes = static_cast<const uint8_t*>(codes.data_ptr());
  c.scales = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  if (nbits == 8) {
    TORCH_CHECK_TYPE(codes.scalar_type() == at::kChar, op, ": int8 codes must be int8, got ", codes.scalar_type());
    TORCH_CHECK(!centroid_ids.has_value() && !centroids.has_value() && !bucket_weights.has_value(), op,
                ": the int8 codec takes no centroids or buckets");
    c.dim = codes.size(1);
    c.code_bytes = c.dim;
    return c;
  }
  TORCH_CHECK(centroid_ids.has_value() && centroids.has_value() && bucket_weights.has_value(), op,
              ": the residual codec needs centroid_ids, centroids and bucket_weights");
  for (const auto& [t, name] : {std::pair{&*centroid_ids, "centroid_ids"}, {&*centroids, "centroids"},
                                {&*bucket_weights, "bucket_weights"}})
    check_cpu(*t, op, name);
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
                   op, ": bucket_weights must be contiguous float32 [", (1 << nbits), "], got ", bucket_weights->sizes());
  c.centroid_ids = centroid_ids->data_ptr<int32_t>();
  c.centroids = centroids->data_ptr<float>();
  c.bucket_weights = bucket_weights->data_ptr<float>();
  return c;
}

// Every selected doc's rows lie inside the store, and (residual) point at existing centroids:
// O(tokens of the selected docs), far less than scoring them.
void check_selected(const CodesParams& c, int64_t num_centroids, const int64_t* o, const int64_t* n, const int64_t* id,
                    int64_t slots, int64_t num_docs, int64_t rows, const char* op) {
  for (int64_t i = 0; i < slots; ++i) {
    const int64_t d = id[i];
    TORCH_CHECK_INDEX(d >= -1 && d < num_docs, op, ": pid ", d, " out of range for ", num_docs, " docs");
    if (d < 0) continue;
    TORCH_CHECK_INDEX(o[d] >= 0 && n[d] >= 0 && o[d] <= rows - n[d], op, ": doc ", d, " (offset ", o[d], ", length ",
                      n[d], ") lies outside the store's ", rows, " rows");
    if (c.nbits == 8) continue;
    for (int64_t r = o[d]; r < o[d] + n[d]; ++r)
      TORCH_CHECK_INDEX(c.centroid_ids[r] >= 0 && c.centroid_ids[r] < num_centroids, op, ": centroid id ",
                        c.centroid_ids[r], " of row ", r, " out of range for ", num_centroids, " centroids");
  }
}

struct PackedIndex {
  at::Tensor off, len, pid;  // contiguous int64
};

PackedIndex packed_index(const at::Tensor& offsets, const at::Tensor& lengths, const at::Tensor& pids, const char* op) {
  for (const auto& [t, name] : {std::pair{&offsets, "offsets"}, {&lengths, "lengths"}, {&pids, "pids"}})
    check_cpu(*t, op, name);
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong &&
                       pids.scalar_type() == at::kLong,
                   op, ": offsets, lengths and pids must be int64");
  TORCH_CHECK(offsets.dim() == 1 && lengths.dim() == 1 && offsets.numel() == lengths.numel() + 1, op,
              ": offsets must be [N + 1] and lengths [N], got ", offsets.sizes(), " and ", lengths.sizes());
  return {offsets.contiguous(), lengths.contiguous(), pids.contiguous()};
}

at::Tensor maxsim_packed_codes_cpu_op(const at::Tensor& Q, const at::Tensor& codes, const at::Tensor& scales,
                                      const c10::optional<at::Tensor>& centroid_ids,
                                      const c10::optional<at::Tensor>& centroids,
                                      const c10::optional<at::Tensor>& bucket_weights, const at::Tensor& offsets,
                                      const at::Tensor& lengths, const at::Tensor& pids,
                                      const c10::optional<at::Tensor>& q_mask, int64_t max_len, int64_t nbits,
                                      const c10::optional<at::Tensor>& floor) {
  constexpr const char* op = "colbert_fast::maxsim_packed_codes";
  MaxSimParams p = codes_query(Q, op);
  const CodesParams c = make_codes_params(codes, scales, centroid_ids, centroids, bucket_weights, nbits, op);
  TORCH_CHECK(c.dim == p.dim, op, ": dim mismatch: Q ", Q.sizes(), ", the store has dim ", c.dim);
  const PackedIndex ix = packed_index(offsets, lengths, pids, op);
  TORCH_CHECK(pids.dim() == 2 && pids.size(0) == p.B, op, ": pids must be [B, K] with B = ", p.B, ", got ", pids.sizes());
  TORCH_CHECK(max_len >= 0, op, ": max_len must be >= 0, got ", max_len);
  check_selected(c, centroids.has_value() ? centroids->size(0) : 0, ix.off.data_ptr<int64_t>(), ix.len.data_ptr<int64_t>(),
                 ix.pid.data_ptr<int64_t>(), ix.pid.numel(), lengths.numel(), codes.size(0), op);
  p.layout = DocLayout::packed;
  p.K = pids.size(1);
  p.Ld = max_len;
  p.offsets = ix.off.data_ptr<int64_t>();
  p.lengths = ix.len.data_ptr<int64_t>();
  p.pids = ix.pid.data_ptr<int64_t>();
  p.codes = &c;
  at::Tensor qm, fl;
  p.q_mask = optional_mask(q_mask, Q.sizes().slice(0, 2), op, "q_mask", qm);
  p.floor = optional_floor(floor, pids.sizes(), op, fl);
  at::Tensor out = at::empty({p.B, p.K}, Q.options().dtype(at::kFloat));
  p.out = out.data_ptr<float>();
  run(p);
  return out;
}

std::tuple<at::Tensor, at::Tensor> gather_codes_cpu_op(const at::Tensor& codes, const at::Tensor& scales,
                                                       const c10::optional<at::Tensor>& centroid_ids,
                                                       const c10::optional<at::Tensor>& centroids,
                                                       const c10::optional<at::Tensor>& bucket_weights,
                                                       const at::Tensor& offsets, const at::Tensor& lengths,
                                                       const at::Tensor& pids, int64_t max_len, int64_t nbits,
                                                       at::ScalarType dtype) {
  constexpr const char* op = "colbert_fast::gather_codes";
  const CodesParams c = make_codes_params(codes, scales, centroid_ids, centroids, bucket_weights, nbits, op);
  const PackedIndex ix = packed_index(offsets, lengths, pids, op);
  TORCH_CHECK(max_len >= 0, op, ": max_len must be >= 0, got ", max_len);
  check_selected(c, centroids.has_value() ? centroids->size(0) : 0, ix.off.data_ptr<int64_t>(), ix.len.data_ptr<int64_t>(),
                 ix.pid.data_ptr<int64_t>(), ix.pid.numel(), lengths.numel(), codes.size(0), op);
  DType out_dtype;
  switch (dtype) {
    case at::kFloat: out_dtype = DType::f32; break;
    case at::kHalf: out_dtype = DType::f16; break;
    case at::kBFloat16: out_dtype = DType::bf16; break;
    default: TORCH_CHECK_TYPE(false, op, ": dtype must be float32, float16 or bfloat16, got ", dtype);
  }
  auto sizes = pids.sizes().vec();
  auto mask_sizes = sizes;
  sizes.push_back(max_len);
  sizes.push_back(c.dim);
  mask_sizes.push_back(max_len);
  at::Tensor out = at::empty(sizes, codes.options().dtype(dtype));
  at::Tensor mask = at::empty(mask_sizes, codes.options().dtype(at::kBool));
  cpu::CodesGatherParams g{&c, ix.off.data_ptr<int64_t>(), ix.len.data_ptr<int64_t>(), ix.pid.data_ptr<int64_t>(),
                           out.data_ptr(), mask.data_ptr<bool>(), out_dtype, pids.numel(), max_len};
  try {
    cpu::gather_codes_cpu(g);
  } catch (const std::runtime_error& e) {  // a bad COLBERT_FAST_CPU_ISA
    TORCH_CHECK(false, e.what());
  }
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
