"""Public scoring ops: validation, backend selection, and the calls into the chosen backend."""

from __future__ import annotations

import torch

from . import backends
from .compressed import CompressedDocs
from .packed import PackedDocs
from .validation import check_centroid_interaction, check_docs, check_maxsim, check_packed, check_pids

__all__ = ["maxsim", "maxsim_packed", "gather", "centroid_interaction"]


def maxsim(
    Q: torch.Tensor,
    D: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    *,
    d_lengths: torch.Tensor | None = None,
    floor: float | torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Late-interaction (MaxSim) scores, fp32.

        score(q, d) = sum_i q_mask[i] * max_{j : d valid at j} <Q[i], D[j]>

    Args:
        Q: [B, Lq, dim] float32/float16/bfloat16 query token vectors. Converted to D's dtype.
        D: [N, Ld, dim] docs shared by every query -> returns [B, N] (all pairs); or
           [B, K, Ld, dim], K docs per query -> returns [B, K].
        q_mask: bool [B, Lq], True = real token; masked tokens contribute 0. Default: all count
            (ColBERT's [MASK]-padded queries use every token).
        d_mask: bool, D's shape without dim; masked tokens are excluded before the max
            (a doc [0.2, -0.5] with mask [False, True] scores -0.5, not 0).
        d_lengths: int, D's shape without (Ld, dim): valid prefix lengths (the fast path).
            A doc of length 0 scores 0.
        floor: None (default: the plain rule above), a float, or a tensor broadcastable to D's
            shape without (Ld, dim), one value per doc: a lower bound on every query token's max,
            applied inside the kernel. A token contributes max(floor_d, its best similarity); a
            doc with no valid token contributes floor_d per counting query token; -inf means no
            floor for that doc. Values must be -inf or finite; floor is a constant (no gradient).
            This is how libraries' padding rules are reproduced (colbert-ai's clamp at 0 and its
            -9999 sentinel, PyLate's masked-zero similarities: see colbert_fast.compat).
        backend: "auto", "cuda", "triton", "cpu" or "torch".

    Returns:
        fp32 [B, N] or [B, K].
    """
    Q, D, q_mask, d_mask, d_lengths, floor = check_maxsim(Q, D, q_mask, d_mask, d_lengths, floor)
    needs_grad = torch.is_grad_enabled() and (Q.requires_grad or D.requires_grad)
    impl = backends.select(backend, D.device, needs_grad)
    return impl.maxsim(Q, D, q_mask, d_mask, d_lengths, floor)


def maxsim_packed(
    Q: torch.Tensor,
    docs: PackedDocs | CompressedDocs,
    pids: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    *,
    floor: float | torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Score each query against its own candidates, read straight from the packed store.

    Args:
        Q: [B, Lq, dim] query token vectors (converted to docs.dtype; fp32 for a CompressedDocs).
        docs: PackedDocs, or CompressedDocs (scored from its codes: equal to MaxSim over its decoded
            vectors, which are never built in memory), on Q's device.
        pids: int [B, K] (or [K] when B == 1) doc ids; -1 marks an empty slot.
        q_mask: bool [B, Lq], True = real token.
        floor: as for maxsim, broadcastable to pids' [B, K] (one value per candidate slot).
        backend: as for maxsim.

    Returns:
        fp32 [B, K]; empty slots score -inf so they sort last (whatever their floor).
    """
    Q, pids, q_mask, floor = check_packed(Q, docs, pids, q_mask, floor)
    needs_grad = torch.is_grad_enabled() and (Q.requires_grad or _store_requires_grad(docs))
    if isinstance(docs, CompressedDocs):
        impl = backends.select(backend, docs.device, needs_grad, codes=True, op="maxsim_packed_codes")
        return impl.maxsim_packed_codes(Q, docs.codes_view(), pids, q_mask, docs.max_length, floor)
    impl = backends.select(backend, docs.device, needs_grad, op="maxsim_packed")
    view = docs.packed_view()
    return impl.maxsim_packed(Q, view.embeddings, view.offsets, view.lengths, pids, q_mask, view.max_length, floor)


def _store_requires_grad(docs: PackedDocs | CompressedDocs) -> bool:
    """A store whose float tensors require grad: the call needs a backend with a backward too."""
    if isinstance(docs, CompressedDocs):
        view = docs.codes_view()
        return any(t is not None and t.requires_grad for t in (view.scales, view.centroids, view.bucket_weights))
    return docs.packed_view().embeddings.requires_grad


def gather(
    docs: PackedDocs | CompressedDocs,
    pids: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy the selected docs out of the store into a padded batch (decoding a CompressedDocs).

    Args:
        docs: PackedDocs or CompressedDocs.
        pids: int [K] or [B, K]; -1 gives an all-padding row.
        dtype: the output dtype for a CompressedDocs: float16 (default), bfloat16 or float32.
            A PackedDocs is copied in its own dtype (dtype must be None or that dtype).

    Returns:
        D [*pids.shape, Lmax, dim] (padding is 0) and d_mask bool [*pids.shape, Lmax], where Lmax
        is the longest selected doc.
    """
    check_docs(docs)
    squeeze = isinstance(pids, torch.Tensor) and pids.dim() == 1
    pids = check_pids(pids, docs, None)
    compressed = isinstance(docs, CompressedDocs)
    out_dtype = dtype if dtype is not None else (torch.float16 if compressed else docs.dtype)
    if out_dtype not in (torch.float16, torch.bfloat16, torch.float32) or (not compressed and out_dtype != docs.dtype):
        raise TypeError(f"gather: dtype must be float16, bfloat16 or float32 (a PackedDocs: its own), got {dtype}")
    needs_grad = torch.is_grad_enabled() and _store_requires_grad(docs)
    view = docs.codes_view() if compressed else docs.packed_view()
    # Sizing the output needs the longest selected doc: one small host read.
    sel = view.lengths[pids.clamp(min=0)].masked_fill(pids < 0, 0) if docs.num_docs else pids.new_zeros(pids.shape)
    max_len = int(sel.max()) if sel.numel() else 0
    if compressed:
        impl = backends.select(backend, docs.device, needs_grad, codes=True, op="gather_codes")
        D, mask = impl.gather_codes(view, pids, max_len, out_dtype)
    else:
        impl = backends.select(backend, docs.device, needs_grad, op="gather")
        D, mask = impl.gather(view.embeddings, view.offsets, view.lengths, pids, max_len)
    return (D[0], mask[0]) if squeeze else (D, mask)


def centroid_interaction(
    probe_ids: torch.Tensor,
    probe_scores: torch.Tensor,
    floor: torch.Tensor,
    list_offsets: torch.Tensor,
    list_docs: torch.Tensor,
    num_docs: int,
    q_mask: torch.Tensor | None = None,
    *,
    max_entries: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PLAID's centroid interaction over inverted lists: every doc's approximate score at once.

    Each query token probes P lists (a residual store's centroids: list c holds the docs with a
    token assigned to centroid c). A doc gets, per counting query token i, the best score among
    i's probed lists that hold it, raised to floor[b, i] (the value where none does), and these
    are summed:

        M[b, i, d] = max over j with d in list probe_ids[b, i, j] of probe_scores[b, i, j]  (-inf: none)
        score[b, d]    = sum over i with q_mask[b, i] of max(M[b, i, d], floor[b, i])
        positive[b, d] = sum over the same i of max(M[b, i, d], floor[b, i], 0)
        hit[b, d]      = some counting token's lists hold d

    A term can be -inf (floor -inf and no list holds the doc): its sums are then -inf.

    Args:
        probe_ids: int64 [B, Lq, P], each a list id in [0, C).
        probe_scores: fp32 [B, Lq, P].
        floor: fp32 [B, Lq].
        list_offsets: int64 [C + 1], from 0 to len(list_docs), not decreasing: list c is
            list_docs[list_offsets[c] : list_offsets[c + 1]].
        list_docs: int64 [nnz], doc rows in [0, num_docs), strictly ascending within each list.
            The CPU kernel checks every entry it reads and raises IndexError on a bad one.
        num_docs: N, the docs (the outputs' width).
        q_mask: bool [B, Lq] (default: every token counts); a masked token probes nothing.
        max_entries: None, or an int >= the entries any one token's P lists hold together: the
            torch backend then pads its expansion to that size, so no size comes from the data
            (a GPU never waits on the host; the call can be captured in a CUDA graph). The answer
            is the same.
        backend: "auto" (the C++ kernel for CPU tensors when built, else torch), "cpu" or "torch".

    Returns:
        (score fp32 [B, N], positive fp32 [B, N], hit bool [B, N]), no gradient. Every backend adds
        the tokens in order in fp32 (the C++ kernel on any number of threads): one answer, bit for bit.
    """
    q_mask = check_centroid_interaction(
        probe_ids, probe_scores, floor, list_offsets, list_docs, num_docs, q_mask, max_entries
    )
    impl = backends.select(backend, probe_ids.device, op="centroid_interaction")
    with torch.no_grad():
        return impl.centroid_interaction(
            probe_ids, probe_scores, floor, q_mask, list_offsets, list_docs, num_docs, max_entries
        )
