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


def _selected_lengths(lengths: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return torch.where(flat >= 0, lengths[flat.clamp(min=0)], 0)
