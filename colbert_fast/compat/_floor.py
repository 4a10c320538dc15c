"""MaxSim with a per-doc floor: the one rule behind every library quirk the compat layer mimics.

    score(q, d) = sum over counting query tokens i of max( floor_d, max over valid doc tokens j of <q_i, d_j> )

floor_d = -inf is the SPEC.md rule (a doc with no valid token then scores 0). The libraries differ
only in floor_d:
    ColBERT's -9999 padding sentinel   floor_d = -9999 (in D's dtype) when d has a masked token
    colbert_score_packed on CPU        floor_d = 0 for every doc (its maxima start at 0)
    PyLate (sims * mask)               floor_d = 0 when d has a masked token (a masked token's
                                       similarity is 0, and 0 takes part in the max)

The kernels take the floor themselves (the `floor` argument of colbert_fast.maxsim and
maxsim_packed: every running maximum starts at floor_d instead of -inf), so a library's rule
costs what SPEC.md's does: one kernel call, whatever the data.
"""

from __future__ import annotations

import torch

from .. import ops


def _prefix_lengths(d_mask: torch.Tensor) -> torch.Tensor | None:
    """Valid-prefix lengths when every row of d_mask is a prefix (as padding makes them), else None."""
    n_valid = d_mask.sum(dim=-1)
    prefix = torch.arange(d_mask.shape[-1], device=d_mask.device) < n_valid.unsqueeze(-1)
    return n_valid if torch.equal(d_mask, prefix) else None


def floored_maxsim(
    Q: torch.Tensor,
    D: torch.Tensor,
    q_mask: torch.Tensor | None,
    d_mask: torch.Tensor | None,
    floor: torch.Tensor | None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """The floored rule for padded docs; fp32 [B, N] (D [N, Ld, dim]) or [B, K] (D [B, K, Ld, dim]).

    Q [B, Lq, dim]; q_mask bool [B, Lq] or None (all count); d_mask bool D.shape[:-1] or None (all
    valid); floor fp32 D.shape[:-2] (-inf = none) or None (the plain SPEC rule).
    """
    lengths = None if d_mask is None else _prefix_lengths(d_mask)
    if lengths is not None:  # the kernels' fast path: each doc's loop stops at its length
        return ops.maxsim(Q, D, q_mask, d_lengths=lengths, floor=floor, backend=backend)
    return ops.maxsim(Q, D, q_mask, d_mask, floor=floor, backend=backend)
