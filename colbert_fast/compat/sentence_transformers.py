"""Drop-ins for sentence-transformers 6's multi-vector scoring: sentence_transformers.util.similarity's
maxsim, maxsim_pairwise, mean_maxsim and mean_maxsim_pairwise.

Same signatures (plus keyword-only `backend` and `strict`); same numbers within the tolerance rule of
docs/spec.md; sentence-transformers need not be installed. ST6's rules, all kept:

- Without a mask, a ragged list's padding is masked, and so are the all-zero rows of a padded 3D
  tensor (ST6 reads them as padding). A given mask replaces that.
- A masked doc token is excluded from the max (docs/spec.md's rule, not PyLate's zero).
- A doc with no valid token scores -1e9 (ST6's _EMPTY_DOCUMENT_SCORE), before the division by the
  query length; docs/spec.md scores it 0 (strict=True).
- The query mask multiplies each query token's maximum: a 0/1 or bool mask is a mask, which the
  kernels apply. Other values are weights, which only ST6's own code applies: the drop-ins raise
  UnsupportedCallError, and a patched sentence-transformers hands such calls back to ST6.
- length_normalize divides by the number of nonzero query-mask entries (at least 1); without a mask
  by the list items' lengths or a 3D tensor's nonzero rows.
- Output fp32 on the documents' device (the queries' for numpy documents); `device` picks where
  the scoring runs.

Not copied: ST6's one-time log warning about empty documents. Where ST6 raises (maxsim with
length_normalize and one 1D a_mask for a batch), the drop-ins raise UnsupportedCallError, so a
patched call raises ST6's own error.

`chunk_elements` is accepted and does not change the numbers (ST6's chunks only bound its memory; the
kernels do not materialize the similarity tensor). A ragged document list without a mask is packed
(colbert_fast.maxsim_packed, no padding); other inputs are padded once to the longest item.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import ops
from ..packed import PackedDocs

EMPTY_DOCUMENT_SCORE = -1e9  # sentence_transformers.util.similarity._EMPTY_DOCUMENT_SCORE

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class UnsupportedCallError(ValueError):
    """A call the drop-ins cannot reproduce exactly (query-mask weights other than 0/1, float64 or
    mixed-dtype embeddings, sparse tensors, masks marking padding of a ragged document list as
    valid). A patched sentence-transformers runs its own code for these."""


def _to_tensor(x) -> torch.Tensor:
    """ST6's _convert_to_tensor (dense inputs)."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(x)
    elif isinstance(x, list) and x and all(isinstance(i, torch.Tensor) for i in x):
        t = torch.stack(x)
    elif isinstance(x, list) and x and all(isinstance(i, np.ndarray) for i in x):
        t = torch.stack([torch.from_numpy(i) for i in x])
    else:
        t = torch.tensor(x)
    if t.is_sparse:
        raise UnsupportedCallError("sparse embeddings: only sentence-transformers' own code scores them")
    return t


def _canonicalize(embeddings, mask, name: str):
    """ST6's _canonicalize_side: masks become one tensor, a bare 2D input is a batch of one."""
    if isinstance(mask, (list, tuple)):
        mask = torch.nn.utils.rnn.pad_sequence([_to_tensor(m) for m in mask], batch_first=True)
    elif isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask)
    elif mask is not None and not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a tensor, an ndarray, or a list of per-item masks, not {type(mask).__name__}."
        )
    if isinstance(embeddings, (np.ndarray, torch.Tensor)) and embeddings.ndim == 2:
        embeddings = embeddings[None]
        if mask is not None and mask.ndim == 1:
            mask = mask.unsqueeze(0)
    return embeddings, mask


def _device_of(embeddings) -> torch.device | None:
    if isinstance(embeddings, torch.Tensor):
        return embeddings.device
    if isinstance(embeddings, list) and embeddings and isinstance(embeddings[0], torch.Tensor):
        return embeddings[0].device
    return None


def _fit_width(mask: torch.Tensor, width: int, name: str) -> torch.Tensor:
    if mask.shape[-1] != width:
        raise ValueError(f"`{name}` covers {mask.shape[-1]} tokens, but the padded embeddings have {width}.")
    return mask


def _nonzero_rows(X: torch.Tensor) -> torch.Tensor:
    """X.any(dim=-1) (ST6's zero-row padding rule), about twice as fast on CPU."""
    if X.shape[-1] == 0:
        return torch.zeros(X.shape[:-1], dtype=torch.bool, device=X.device)
    return (X.amax(dim=-1) != 0) | (X.amin(dim=-1) != 0)


def _side(embeddings, mask, name: str):
    """One side padded: (X [n, L, H] float, user mask or None, valid-token mask bool [n, L])."""
    if isinstance(embeddings, list):
        items = [_to_tensor(t) for t in embeddings]
        items = [t if t.is_floating_point() else t.float() for t in items]
        lengths = torch.tensor([t.shape[0] for t in items])
        X = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)
        valid = torch.arange(X.shape[1]) < lengths.unsqueeze(1)
    else:
        X = _to_tensor(embeddings)
        if not X.is_floating_point():
            X = X.float()
        if X.dim() != 3:
            raise ValueError(f"{name[0]} must be 3D, a list of 2D tensors or one 2D tensor, got {tuple(X.shape)}")
        valid = _nonzero_rows(X)
    if X.dtype not in _DTYPES:
        raise UnsupportedCallError(f"{X.dtype} embeddings: colbert_fast scores fp32, fp16 and bf16")
    if mask is not None:
        mask = _fit_width(mask, X.shape[1], name).expand(X.shape[0], -1)
        if isinstance(embeddings, list):
            # ST6 pads per chunk and cuts the mask to the chunk's width: what a mask marks valid past
            # an item's end depends on its chunking. Only documents are affected (a zero query row
            # contributes 0 either way).
            if name == "b_mask" and bool((mask.bool() & ~valid.to(mask.device)).any()):
                raise UnsupportedCallError("b_mask marks padding of a ragged document list as valid")
    return X, mask, valid


def _query_mask(a_mask: torch.Tensor | None) -> torch.Tensor | None:
    if a_mask is None:
        return None
    if a_mask.dtype == torch.bool:
        return a_mask
    if a_mask.requires_grad or bool(((a_mask != 0) & (a_mask != 1)).any()):
        raise UnsupportedCallError(
            "a_mask holds weights (values other than 0 and 1): sentence-transformers multiplies them in"
        )
    return a_mask != 0


def _prepare(a, b, a_mask, b_mask):
    a, a_mask = _canonicalize(a, a_mask, "a_mask")
    b, b_mask = _canonicalize(b, b_mask, "b_mask")
    return a, b, a_mask, b_mask


def _packed(b: list) -> tuple[PackedDocs, torch.Tensor]:
    """A ragged document list without a mask, packed (no padding): (store, lengths)."""
    items = [_to_tensor(t) for t in b]
    items = [t if t.is_floating_point() else t.float() for t in items]
    if any(t.dim() != 2 or t.shape[1] != items[0].shape[1] or t.dtype != items[0].dtype for t in items):
        raise UnsupportedCallError("documents of different dims or dtypes")
    if items[0].dtype not in _DTYPES:
        raise UnsupportedCallError(f"{items[0].dtype} embeddings: colbert_fast scores fp32, fp16 and bf16")
    docs = PackedDocs.from_list(items)
    return docs, docs.lengths


def _score(a, b, a_mask, b_mask, length_normalize, device, backend, strict, pairwise: bool) -> torch.Tensor:
    result_device = _device_of(b) or _device_of(a) or torch.device("cpu")
    scoring_device = torch.device(device) if device is not None else result_device
    backend = backend or "auto"
    Q, a_mask, q_valid = _side(a, a_mask, "a_mask")
    q_mask = _query_mask(a_mask) if a_mask is not None else q_valid
    counts = q_mask.sum(dim=-1).clamp(min=1) if length_normalize else None
    Q, q_mask = Q.to(scoring_device), q_mask.to(scoring_device)
    shape = (len(b),) if pairwise else (Q.shape[0], len(b))
    if isinstance(b, list) and b_mask is None:  # ragged docs: scored packed, never padded
        docs, lengths = _packed(b)
        if Q.dtype != docs.dtype:
            raise UnsupportedCallError(f"queries in {Q.dtype} and documents in {docs.dtype}")
        if docs.device != scoring_device:
            docs = PackedDocs(docs.embeddings.to(scoring_device), lengths)
        empty = lengths.to(scoring_device) == 0
        if Q.shape[1] == 0 or docs.num_tokens == 0:
            scores = torch.zeros(shape, device=scoring_device)
        else:
            pids = torch.arange(len(b), device=scoring_device)
            pids = pids[:, None] if pairwise else pids.expand(Q.shape[0], -1).contiguous()
            q = None if bool(q_mask.all()) else q_mask
            scores = ops.maxsim_packed(Q, docs, pids, q, backend=backend)
            scores = scores[:, 0] if pairwise else scores
    else:
        D, b_mask, d_valid = _side(b, b_mask, "b_mask")
        if Q.dtype != D.dtype:
            raise UnsupportedCallError(f"queries in {Q.dtype} and documents in {D.dtype}")
        d_mask = (b_mask.bool() if b_mask is not None else d_valid).to(scoring_device)
        D = D.to(scoring_device)
        empty = ~d_mask.any(dim=-1)
        if Q.shape[1] == 0 or D.shape[1] == 0:
            scores = torch.zeros(shape, device=scoring_device)
        else:
            q = None if bool(q_mask.all()) else q_mask
            if pairwise:
                scores = ops.maxsim(Q, D.unsqueeze(1), q, d_mask.unsqueeze(1), backend=backend)[:, 0]
            else:
                scores = ops.maxsim(Q, D, q, d_mask, backend=backend)
    if not strict:  # ST6 sets a doc with no valid token to -1e9 (before the length division)
        scores = scores.masked_fill(empty if pairwise else empty.unsqueeze(0), EMPTY_DOCUMENT_SCORE)
    scores = scores.to(result_device)
    if counts is not None:
        counts = counts.to(device=result_device, dtype=scores.dtype)
        scores = scores / (counts if pairwise else counts.unsqueeze(1))
    return scores


def maxsim(
    a,
    b,
    a_mask: torch.Tensor | None = None,
    b_mask: torch.Tensor | None = None,
    chunk_elements: int | None = None,
    length_normalize: bool = False,
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    strict: bool = False,
) -> torch.Tensor:
    """sentence_transformers.util.maxsim on colbert_fast kernels: every query in `a` against every doc in `b`.

    Args:
        a: queries: [A, Lq, H] tensor or array, a list of [Lq_i, H], or one [Lq, H].
        b: documents, likewise.
        a_mask: [A, Lq] (or [Lq], or a list of per-item masks), 0/1 or bool; None: every real token.
        b_mask: [B, Ld], likewise; nonzero = valid.
        chunk_elements: accepted; does not change the numbers.
        length_normalize: divide by the number of real query tokens (MeanMaxSim).
        device: where to score; the result goes to the documents' device.
        backend: a colbert_fast backend name or None ("auto").
        strict: False (default) reproduces sentence-transformers; True scores a doc with no valid
            token 0 (docs/spec.md) instead of -1e9.

    Returns:
        fp32 [A, B] on the documents' device.

    Raises:
        UnsupportedCallError: query-mask weights, float64 or mixed-dtype embeddings, sparse input
            (see the module doc); a patched sentence-transformers runs its own code for those.
    """
    a, b, a_mask, b_mask = _prepare(a, b, a_mask, b_mask)
    if len(a) == 0 or len(b) == 0:
        return torch.zeros(len(a), len(b), dtype=torch.float32, device=_device_of(b) or _device_of(a))
    if length_normalize and a_mask is not None and a_mask.dim() == 1:
        # One mask for the whole batch: ST6 counts its tokens into a 0-d tensor and fails to divide
        raise UnsupportedCallError("length_normalize with one 1D a_mask for a batch: sentence-transformers raises")
    return _score(a, b, a_mask, b_mask, length_normalize, device, backend, strict, pairwise=False)


def maxsim_pairwise(
    a,
    b,
    a_mask: torch.Tensor | None = None,
    b_mask: torch.Tensor | None = None,
    chunk_elements: int | None = None,
    length_normalize: bool = False,
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    strict: bool = False,
) -> torch.Tensor:
    """sentence_transformers.util.maxsim_pairwise on colbert_fast kernels: query a[i] against doc b[i].

    Arguments as for maxsim; `a` and `b` must hold the same number of items (ValueError otherwise).

    Returns:
        fp32 [P] on the documents' device.
    """
    a, b, a_mask, b_mask = _prepare(a, b, a_mask, b_mask)
    if len(a) != len(b):
        raise ValueError(
            f"`a` and `b` must hold the same number of items to score as pairs, got {len(a)} and {len(b)}."
        )
    if len(a) == 0:
        return torch.zeros(0, dtype=torch.float32, device=_device_of(b) or _device_of(a))
    return _score(a, b, a_mask, b_mask, length_normalize, device, backend, strict, pairwise=True)


def mean_maxsim(
    a,
    b,
    a_mask: torch.Tensor | None = None,
    b_mask: torch.Tensor | None = None,
    chunk_elements: int | None = None,
    length_normalize: bool = True,
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    strict: bool = False,
) -> torch.Tensor:
    """sentence_transformers.util.mean_maxsim: maxsim with length_normalize=True by default."""
    return maxsim(a, b, a_mask, b_mask, chunk_elements, length_normalize, device, backend=backend, strict=strict)


def mean_maxsim_pairwise(
    a,
    b,
    a_mask: torch.Tensor | None = None,
    b_mask: torch.Tensor | None = None,
    chunk_elements: int | None = None,
    length_normalize: bool = True,
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    strict: bool = False,
) -> torch.Tensor:
    """sentence_transformers.util.mean_maxsim_pairwise: maxsim_pairwise with length_normalize=True by default."""
    return maxsim_pairwise(
        a, b, a_mask, b_mask, chunk_elements, length_normalize, device, backend=backend, strict=strict
    )
