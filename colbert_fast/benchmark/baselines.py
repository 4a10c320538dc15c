"""The plain-PyTorch baseline every speedup is measured against: pad + bmm + masked max + sum.

This is written here (not colbert_fast.reference, which is the fp32 oracle and upcasts
everything) to mirror what users write: the candidates are padded into a batch by one indexed
read of the packed store, similarities come from one batched GEMM in the inputs' dtype, padding
is set to -inf, then the max over doc tokens and a sum over query tokens in fp32. It spends
FLOPs and bytes on padding exactly as such code does. An empty doc (every max -inf) scores 0, as
docs/spec.md says, so the baseline also passes the correctness check on any input.

`compiled(fn)` is the same function under torch.compile (dynamic=False: one graph per shape,
the way a fixed-shape serving loop would use it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from .workloads import Case


def _no_stage(name: str):
    return contextlib.nullcontext()


def pad(
    embeddings: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, pids: torch.Tensor, pad_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows -> padded [*pids.shape, pad_len, dim] and the valid mask (pid -1: all invalid)."""
    safe = pids.clamp(min=0)
    sel_len = torch.where(pids >= 0, lengths[safe], torch.zeros_like(safe))
    pos = torch.arange(pad_len, device=embeddings.device)
    valid = pos < sel_len.unsqueeze(-1)
    rows = torch.where(valid, offsets[safe].unsqueeze(-1) + pos, torch.zeros_like(pos))
    return embeddings[rows], valid


def reduce(sims: torch.Tensor, valid: torch.Tensor, stage=_no_stage) -> torch.Tensor:
    """sims [..., Lq, Ld], valid bool [..., Ld] -> fp32 [...]."""
    with stage("masked max"):
        best = sims.masked_fill(~valid.unsqueeze(-2), float("-inf")).amax(dim=-1)
        best = torch.where(torch.isneginf(best), torch.zeros_like(best), best)
    with stage("sum"):
        return best.float().sum(dim=-1)


def packed_scores(Q, embeddings, offsets, lengths, pids, pad_len: int, stage=_no_stage) -> torch.Tensor:
    """Q [B, Lq, dim], pids [B, K] -> fp32 [B, K] (-inf for pid -1)."""
    with stage("pad"):
        D, valid = pad(embeddings, offsets, lengths, pids, pad_len)
    with stage("bmm"):
        sims = torch.einsum("bqd,bktd->bkqt", Q.to(D.dtype), D)
    return reduce(sims, valid, stage).masked_fill(pids < 0, float("-inf"))


def pairs_scores(Q, D, d_lengths, stage=_no_stage) -> torch.Tensor:
    """Q [B, Lq, dim] x D [N, Ld, dim] (valid prefix d_lengths [N] or None) -> fp32 [B, N]."""
    with stage("pad"):
        if d_lengths is None:
            valid = torch.ones(D.shape[:2], dtype=torch.bool, device=D.device)
        else:
            valid = torch.arange(D.shape[1], device=D.device) < d_lengths.unsqueeze(-1)
    with stage("bmm"):
        # einsum lowers to a single [B*Lq, dim] x [dim, N*Ld] GEMM: no broadcast copy of D.
        sims = torch.einsum("bqd,ntd->bnqt", Q.to(D.dtype), D)
    return reduce(sims, valid.unsqueeze(0), stage)


def case_fn(case: Case, fn=None, stage=_no_stage) -> Callable[[], torch.Tensor]:
    """A zero-argument callable scoring the case with the baseline (or `fn`, its compiled form)."""
    if case.mode == "packed":
        impl = fn or packed_scores
        d = case.docs
        return lambda: impl(case.Q, d.embeddings, d.offsets, d.lengths, case.pids, case.pad_len, stage=stage)
    impl = fn or pairs_scores
    return lambda: impl(case.Q, case.D, case.d_lengths, stage=stage)


def compiled(mode: str):
    """torch.compile'd baseline for a mode ('packed' or 'pairs'/'train')."""
    base = packed_scores if mode == "packed" else pairs_scores
    # Dynamo keys its cache on the function's code object and stops recompiling (falls back to
    # eager, silently) after a few shapes; a suite compiles one graph per workload and dtype, so
    # start each from a clean cache.
    torch._dynamo.reset()
    return torch.compile(base, dynamic=False)
