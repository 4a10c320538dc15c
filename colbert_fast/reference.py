"""The scoring oracle: late interaction (ColBERT, SIGIR 2020, Eq. 3) in plain PyTorch.

    score(q, d) = sum over valid query tokens i of ( max over valid doc tokens j of <q_i, d_j> )

Every backend, test and benchmark is judged against this module, so it imports torch alone and
shares no code with what it judges. It is written for clarity, not speed: it builds the full
[.., Lq, Ld] similarity tensor.

Two precisions:
  upcast=True  (default) the oracle: Q is converted to D's dtype (as ColBERT does), then both to
               fp32; products, maxima and sums in fp32.
  upcast=False the "same low dtype" computation the tolerance rule measures against: the
               similarities are computed and maximised in D's dtype, then summed in fp32.

Semantics (docs/spec.md, sections 1-3 and 10): masked doc tokens are -inf before the max (never
multiplied by 0); a doc with no valid token contributes 0 per query token; a masked query token
contributes 0; an empty candidate slot (pid -1) scores -inf. Masked tokens are ignored whatever
they hold; a NaN or infinite similarity between a valid query token and a valid doc token (a NaN
or an infinity in either) makes the doc's score NaN.

Optional per-doc floor (colbert_fast's extension, used to reproduce other libraries' padding
rules): each query token's max is max(floor_d, max over valid doc tokens), so a doc with no valid
token contributes floor_d per counting query token; floor_d = -inf is the plain rule above.
"""

from __future__ import annotations

import torch

__all__ = ["maxsim", "maxsim_packed", "gather", "lengths_to_mask", "decode_residual", "decode_int8", "unpack_bits",
           "centroid_interaction"]  # fmt: skip


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """bool [..., max_len]: True where position < length."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions < lengths.unsqueeze(-1)


def _doc_mask(D: torch.Tensor, d_mask, d_lengths) -> torch.Tensor:
    if d_mask is not None and d_lengths is not None:
        raise ValueError("give d_mask or d_lengths, not both")
    if d_lengths is not None:
        return lengths_to_mask(d_lengths.to(torch.int64), D.shape[-2])
    if d_mask is not None:
        return d_mask.to(torch.bool)
    return torch.ones(D.shape[:-1], dtype=torch.bool, device=D.device)


def _reduce(
    sims: torch.Tensor, q_mask_b: torch.Tensor, d_mask_b: torch.Tensor, floor_b: torch.Tensor | None
) -> torch.Tensor:
    """sims [..., Lq, Ld] -> scores [...] in fp32, masking docs before the max; floor_b [..., 1]."""
    # Section 10: any non-finite similarity of a valid (query token, doc token) pair -> NaN score.
    valid_pair = q_mask_b.unsqueeze(-1) & d_mask_b.unsqueeze(-2)
    nonfinite = (~torch.isfinite(sims) & valid_pair).flatten(-2).any(dim=-1)
    sims = sims.masked_fill(~d_mask_b.unsqueeze(-2), float("-inf"))
    if sims.shape[-1] == 0:
        best = torch.full(sims.shape[:-1], float("-inf"), dtype=torch.float32, device=sims.device)
    else:
        best = sims.amax(dim=-1).float()
    if floor_b is not None:
        best = torch.maximum(best, floor_b.float())
    # A doc with no valid token (and no floor): every max is -inf; it contributes 0 instead.
    best = torch.where(torch.isneginf(best), torch.zeros_like(best), best)
    best = torch.where(q_mask_b, best, torch.zeros_like(best))  # not best * mask: NaN * 0 is NaN
    return best.sum(dim=-1).masked_fill(nonfinite, float("nan"))


def maxsim(
    Q: torch.Tensor,
    D: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    *,
    d_lengths: torch.Tensor | None = None,
    floor: torch.Tensor | float | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Reference MaxSim.

    Q [B, Lq, dim]; D [N, Ld, dim] -> [B, N] (all pairs) or D [B, K, Ld, dim] -> [B, K] (each
    query against its own K docs). q_mask bool [B, Lq]; d_mask bool D.shape[:-1]; d_lengths int
    D.shape[:-2] (valid prefix lengths); floor: per-doc lower bound of each token's max,
    broadcastable to D.shape[:-2] (None: no floor). Returns fp32 scores.
    """
    Q = Q.to(D.dtype)
    q_mask = torch.ones(Q.shape[:-1], dtype=torch.bool, device=Q.device) if q_mask is None else q_mask.bool()
    dm = _doc_mask(D, d_mask, d_lengths)
    fl = None
    if floor is not None:  # one value per doc, then a trailing axis for the query tokens
        fl = torch.as_tensor(floor, dtype=torch.float32, device=D.device).expand(D.shape[:-2]).unsqueeze(-1)
    if upcast:
        Q, D = Q.float(), D.float()
    if D.dim() == 3:  # all pairs: sims [B, N, Lq, Ld]
        sims = torch.einsum("bqd,ntd->bnqt", Q, D)
        return _reduce(sims, q_mask[:, None, :], dm[None, :, :], None if fl is None else fl[None])
    # per-query candidates: sims [B, K, Lq, Ld]
    sims = torch.einsum("bqd,bktd->bkqt", Q, D)
    return _reduce(sims, q_mask[:, None, :], dm, fl)


def gather(
    embeddings: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, pids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference gather: packed token rows -> padded [*pids.shape, Lmax, dim] and bool mask.

    pid -1 gives an all-padding row. Lmax is the longest selected doc (0 if none).
    """
    flat = pids.reshape(-1).to(torch.int64)
    valid = flat >= 0
    sel_lengths = torch.where(valid, lengths.to(torch.int64)[flat.clamp(min=0)], torch.zeros_like(flat))
    lmax = int(sel_lengths.max()) if flat.numel() else 0
    out = embeddings.new_zeros((flat.numel(), lmax, embeddings.shape[-1]))
    mask = torch.zeros((flat.numel(), lmax), dtype=torch.bool, device=embeddings.device)
    for row, (pid, length) in enumerate(zip(flat.tolist(), sel_lengths.tolist())):
        if pid < 0 or length == 0:
            continue
        start = int(offsets[pid])
        out[row, :length] = embeddings[start : start + length]
        mask[row, :length] = True
    return out.reshape(*pids.shape, lmax, embeddings.shape[-1]), mask.reshape(*pids.shape, lmax)


def maxsim_packed(
    Q: torch.Tensor,
    embeddings: torch.Tensor,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    pids: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    *,
    floor: torch.Tensor | float | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Reference packed scoring: Q [B, Lq, dim] against its own candidates pids [B, K] -> [B, K].

    Empty slots (pid -1) score -inf. floor: per slot, broadcastable to [B, K] (see maxsim).
    """
    if pids.dim() == 1:
        pids = pids.unsqueeze(0)
    D, d_mask = gather(embeddings, offsets, lengths, pids)
    scores = maxsim(Q, D, q_mask, d_mask, floor=floor, upcast=upcast)
    return scores.masked_fill(pids < 0, float("-inf"))


# ---- compressed stores: the decoded vectors (docs/spec.md, "Compressed stores") -------------------
#
# A compressed store's contract: its scores equal reference MaxSim over exactly these decoded
# vectors. Kernels never build them in memory; this is their definition.


def unpack_bits(codes: torch.Tensor, nbits: int, dim: int) -> torch.Tensor:
    """uint8 codes [T, ceil(dim * nbits / 8)] -> int64 bucket indices [T, dim].

    Dimension k of a token is the nbits-wide field at bit (k % (8 // nbits)) * nbits of byte
    k // (8 // nbits): little-endian inside each byte, so 2-bit dims 0..3 are bits 0-1, 2-3, 4-5,
    6-7 of byte 0.
    """
    per_byte = 8 // nbits
    shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int64) * nbits
    fields = (codes.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << nbits) - 1)
    return fields.reshape(codes.shape[0], -1)[:, :dim]


def decode_residual(
    centroid_ids: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    centroids: torch.Tensor,
    bucket_weights: torch.Tensor,
    nbits: int,
) -> torch.Tensor:
    """ColBERTv2's residual codec, decoded: fp32 [T, dim].

        d = scale * (centroids[centroid_id] + bucket_weights[b_k] for each dim k)

    centroid_ids int [T]; codes uint8 [T, ceil(dim * nbits / 8)] (see unpack_bits); scales [T]
    (stored fp16; the encoder sets it so d keeps the original vector's norm); centroids [C, dim];
    bucket_weights [2 ** nbits].
    """
    dim = centroids.shape[1]
    buckets = unpack_bits(codes, nbits, dim)
    residual = bucket_weights.float()[buckets]
    return (centroids.float()[centroid_ids.to(torch.int64)] + residual) * scales.float().unsqueeze(-1)


def decode_int8(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 codes [T, dim] with one scale per token: d = scale * code, fp32 [T, dim]."""
    return codes.float() * scales.float().unsqueeze(-1)


# ---- the tolerance rule (docs/spec.md, section 7) ----------------------------------------------

TOLERANCE_FLOOR = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def tolerance(exact: torch.Tensor, same_dtype: torch.Tensor, dtype: torch.dtype, lq: int) -> float:
    """Largest error a backend may show against the fp32 oracle `exact`.

    2x the error of the plain-PyTorch computation in the same low dtype (`same_dtype`, from
    upcast=False), plus a per-dtype floor scaled by the number of query tokens Lq.
    """
    finite = torch.isfinite(exact)
    low_err = (same_dtype[finite].double() - exact[finite].double()).abs().max().item() if finite.any() else 0.0
    return 2.0 * low_err + TOLERANCE_FLOOR[dtype] * lq


def centroid_interaction(
    probe_ids: torch.Tensor,
    probe_scores: torch.Tensor,
    floor: torch.Tensor,
    list_offsets: torch.Tensor,
    list_docs: torch.Tensor,
    num_docs: int,
    q_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PLAID's centroid interaction, one probe at a time (the rule is colbert_fast.ops.centroid_interaction's).

    Per query b and counting token i: M = the best score of i's probed lists per doc (-inf where
    none holds it); score[b] += max(M, floor[b, i]), positive[b] += max(that, 0), hit[b] |= M > -inf.
    Tokens are added in order, in fp32, on the CPU.
    """
    B, Lq, P = probe_ids.shape
    score = torch.zeros(B, num_docs)
    positive = torch.zeros(B, num_docs)
    hit = torch.zeros(B, num_docs, dtype=torch.bool)
    for b in range(B):
        for i in range(Lq):
            if q_mask is not None and not bool(q_mask[b, i]):
                continue
            best = torch.full((num_docs,), float("-inf"))
            for j in range(P):
                c = int(probe_ids[b, i, j])
                docs = list_docs[int(list_offsets[c]) : int(list_offsets[c + 1])].cpu()
                best[docs] = torch.maximum(best[docs], probe_scores[b, i, j].float().cpu())
            hit[b] |= best > float("-inf")
            value = torch.maximum(best, floor[b, i].float().cpu())
            score[b] += value
            positive[b] += value.clamp(min=0)
    return score, positive, hit
