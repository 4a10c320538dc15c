"""Drop-ins for colbert-ai's colbert.modeling.colbert.colbert_score and colbert_score_packed.

Same signatures, same numbers (within the tolerance rule of docs/spec.md), same output dtype; colbert-ai
need not be installed. `config` is read duck-typed: `total_visible_gpus` (default: the number of
visible GPUs, as ColBERTConfig() computes it) and `interaction` (default "colbert").
"""

from __future__ import annotations

import functools

import torch

from .. import ops
from ..packed import PackedDocs

SENTINEL = -9999.0  # what colbert_score_reduce writes into masked similarities


def read_config(config) -> tuple[bool, str]:
    """(use the GPU, interaction) from a ColBERTConfig-like object, with colbert-ai's defaults."""
    gpus = getattr(config, "total_visible_gpus", None)
    if gpus is None:
        gpus = torch.cuda.device_count()
    return gpus > 0, getattr(config, "interaction", "colbert")


@functools.cache
def _sentinel(dtype: torch.dtype) -> float:
    # ColBERT writes -9999 into a tensor of D's dtype: fp16 stores -10000, bf16 -9984.
    return float(torch.tensor(SENTINEL, dtype=dtype))


def _flipr(per_token: torch.Tensor, config) -> torch.Tensor:
    """colbert_score_reduce's 'flipr' interaction on per-token maxima [N, Lq]."""
    qmax = getattr(config, "query_maxlen", 32)
    if qmax != 64:
        raise ValueError(f"interaction 'flipr' needs config.query_maxlen == 64 (as colbert-ai asserts), got {qmax}")
    k1, k2 = qmax // 2, 8
    a = per_token[:, :qmax].topk(k1, dim=-1).values.sum(-1)
    if k2 <= per_token.shape[1] - qmax:
        return a + per_token[:, qmax:].topk(k2, dim=-1).values.sum(1)
    return a


def _per_token_sentinel(Q: torch.Tensor, D: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-token maxima [N, Lq] with the sentinel, in D's dtype (flipr only: not accelerated)."""
    sims = D @ Q.to(D.dtype).permute(0, 2, 1)  # [N, Ld, Lq]
    sims = sims.masked_fill(~valid.unsqueeze(-1), SENTINEL)
    return sims.max(1).values


def colbert_score(
    Q: torch.Tensor,
    D_padded: torch.Tensor,
    D_mask: torch.Tensor,
    config=None,
    *,
    strict: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """colbert-ai's colbert_score on colbert_fast kernels.

    Args:
        Q: [1 | N, Lq, dim]. With Q.size(0) == 1 the query is scored against every doc; otherwise
            query i is scored against doc i (the aligned mode). Every query token counts.
        D_padded: [N, Ld, dim] float32/float16/bfloat16 (Q is converted to its dtype).
        D_mask: N * Ld elements (ColBERT passes [N, Ld, 1]), bool or 0/1; True = real token.
        config: a ColBERTConfig or None (its defaults); total_visible_gpus > 0 moves the inputs to
            the GPU, as colbert-ai does.
        strict: False (default) reproduces colbert-ai, quirks included; True applies docs/spec.md.
        backend: colbert_fast backend ("auto", "cuda", "triton", "cpu", "torch").

    Returns:
        [N] in D_padded's dtype (strict: fp32).

    colbert-ai's quirk, kept unless strict: a masked doc token's similarity is set to -9999 (in
    D's dtype: -10000 in fp16, -9984 in bf16) rather than excluded, so a doc with no valid token
    scores Lq * -9999 (-inf in fp16: the fp16 sum overflows) where docs/spec.md gives 0. colbert-ai sums
    the maxima in D's dtype; here they are summed in fp32 and cast, so fp16/bf16 scores are
    closer to the fp32 truth than colbert-ai's own. interaction="flipr" runs in plain PyTorch.
    """
    use_gpu, interaction = read_config(config)
    if use_gpu:
        Q, D_padded, D_mask = Q.cuda(), D_padded.cuda(), D_mask.cuda()
    if Q.dim() != 3 or D_padded.dim() != 3:
        raise ValueError(
            f"colbert_score needs Q [1 | N, Lq, dim] and D_padded [N, Ld, dim], got {tuple(Q.shape)} "
            f"and {tuple(D_padded.shape)}"
        )
    N, Ld = D_padded.shape[:2]
    if Q.size(0) not in (1, N):
        raise ValueError(f"Q.size(0) must be 1 or D_padded.size(0) = {N}, got Q shape {tuple(Q.shape)}")
    if D_mask.numel() != N * Ld:
        raise ValueError(
            f"D_mask must have N * Ld = {N * Ld} elements for D_padded {tuple(D_padded.shape)}, "
            f"got shape {tuple(D_mask.shape)}"
        )
    valid = D_mask.reshape(N, Ld).bool()
    if interaction == "flipr":
        return _flipr(_per_token_sentinel(Q, D_padded, valid), config)
    if interaction != "colbert":
        raise ValueError(f"config.interaction must be 'colbert' or 'flipr', got {interaction!r}")
    floor = None
    if not strict:
        floor = torch.where(valid.all(dim=1), float("-inf"), _sentinel(D_padded.dtype))
    if Q.size(0) == 1:
        scores = ops.maxsim(Q, D_padded, None, valid, floor=floor, backend=backend)[0]
    else:  # aligned: query i against its own doc i
        f = None if floor is None else floor.unsqueeze(1)
        scores = ops.maxsim(Q, D_padded.unsqueeze(1), None, valid.unsqueeze(1), floor=f, backend=backend)[:, 0]
    return scores if strict else scores.to(D_padded.dtype)


def colbert_score_packed(
    Q: torch.Tensor,
    D_packed: torch.Tensor,
    D_lengths: torch.Tensor,
    config=None,
    *,
    strict: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """colbert-ai's colbert_score_packed on colbert_fast kernels: one query against packed docs.

    Args:
        Q: [1, Lq, dim] or [Lq, dim]; every token counts.
        D_packed: [T, dim], every doc's token rows back to back.
        D_lengths: int [N], summing to T.
        config, strict, backend: as for colbert_score.

    Returns:
        [N] in D_packed's dtype (strict: fp32).

    colbert-ai's quirks, kept unless strict: on CPU (no GPU in config) its C++ kernel starts
    every per-token maximum at 0, so a query token whose similarities are all negative contributes
    0, not its best similarity (and an empty doc scores 0); colbert-ai accepts only fp32 there,
    this accepts all three dtypes. With GPUs (or interaction "flipr") it pads to the longest doc
    and applies colbert_score's -9999 sentinel instead (an empty doc scores Lq * -9999).
    """
    use_gpu, interaction = read_config(config)
    if use_gpu:
        Q, D_packed, D_lengths = Q.cuda(), D_packed.cuda(), D_lengths.cuda()
    Q = Q.squeeze(0)
    if Q.dim() != 2 or D_packed.dim() != 2:
        raise ValueError(
            f"colbert_score_packed needs one query [1, Lq, dim] and D_packed [T, dim], got "
            f"{tuple(Q.shape)} and {tuple(D_packed.shape)}"
        )
    docs = PackedDocs(D_packed, D_lengths)
    lengths = docs.lengths
    if interaction == "flipr":
        if docs.num_docs == 0:
            return D_packed.new_zeros(0)
        D, valid = _padded(docs)
        return _flipr(_per_token_sentinel(Q.unsqueeze(0), D, valid), config)
    if interaction != "colbert":
        raise ValueError(f"config.interaction must be 'colbert' or 'flipr', got {interaction!r}")
    floor = None
    if not strict:
        if use_gpu:  # padded to the longest doc: the sentinel floors every shorter doc
            longest = docs.max_length
            floor = torch.where(lengths < longest, _sentinel(D_packed.dtype), float("-inf"))
        else:
            floor = 0.0  # colbert-ai's CPU kernel starts every maximum at 0
    pids = torch.arange(docs.num_docs, device=lengths.device).unsqueeze(0)
    scores = ops.maxsim_packed(Q.unsqueeze(0), docs, pids, floor=floor, backend=backend)[0]
    return scores if strict else scores.to(D_packed.dtype)


def _padded(docs: PackedDocs) -> tuple[torch.Tensor, torch.Tensor]:
    return ops.gather(docs, torch.arange(docs.num_docs, device=docs.device))
