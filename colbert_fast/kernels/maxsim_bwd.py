"""MaxSim backward from the argmax the forward saved: dQ and dD, never the [B, N, Lq, Ld] tensor.

With a[b, n, i] the doc-token index that won query token i of query b against doc n (-1 when no
token won: empty doc, masked query token), and g = dL/dscore [B, N]:

    dQ[b, i]    = sum_n g[b, n] * D[n, a[b, n, i]]                    (a >= 0 only)
    dD[n, j]    = sum_{b, i : a[b, n, i] = j} g[b, n] * Q[b, i]

(per-query mode: D[b, n] in place of D[n], and only query b touches doc (b, n)). Memory is the
saved argmax, O(B*N*Lq).

* dQ (`_maxsim_bwd_dq_kernel`): one program owns BLOCK_T rows of dQ and walks a range of docs in
  order, gathering the winning rows. With few queries (T1: 128 programs for 132 SMs) the docs are
  split over several programs writing separate fp32 slices that are then summed in a fixed order:
  deterministic, no atomics.
* dD, fast (`_maxsim_bwd_dd_atomic_kernel`): one program per (query, doc, token block) scatters
  g * Q rows into an fp32 buffer with atomic adds. The order of the adds varies run to run.
* dD, deterministic (`_maxsim_bwd_dd_onehot_kernel`): one program owns a BLOCK_J block of doc rows
  and sums over all query-token rows in a fixed order as a product one-hot(a == j) * g  @  Q on the
  tensor cores (fp32 operands, tf32x3: as accurate as the fp32 reference). Chosen when
  torch.use_deterministic_algorithms(True) is on, or with deterministic=True.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import settings
from .launch import device_guard, wrap


@triton.jit(do_not_specialize=["B", "N", "Lq", "docs_per_split"])
def _maxsim_bwd_dq_kernel(
    GRAD, D, ARGMAX, DQ_PART,
    B, N, Lq, dim, docs_per_split,
    stride_gb, stride_gn, stride_db, stride_dn, stride_dt,
    BLOCK_T: tl.constexpr, DIM_PAD: tl.constexpr,
):  # fmt: skip
    # Program = (doc split, query, token block). Each split sums its own doc range into its own
    # fp32 slice DQ_PART[split]; the launcher adds the slices (a fixed order: deterministic).
    pid = tl.program_id(0).to(tl.int64)
    n_tb = tl.cdiv(Lq, BLOCK_T)
    split = pid // (B * n_tb)
    rest = pid % (B * n_tb)
    b = rest // n_tb
    t = (rest % n_tb) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < Lq
    offs_d = tl.arange(0, DIM_PAD)
    d_ok = offs_d < dim
    n0 = split * docs_per_split
    n_docs = tl.minimum(N - n0, docs_per_split)
    acc = tl.zeros([BLOCK_T, DIM_PAD], dtype=tl.float32)
    # Walk the docs by advancing 64-bit pointers (no n * stride products to overflow).
    g_ptr = GRAD + b * stride_gb + n0 * stride_gn
    a_ptr = ARGMAX + (b * N + n0) * Lq + t
    d_ptr = D + b * stride_db + n0 * stride_dn
    for _ in range(n_docs):
        g = tl.load(g_ptr)
        a = tl.load(a_ptr, mask=t_ok, other=-1)
        x = tl.load(d_ptr + a.to(tl.int64)[:, None] * stride_dt + offs_d[None, :],
                    mask=(a >= 0)[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
        acc += g * x.to(tl.float32)
        g_ptr += stride_gn
        a_ptr += Lq
        d_ptr += stride_dn
    out = DQ_PART + ((split * B + b) * Lq + t.to(tl.int64))[:, None] * dim + offs_d[None, :]
    tl.store(out, acc, mask=t_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["N", "Lq", "Ld"])
def _maxsim_bwd_dd_atomic_kernel(
    GRAD, Q, ARGMAX, DD,
    N, Lq, Ld, dim, docs_per_query,
    stride_gb, stride_gn, stride_qb, stride_qt,
    BLOCK_T: tl.constexpr, DIM_PAD: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    n_tb = tl.cdiv(Lq, BLOCK_T)
    bn = pid // n_tb
    b = bn // N
    n = bn % N
    t = (pid % n_tb) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < Lq
    offs_d = tl.arange(0, DIM_PAD)
    d_ok = offs_d < dim
    a = tl.load(ARGMAX + bn * Lq + t, mask=t_ok, other=-1)
    g = tl.load(GRAD + b * stride_gb + n * stride_gn)
    q = tl.load(Q + b * stride_qb + t.to(tl.int64)[:, None] * stride_qt + offs_d[None, :],
                mask=t_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
    doc = b * docs_per_query + n  # all-pairs: docs_per_query = 0, so doc n is shared by every query
    dst = DD + ((doc * Ld + a.to(tl.int64)) * dim)[:, None] + offs_d[None, :]
    tl.atomic_add(dst, g * q.to(tl.float32), mask=(a >= 0)[:, None] & d_ok[None, :], sem="relaxed")


@triton.jit(do_not_specialize=["B", "N", "Lq", "Ld"])
def _maxsim_bwd_dd_onehot_kernel(
    GRAD, Q, ARGMAX, DD,
    B, N, Lq, Ld, dim, per_query,
    stride_gb, stride_gn, stride_qb, stride_qt,
    BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr, DIM_PAD: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    n_jb = tl.cdiv(Ld, BLOCK_J)
    doc = pid // n_jb
    j = (pid % n_jb) * BLOCK_J + tl.arange(0, BLOCK_J)
    # Rows (query b, token i) flattened to r = b * Lq + i; per-query docs see only their query.
    n = doc
    r_lo = doc * 0  # int64 like the per-query branch's values
    r_hi = r_lo + B * Lq
    if per_query:
        n = doc % N
        r_lo = (doc // N) * Lq
        r_hi = r_lo + Lq
    offs_r = tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, DIM_PAD)
    d_ok = offs_d < dim
    acc = tl.zeros([BLOCK_J, DIM_PAD], dtype=tl.float32)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        r = r0 + offs_r
        r_ok = r < r_hi
        rb = r // Lq
        rt = r % Lq
        a = tl.load(ARGMAX + (rb * N + n) * Lq + rt, mask=r_ok, other=-1)
        g = tl.load(GRAD + rb * stride_gb + n * stride_gn, mask=r_ok, other=0.0)
        w = tl.where(j[:, None] == a[None, :], g[None, :], 0.0)
        q = tl.load(Q + rb[:, None] * stride_qb + rt[:, None] * stride_qt + offs_d[None, :],
                    mask=r_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
        acc += tl.dot(w, q.to(tl.float32), input_precision="tf32x3")
    dst = DD + ((doc * Ld + j.to(tl.int64)) * dim)[:, None] + offs_d[None, :]
    tl.store(dst, acc.to(DD.dtype.element_ty), mask=(j < Ld)[:, None] & d_ok[None, :])


def maxsim_bwd(
    grad: torch.Tensor,
    Q: torch.Tensor,
    D: torch.Tensor,
    argmax: torch.Tensor,
    need_dq: bool = True,
    need_dd: bool = True,
    deterministic: bool = False,
    dq_splits: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of maxsim_fwd's scores. grad fp32 [B, N] (any strides); Q [B, Lq, dim]; D as in the
    forward ([N, Ld, dim] all-pairs or [B, N, Ld, dim] per-query); argmax int32 [B, N, Lq] from
    maxsim_fwd(save_argmax=True). Returns (dQ like Q, dD like D), both contiguous, None where not
    needed. dq_splits overrides how many ways dQ splits the docs (default: settings.dq_doc_splits)."""
    B, Lq, dim = Q.shape
    N, Ld = D.shape[-3], D.shape[-2]
    all_pairs = D.dim() == 3
    grad = grad.to(torch.float32)
    argmax = argmax.contiguous()
    dQ = dD = None
    dp = settings.dim_pad(dim)
    empty = B == 0 or N == 0 or Ld == 0 or Lq == 0
    if need_dq:
        if empty:
            dQ = torch.zeros((B, Lq, dim), dtype=Q.dtype, device=Q.device)
        else:
            n_tb = triton.cdiv(Lq, settings.BWD_BLOCK_T)
            splits = dq_splits or settings.dq_doc_splits(B * n_tb, N, Q.device)
            per_split = triton.cdiv(N, splits)
            splits = triton.cdiv(N, per_split)
            part = torch.empty((splits, B, Lq, dim), dtype=torch.float32, device=Q.device)
            d_strides = (0, D.stride(0), D.stride(1)) if all_pairs else (D.stride(0), D.stride(1), D.stride(2))
            with device_guard(Q.device):
                wrap(_maxsim_bwd_dq_kernel)[(splits * B * n_tb,)](
                    grad, D, argmax, part, B, N, Lq, dim, per_split,
                    grad.stride(0), grad.stride(1), *d_strides,
                    BLOCK_T=settings.BWD_BLOCK_T, DIM_PAD=dp, num_warps=settings.bwd_num_warps(),
                )  # fmt: skip
            dQ = part.sum(dim=0).to(Q.dtype)
    if need_dd:
        docs = N if all_pairs else B * N
        if empty:
            dD = torch.zeros(D.shape, dtype=D.dtype, device=D.device)
        elif deterministic:
            dD = torch.empty(D.shape, dtype=D.dtype, device=D.device)
            with device_guard(Q.device):
                wrap(_maxsim_bwd_dd_onehot_kernel)[(docs * triton.cdiv(Ld, settings.BWD_BLOCK_J),)](
                    grad, Q, argmax, dD, B, N, Lq, Ld, dim, int(not all_pairs),
                    grad.stride(0), grad.stride(1), Q.stride(0), Q.stride(1),
                    BLOCK_J=settings.BWD_BLOCK_J, BLOCK_R=settings.BWD_BLOCK_R, DIM_PAD=dp,
                    num_warps=settings.bwd_num_warps("bwd_dd_onehot"),
                )  # fmt: skip
        else:
            acc = torch.zeros(D.shape, dtype=torch.float32, device=D.device)
            with device_guard(Q.device):
                wrap(_maxsim_bwd_dd_atomic_kernel)[(B * N * triton.cdiv(Lq, settings.BWD_BLOCK_T),)](
                    grad, Q, argmax, acc, N, Lq, Ld, dim, 0 if all_pairs else N,
                    grad.stride(0), grad.stride(1), Q.stride(0), Q.stride(1),
                    BLOCK_T=settings.BWD_BLOCK_T, DIM_PAD=dp, num_warps=settings.bwd_num_warps(),
                )  # fmt: skip
            dD = acc if D.dtype == torch.float32 else acc.to(D.dtype)
    return dQ, dD
