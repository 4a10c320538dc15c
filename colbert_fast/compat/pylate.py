"""Drop-ins for PyLate's pylate.scores.colbert_scores, colbert_scores_pairwise and colbert_kd_scores.

Same signatures plus keyword-only `strict`; same numbers (within the tolerance rule of docs/spec.md) and
output dtype as PyLate's PyTorch path; PyLate need not be installed.

`backend` here names a colbert_fast backend: None or "auto" (the fastest for the tensors'
device), "cuda", "triton", "cpu", "torch". PyLate's own "flash" and "lik" are not ours: call
PyLate for those. (When PyLate is patched, an explicit PyLate backend, or PYLATE_SCORES_BACKEND,
still goes to PyLate: see colbert_fast.compat.patch_pylate.)
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ops

_PYLATE_ONLY = ("flash", "lik")


def _backend(backend: str | None) -> str:
    if backend is None:
        return "auto"
    if backend.lower() in _PYLATE_ONLY:
        raise ValueError(
            f"backend {backend!r} is one of PyLate's own; colbert_fast.compat takes None, 'auto', 'cuda', "
            "'triton', 'cpu' or 'torch' (call pylate.scores directly for PyLate's backends)"
        )
    return backend.lower()


def to_tensor(x) -> torch.Tensor:
    """PyLate's convert_to_tensor: tensors as they are, numpy arrays shared, lists stacked (fp32
    for numpy arrays and nested lists)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            return torch.tensor([], dtype=torch.float32)
        if isinstance(x[0], np.ndarray):
            return torch.from_numpy(np.array(x, dtype=np.float32))
        if isinstance(x[0], torch.Tensor):
            return torch.stack(list(x))
        return torch.tensor(x, dtype=torch.float32)
    raise TypeError(f"expected a tensor, numpy array or list, got {type(x).__name__}")


class NonBinaryMaskError(ValueError):
    """A mask with values other than 0 and 1: PyLate scales similarities by them, which is not a
    mask; the drop-ins refuse it (a patched PyLate hands such calls back to PyLate)."""


def _mask(name: str, m, shape: tuple) -> torch.Tensor | None:
    """PyLate multiplies similarities by the mask; only 0/1 masks are a mask (weights would scale)."""
    if m is None:
        return None
    m = to_tensor(m)
    if tuple(m.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if bool(((m != 0) & (m != 1)).any()):
            raise NonBinaryMaskError(f"{name} must hold only 0 and 1 (PyLate would scale similarities by other values)")
        m = m != 0
    return m


def _out_dtype(*tensors) -> torch.dtype:
    # PyLate's result type: the embeddings' dtype promoted by each mask it multiplies in.
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _padding_floor(d_mask: torch.Tensor | None, strict: bool) -> torch.Tensor | None:
    # A masked doc token's similarity becomes 0 and takes part in the max: floor 0 for any doc
    # with a masked token.
    if strict or d_mask is None:
        return None
    return torch.where(d_mask.all(dim=-1), float("-inf"), 0.0)


def colbert_scores(
    queries_embeddings,
    documents_embeddings,
    queries_mask: torch.Tensor | None = None,
    documents_mask: torch.Tensor | None = None,
    backend: str | None = None,
    *,
    strict: bool = False,
) -> torch.Tensor:
    """PyLate's colbert_scores on colbert_fast kernels: every query against every doc.

    Args:
        queries_embeddings: [A, S, H] (tensor, numpy array or list).
        documents_embeddings: [B, T, H].
        queries_mask: [A, S], 0/1 or bool; a masked query token contributes 0.
        documents_mask: [B, T], 0/1 or bool.
        backend: a colbert_fast backend name or None ("auto").
        strict: False (default) reproduces PyLate; True applies docs/spec.md.

    Returns:
        [A, B] in the dtype PyLate returns (the embeddings' dtype promoted by the masks' dtypes,
        e.g. fp32 for fp16 embeddings with a float mask); strict: fp32.

    PyLate's quirk, kept unless strict: masked doc tokens are multiplied by 0 instead of excluded,
    so in a doc with any masked token each query token's maximum is at least 0: a doc
    [0.2, -0.5] with mask [0, 1] gives -0.5 under docs/spec.md but 0 here. Without documents_mask
    every token counts, padding rows included (zero rows, as pylate.rank pads, score 0).
    PyLate sums in the input dtype; this sums in fp32 and casts.
    """
    Q = to_tensor(queries_embeddings)
    D = to_tensor(documents_embeddings)
    if Q.dim() != 3 or D.dim() != 3:
        raise ValueError(
            f"colbert_scores needs queries [A, S, H] and documents [B, T, H], got {tuple(Q.shape)} and {tuple(D.shape)}"
        )
    q_mask = _mask("queries_mask", queries_mask, tuple(Q.shape[:2]))
    d_mask = _mask("documents_mask", documents_mask, tuple(D.shape[:2]))
    out_dtype = _out_dtype(
        Q,
        D,
        None if queries_mask is None else to_tensor(queries_mask),
        None if documents_mask is None else to_tensor(documents_mask),
    )
    if Q.shape[1] == 0:  # no query tokens: every score is 0
        return torch.zeros(Q.shape[0], D.shape[0], dtype=torch.float32 if strict else out_dtype, device=D.device)
    scores = ops.maxsim(Q, D, q_mask, d_mask, floor=_padding_floor(d_mask, strict), backend=_backend(backend))
    return scores if strict else scores.to(out_dtype)


def colbert_kd_scores(
    queries_embeddings,
    documents_embeddings,
    queries_mask: torch.Tensor = None,
    documents_mask: torch.Tensor = None,
    backend: str | None = None,
    *,
    strict: bool = False,
) -> torch.Tensor:
    """PyLate's colbert_kd_scores on colbert_fast kernels: each query against its own N docs.

    Args:
        queries_embeddings: [A, S, H].
        documents_embeddings: [A, N, T, H].
        queries_mask: [A, S]; documents_mask: [A, N, T] (0/1 or bool).
        backend, strict: as for colbert_scores.

    Returns:
        [A, N], dtype as for colbert_scores. Same masking quirk as colbert_scores.
    """
    Q = to_tensor(queries_embeddings)
    D = to_tensor(documents_embeddings)
    if Q.dim() != 3 or D.dim() != 4:
        raise ValueError(
            f"colbert_kd_scores needs queries [A, S, H] and documents [A, N, T, H], got "
            f"{tuple(Q.shape)} and {tuple(D.shape)}"
        )
    q_mask = _mask("queries_mask", queries_mask, tuple(Q.shape[:2]))
    d_mask = _mask("documents_mask", documents_mask, tuple(D.shape[:3]))
    out_dtype = _out_dtype(
        Q,
        D,
        None if queries_mask is None else to_tensor(queries_mask),
        None if documents_mask is None else to_tensor(documents_mask),
    )
    if Q.shape[1] == 0:
        return torch.zeros(D.shape[:2], dtype=torch.float32 if strict else out_dtype, device=D.device)
    scores = ops.maxsim(Q, D, q_mask, d_mask, floor=_padding_floor(d_mask, strict), backend=_backend(backend))
    return scores if strict else scores.to(out_dtype)


def colbert_scores_pairwise(
    queries_embeddings, documents_embeddings, backend: str | None = None, *, strict: bool = False
) -> torch.Tensor:
    """PyLate's colbert_scores_pairwise on colbert_fast kernels: query i against doc i.

    Args:
        queries_embeddings: [P, S, H], or a list of [S_i, H] (lengths may differ).
        documents_embeddings: [P, T, H], or a list of [T_i, H].
        backend: as for colbert_scores.
        strict: accepted for symmetry; PyLate's pairwise scoring has no masks, so both modes agree.

    Returns:
        [P'] with P' = the shorter of the two inputs (PyLate zips them), in the embeddings' dtype
        (strict: fp32). Ragged lists are padded and masked here, never scored on padding.
    """
    backend = _backend(backend)
    n = min(len(queries_embeddings), len(documents_embeddings))
    if n == 0:
        return torch.zeros(0)
    if _is_batch(queries_embeddings) and _is_batch(documents_embeddings):  # no copy for [P, L, H] tensors
        Q, D = queries_embeddings[:n], documents_embeddings[:n]
        q_len = torch.full((n,), Q.shape[1], device=Q.device)
        d_len = torch.full((n,), D.shape[1], device=D.device)
    else:
        Q, q_len = _pad([to_tensor(q) for q in list(queries_embeddings)[:n]])
        D, d_len = _pad([to_tensor(d) for d in list(documents_embeddings)[:n]])
    out_dtype = torch.promote_types(Q.dtype, D.dtype)
    if Q.shape[1] == 0:
        return torch.zeros(n, dtype=torch.float32 if strict else out_dtype, device=D.device)
    q_mask = None if bool((q_len == Q.shape[1]).all()) else _prefix_mask(q_len, Q.shape[1])
    d_mask = None if bool((d_len == D.shape[1]).all()) else _prefix_mask(d_len, D.shape[1])
    scores = ops.maxsim(Q, D.unsqueeze(1), q_mask, None if d_mask is None else d_mask.unsqueeze(1), backend=backend)
    scores = scores[:, 0]
    return scores if strict else scores.to(out_dtype)


def _is_batch(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 3


def _pad(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [L_i, H] tensors into [n, Lmax, H] (a view-free stack when all lengths agree)."""
    lengths = torch.tensor([t.shape[0] for t in items])
    if bool((lengths == lengths[0]).all()):
        return torch.stack(items), lengths.to(items[0].device)
    return torch.nn.utils.rnn.pad_sequence(items, batch_first=True), lengths.to(items[0].device)


def _prefix_mask(lengths: torch.Tensor, L: int) -> torch.Tensor:
    return torch.arange(L, device=lengths.device) < lengths.unsqueeze(-1)
