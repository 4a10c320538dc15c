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
    2. candidates        the docs of the probed centroids' lists
    3. approximate pass  PLAID's centroid interaction with WARP's imputation: per candidate and query
                         token, the best probed centroid score among the doc's centroids, or theta_i
                         when the doc has no token in a probed centroid; summed over query tokens.
                         The best `ncandidates` per query survive (at least k; ties: lower rows)
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
tokens, plus a margin for rounding (engine_margin), this bounds every doc, candidate or not (a doc
that was never a candidate has M_d(q_i) <= theta_i for every i: its bound is smax_d P + smin_d N +
rmax_d R with P = sum max(theta_i, 0), N = sum min(theta_i, 0), R = sum |q_i|). An empty doc has
smin = smax = rmax = 0 and bound 0 (it scores exactly 0).

Steps 2-3 are the library's cf.centroid_interaction over the engine's lists (CentroidEngine.approximate),
dense over doc rows: per query and token a row of M_d(q_i) over all N docs, every probed list's
entries max-ed into it (a doc some list holds is a candidate), then raised to theta_i and summed.
That costs the lists' length plus N Lq per query and needs no sort. On the CPU a C++ kernel walks the
lists straight into one row per thread (csrc/cpu/centroid_cpu.cpp); the torch version (a GPU, or
static_shapes) expands the lists into index tensors and scatters them into a [Lq, N] table per query.

Certified: the k-th exact score is > every bound of a doc not scored (strictly: then no doc left out
can tie or beat it). Equal scores are ranked by ascending doc row (best_k), so a certified answer is
exactly what exhaustive scoring returns. `exact=True` then scores every doc whose bound is not below
the k-th score (in two rounds, _widen), so it is always certified and equals exhaustive scoring. Each query
reports the fraction of (doc, query token) cells it scored exactly (docs scored / docs: every valid
query token of a scored doc is scored).

Filtered search (allowed: a bool mask over doc rows, [N] for every query or [B, N] per query): a
doc not allowed is never a candidate (it cannot survive step 3), its bound is -inf (it can never be
returned, so it never blocks a certificate), exact=True widens over allowed docs only, and it is
never scored. The certificate then speaks of the allowed subset: a certified answer is exactly the
exhaustive top k over the allowed docs. cells_scored keeps its meaning (docs scored / all docs).

Static shapes (CentroidEngine(static_shapes=...), on by default for a CUDA store): steps 1-5 are
torch ops on the store's device (step 3: the torch centroid_interaction), and two sizes would come
from the data: the expanded lists' length (step 2) and the scored width (step 4). With static_shapes
both come from the shapes and settings alone: a query token's expansion is padded to the most its
`nprobe` probes can hold (the sum of the `nprobe` longest lists, known at load), and the survivors
are the first min(ncandidates, N) of one stable sort, -1 where no candidate is left. Nothing reads
a tensor back inside a batch (search_on_device; exact=True still reads the width of each of its two
rounds), so a GPU never waits and the batch can be captured in a CUDA graph; the price is the
padding's work (up to the longest lists' length over the actual one) and a full sort per query. The
answer is the same either way (tests/retrieval/test_engine_static.py, also on fake tensors that
carry no data); the CPU default sizes from the data and runs the C++ pass, which is the faster there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import torch

import colbert_fast as cf
from colbert_fast import reference
from colbert_fast.packed import read_safetensors, write_safetensors

__all__ = ["ENGINE_FORMAT", "CentroidEngine", "SearchStats", "best_k", "build_engine", "engine_margin",
           "load_engine", "save_engine"]  # fmt: skip

ENGINE_FORMAT = "colbert_fast.engine/1"
_ROWS = 1 << 16  # tokens whose residual norms are computed at once (64k x dim int64 fields)
# Relative rounding allowance of one fp32 dot product of length dim, per unit of |q| |d|: the kernel
# and the bound each round (decode: 2 roundings, products and sums: <= dim + Lq roundings, first
# order, in any order of accumulation); 2^-22 is 4 ulps per step, twice what both together need.
_ULPS = 2.0**-22
# Kernels that round the decoded vectors or the queries to fp16 before the product (the CUDA codes
# kernel, docs/spec.md section 11) are off by up to 2^-11 relative per operand: 2^-9 covers both.
_FP16_OPERANDS = 2.0**-9
# Relative error of an fp32 matmul under torch.set_float32_matmul_precision (TF32: 10-bit mantissa;
# bf16 passes: 8 bits), per element of the centroid scores.
_MATMUL_ULP = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}
# Docs per query scored in exact=True's first round (_widen), before it scores all that is still needed.
_WIDEN_BLOCK = 1024


def build_engine(codes: cf.CompressedDocs) -> dict[str, torch.Tensor]:
    """The engine's tensors for a residual store (see the module doc): ivf_offsets, ivf_docs, doc_stats."""
    _require_residual(codes)
    codes = codes.to("cpu")
    n, num_c = codes.num_docs, codes.centroids.shape[0]
    lengths = codes.lengths
    owner = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), lengths)
    ids = codes.centroid_ids.to(torch.int64)
    # (centroid, doc) pairs, unique and sorted: centroid-major, doc rows ascending within a centroid.
    keys = torch.unique(ids * max(n, 1) + owner)
    ivf_docs = (keys % max(n, 1)).to(torch.int32)
    counts = torch.bincount(keys // max(n, 1), minlength=num_c)
    ivf_offsets = torch.zeros(num_c + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ivf_offsets[1:])
    # Per token s_t |r_t|, r_t = the bucket weights its codes select (the decoded residual before scaling).
    scales = codes.scales.float()
    res = torch.empty(codes.num_tokens, dtype=torch.float32)
    for s in range(0, codes.num_tokens, _ROWS):
        fields = reference.unpack_bits(codes.codes[s : s + _ROWS], codes.nbits, codes.dim)
        res[s : s + _ROWS] = codes.bucket_weights[fields].norm(dim=1)
    # Rounded up by a few ulps: the norm is computed in fp32, and the bound must not fall below it.
    res = res * scales * (1 + 4 * codes.dim * _ULPS)
    stats = torch.zeros(n, 3, dtype=torch.float32)  # an empty doc keeps 0, 0, 0: its bound is 0
    if codes.num_tokens:
        stats[:, 0] = torch.full((n,), float("inf")).scatter_reduce(0, owner, scales, "amin")
        stats[:, 1] = torch.zeros(n).scatter_reduce(0, owner, scales, "amax", include_self=False)
        stats[:, 2] = torch.zeros(n).scatter_reduce(0, owner, res, "amax", include_self=False)
        stats[lengths == 0] = 0.0
    return {"ivf_offsets": ivf_offsets, "ivf_docs": ivf_docs, "doc_stats": stats}


def save_engine(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> dict:
    """Write build_engine's tensors as one safetensors file (atomic: temp file + rename; read back
    and verified). Returns the file's {"bytes", "sha256"} record."""
    return write_safetensors(path, {k: [v.contiguous()] for k, v in tensors.items()}, {"format": ENGINE_FORMAT})


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
    """fp32 [B]: the rounding allowance added to every bound of a query.

    dmax bounds every decoded norm and every |centroid| + |residual| the bound multiplies. Per valid
    query token the kernel's score and the bound's value are each within (dim + Lq + few) roundings
    of |q_i| dmax of the true value (see _ULPS); more where the centroid matmul or the scoring kernel
    runs in reduced precision (TF32, fp16 operands on the GPU).
    """
    dim, lq = Q.shape[-1], Q.shape[-2]
    rel = (dim + lq + 8) * _ULPS + dim * _MATMUL_ULP.get(torch.get_float32_matmul_precision(), 2.0**-8)
    if Q.device.type != "cpu":
        rel += _FP16_OPERANDS
    qn = (Q.float().norm(dim=-1) * q_mask).sum(dim=1)
    return qn * (dmax * rel)


def best_k(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (score, row) per query [B, min(k, K)], best first; equal scores in ascending row order.

    The tie rule makes the answer a function of the scores alone, so a search and exhaustive scoring
    that compute the same scores return the same rows. Empty slots (row -1, score -inf) come last.
    """
    key = torch.where(rows < 0, torch.iinfo(torch.int64).max, rows)
    by_row = torch.argsort(key, dim=1, stable=True)
    s, r = torch.gather(scores, 1, by_row), torch.gather(rows, 1, by_row)
    by_score = torch.argsort(s, dim=1, descending=True, stable=True)[:, : min(k, s.shape[1])]
    return torch.gather(s, 1, by_score), torch.gather(r, 1, by_score)


def _require_residual(codes) -> None:
    if not isinstance(codes, cf.CompressedDocs) or codes.codec != "residual":
        kind = f"a {codes.codec} CompressedDocs" if isinstance(codes, cf.CompressedDocs) else type(codes).__name__
        raise ValueError(
            f"the centroid engine needs a residual store (its centroids), got {kind}: "
            "build the index with IndexConfig(store='residual')"
        )


@contextlib.contextmanager
def _untimed(name: str):
    yield


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _mark_scored(bounds: torch.Tensor, rows: torch.Tensor) -> None:
    """Scored docs need no bound: bounds [B, N] set to -inf at rows [B, W] (an empty slot, -1,
    lowers nothing: +inf). A scatter, not boolean indexing: no host read."""
    if rows.shape[1]:
        lowered = torch.where(rows >= 0, float("-inf"), float("inf"))
        bounds.scatter_reduce_(1, rows.clamp(min=0), lowered, "amin")


@dataclasses.dataclass
class SearchStats:
    """Per query of a search (fp32/bool tensors [B] on the CPU).

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

    def apply(self, fn) -> SearchStats:
        """fn applied to every field (moved to the CPU, cut to some queries, copied, ...)."""
        return SearchStats(*(fn(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def summary(self) -> dict[str, float]:
        n = max(self.certified.numel(), 1)
        return {
            "queries": self.certified.numel(),
            "certified": float(self.certified.sum()) / n,
            "cells_scored": float(self.cells_scored.sum()) / n,
        }


class Candidates(NamedTuple):
    """Steps 2-3's candidates as a list: every (query, doc) candidate once, grouped by query, docs ascending."""

    query: torch.Tensor  # int64 [U]
    doc: torch.Tensor  # int64 [U]
    approx: torch.Tensor  # fp32 [U]: the centroid-interaction score (step 3)
    upper: torch.Tensor  # fp32 [U]: the doc's bound, rounding margin included
    theta: torch.Tensor  # fp32 [B, Lq]: best unprobed centroid score per query token (-inf: none)


class Pass(NamedTuple):
    """Steps 1-3 and the bounds, dense over doc rows (what search uses; Candidates is its list form)."""

    approx: torch.Tensor  # fp32 [B, N]: the approximate score of each candidate; -inf: not a candidate
    bounds: torch.Tensor  # fp32 [B, N]: an upper bound of every doc's exact score, margin included
    theta: torch.Tensor  # fp32 [B, Lq]


class CentroidEngine:
    """Centroid-interaction candidates + exact scoring + certificate over a residual store.

    Args:
        codes: the residual CompressedDocs (on the device where search runs).
        tensors: build_engine's output (any device; moved to codes' device).
        backend: scoring backend for cf.maxsim_packed.
        static_shapes: size every tensor of a search (exact=False) from the shapes and settings
            alone, never from the data: no host read inside a batch (a GPU never waits; the search
            can be captured in a CUDA graph), for more work (the lists' expansion is padded to its
            largest possible length, survivors come from a full sort). Default: on for a CUDA
            store, off on the CPU. Results are identical either way.
    """

    def __init__(
        self,
        codes: cf.CompressedDocs,
        tensors: dict[str, torch.Tensor],
        backend: str = "auto",
        static_shapes: bool | None = None,
    ):
        _require_residual(codes)
        device = codes.device
        self.codes, self.backend = codes, backend
        self.static_shapes = device.type == "cuda" if static_shapes is None else bool(static_shapes)
        self.num_docs = codes.num_docs
        self.num_centroids = codes.centroids.shape[0]
        self.centroids = codes.centroids
        self.ivf_offsets = tensors["ivf_offsets"].to(device)
        self.ivf_docs = tensors["ivf_docs"].to(device, torch.int64)
        self.doc_stats = tensors["doc_stats"].to(device)
        # f_d(x) = smin x + (smax - smin) max(x, 0): the two coefficients per doc, and rmax.
        st = self.doc_stats
        self._smin, self._sgap, self._rmax = st[:, 0].contiguous(), (st[:, 1] - st[:, 0]).contiguous(), st[:, 2]
        # Largest decoded norm and |c| + |r| any bound multiplies: the rounding margin's scale.
        cmax = float(codes.centroids.norm(dim=1).max())
        wmax = float(codes.bucket_weights.abs().max()) * codes.dim**0.5
        smax = float(self.doc_stats[:, 1].max()) if self.num_docs else 0.0
        self.dmax = max(smax, 1.0) * (cmax + wmax)
        # static_shapes: the longest expansion p probes of one query token can have is the sum of
        # the p longest lists (a token's p probed centroids are distinct): prefix sums, read once.
        list_lengths = (self.ivf_offsets[1:] - self.ivf_offsets[:-1]).cpu()
        self._cap_prefix = torch.cumsum(torch.sort(list_lengths, descending=True).values, 0).tolist()

    def _list_cap(self, p: int) -> int:
        """The most list entries the p probes of one query token can expand to."""
        return self._cap_prefix[p - 1] if p and self._cap_prefix else 0

    # ---- the pieces ---------------------------------------------------------------------------------

    def probe(self, Q: torch.Tensor, nprobe: int):
        """Step 1: (probed centroid ids [B, Lq, p] int64, their scores [B, Lq, p], theta [B, Lq]).

        theta is the best score of an unprobed centroid (-inf when every centroid is probed).
        """
        scores = torch.matmul(Q, self.centroids.T)  # [B, Lq, C]: the only matmul of the candidate stage
        p = min(nprobe, self.num_centroids)
        top = torch.topk(scores, min(p + 1, self.num_centroids), dim=2)
        if p < self.num_centroids:
            theta = top.values[..., p]
        else:
            theta = torch.full(Q.shape[:2], float("-inf"), device=Q.device)
        return top.indices[..., :p], top.values[..., :p], theta

    def approximate(self, Q: torch.Tensor, q_mask: torch.Tensor, nprobe: int, allowed=None) -> Pass:
        """Steps 1-3 and every doc's bound, for checked Q [B, Lq, dim] fp32 and q_mask [B, Lq].

        Step 3 is cf.centroid_interaction over the engine's lists (per doc and query token the best
        probed centroid score among the doc's centroids, raised to theta_i; summed, and the sum of
        the positive parts f_d needs): the C++ kernel on the CPU, the library's dense torch pass
        elsewhere, padded to the longest expansion with static_shapes. Masked query tokens probe
        nothing and count for nothing. allowed: None or bool [B, N] (allowed_mask): a doc not
        allowed is no candidate and gets bound -inf.
        """
        ids, vals, theta = self.probe(Q, nprobe)
        static = self.static_shapes  # the torch pass, padded: no size read back (a GPU never waits)
        a, positive, hit = cf.centroid_interaction(
            ids, vals, theta, self.ivf_offsets, self.ivf_docs, self.num_docs, q_mask,
            max_entries=self._list_cap(ids.shape[2]) if static else None, backend="torch" if static else "auto",
        )  # fmt: skip
        qn = (Q.norm(dim=-1) * q_mask).sum(dim=1)  # [B]: the residual term's sum_i |q_i|
        # A -inf term (every centroid probed, no list holds the doc: an empty doc, whose smin = smax =
        # rmax = 0) would make 0 * -inf = NaN below: -1e30 keeps that bound at 0.
        a.clamp_(min=-1e30)
        # The bound sum_i f_d(M_d(q_i)) + rmax_d sum_i |q_i| (module doc), written with f_d's two
        # slopes; for a doc with no probed centroid it is smax_d P + smin_d N + rmax_d R.
        bounds = self._smin * a + self._sgap * positive + self._rmax * qn[:, None]
        bounds += engine_margin(Q, q_mask, self.dmax)[:, None]
        approx = a.masked_fill_(~hit, float("-inf"))  # a doc is a candidate where some probed list holds it
        if allowed is not None:
            approx.masked_fill_(~allowed, float("-inf"))
            bounds.masked_fill_(~allowed, float("-inf"))
        return Pass(approx, bounds, theta)

    def candidates(self, Q: torch.Tensor, q_mask: torch.Tensor, nprobe: int, allowed=None) -> Candidates:
        """Steps 1-3 as a list of (query, doc) candidates (see approximate; allowed: None, bool [N] or [B, N])."""
        _, cand = self.doc_bounds(Q, q_mask, nprobe, allowed)
        return cand

    def doc_bounds(
        self, Q: torch.Tensor, q_mask: torch.Tensor, nprobe: int, allowed=None
    ) -> tuple[torch.Tensor, Candidates]:
        """fp32 [B, N]: an upper bound of every doc's exact score (margin included), and the candidates.

        allowed: None, or a bool mask over doc rows, [N] or [B, N] (allowed_mask): a doc not
        allowed gets bound -inf (it can never be returned) and is no candidate.
        """
        Q, q_mask = self._checked(Q, q_mask)
        _positive("nprobe", nprobe)
        found = self.approximate(Q, q_mask, nprobe, self.allowed_mask(allowed, Q.shape[0]))
        qb, qd = torch.nonzero(found.approx > float("-inf"), as_tuple=True)
        cand = Candidates(qb, qd, found.approx[qb, qd], found.bounds[qb, qd], found.theta)
        return found.bounds, cand

    def allowed_mask(self, allowed, B: int) -> torch.Tensor | None:
        """None, or the filter as bool [B, N] on the store's device (a [N] mask is shared by every query).

        ValueError for a tensor that is not bool [N] or [B, N]; TypeError for anything but a tensor.
        """
        if allowed is None:
            return None
        if not isinstance(allowed, torch.Tensor):
            raise TypeError(f"allowed must be None or a bool tensor over doc rows, got {type(allowed).__name__}")
        n = self.num_docs
        if allowed.dtype != torch.bool or tuple(allowed.shape) not in ((n,), (B, n)):
            raise ValueError(
                f"allowed must be a bool tensor [{n}] or [{B}, {n}] (doc rows), "
                f"got {allowed.dtype} {list(allowed.shape)}"
            )
        return allowed.to(self.codes.device).expand(B, n)

    def score(self, Q: torch.Tensor, q_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return cf.maxsim_packed(Q, self.codes, rows, q_mask, backend=self.backend)

    def _checked(self, Q, q_mask) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(Q, torch.Tensor) or Q.dim() != 3 or Q.shape[2] != self.codes.dim:
            shape = tuple(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
            raise ValueError(f"Q must be a [B, Lq, {self.codes.dim}] tensor, got {shape}")
        if q_mask is None:
            q_mask = torch.ones(Q.shape[:2], dtype=torch.bool)
        if not isinstance(q_mask, torch.Tensor) or q_mask.dtype != torch.bool or q_mask.shape != Q.shape[:2]:
            raise ValueError(f"q_mask must be a bool tensor {list(Q.shape[:2])}")
        dev = self.codes.device
        return Q.to(dev, torch.float32), q_mask.to(dev)

    # ---- search -------------------------------------------------------------------------------------

    def search(self, Q, q_mask, k: int, nprobe: int, ncandidates: int, exact: bool = False, timer=None, allowed=None):
        """Top k per query: (scores fp32 [B, k'], rows int64 [B, k'] (-1 = none), SearchStats).

        Q [B, Lq, dim] (converted to fp32), q_mask bool [B, Lq] or None. Equal scores rank by
        ascending row (best_k). ncandidates: docs scored exactly per query (at least k). exact=True
        scores every doc left whose bound is not below the k-th score, so every query is certified. timer: an
        object with .stage(name) context managers (retrieval.timing.StageTimer) to time steps 1-3
        and the certificate as "candidates", exact scoring as "score", the top k as "topk".
        allowed: None, or a bool tensor over doc rows, [N] (every query) or [B, N] (per query): only
        allowed docs are candidates, scored or returned, and the certificate is over the allowed
        subset (a certified answer is the exhaustive top k over it); an empty subset gives no
        rows, certified. cells_scored stays docs scored / all docs.
        """
        top, rows, stats = self.search_on_device(Q, q_mask, k, nprobe, ncandidates, exact, timer, allowed)
        return top, rows, stats.apply(torch.Tensor.cpu)

    @torch.inference_mode()
    def search_on_device(
        self, Q, q_mask, k: int, nprobe: int, ncandidates: int, exact: bool = False, timer=None, allowed=None
    ):
        """search, with the SearchStats left on the store's device. With static_shapes and exact=False
        nothing in it reads a tensor back: a GPU runs the batch without waiting, and the call can be
        captured in a CUDA graph (replayed with new queries copied into the captured Q)."""
        _positive("k", k)
        _positive("ncandidates", ncandidates)
        stage = timer.stage if timer is not None else _untimed
        with stage("candidates"):
            Q, q_mask = self._checked(Q, q_mask)
            _positive("nprobe", nprobe)
            B, dev = Q.shape[0], Q.device
            found = self.approximate(Q, q_mask, nprobe, self.allowed_mask(allowed, B))
            bounds = found.bounds
            rows = self._survivors(found.approx, max(ncandidates, k))
        with stage("score"):
            scores = self.score(Q, q_mask, rows) if rows.shape[1] else torch.empty(B, 0, device=dev)
        with stage("topk"):
            top, top_rows = best_k(scores, rows, k)
        with stage("candidates"):
            scored = (rows >= 0).sum(dim=1)
            _mark_scored(bounds, rows)
        if exact:
            with stage("score"):
                top, top_rows, scored = self._widen(Q, q_mask, k, top, top_rows, bounds, scored)
        with stage("candidates"):
            kth = top[:, k - 1] if top.shape[1] == k else torch.full((B,), float("-inf"), device=dev)
            left = bounds.max(dim=1).values if self.num_docs else torch.full((B,), float("-inf"), device=dev)
            certified = (kth > left) | torch.isneginf(left)
        cells = scored.float() / max(self.num_docs, 1)
        return top, top_rows, SearchStats(certified, cells, kth, left)

    def _survivors(self, approx: torch.Tensor, keep: int) -> torch.Tensor:
        """int64 [B, W]: per query the rows of its best `keep` candidates by approximate score (equal
        scores: lower rows first), -1 padded. approx: Pass.approx (-inf: no candidate).

        Dynamic: W = min(keep, the most candidates a query has) (a host read), rows ascending.
        static_shapes: W = min(keep, N), best first, from one stable sort (no host read).
        """
        B, N = approx.shape
        if self.static_shapes:
            width = min(keep, N)
            best, order = torch.sort(approx, dim=1, descending=True, stable=True)
            return torch.where(best[:, :width] > float("-inf"), order[:, :width], -1)
        is_cand = approx > float("-inf")
        width = min(keep, int(is_cand.sum(dim=1).max())) if B and N else 0  # host read: the scored width
        rows = torch.full((B, width), -1, dtype=torch.int64, device=approx.device)
        if width == 0:
            return rows
        kth = torch.topk(approx, width, dim=1).values[:, -1:]  # -inf where a query has fewer candidates
        above = approx > kth
        tied = (approx == kth) & is_cand
        chosen = above | (tied & (torch.cumsum(tied, dim=1) <= width - above.sum(dim=1, keepdim=True)))
        qb, qd = torch.nonzero(chosen, as_tuple=True)
        rows[qb, (torch.cumsum(chosen, dim=1) - 1)[qb, qd]] = qd
        return rows

    def _widen(self, Q, q_mask, k, top, top_rows, bounds, scored):
        """exact=True: score what the certificate still needs, in two batched rounds, and return
        (top, top_rows, scored); marks the docs it scores in `bounds` (-inf).

        A doc not scored can enter the top k only if its bound is >= the k-th score. Round 1 scores
        each query's _WIDEN_BLOCK unscored docs of largest bound among those (raising the k-th score
        when the bounds are tight, so round 2 has less to do); round 2 scores every unscored doc
        whose bound is still >= the k-th score. The k-th score never falls, so afterwards every doc
        left has a bound below it: certified, and equal to exhaustive scoring. Loose bounds make
        round 2 score most of the collection, in one call rather than block by block.
        """
        B, N, dev = Q.shape[0], self.num_docs, Q.device
        out_s = torch.full((B, k), float("-inf"), device=dev)
        out_r = torch.full((B, k), -1, dtype=torch.int64, device=dev)
        out_s[:, : top.shape[1]], out_r[:, : top.shape[1]] = top, top_rows
        scored = scored.clone()
        for limit in (_WIDEN_BLOCK, N):
            kth = out_s[:, k - 1 : k]
            need = (bounds >= kth) & (bounds > float("-inf"))  # scored or not allowed: -inf, never needed
            width = min(limit, int(need.sum(dim=1).max())) if B and N else 0  # host read: the round's width
            if width == 0:
                break
            # Per query the `width` needed docs of largest bound (-1 where it needs fewer).
            best, order = torch.topk(torch.where(need, bounds, float("-inf")), width, dim=1)
            rows = torch.where(best > float("-inf"), order, N)
            # Ascending rows: the kernel then reads the store front to back (-1 slots last).
            rows = torch.sort(rows, dim=1).values
            rows.masked_fill_(rows == N, -1)
            s = self.score(Q, q_mask, rows)
            out_s, out_r = best_k(torch.cat([out_s, s], dim=1), torch.cat([out_r, rows], dim=1), k)
            _mark_scored(bounds, rows)
            scored += (rows >= 0).sum(dim=1)
        found = int((out_r >= 0).sum(dim=1).max()) if B else 0
        return out_s[:, :found], out_r[:, :found], scored
