"""Gather from the packed store into a padded batch: the copy on its own, at copy bandwidth.

    OUT[r, t, :] = embeddings[offsets[pids[r]] + t, :]  for t < lengths[pids[r]], else 0
    MASK[r, t]   = t < lengths[pids[r]]                  (pid -1: an all-padding row)

One program copies BLOCK_T rows of one doc in BLOCK_D-wide chunks: each row is a contiguous
dim-vector, so loads and stores are full, aligned vectors, and padding rows are written as
zeros without being read. The kernel resolves pid -> offset/length itself; the output length
max_len is a host int the caller already knows, so there is no device sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import settings
from .codes import decoded_rows
from .launch import device_guard, wrap


@triton.jit(do_not_specialize=["max_len"])
def _gather_kernel(
    EMB, OFFSETS, LENGTHS, PIDS, OUT, MASK,
    max_len, dim, stride_e,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    n_tb = tl.cdiv(max_len, BLOCK_T)
    row = pid // n_tb
    p = tl.load(PIDS + row)
    ok = p >= 0
    safe = tl.maximum(p, 0)
    length = tl.load(LENGTHS + safe, mask=ok, other=0)
    start = tl.load(OFFSETS + safe, mask=ok, other=0)
    t = (pid % n_tb) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < max_len
    valid = t < length
    tl.store(MASK + row * max_len + t, valid.to(tl.uint8), mask=t_ok)
    src_rows = (start + t) * stride_e
    dst_rows = (row * max_len + t) * dim
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < dim
        x = tl.load(EMB + src_rows[:, None] + d[None, :], mask=valid[:, None] & d_ok[None, :], other=0.0)
        tl.store(OUT + dst_rows[:, None] + d[None, :], x, mask=t_ok[:, None] & d_ok[None, :])


def gather(
    embeddings: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, pids: torch.Tensor, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """embeddings [T, dim]; offsets, lengths int64 [num_docs(+1)] (any strides: made contiguous);
    pids int64 of any shape (-1 = empty).

    max_len (host int) must be at least the longest selected doc. Returns D [*pids.shape, max_len,
    dim] in embeddings' dtype (padding 0) and mask bool [*pids.shape, max_len].
    """
    if embeddings.stride(-1) != 1:
        raise ValueError(f"embeddings need a contiguous last dim, got strides {embeddings.stride()}")
    if pids.dtype != torch.int64 or offsets.dtype != torch.int64 or lengths.dtype != torch.int64:
        raise TypeError(f"pids, offsets and lengths must be int64, got {pids.dtype}, {offsets.dtype}, {lengths.dtype}")
    dim = embeddings.shape[1]
    flat = pids.reshape(-1).contiguous()
    # The kernel reads lengths[pid] and offsets[pid] with unit stride (a no-op for PackedDocs').
    lengths, offsets = lengths.contiguous(), offsets.contiguous()
    out = torch.empty((flat.numel(), max_len, dim), dtype=embeddings.dtype, device=embeddings.device)
    mask = torch.empty((flat.numel(), max_len), dtype=torch.bool, device=embeddings.device)
    if flat.numel() and max_len and dim:
        grid = (flat.numel() * triton.cdiv(max_len, settings.GATHER_BLOCK_T),)
        with device_guard(embeddings.device):
            wrap(_gather_kernel)[grid](
                embeddings, offsets, lengths, flat, out, mask.view(torch.uint8),
                max_len, dim, embeddings.stride(0),
                BLOCK_T=settings.GATHER_BLOCK_T, BLOCK_D=settings.GATHER_BLOCK_D, num_warps=4,
            )  # fmt: skip
    elif flat.numel() and max_len:
        mask.copy_(torch.arange(max_len, device=mask.device) < _selected_lengths(lengths, flat)[:, None])
    shape = tuple(pids.shape)
    return out.reshape(*shape, max_len, dim), mask.reshape(*shape, max_len)


@triton.jit
def _nearest_even(x, OUT):
    """fp32 x in OUT's dtype, rounded to nearest even. bf16 by integer rounding: the interpreter's
    conversion truncates, a GPU's rounds; this is the same on both (and as torch rounds)."""
    if OUT.dtype.element_ty == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(OUT.dtype.element_ty)


@triton.jit(do_not_specialize=["max_len"])
def _gather_codes_kernel(
    CODES, SCALES, CIDS, CENT, WEIGHTS, OFFSETS, LENGTHS, PIDS, OUT, MASK,
    max_len, dim, code_bytes,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, CODEC: tl.constexpr, NBITS: tl.constexpr,
):  # fmt: skip
    """As _gather_kernel, from a compressed store: rows decoded in registers, stored in OUT's dtype."""
    pid = tl.program_id(0).to(tl.int64)
    n_tb = tl.cdiv(max_len, BLOCK_T)
    row = pid // n_tb
    p = tl.load(PIDS + row)
    ok = p >= 0
    safe = tl.maximum(p, 0)
    length = tl.load(LENGTHS + safe, mask=ok, other=0)
    start = tl.load(OFFSETS + safe, mask=ok, other=0)
    t = (pid % n_tb) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < max_len
    valid = t < length
    tl.store(MASK + row * max_len + t, valid.to(tl.uint8), mask=t_ok)
    dst = (row * max_len + t) * dim
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < dim
        x = decoded_rows(CODES, SCALES, CIDS, CENT, WEIGHTS, code_bytes, dim, start + t, valid, d, d_ok, CODEC, NBITS)
        tl.store(OUT + dst[:, None] + d[None, :], _nearest_even(x, OUT), mask=t_ok[:, None] & d_ok[None, :])


def gather_codes(
    codes: torch.Tensor,
    scales: torch.Tensor,
    centroid_ids: torch.Tensor | None,
    centroids: torch.Tensor | None,
    bucket_weights: torch.Tensor | None,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    pids: torch.Tensor,
    max_len: int,
    nbits: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A compressed store's selected docs decoded into a padded batch (see gather, and
    kernels/maxsim.py's maxsim_packed_codes_fwd for the store's tensors). Returns D [*pids.shape,
    max_len, dim] in `dtype` (fp32 / fp16 / bf16, rounded to nearest even; padding 0) and mask."""
    residual = nbits != 8
    dim = centroids.shape[1] if residual else codes.shape[1]
    flat = pids.reshape(-1).contiguous()
    lengths, offsets = lengths.contiguous(), offsets.contiguous()
    out = torch.empty((flat.numel(), max_len, dim), dtype=dtype, device=codes.device)
    mask = torch.empty((flat.numel(), max_len), dtype=torch.bool, device=codes.device)
    if flat.numel() and max_len and dim:
        ph = torch.empty(1, dtype=torch.float32, device=codes.device)  # unused pointers (int8): never read
        grid = (flat.numel() * triton.cdiv(max_len, settings.GATHER_BLOCK_T),)
        with device_guard(codes.device):
            wrap(_gather_codes_kernel)[grid](
                codes.view(torch.uint8), scales, centroid_ids if residual else ph.int(),
                centroids if residual else ph, bucket_weights if residual else ph,
                offsets, lengths, flat, out, mask.view(torch.uint8),
                max_len, dim, codes.shape[1],
                BLOCK_T=settings.GATHER_BLOCK_T, BLOCK_D=settings.GATHER_BLOCK_D,
                CODEC=1 if residual else 2, NBITS=nbits, num_warps=4,
            )  # fmt: skip
    elif flat.numel() and max_len:
        mask.copy_(torch.arange(max_len, device=mask.device) < _selected_lengths(lengths, flat)[:, None])
    shape = tuple(pids.shape)
    return out.reshape(*shape, max_len, dim), mask.reshape(*shape, max_len)


def _selected_lengths(lengths: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return torch.where(flat >= 0, lengths[flat.clamp(min=0)], 0)
