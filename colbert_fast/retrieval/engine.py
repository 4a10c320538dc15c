"""The centroid engine: candidates from a residual store's centroids, exact scoring, certified top-k.

End-to-end search without a second copy of the tokens (docs/spec.md section 12). A residual store
(cf.CompressedDocs, codec "residual") decodes token t as d_t = s_t (c_t + r_t): centroid c_t, residual
r_t (the bucket weights its codes pick), fp16 scale s_t >= 0. The engine adds two things at build
time (build_engine, a safetensors file beside the codes):

    ivf_offsets int64 [C+1], ivf_docs int32 [nnz]   centroid -> the docs holding a token of it (CSR;
                                                    per centroid sorted and unique: doc rows, not token rows)
    doc_stats fp32 [N, 3]                           per doc: min s_t, max s_t, max s_t |r_t| over its tokens

and searches a batch of queries Q [B, Lq, dim] in five vectorised steps (CentroidEngine.search):

    1. centroid scores   S = Q @ centroids.T  [B, Lq, C] (one matmul); per query token its top `nprobe`
                         centroids, and theta_i, the best score of a centroid it did not probe
    2. candidates        the docs of the probed centroids' lists, (query, doc) pairs made unique
    3. approximate pass  PLAID's centroid interaction with WARP's imputation: per candidate and query
                         token, the best probed centroid score among the doc's centroids, or theta_i
                         when the doc has no token in a probed centroid; summed over query tokens.
                         The best `ncandidates` per query survive
    4. exact scoring     cf.maxsim_packed over the survivors, straight from the codes; top k
    5. certificate       an upper bound on every doc not scored exactly (below); certified when the
                         k-th exact score is above all of them

The bound (spec section 12). For query token q and doc token t, q.d_t = s_t (q.c_t) + s_t (q.r_t)
<= s_t (q.c_t) + s_t |r_t| |q| (Cauchy-Schwarz, s_t >= 0). With f_d(x) = smax_d x for x >= 0 and
smin_d x for x < 0 (increasing in x, and >= s_t x for every token t of d),

    max_t q.d_t  <=  f_d(M_d(q)) + rmax_d |q|,      M_d(q) = the best score of a centroid d holds.

A probed centroid's score is >= theta_i and an unprobed one's is <= theta_i, so M_d(q_i) is the best
probed score among d's centroids when d holds a probed centroid of token i, and at most theta_i
otherwise: step 3's value is an upper bound of M_d(q_i) either way. Summed over the valid query
tokens, plus a margin for fp32 rounding (kernel and bound), this bounds every pruned candidate; a doc
that was never a candidate has M_d(q_i) <= theta_i for every i, so its bound is
smax_d P + smin_d N + rmax_d R with P = sum max(theta_i, 0), N = sum min(theta_i, 0), R = sum |q_i|: one
[B, 3] x [3, N] product. An empty doc has smin = smax = rmax = 0 and bound 0 (it scores exactly 0).

Certified: the k-th exact score is > every bound (strictly: then no doc left out can tie or beat it).
`exact=True` scores the remaining docs best bound first until that holds, so it always ends
certified and equal to exhaustive scoring. Each query reports the fraction of (doc, query token)
cells it scored exactly (docs scored / docs: every valid query token of a scored doc is scored).

GPU: steps 1-5 are torch ops on the store's device; the sizes of steps 2-3 depend on the data, so
this version reads them on the host (two small syncs per batch). A capturable variant needs fixed
capacities per probed list (docs/spec.md section 12, "GPU").
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

import colbert_fast as cf
from colbert_fast import reference
from colbert_fast.packed import read_safetensors, write_safetensors

__all__ = ["ENGINE_FORMAT", "CentroidEngine", "SearchStats", "build_engine", "engine_margin"]

ENGINE_FORMAT = "colbert_fast.engine/1"
_ROWS = 1 << 16  # tokens whose residual norms are computed at once (64k x dim int64 fields)
# Relative rounding allowance of one fp32 dot product of length dim, per unit of |q| |d|: the kernels
# and the bound each round (decode, products, sums); 2^-22 per element is 4 ulps, far above what
# any order of fp32 accumulation loses (<= dim * 2^-24 relative, first order).
_ULPS = 2.0**-22


def build_engine(codes: cf.CompressedDocs) -> dict[str, torch.Tensor]:
    """The engine's tensors for a residual store (see the module doc): ivf_offsets, ivf_docs, doc_stats."""
    if not isinstance(codes, cf.CompressedDocs) or codes.codec != "residual":
        raise ValueError("the centroid engine needs a residual store (centroids): build with IndexConfig(store='residual')")
    codes = codes.to("cpu")
    n, num_c = codes.num_docs, codes.centroids.shape[0]
    lengths = codes.lengths
    owner = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), lengths)
    ids = codes.centroid_ids.to(torch.int64)
    # (centroid, doc) pairs, unique and sorted: centroid-major, doc rows ascending within a centroid.
    keys = torch.unique(ids * n + owner)
    ivf_docs = (keys % n).to(torch.int32)
    counts = torch.bincount(keys // n, minlength=num_c)
    ivf_offsets = torch.zeros(num_c + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ivf_offsets[1:])
    # Per token s_t |r_t|, r_t = the bucket weights its codes select (the decoded residual before scaling).
    scales = codes.scales.float()
    res = torch.empty(codes.num_tokens, dtype=torch.float32)
    for s in range(0, codes.num_tokens, _ROWS):
        fields = reference.unpack_bits(codes.codes[s : s + _ROWS], codes.nbits, codes.dim)
        res[s : s + _ROWS] = codes.bucket_weights[fields].norm(dim=1)
    res *= scales
    stats = torch.zeros(n, 3, dtype=torch.float32)  # an empty doc keeps 0, 0, 0: its bound is 0
    if codes.num_tokens:
        stats[:, 0] = torch.full((n,), float("inf")).scatter_reduce(0, owner, scales, "amin")
        stats[:, 1] = torch.zeros(n).scatter_reduce(0, owner, scales, "amax", include_self=False)
        stats[:, 2] = torch.zeros(n).scatter_reduce(0, owner, res, "amax", include_self=False)
        stats[lengths == 0] = 0.0
    return {"ivf_offsets": ivf_offsets, "ivf_docs": ivf_docs, "doc_stats": stats}


def save_engine(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Write build_engine's tensors as one safetensors file (atomic)."""
    write_safetensors(path, {k: [v.contiguous()] for k, v in tensors.items()}, {"format": ENGINE_FORMAT})


def load_engine(path: str | os.PathLike, codes: cf.CompressedDocs) -> dict[str, torch.Tensor]:
    """Read an engine file and check it against its store (ValueError naming the file if it does not fit)."""
    path = Path(path)
    meta, tensors = read_safetensors(path, mmap=True)
    if meta.get("format") != ENGINE_FORMAT:
        raise ValueError(f"{path} is not a colbert_fast engine file (no '{ENGINE_FORMAT}' metadata)")
    want = {
        "ivf_offsets": (torch.int64, (codes.centroids.shape[0] + 1,)),
        "doc_stats": (torch.float32, (codes.num_docs, 3)),
    }
    for name, (dtype, shape) in want.items():
        t = tensors.get(name)
        if t is None or t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"{path}: {name} must be {dtype} {list(shape)}")
    docs = tensors.get("ivf_docs")
    if docs is None or docs.dtype != torch.int32 or docs.dim() != 1:
        raise ValueError(f"{path}: ivf_docs must be int32 [nnz]")
    offsets = tensors["ivf_offsets"]
    if int(offsets[0]) != 0 or int(offsets[-1]) != docs.numel() or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"{path}: ivf_offsets do not describe ivf_docs")
    if docs.numel() and (int(docs.min()) < 0 or int(docs.max()) >= codes.num_docs):
        raise ValueError(f"{path}: ivf_docs holds rows outside [0, {codes.num_docs})")
    return {k: tensors[k] for k in ("ivf_offsets", "ivf_docs", "doc_stats")}


def engine_margin(Q: torch.Tensor, q_mask: torch.Tensor, dmax: float) -> torch.Tensor:
    """fp32 [B]: the rounding allowance added to every bound of a query (see _ULPS).

    dmax bounds every decoded norm and every |centroid| + |residual| the bound multiplies; the
    allowance is (dim + Lq) ulps-of-4 of |q_i| dmax per valid query token (products, then the sum).
    """
    dim, lq = Q.shape[-1], Q.shape[-2]
    qn = (Q.float().norm(dim=-1) * q_mask).sum(dim=1)
    return qn * (dmax * (dim + lq + 8) * _ULPS)


@dataclasses.dataclass
class SearchStats:
    """Per query of the last search (fp32/bool tensors [B] on the CPU).

    certified: the top k is provably the top k of the whole collection under the stored vectors.
    cells_scored: fraction of (doc, query token) cells scored exactly (docs scored / docs).
    kth_score: the k-th exact score found (-inf when fewer than k docs were scored).
    bound: the largest upper bound of a doc not scored exactly (-inf when every doc was scored).
    """

    certified: torch.Tensor
    cells_scored: torch.Tensor
    kth_score: torch.Tensor
    bound: torch.Tensor

    @classmethod
    def cat(cls, parts: list[SearchStats]) -> SearchStats:
        fields = [f.name for f in dataclasses.fields(cls)]
        if not parts:
            return cls(torch.zeros(0, dtype=torch.bool), *(torch.zeros(0) for _ in fields[1:]))
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))

    def summary(self) -> dict[str, float]:
        n = max(self.certified.numel(), 1)
        return {
            "queries": self.certified.numel(),
            "certified": float(self.certified.sum()) / n,
            "cells_scored": float(self.cells_scored.sum()) / n,
        }


class CentroidEngine:
    """Centroid-interaction candidates + exact scoring + certificate over a residual store.

    Args:
        codes: the residual CompressedDocs (on the device where search runs).
        tensors: build_engine's output (any device; moved to codes' device).
        backend: scoring backend for cf.maxsim_packed.
    """

    def __init__(self, codes: cf.CompressedDocs, tensors: dict[str, torch.Tensor], backend: str = "auto"):
        if codes.codec != "residual":
            raise ValueError("the centroid engine needs a residual store")
        device = codes.device
        self.codes, self.backend = codes, backend
        self.num_docs = codes.num_docs
        self.num_centroids = codes.centroids.shape[0]
        self.centroids = codes.centroids
        self.ivf_offsets = tensors["ivf_offsets"].to(device)
        self.ivf_docs = tensors["ivf_docs"].to(device, torch.int64)
        self.doc_stats = tensors["doc_stats"].to(device)
        # Largest decoded norm and |c| + |r| any bound multiplies: the rounding margin's scale.
        cmax = float(codes.centroids.norm(dim=1).max())
        wmax = float(codes.bucket_weights.abs().max()) * codes.dim**0.5
        smax = float(self.doc_stats[:, 1].max()) if self.num_docs else 0.0
        self.dmax = max(smax, 1.0) * (cmax + wmax)

    # ---- the pieces ---------------------------------------------------------------------------------

    def probe(self, Q: torch.Tensor, q_mask: torch.Tensor, nprobe: int):
        """Step 1: (probed centroid ids [B, Lq, p] int64, their scores [B, Lq, p], theta [B, Lq]).

        theta is the best score of an unprobed centroid (-inf when every centroid is probed); masked
        query tokens probe nothing (their lists are skipped by the caller through q_mask).
        """
        scores = torch.matmul(Q, self.centroids.T)  # [B, Lq, C]: the only matmul of the candidate stage
        p = min(nprobe, self.num_centroids)
        top = torch.topk(scores, min(p + 1, self.num_centroids), dim=2)
        if p < self.num_centroids:
            theta = top.values[..., p]
        else:
            theta = torch.full(Q.shape[:2], float("-inf"), device=Q.device)
        return top.indices[..., :p], top.values[..., :p], theta

    def candidates(self, Q, q_mask, nprobe: int):
        """Steps 1-3: every candidate (query b, doc row) once, with its approximate score and bound.

        Returns (b [U], doc [U], approx [U], upper [U], theta [B, Lq]), grouped by query, docs ascending.
        """
        B, Lq, _ = Q.shape
        ids, vals, theta = self.probe(Q, q_mask, nprobe)
        p = ids.shape[2]
        starts = self.ivf_offsets[ids]  # [B, Lq, p]
        counts = (self.ivf_offsets[ids + 1] - starts) * q_mask[:, :, None]
        counts = counts.reshape(-1)
        total = int(counts.sum())  # host read: the size of the expansion
        probe_of = torch.repeat_interleave(torch.arange(counts.numel(), device=Q.device), counts, output_size=total)
        first = torch.cumsum(counts, 0) - counts
        pos = starts.reshape(-1)[probe_of] + (torch.arange(total, device=Q.device) - first[probe_of])
        docs = self.ivf_docs[pos]
        b_of = probe_of // (Lq * p)
        tok_of = (probe_of // p) % Lq
        keys, inverse = torch.unique(b_of * self.num_docs + docs, return_inverse=True)
        U = keys.numel()
        qb, qd = keys // self.num_docs, keys % self.num_docs
        # M[u, i]: the best probed centroid score of token i among doc u's centroids, else theta_i.
        M = theta[qb].clone()  # [U, Lq]
        M.view(-1).scatter_reduce_(0, inverse * Lq + tok_of, vals.reshape(-1)[probe_of], "amax")
        mask = q_mask[qb]
        approx = (M.clamp(min=-1e30) * mask).sum(dim=1)
        st = self.doc_stats[qd]  # [U, 3]
        f = torch.where(M >= 0, st[:, 1:2] * M, st[:, 0:1] * M.clamp(min=-1e30))
        qn = Q.norm(dim=-1) * q_mask  # [B, Lq]
        upper = (f * mask).sum(dim=1) + st[:, 2] * qn.sum(dim=1)[qb]
        return qb, qd, approx, upper, theta, U

    def never_candidate_bound(self, Q, q_mask, theta, cand_b, cand_d) -> torch.Tensor:
        """fp32 [B]: the largest bound of a doc outside every probed list (-inf when there is none)."""
        th = torch.where(q_mask, theta, torch.zeros_like(theta))
        finite = torch.isfinite(th)
        pos = torch.where(finite, th.clamp(min=0), torch.zeros_like(th)).sum(dim=1)
        neg = torch.where(finite, th.clamp(max=0), torch.zeros_like(th)).sum(dim=1)
        allprobed = ~finite.all(dim=1)  # theta = -inf: every centroid probed, only empty docs are left
        qn = (Q.norm(dim=-1) * q_mask).sum(dim=1)
        coef = torch.stack([neg, pos, qn], dim=1)  # [B, 3] against (smin, smax, rmax)
        lin = coef @ self.doc_stats.T  # [B, N]
        empty = self.codes.lengths == 0
        lin[allprobed] = torch.where(empty, 0.0, float("-inf")).to(lin.dtype)
        lin[cand_b, cand_d] = float("-inf")
        return lin.max(dim=1).values if lin.shape[1] else torch.full((Q.shape[0],), float("-inf"), device=Q.device)

    def score(self, Q, q_mask, rows) -> torch.Tensor:
        return cf.maxsim_packed(Q, self.codes, rows, q_mask, backend=self.backend)

    # ---- search -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def search(self, Q, q_mask, k: int, nprobe: int, ncandidates: int, exact: bool = False):
        """Top k per query: (scores fp32 [B, k'], rows int64 [B, k'] (-1 = none), SearchStats).

        Q fp32 [B, Lq, dim], q_mask bool [B, Lq] on the store's device. exact=True keeps scoring the
        docs left, best bound first, until every query is certified.
        """
        B, dev = Q.shape[0], Q.device
        n = self.num_docs
        qb, qd, approx, upper, theta, U = self.candidates(Q, q_mask, nprobe)
        # Rank the candidates of each query by approximate score: sort by score, then (stably) by query.
        order = torch.sort(approx, descending=True, stable=True).indices
        order = order[torch.sort(qb[order], stable=True).indices]
        per_query = torch.bincount(qb, minlength=B)
        group_start = torch.cumsum(per_query, 0) - per_query
        rank = torch.empty_like(order)
        rank[order] = torch.arange(U, device=dev) - group_start[qb[order]]
        keep = rank < ncandidates
        width = int(min(ncandidates, int(per_query.max()) if U else 0))  # host read: the scored width
        rows = torch.full((B, max(width, 0)), -1, dtype=torch.int64, device=dev)
        rows[qb[keep], rank[keep]] = qd[keep]
        scores = self.score(Q, q_mask, rows) if width else torch.empty(B, 0, device=dev)
        margin = engine_margin(Q, q_mask, self.dmax)
        pruned = torch.full((B,), float("-inf"), device=dev)
        pruned.scatter_reduce_(0, qb[~keep], upper[~keep], "amax")
        never = self.never_candidate_bound(Q, q_mask, theta, qb, qd)
        bound = torch.maximum(pruned, never) + margin
        scored = keep.to(torch.int64).new_zeros(B).index_add_(0, qb, keep.to(torch.int64))
        kk = min(k, scores.shape[1])
        top, pos = torch.topk(scores, kk, dim=1) if kk else (scores[:, :0], rows[:, :0])
        top_rows = torch.gather(rows, 1, pos)
        kth = top[:, k - 1] if kk == k else torch.full((B,), float("-inf"), device=dev)
        certified = (kth > bound) | torch.isneginf(bound)
        if exact and not bool(certified.all()):
            return self._widen(Q, q_mask, k, top, top_rows, rows, qb, qd, upper, theta, certified, scored, bound)
        stats = SearchStats(certified.cpu(), (scored.float() / max(n, 1)).cpu(), kth.cpu(), bound.cpu())
        return top, top_rows, stats

    def _widen(self, Q, q_mask, k, top, top_rows, rows, qb, qd, upper, theta, certified, scored, bound):
        """exact=True: per uncertified query, score the docs not yet scored in decreasing bound order,
        a block at a time, until the k-th score is above the next bound (then every doc left is below)."""
        B, dev, n = Q.shape[0], Q.device, self.num_docs
        margin = engine_margin(Q, q_mask, self.dmax)
        out_s = torch.full((B, k), float("-inf"), device=dev)
        out_r = torch.full((B, k), -1, dtype=torch.int64, device=dev)
        out_s[:, : top.shape[1]], out_r[:, : top.shape[1]] = top, top_rows
        kth = out_s[:, k - 1].clone()
        bound_left = bound.clone()
        cells = scored.clone()
        th = torch.where(q_mask, theta, torch.zeros_like(theta))
        finite = torch.isfinite(th)
        pos = torch.where(finite, th.clamp(min=0), torch.zeros_like(th)).sum(dim=1)
        neg = torch.where(finite, th.clamp(max=0), torch.zeros_like(th)).sum(dim=1)
        qn = (Q.norm(dim=-1) * q_mask).sum(dim=1)
        empty = self.codes.lengths == 0
        for b in torch.nonzero(~certified).flatten().tolist():
            # Every doc's bound: never-candidates by the linear form, pruned candidates by their own.
            if bool(finite[b].all()):
                ub = torch.stack([neg[b], pos[b], qn[b]]) @ self.doc_stats.T
            else:
                ub = torch.where(empty, 0.0, float("-inf")).to(torch.float32)
            mine = qb == b
            ub[qd[mine]] = upper[mine]
            done = rows[b][rows[b] >= 0]
            ub[done] = float("-inf")  # scored already
            ub = ub + margin[b]
            order = torch.argsort(ub, descending=True)
            ub_sorted = ub[order]
            best_s, best_r = out_s[b], out_r[b]
            step = max(1024, rows.shape[1])
            at = 0
            while at < n and not bool(torch.isneginf(ub_sorted[at])) and not bool(best_s[k - 1] > ub_sorted[at]):
                block = order[at : at + step]
                block = block[torch.isfinite(ub[block])]
                s = self.score(Q[b : b + 1], q_mask[b : b + 1], block[None])[0]
                cells[b] += block.numel()
                merged_s, merged_r = torch.cat([best_s, s]), torch.cat([best_r, block])
                best_s, idx = torch.topk(merged_s, k)
                best_r = merged_r[idx]
                at += step
            out_s[b], out_r[b] = best_s, best_r
            kth[b] = best_s[k - 1]
            bound_left[b] = ub_sorted[at] if at < n else float("-inf")
            certified[b] = True
        stats = SearchStats(certified.cpu(), (cells.float() / max(n, 1)).cpu(), kth.cpu(), bound_left.cpu())
        valid = out_r >= 0
        width = int(valid.sum(dim=1).max()) if B else 0
        return out_s[:, :width], torch.where(valid, out_r, -1)[:, :width], stats
