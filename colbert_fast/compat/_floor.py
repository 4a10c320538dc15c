"""MaxSim with a per-doc floor: the one rule behind every library quirk the compat layer mimics.

    score(q, d) = sum over counting query tokens i of max( floor_d, max over valid doc tokens j of <q_i, d_j> )

floor_d = -inf is the SPEC.md rule (a doc with no valid token then scores 0). The libraries differ
only in floor_d:
    ColBERT's -9999 padding sentinel   floor_d = -9999 (in D's dtype) when d has a masked token
    colbert_score_packed on CPU        floor_d = 0 for every doc (its maxima start at 0)
    PyLate (sims * mask)               floor_d = 0 when d has a masked token (a masked token's
                                       similarity is 0, and 0 takes part in the max)

The public kernels compute the SPEC rule only, and per-token maxima never leave them. So:
  1. score every pair with the fast public op (floor ignored);
  2. a doc with no valid token scores (counting query tokens) * floor_d;
  3. for the other pairs with a finite floor, certify that the floor cannot win: every counting
     query token has a similarity >= floor_d with one of a few sampled valid doc tokens (a lower
     bound on its max). Real ColBERT embeddings pass almost always;
  4. recompute the pairs that fail the certificate exactly, in fp32 PyTorch.
The result equals the library's rule on every input; only step 4's share of the work varies
with the data (all of it for adversarial inputs whose best similarities are below the floor).
"""

from __future__ import annotations

import torch

from .. import ops
from ..packed import PackedDocs

# Sampled doc tokens per doc for the certificate, in rounds: each round reads the next tokens of
# only the docs still failing (cumulative counts). A floor near 0 can win for a real query token
# (short docs of an unrelated topic). Where most similarities are positive (anisotropic
# embeddings), the first 4 tokens certify nearly every doc. Random unit vectors (a similarity is
# positive with probability 1/2) fail round 1 for most docs, round 2 for ~12%; after round 3
# only ~32 * 2^-16 of the docs go to the exact path. A floor of -9999 only wins for vectors of
# norm ~100, and one token certifies it.
ROUNDS_NEAR_ZERO = (4, 8, 16)
ROUNDS_FAR_BELOW = (1,)
CHUNK_ELEMENTS = 1 << 22  # similarities per chunk in the exact fallback (16 MB fp32)


def _first_valid_positions(valid: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [..., k] of the first k valid positions of docs with at least one; a doc with fewer
    repeats its first one (a repeated sample leaves a maximum unchanged, and no mask is needed)."""
    Ld = valid.shape[-1]
    # Earlier valid positions get larger keys; topk with a small k is one pass, unlike a sort.
    key = valid.to(torch.int32) * (Ld - torch.arange(Ld, device=valid.device, dtype=torch.int32))
    vals, pos = key.topk(min(k, Ld), dim=-1)  # sorted: position 0 is the first valid one
    pos = torch.where(vals > 0, pos, pos[..., :1])
    if pos.shape[-1] < k:  # shorter than k: pad with the first valid position
        pos = torch.cat([pos, pos[..., :1].expand(*pos.shape[:-1], k - pos.shape[-1])], dim=-1)
    return pos


def _lower_bounds(Qf: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Per-token maxima [B, P, Lq] of queries Qf [B, Lq, dim] (fp32) over sampled valid rows
    S [P, k, dim] shared by every query: one GEMM."""
    B, Lq, dim = Qf.shape
    P, k = S.shape[:2]
    Qt = Qf.reshape(B * Lq, dim).T
    out = Qf.new_empty((P, B, Lq))
    step = max(1, CHUNK_ELEMENTS // max(1, k * B * Lq))  # bounds the similarity block's memory
    for s in range(0, P, step):
        e = min(P, s + step)
        # The tall operand first: MKL runs [P*k, dim] @ [dim, B*Lq] about twice as fast as the transpose.
        sims = (S[s:e].reshape((e - s) * k, dim).float() @ Qt).view(e - s, k, B, Lq)
        out[s:e] = sims.amax(dim=1)
    return out.permute(1, 0, 2)


def exact_pairs(
    Qp: torch.Tensor, qm: torch.Tensor | None, Dp: torch.Tensor, valid: torch.Tensor, floor: torch.Tensor
) -> torch.Tensor:
    """The floored rule in fp32 for P explicit pairs, chunked.

    Qp [P, Lq, dim], qm bool [P, Lq] or None, Dp [P, Ld, dim], valid bool [P, Ld], floor fp32 [P].
    """
    P, Lq, _ = Qp.shape
    Ld = Dp.shape[1]
    out = torch.empty(P, dtype=torch.float32, device=Qp.device)
    chunk = max(1, CHUNK_ELEMENTS // max(1, Lq * Ld))
    for s in range(0, P, chunk):
        e = min(P, s + chunk)
        sims = torch.bmm(Qp[s:e].float(), Dp[s:e].float().transpose(1, 2))
        sims = sims.masked_fill(~valid[s:e].unsqueeze(1), float("-inf"))
        best = sims.amax(dim=-1) if Ld else sims.new_full((e - s, Lq), float("-inf"))
        best = torch.maximum(best, floor[s:e].unsqueeze(1))
        best = torch.where(torch.isneginf(best), torch.zeros_like(best), best)  # empty, no floor
        if qm is not None:
            best = best * qm[s:e].to(best.dtype)
        out[s:e] = best.sum(dim=-1)
    return out


def exact_all_pairs(
    Qf: torch.Tensor, q_mask: torch.Tensor | None, Dc: torch.Tensor, valid: torch.Tensor, floor: torch.Tensor
) -> torch.Tensor:
    """The floored rule in fp32 for every query Qf [B, Lq, dim] against docs Dc [c, Ld, dim]
    (valid bool [c, Ld], floor fp32 [c]): [B, c]. The caller sizes c."""
    B, Lq, _ = Qf.shape
    c, Ld, _ = Dc.shape
    sims = torch.einsum("bqd,ntd->bnqt", Qf, Dc.float())
    sims = sims.masked_fill(~valid[None, :, None, :], float("-inf"))
    best = sims.amax(dim=-1) if Ld else sims.new_full((B, c, Lq), float("-inf"))
    best = torch.maximum(best, floor[None, :, None])
    best = torch.where(torch.isneginf(best), torch.zeros_like(best), best)
    if q_mask is not None:
        best = best * q_mask[:, None, :].to(best.dtype)
    return best.sum(dim=-1)


def _chunk(elements_per_item: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, elements_per_item))


def _n_counting(Q: torch.Tensor, q_mask: torch.Tensor | None) -> torch.Tensor:
    if q_mask is None:
        return torch.full((Q.shape[0],), float(Q.shape[1]), device=Q.device)
    return q_mask.sum(dim=-1).float()


def _rounds_for(floor: torch.Tensor) -> tuple[int, ...]:
    finite = floor[torch.isfinite(floor)]
    return ROUNDS_FAR_BELOW if finite.numel() and float(finite.max()) < -1.0 else ROUNDS_NEAR_ZERO


@torch.no_grad()  # the certificate only decides which pairs to recompute; nothing to differentiate
def _uncertified(cand: torch.Tensor, rounds: tuple[int, ...], check) -> tuple[torch.Tensor, torch.Tensor]:
    """Run check(docs, lo, hi) -> ok [Bq, P, Lq] (query token certified by sampled doc tokens
    lo..hi-1) round by round on the docs still failing. A token certified in any round stays
    certified. Returns the docs that failed the last round and their pair-level ok [Bq, P]
    (False = the pair needs the exact path)."""
    ok, lo = None, 0
    for hi in rounds:
        new = check(cand, lo, hi)
        ok = new if ok is None else ok | new
        failing = ~ok.all(dim=-1).all(dim=0)
        cand, ok, lo = cand[failing], ok[:, failing], hi
        if cand.numel() == 0:
            break
    return cand, ok.all(dim=-1)


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
    Ld = D.shape[-2]
    lengths = None  # valid-prefix lengths, when d_mask is a prefix mask (or absent)
    if d_mask is None:
        lengths = torch.full(D.shape[:-2], Ld, dtype=torch.int64, device=D.device)
    else:
        n_valid = d_mask.sum(dim=-1)
        if torch.equal(d_mask, torch.arange(Ld, device=D.device) < n_valid.unsqueeze(-1)):
            lengths = n_valid  # the kernels' fast path, and samples without a search
    if lengths is not None and d_mask is not None:
        scores = ops.maxsim(Q, D, q_mask, d_lengths=lengths, backend=backend)
    else:
        scores = ops.maxsim(Q, D, q_mask, d_mask, backend=backend)
    if floor is None:
        return scores
    floor = floor.to(device=scores.device, dtype=torch.float32)
    has_floor = torch.isfinite(floor)
    if not bool(has_floor.any()):
        return scores
    all_pairs = D.dim() == 3
    nonempty = lengths > 0 if lengths is not None else d_mask.any(dim=-1)
    n_q = _n_counting(Q, q_mask)
    # Step 2: a doc with no valid token scores n_q * floor.
    if all_pairs:
        empty_score = n_q[:, None] * floor[None, :]
        scores = torch.where((has_floor & ~nonempty)[None, :], empty_score, scores)
    else:
        scores = torch.where(has_floor & ~nonempty, n_q[:, None] * floor, scores)

    # Step 3: certificate for non-empty docs with a floor.
    cand = torch.nonzero((has_floor & nonempty).reshape(-1)).squeeze(1)
    if cand.numel() == 0:
        return scores
    Qf = Q.to(D.dtype).float()
    dim = D.shape[-1]
    docs_flat = D.reshape(-1, Ld, dim) if D.is_contiguous() else None  # a view: row gathers by index_select
    len_flat = None if lengths is None else lengths.reshape(-1)

    def sample(idx, lo, hi):
        """[P, k, dim]: valid rows lo..hi-1 (in order) of flat docs idx (a doc's first one repeats
        past its end)."""
        if len_flat is not None:
            pos = torch.arange(lo, hi, device=D.device).expand(len(idx), -1)
            pos = torch.where(pos < len_flat[idx].unsqueeze(1), pos, 0)
        else:
            pos = _first_valid_positions(d_mask.reshape(-1, Ld)[idx], hi)[:, lo:]
        if docs_flat is not None:
            rows = (idx * Ld).unsqueeze(1) + pos
            return docs_flat.view(-1, dim).index_select(0, rows.reshape(-1)).view(len(idx), -1, dim)
        if all_pairs:
            return D[idx.unsqueeze(1), pos]
        return D[(idx // D.shape[1]).unsqueeze(1), (idx % D.shape[1]).unsqueeze(1), pos]

    if all_pairs:

        def check(idx, lo, hi):
            ok = _lower_bounds(Qf, sample(idx, lo, hi)) >= floor[idx][None, :, None]  # [B, P, Lq]
            return ok if q_mask is None else ok | ~q_mask[:, None, :]

    else:
        K = D.shape[1]

        def check(idx, lo, hi):
            b = idx // K
            lower = torch.einsum("pqd,pkd->pqk", Qf[b], sample(idx, lo, hi).float()).amax(dim=-1)  # [P, Lq]
            ok = lower >= floor.reshape(-1)[idx][:, None]
            return (ok if q_mask is None else ok | ~q_mask[b]).unsqueeze(0)

    cand, ok = _uncertified(cand, _rounds_for(floor), check)
    if cand.numel() == 0:
        return scores

    # Step 4: exact fp32 recompute of what failed, in chunks so no large copy is ever made.
    valid = d_mask if d_mask is not None else torch.ones(D.shape[:-1], dtype=torch.bool, device=D.device)
    scores = scores.clone()
    B, Lq = Q.shape[:2]
    if all_pairs:  # every query against each failing doc (one read of the doc for all queries)
        step = _chunk(B * Lq * Ld)
        for s in range(0, len(cand), step):
            d = cand[s : s + step]
            scores[:, d] = exact_all_pairs(Qf, q_mask, D[d], valid[d], floor[d])
    else:
        sel = torch.nonzero(~ok)[:, 1]
        sel = cand[sel]
        step = _chunk(Lq * Ld)
        for s in range(0, len(sel), step):
            pb, pk = sel[s : s + step] // K, sel[s : s + step] % K
            qm_p = None if q_mask is None else q_mask[pb]
            scores[pb, pk] = exact_pairs(Qf[pb], qm_p, D[pb, pk], valid[pb, pk], floor[pb, pk])
    return scores


def floored_maxsim_packed(
    Q: torch.Tensor, docs: PackedDocs, pids: torch.Tensor, floor: torch.Tensor | None, *, backend: str = "auto"
) -> torch.Tensor:
    """The floored rule for one query [1, Lq, dim] against packed docs pids [1, K]; fp32 [1, K].

    floor fp32 [K] per candidate (-inf = none) or None. Every query token counts.
    """
    scores = ops.maxsim_packed(Q, docs, pids, backend=backend)
    if floor is None:
        return scores
    floor = floor.to(device=scores.device, dtype=torch.float32)
    has_floor = torch.isfinite(floor) & (pids[0] >= 0)
    if not bool(has_floor.any()):
        return scores
    Lq = Q.shape[1]
    lengths = docs.lengths[pids[0].clamp(min=0)]
    nonempty = lengths > 0
    scores = torch.where((has_floor & ~nonempty)[None, :], Lq * floor[None, :], scores)
    cand = torch.nonzero(has_floor & nonempty).squeeze(1)
    if cand.numel() == 0:
        return scores
    Qf = Q.to(docs.dtype).float()

    def check(idx, lo, hi):
        # Rows lo..hi-1 of each doc (its first row repeated past its end).
        j = torch.arange(lo, hi, device=lengths.device)[None, :]
        rows = docs.offsets[pids[0, idx]][:, None] + torch.where(j < lengths[idx][:, None], j, 0)
        S = docs.embeddings.index_select(0, rows.reshape(-1)).view(len(idx), hi - lo, -1)
        return _lower_bounds(Qf, S) >= floor[idx][None, :, None]  # [1, P, Lq]

    cand, ok = _uncertified(cand, _rounds_for(floor), check)
    if cand.numel() == 0:
        return scores
    bad = cand[~ok[0]]
    scores = scores.clone()
    step = _chunk(Lq * docs.max_length)
    for s in range(0, len(bad), step):
        b = bad[s : s + step]
        Dp, vp = ops.gather(docs, pids[0, b], backend=backend)
        scores[0, b] = exact_pairs(Qf.expand(len(b), -1, -1), None, Dp, vp, floor[b])
    return scores
