"""Ragged lists to padded tensors: the one place the retrieval code pads.

Token id rows (the encoder), candidate rows per query (re-ranking, sharded re-ranking, the
ablation) and per-query embeddings (search by embeddings) all arrive as lists of different
lengths and leave as one padded tensor plus a mask of the real entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["pad_ids", "pad_vectors"]


def pad_ids(
    rows: Sequence[Sequence[int]], fill: int = -1, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer rows of different lengths -> (ids int64 [B, W], real bool [B, W]).

    Args:
        rows: B sequences of ints (token ids, doc rows); a row may be empty.
        fill: the value of the padding slots (-1 is the scoring ops' empty slot).
        width: W; default the longest row (0 when every row is empty). Rows must fit.

    Example: pad_ids([[4, 2], [], [7]]) -> ([[4, 2], [-1, -1], [7, -1]], [[T, T], [F, F], [T, F]]).
    """
    longest = max((len(r) for r in rows), default=0)
    width = longest if width is None else width
    if longest > width:
        raise ValueError(f"a row of {longest} ids does not fit width {width}")
    ids = torch.full((len(rows), width), fill, dtype=torch.int64)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.int64)
        real[i, : len(r)] = True
    return ids, real


def pad_vectors(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[L_i, dim] tensors -> (X fp32 [B, max L_i, dim] with zero padding, real bool [B, max L_i])."""
    width = max((t.shape[0] for t in items), default=0)
    dim = items[0].shape[1] if items else 0
    X = torch.zeros(len(items), width, dim, dtype=torch.float32)
    real = torch.zeros(len(items), width, dtype=torch.bool)
    for i, t in enumerate(items):
        X[i, : t.shape[0]] = t.float()
        real[i, : t.shape[0]] = True
    return X, real
