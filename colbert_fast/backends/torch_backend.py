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


# ---- centroid interaction (ops.centroid_interaction) ------------------------------------------------

# (query, token, doc) cells of the dense table held at once: 16 MB of fp32 on the CPU. On a GPU a
# group costs a few dozen kernel launches whatever its size, and memory is plentiful: larger groups
# (256 MB of table, ~1.3 GB of padded entries), so E1 100k (3.2M cells a query) takes 20 queries a
# group, not 1. Not measured (no GPU lent yet).
CENTROID_CELLS = 1 << 22
CENTROID_GPU_CELLS = 1 << 26
# List entries a padded group (max_entries given) expands at once (~40 bytes each across the step's tensors).
CENTROID_ENTRIES = 1 << 23
CENTROID_GPU_ENTRIES = 1 << 25


def expand_lists(starts: torch.Tensor, counts: torch.Tensor, budget: int | None):
    """The list entries of a group's probes: (probe_of, pos, valid), one element per entry.

    Probe j covers list_docs[starts[j] : starts[j] + counts[j]]; entry e belongs to probe probe_of[e]
    and reads list_docs[pos[e]]. budget None: exactly the entries, sized by a host read of their
    total (valid None). budget int: `budget` entries, a size known before the data (no host read,
    fixed shapes); those past the total are padding (valid False, probe_of and pos still in range).
    """
    dev = counts.device
    if budget is None:
        total = int(counts.sum())  # host read: the size of the expansion
        probe_of = torch.repeat_interleave(torch.arange(counts.numel(), device=dev), counts, output_size=total)
        first = torch.cumsum(counts, 0) - counts
        # (index_select: a gather by a 1-d index, faster on the CPU than advanced indexing)
        pos = torch.index_select(starts - first, 0, probe_of) + torch.arange(total, device=dev)
        return probe_of, pos, None
    ends = torch.cumsum(counts, 0)
    e = torch.arange(budget, device=dev)
    probe_of = torch.searchsorted(ends, e, right=True)  # the first probe whose entries end past e
    valid = probe_of < counts.numel()
    probe_of.clamp_(max=max(counts.numel() - 1, 0))
    pos = torch.index_select(starts - (ends - counts), 0, probe_of) + e
    return probe_of, pos.masked_fill_(~valid, 0), valid


def centroid_interaction(probe_ids, probe_scores, floor, q_mask, list_offsets, list_docs, num_docs, max_entries=None):
    """Dense over doc rows, a few queries at a time: per query a token-major [Lq, N] table of the
    best listed score, one scatter-max of every expanded list entry into it (filled with -inf, so a
    doc is hit where a cell rose), then raised to the floor and summed over the counting tokens.
    max_entries: pad each token's expansion to that many entries, so no size comes from the data."""
    B, Lq, p = probe_ids.shape
    N, dev = num_docs, probe_ids.device
    neg_inf = float("-inf")
    score = torch.empty((B, N), device=dev)
    positive = torch.empty((B, N), device=dev)
    hit = torch.zeros((B, N), dtype=torch.bool, device=dev)
    gpu = dev.type == "cuda"
    cells, entries = (CENTROID_GPU_CELLS, CENTROID_GPU_ENTRIES) if gpu else (CENTROID_CELLS, CENTROID_ENTRIES)
    step = max(1, cells // max(N * Lq, 1))
    if max_entries is not None:  # the padded expansion is held at once too
        step = min(step, max(1, entries // max(Lq * max_entries, 1)))
    for b0 in range(0, B, step):
        G = min(step, B - b0)
        g_ids, g_mask = probe_ids[b0 : b0 + G], q_mask[b0 : b0 + G, :, None]
        M = torch.full((G, Lq, N), neg_inf, device=dev)
        if Lq * p and list_docs.numel():  # (no probe, or only empty lists: nothing to expand)
            starts = list_offsets[g_ids].reshape(-1)  # one entry per probe (query, token, rank)
            counts = (list_offsets[g_ids + 1].reshape(-1) - starts) * g_mask.expand(G, Lq, p).reshape(-1)
            budget = G * Lq * max_entries if max_entries is not None else None
            probe_of, pos, valid = expand_lists(starts, counts, budget)
            docs = torch.index_select(list_docs, 0, pos)
            # Each entry's cell in the [G, Lq, N] table: (query * Lq + token) * N + doc. Token-major: one
            # token's probes write within one row of N floats, which stays in cache (doc-major spread
            # them over the whole table: the scatter took 1.7x as long at N = 100k).
            probe = torch.arange(G * Lq * p, device=dev)
            cell = torch.index_select(probe.div_(p, rounding_mode="floor").mul_(N), 0, probe_of).add_(docs)
            entry_vals = torch.index_select(probe_scores[b0 : b0 + G].reshape(-1), 0, probe_of)
            if valid is not None:  # padding entries: -inf changes no max and hits no doc
                entry_vals.masked_fill_(~valid, neg_inf)
            M.view(-1).scatter_reduce_(0, cell, entry_vals, "amax")
        # (Per token, not M.amax(dim=1) > -inf: one NaN cell would hide the doc's other tokens.)
        torch.any(M > neg_inf, dim=1, out=hit[b0 : b0 + G])
        torch.maximum(M, floor[b0 : b0 + G, :, None], out=M)
        M.masked_fill_(~g_mask, 0.0)  # a masked token counts for nothing (its row may be -inf)
        _sum_rows_in_order(M, score[b0 : b0 + G])
        _sum_rows_in_order(M.clamp_(min=0), positive[b0 : b0 + G])
    return score, positive, hit


def _sum_rows_in_order(M: torch.Tensor, out: torch.Tensor) -> None:
    """out = M[:, 0] + M[:, 1] + ... in that order: the C++ kernel's rounding, bit for bit (a
    sum(dim=1) may pair the terms differently), so every backend gives one answer."""
    out.zero_()
    for i in range(M.shape[1]):
        out += M[:, i]
