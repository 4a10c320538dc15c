"""Plain-PyTorch backend: runs everywhere and supports autograd.

Unlike the reference it never materialises the whole [B, N, Lq, Ld] similarity tensor: docs are
processed in chunks sized to keep the per-chunk similarity block near CHUNK_ELEMENTS.
On CPU the products are computed in fp32 (CPU half-precision GEMMs are slow); on GPU in the
inputs' dtype with fp32 accumulation inside the GEMM. Maxima are summed in fp32.
"""

from __future__ import annotations

import torch

NAME = "torch"
SUPPORTS_BACKWARD = True
BACKWARD_OPS = ("maxsim", "maxsim_packed", "gather", "maxsim_packed_codes", "gather_codes")  # plain autograd
CHUNK_ELEMENTS = 1 << 24  # 16M similarities per chunk: 64 MB in fp32


def unavailable_reason(device: torch.device) -> str | None:
    return None


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "cpu" else t.dtype


def _reduce(
    sims: torch.Tensor, d_valid: torch.Tensor | None, q_valid: torch.Tensor | None, floor: torch.Tensor | None
) -> torch.Tensor:
    """sims [..., Lq, Ld] -> fp32 [...]: masked max over doc tokens, raised to floor [..., 1] when
    given; a max still -inf (empty doc, no floor) -> 0; masked query token -> 0 (whatever it holds);
    a NaN or infinite similarity of a valid pair -> the doc scores NaN (docs/spec.md section 10)."""
    bad = ~torch.isfinite(sims)
    if d_valid is not None:
        bad = bad & d_valid.unsqueeze(-2)
    if q_valid is not None:
        bad = bad & q_valid.unsqueeze(-1)
    nonfinite = bad.flatten(-2).any(dim=-1)
    if sims.shape[-1] == 0:
        best = sims.new_full(sims.shape[:-1], float("-inf"), dtype=torch.float32)
    else:
        if d_valid is not None:
            sims = sims.masked_fill(~d_valid.unsqueeze(-2), float("-inf"))
        best = sims.amax(dim=-1).float()
    if floor is not None:
        best = torch.maximum(best, floor)
    best = torch.where(torch.isneginf(best), torch.zeros_like(best), best)
    if q_valid is not None:
        best = torch.where(q_valid, best, torch.zeros_like(best))  # not best * mask: NaN * 0 is NaN
    return best.sum(dim=-1).masked_fill(nonfinite, float("nan"))


def _doc_valid(D, d_mask, d_lengths):
    if d_lengths is not None:
        return torch.arange(D.shape[-2], device=D.device) < d_lengths.unsqueeze(-1)
    return d_mask


def maxsim(Q, D, q_mask, d_mask, d_lengths, floor=None):
    ct = _compute_dtype(D)
    d_valid = _doc_valid(D, d_mask, d_lengths)
    Qc = Q.to(ct)
    B, Lq = Q.shape[:2]
    Ld = D.shape[-2]
    if D.dim() == 3:  # all pairs
        per_doc = max(1, B * Lq * Ld)
        chunk = max(1, CHUNK_ELEMENTS // per_doc)
        out = []
        for start in range(0, D.shape[0], chunk):
            Dc = D[start : start + chunk].to(ct)
            sims = torch.einsum("bqd,ntd->bnqt", Qc, Dc)
            dv = None if d_valid is None else d_valid[start : start + chunk].unsqueeze(0)
            qv = None if q_mask is None else q_mask.unsqueeze(1)
            fl = None if floor is None else floor[None, start : start + chunk, None]
            out.append(_reduce(sims, dv, qv, fl))
        return torch.cat(out, dim=1) if out else Q.new_zeros((B, 0), dtype=torch.float32)
    # per-query candidates: chunk over K with every query at once (no per-query Python loop)
    K = D.shape[1]
    chunk = max(1, CHUNK_ELEMENTS // max(1, B * Lq * Ld))
    qv = None if q_mask is None else q_mask.unsqueeze(1)
    out = []
    for start in range(0, K, chunk):
        Dc = D[:, start : start + chunk].to(ct)
        sims = torch.einsum("bqd,bktd->bkqt", Qc, Dc)
        dv = None if d_valid is None else d_valid[:, start : start + chunk]
        fl = None if floor is None else floor[:, start : start + chunk, None]
        out.append(_reduce(sims, dv, qv, fl))
    return torch.cat(out, dim=1) if out else Q.new_zeros((B, 0), dtype=torch.float32)


def _gather_rows(embeddings, offsets, lengths, pids, max_len):
    """Packed rows -> [*pids.shape, max_len, dim] in one indexed read, and the valid mask.

    Padding rows hold whatever row 0 holds: callers mask them (MaxSim) or zero them (gather).
    """
    pos = torch.arange(max_len, device=embeddings.device)
    if embeddings.shape[0] == 0:  # no rows (an empty store: every pid is -1): nothing to index
        mask = torch.zeros((*pids.shape, max_len), dtype=torch.bool, device=embeddings.device)
        return embeddings.new_zeros((*pids.shape, max_len, embeddings.shape[1])), mask
    safe = pids.clamp(min=0)
    sel_len = torch.where(pids >= 0, lengths[safe], torch.zeros_like(safe))
    mask = pos < sel_len.unsqueeze(-1)
    rows = torch.where(mask, offsets[safe].unsqueeze(-1) + pos, torch.zeros_like(pos))
    return embeddings[rows], mask


def gather(embeddings, offsets, lengths, pids, max_len):
    """Packed rows -> padded [*pids.shape, max_len, dim] (padding zeroed) + mask."""
    out, mask = _gather_rows(embeddings, offsets, lengths, pids, max_len)
    return out.masked_fill_(~mask.unsqueeze(-1), 0), mask


def maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor=None):
    # Gather a chunk of candidate columns for every query at once, padded to the longest doc
    # that can occur (a host int: no device sync), and score it as a per-query batch.
    B, K = pids.shape
    per_column = max(1, B * max(max_len, 1) * (Q.shape[1] + embeddings.shape[1]))
    chunk = max(1, CHUNK_ELEMENTS // per_column)
    out = []
    for start in range(0, K, chunk):
        D, d_mask = _gather_rows(embeddings, offsets, lengths, pids[:, start : start + chunk], max_len)
        fl = None if floor is None else floor[:, start : start + chunk]
        out.append(maxsim(Q, D, q_mask, d_mask, None, fl))
    scores = torch.cat(out, dim=1) if out else Q.new_zeros((B, 0), dtype=torch.float32)
    return scores.masked_fill(pids < 0, float("-inf"))


# ---- compressed stores (colbert_fast.compressed) ---------------------------------------------------
# Decoded here with code of its own (the oracle's decode in colbert_fast.reference judges it):
# only the gathered chunk's rows are decoded, never the store.


def supports_codes(device: torch.device) -> bool:
    return True


def _decode(view, rows: torch.Tensor) -> torch.Tensor:
    """fp32 [*rows.shape, dim]: the decoded vectors of token rows `rows`."""
    flat = rows.reshape(-1)
    scale = view.scales[flat].float().unsqueeze(-1)
    if view.nbits == 8:
        out = view.codes[flat].float() * scale
    else:
        per_byte = 8 // view.nbits
        dims = torch.arange(view.dim, device=rows.device)
        byte = view.codes[flat][:, dims // per_byte].to(torch.int32)
        bucket = (byte >> ((dims % per_byte) * view.nbits).to(torch.int32)) & ((1 << view.nbits) - 1)
        centroid = view.centroids[view.centroid_ids[flat].long()]
        out = (centroid + view.bucket_weights[bucket.long()]) * scale
    return out.reshape(*rows.shape, view.dim)


def _rows_of(view, pids, max_len):
    """Token rows [*pids.shape, max_len] (padding points at row 0) and the valid mask."""
    pos = torch.arange(max_len, device=pids.device)
    if view.lengths.numel() == 0:  # an empty store: every pid is -1
        mask = torch.zeros((*pids.shape, max_len), dtype=torch.bool, device=pids.device)
        return torch.zeros((*pids.shape, max_len), dtype=torch.int64, device=pids.device), mask
    safe = pids.clamp(min=0)
    sel_len = torch.where(pids >= 0, view.lengths[safe], torch.zeros_like(safe))
    mask = pos < sel_len.unsqueeze(-1)
    rows = torch.where(mask, view.offsets[safe].unsqueeze(-1) + pos, torch.zeros_like(pos))
    return rows, mask


def gather_codes(view, pids, max_len, dtype):
    rows, mask = _rows_of(view, pids, max_len)
    if view.codes.shape[0] == 0:
        return torch.zeros((*pids.shape, max_len, view.dim), dtype=dtype, device=pids.device), mask
    D = _decode(view, rows).masked_fill_(~mask.unsqueeze(-1), 0)
    return D.to(dtype), mask


def maxsim_packed_codes(Q, view, pids, q_mask, max_len, floor=None):
    B, K = pids.shape
    per_column = max(1, B * max(max_len, 1) * (Q.shape[1] + view.dim))
    chunk = max(1, CHUNK_ELEMENTS // per_column)
    out = []
    for start in range(0, K, chunk):
        D, d_mask = gather_codes(view, pids[:, start : start + chunk], max_len, torch.float32)
        fl = None if floor is None else floor[:, start : start + chunk]
        out.append(maxsim(Q.float(), D, q_mask, d_mask, None, fl))
    scores = torch.cat(out, dim=1) if out else Q.new_zeros((B, 0), dtype=torch.float32)
    return scores.masked_fill(pids < 0, float("-inf"))
