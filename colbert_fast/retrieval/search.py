"""Re-ranking (paper 3.5) and end-to-end retrieval (paper 3.6) over an index.

    rerank(queries, pids):  score each query's candidates (e.g. BM25's top 1000) exactly with
                            MaxSim against their stored embeddings, sort.
    search(queries, k):     the top k docs of the collection per query, in one of these modes:

        "paper"               paper 3.6: for every query token faiss returns its
                              `neighbors_per_token` nearest token vectors (probing `nprobe` IVF
                              cells) from an IVFPQ over every token (a second copy of the tokens);
                              their docs' union is scored exactly with MaxSim; the best k are kept.
                              Its default budget is "accurate"'s.
        "accurate"            the paper path with a candidate budget measured to find the exact top k
                              (the default for an index with a faiss IVF).
        "fast"                the paper path with the paper's own budget (k // 2 neighbours per
                              token, the index's nprobe): less work, and approximate.
        "centroid"            the centroid engine (colbert_fast.retrieval.engine; residual stores; the
                              default for an index without IVF, as IndexConfig builds them):
                              candidates from the store's own centroids (`nprobe` per query token),
                              `ncandidates` scored exactly, and a certificate per query; with
                              exact=True it widens until certified, equal to exhaustive scoring.
        "exhaustive"          every doc scored with the fused packed kernel, in chunks that bound
                              memory: the exact top k under the stored vectors (no faiss needed).

Every query's result is a Ranking (a list of (pid, score), best first) that also carries
`certified` (True when it is provably the exact top k under the stored vectors: exhaustive, a
paper-mode search that scored every doc, or a centroid search whose certificate holds) and
`cells_scored` (the fraction of the collection's (doc, query token) cells scored exactly).

Filtered search (search(..., allowed=...): pids, or a bool mask over doc rows) restricts the
candidates before scoring: a doc not allowed is never scored (never read), and the answer is the
top k over the allowed subset; `certified` then means provably the exact top k over that subset.
Exhaustive search scores the allowed rows only, centroid search hands the mask to the engine, the
paper modes drop disallowed faiss candidates before scoring. cells_scored stays a fraction of the
whole collection.

A candidate mode whose budget could reach every doc anyway (query tokens x neighbours >= docs, or
ncandidates >= docs in centroid mode; with a filter, the allowed docs) scores every doc instead:
exact, certified, and no slower than the candidates it would have built. So does centroid mode
under a filter selective enough that scoring its docs costs less than the engine's own work
(SCORE_ALL_ENGINE_WORK).

Queries are strings (encoded with the index's model, loaded on first use) or embeddings: a
tensor [B, Lq, dim] with an optional q_mask, or a list of [Lq_i, dim] tensors/arrays. Searching by
embeddings never loads an encoder, and exhaustive and centroid search never load faiss.

All MaxSim scoring goes through cf.maxsim_packed (backend "auto": the fastest kernel available
for the store's device). The store is moved to the GPU when there is one. Searcher.timings holds a
per-stage latency breakdown: encode, candidates (faiss + union), score (gather + MaxSim), topk.
The candidate budgets of "accurate" are measured in bench/search_defaults.py (results in
bench/results/search_defaults/).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import colbert_fast as cf

from .embedded import EMBEDDED, load_embedded
from .encoder import ColBERT
from .engine import CentroidEngine, best_k
from .index import Index, require_faiss
from .padding import pad_ids, pad_vectors
from .timing import StageTimer

__all__ = ["DOC_SIDE", "MODES", "PAPER_MODES", "Ranking", "Searcher", "candidate_budget", "centroid_budget",
           "check_encoder", "default_mode", "load_index_encoder"]  # fmt: skip

STAGES = ("encode", "candidates", "score", "topk")
MODES = ("accurate", "fast", "paper", "centroid", "exhaustive")
PAPER_MODES = ("accurate", "fast", "paper")  # faiss IVFPQ candidates (the paper's 3.6)
# The centroid engine's defaults at (up to) 10k docs: centroids probed per query token, docs scored
# exactly per query (at least CENTROID_CANDIDATES_PER_K * k); centroid_budget grows both with the
# collection. Measured in bench/engine_quality.py (results in bench/results/engine/, residual
# 2-bit): nprobe 64 with 256 candidates has recall@10 0.992 on E1 10k and 1.000 on Cranfield
# (nprobe 16: 0.913 on E1); k = 100 needs ~1,000 candidates (recall@100 0.996 on E1 10k, 1.000 on
# Cranfield). Approximate: these answers are not certified (see the note there).
CENTROID_NPROBE = 64
CENTROID_CANDIDATES = 256
CENTROID_CANDIDATES_PER_K = 10
# Larger collections: one probe per CENTROIDS_PER_PROBE centroids, and the candidates times
# sqrt(docs / CENTROID_BUDGET_DOCS). See centroid_budget for the measurements.
CENTROIDS_PER_PROBE = 128
CENTROID_BUDGET_DOCS = 10_000
# Centroid mode scores every allowed doc instead when they hold at most SCORE_ALL_ENGINE_WORK times
# the engine's own work, counted in doc tokens scored (engine_work): its candidates' tokens
# (ncandidates x mean doc length), one per centroid (the query x centroids product is the same
# work per centroid as per doc token), and one per ENTRIES_PER_SCORED_TOKEN list entries its pass
# walks (the C++ pass: ~1.8 ns an entry against ~80 ns a token scored at E1 100k). Measured one query
# at a time, 1 thread (E1, default budgets; bench/results/engine/scaling.md at c02d94a, and a run before):
# scoring a filter whole crossed the engine at 2.3x / 2.2x / 2.0x that work (10k / 30k / 100k docs).
# (Before the C++ pass the engine cost 3x as much and the rule was 0.3 tokens per list entry.)
SCORE_ALL_ENGINE_WORK = 2.0
ENTRIES_PER_SCORED_TOKEN = 44
# Encoder settings that shape the stored doc vectors: a searcher's encoder must agree on them.
DOC_SIDE = ("dim", "doc_maxlen", "doc_marker", "mask_punctuation", "skiplist")
# Exhaustive mode scores at most this many (query, doc) pairs per kernel call: the scores, the row
# list and any backend scratch stay small whatever the collection's size.
EXHAUSTIVE_PAIRS_PER_CALL = 1 << 16


class Ranking(list):
    """One query's result: (pid, score) pairs, best first (a plain list of them), plus

    certified: True when it is provably the exact top k of the collection under the stored vectors.
    cells_scored: the fraction of (doc, query token) cells of the collection scored exactly.
    """

    def __init__(self, items=(), certified: bool = False, cells_scored: float = 0.0):
        super().__init__(items)
        self.certified = bool(certified)
        self.cells_scored = float(cells_scored)


def candidate_budget(k: int, mode: str, index_nprobe: int) -> tuple[int, int]:
    """(nprobe, neighbors_per_token) of a paper mode (faiss candidates) for top-k retrieval.

    accurate (and paper, which takes its budget from the arguments when given): 20k neighbours
        per query token, at least 1,000, and the index's nprobe. Measured
        (bench/search_defaults.py; bench/results/search_defaults/): recall against exhaustive
        MaxSim depends on k' and hardly on nprobe (10 to 80 alike). recall@10 >= 0.99 needs
        k' >= 64 on Cranfield, 400 on the synthetic E1 collection at 10k docs and 1,000 at 30k;
        recall@100 needs k' >= 256 on Cranfield, ~1,000 on E1 10k and 2,000 on E1 30k (0.999).
        Budgets that large reach most of a collection this size, so there every doc is scored
        (see Searcher.search): exact, and faster than faiss's search for 1,000 neighbours.
    fast: the paper's k' = k // 2 and the index's nprobe (10 by default): approximate (recall@10
        0.78 on Cranfield, 0.26 on E1 10k).
    """
    if mode in ("accurate", "paper"):
        return index_nprobe, max(1000, 20 * k)
    if mode == "fast":
        return index_nprobe, max(k // 2, 1)
    raise ValueError(f"mode {mode!r} has no faiss candidate budget (paper modes: {', '.join(PAPER_MODES)})")


def centroid_budget(k: int, num_docs: int, num_centroids: int) -> tuple[int, int]:
    """(nprobe, ncandidates): the centroid engine's default budget for top-k retrieval.

    Up to 10k docs: nprobe CENTROID_NPROBE (64) and max(256, 10 k) candidates, which find the
    store's exhaustive top k with recall >= 0.99 on Cranfield and E1 10k. A fixed budget does not
    carry to larger collections: the build's centroids grow as sqrt(tokens), so 64 probes cover a
    smaller share of the space, and more docs sit near the k-th score. On E1 100k (32,768
    centroids) the 10k budget found recall@10 0.836 and recall@100 0.764 of the store's own top k;
    probing the same share of the centroids as at 10k (one per 128: nprobe 256) and scoring
    sqrt(10) times the candidates brought both to >= 0.99 (bench/results/engine/scaling.md).
    So: nprobe = max(64, centroids / 128), at most every centroid, and candidates times
    sqrt(docs / 10k), at least k.
    """
    nprobe = min(max(CENTROID_NPROBE, num_centroids // CENTROIDS_PER_PROBE), max(num_centroids, 1))
    growth = math.sqrt(max(1.0, num_docs / CENTROID_BUDGET_DOCS))
    ncandidates = math.ceil(max(CENTROID_CANDIDATES, CENTROID_CANDIDATES_PER_K * k) * growth)
    return nprobe, max(ncandidates, k)


def _positive_int(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def load_index_encoder(manifest: dict, source=None, *, device=None, dtype=None):
    """The model of an index's docs: `source` (a checkpoint directory) or the one its manifest
    records (the embedded default model in the settings recorded), checked with check_encoder.
    ValueError when neither names one (an index built from embeddings)."""
    recorded = manifest.get("model", {})
    if source is None:
        source = recorded.get("checkpoint")
        if source is None:
            raise ValueError(
                "the index manifest names no checkpoint (it was built from embeddings): use embeddings, "
                "or name the model (encoder= / --checkpoint) for texts"
            )
    if str(source) == EMBEDDED:
        encoder = load_embedded(device=device, dtype=dtype, **(recorded.get("config") or {}))
    else:
        encoder = ColBERT.load(Path(source), device=device, dtype=dtype)
    check_encoder(encoder, manifest)
    return encoder


def check_encoder(encoder, manifest: dict) -> None:
    """ValueError when `encoder` would not make the index's doc vectors: query-side settings and the
    similarity may differ from the build, what shaped the stored doc vectors (DOC_SIDE) may not."""
    recorded = manifest.get("model", {}).get("config") or {}
    mine = encoder.config.to_dict()
    differ = [f for f in DOC_SIDE if f in recorded and recorded[f] != mine[f]]
    if differ:
        raise ValueError(
            "the encoder does not match the index: "
            + ", ".join(f"{f} is {mine[f]!r}, the index was built with {recorded[f]!r}" for f in differ)
        )


def default_mode(index: Index) -> str:
    """The search mode an index serves best: the paper path's "accurate" when it has a faiss IVF,
    else the centroid engine when its store has one, else exhaustive scoring."""
    if index.has_ivf:
        return "accurate"
    return "centroid" if index.engine is not None else "exhaustive"


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


class Searcher:
    """Search or re-rank over an index built by colbert_fast.retrieval.build.

    Args:
        index: an Index or its directory.
        encoder: a colbert_fast.retrieval.encoder.ColBERT, or a checkpoint directory; None loads the
            checkpoint the index manifest names. Loaded only when text queries come in.
        device: where the doc store, the encoder and the scoring live; default cuda when
            available, else cpu.
        mode: default search mode: "accurate", "fast", "paper", "centroid" or "exhaustive" (see the
            module doc). None picks by what the index has: "accurate" with a faiss IVF, else
            "centroid" with a residual store's engine, else "exhaustive".
        nprobe: IVF cells (paper modes) or centroids (centroid mode) probed per query token
            (default: from the mode and k).
        neighbors_per_token: k', token vectors faiss returns per query token (default: from the
            mode and k).
        verify: check the index checksums on load.
        backend: scoring backend for cf.maxsim_packed ("auto" picks the fastest).
        load_ivf: False never opens the faiss index (re-ranking, centroid and exhaustive search only).
        score_all_if_covered: in a candidate mode, score every doc when the budget could reach
            them all anyway (paper modes: query tokens x neighbours; centroid: ncandidates >= the
            allowed docs). Default True; False always goes through faiss or the centroid engine,
            e.g. to measure them.

    Example:
        >>> s = Searcher("indexes/msmarco")
        >>> s.search(["what is late interaction"], k=10)[0][:2]     # [(pid, score), ...]
        >>> s.search(Q, k=10, q_mask=q_mask)                        # query embeddings [B, Lq, dim]
        >>> s.search(["what is late interaction"], k=10, mode="exhaustive")
        >>> s.rerank(["what is late interaction"], [["7", "42", "9"]])
        >>> s.timings                                               # seconds per stage
    """

    def __init__(
        self,
        index: Index | str | os.PathLike,
        encoder=None,
        *,
        device: str | torch.device | None = None,
        mode: str | None = None,
        nprobe: int | None = None,
        neighbors_per_token: int | None = None,
        verify: bool = True,
        backend: str = "auto",
        load_ivf: bool = True,
        score_all_if_covered: bool = True,
    ):
        _positive_int("nprobe", nprobe)
        _positive_int("neighbors_per_token", neighbors_per_token)
        if not isinstance(index, Index):
            index = Index.load(index, verify=verify, load_ivf=False)
        self.index = index
        self.mode = _check_mode(mode) if mode is not None else default_mode(index)
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self._encoder_source = encoder
        self._encoder = None
        recorded = index.manifest.get("model", {}).get("config") or {}
        self.similarity = recorded.get("similarity", "cosine")
        if encoder is not None and hasattr(encoder, "encode_queries"):
            self._encoder = self._checked_encoder(encoder)  # a model in hand: check it now
        self.docs = index.docs.to(self.device)
        self.backend = backend
        self.nprobe = nprobe
        self.neighbors_per_token = neighbors_per_token
        self.load_ivf = load_ivf
        self.score_all_if_covered = score_all_if_covered
        self._ivf = None
        self._engine = None
        self.timer = StageTimer(STAGES, self.device)
        self.docs_scored = 0  # (query, doc) pairs scored exactly since the last reset_timings()

    # ---- lazily loaded parts -----------------------------------------------------------------

    @property
    def encoder(self):
        """The query encoder, loaded on first use (text queries)."""
        if self._encoder is None:
            self._encoder = self._checked_encoder(self._load_encoder(self._encoder_source))
        return self._encoder

    def _load_encoder(self, source):
        return load_index_encoder(self.index.manifest, source)

    def _checked_encoder(self, encoder):
        check_encoder(encoder, self.index.manifest)
        self.similarity = encoder.config.similarity
        return encoder.to(self.device)

    @property
    def ivf(self):
        """The faiss index (opened on first use by a candidate mode), on the GPU when faiss can."""
        if self._ivf is None:
            if not self.load_ivf:
                raise RuntimeError(
                    "this Searcher was opened without the faiss index (load_ivf=False): use rerank or mode='exhaustive'"
                )
            self._ivf = _maybe_gpu(self.index.open_ivf(), self.device)
        return self._ivf

    @property
    def engine(self) -> CentroidEngine:
        """The centroid engine over the store (built on first use by mode "centroid")."""
        if self._engine is None:
            if self.index.engine is None:
                raise ValueError(
                    f"mode 'centroid' needs an index with a residual store (IndexConfig(store='residual')); "
                    f"this one's store is {self.index.manifest['stats'].get('store', {}).get('codec', 'fp16')}"
                )
            self._engine = CentroidEngine(self.docs, self.index.engine, backend=self.backend)
        return self._engine

    # ---- timing ------------------------------------------------------------------------------

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage (STAGES) since the last reset_timings()."""
        return self.timer.seconds

    def reset_timings(self) -> None:
        self.timer.reset()
        self.docs_scored = 0

    # ---- queries -----------------------------------------------------------------------------

    def encode(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Q [B, Lq, dim] fp32 and q_mask [B, Lq] on the searcher's device."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings; wrap a single query in a list")
        encoder = self.encoder  # loading it is not part of the encode stage
        with self.timer.stage("encode"):
            return encoder.encode_queries(list(queries))

    def _query_batches(self, queries, q_mask, batch_size: int):
        """Yield (Q [b, Lq, dim], q_mask [b, Lq]) on the device, batch by batch."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings; wrap a single query in a list")
        if isinstance(queries, (torch.Tensor, np.ndarray)):
            Q, q_mask = self._embedded_queries(torch.as_tensor(queries), q_mask)
            for s in range(0, Q.shape[0], batch_size):
                yield Q[s : s + batch_size], q_mask[s : s + batch_size]
            return
        queries = list(queries)
        if q_mask is not None:
            raise ValueError("q_mask goes with a query tensor [B, Lq, dim]; a list of queries needs none")
        if queries and all(isinstance(q, str) for q in queries):
            for s in range(0, len(queries), batch_size):
                yield self.encode(queries[s : s + batch_size])
            return
        if not all(isinstance(q, (torch.Tensor, np.ndarray)) for q in queries):
            raise TypeError("queries must be strings, a [B, Lq, dim] tensor, or a list of [Lq_i, dim] tensors/arrays")
        for s in range(0, len(queries), batch_size):
            yield self._embedded_queries(*_pad_queries([torch.as_tensor(q) for q in queries[s : s + batch_size]]))

    def _embedded_queries(self, Q: torch.Tensor, q_mask) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.docs.dim
        if Q.dim() != 3 or Q.shape[2] != dim:
            raise ValueError(f"query embeddings must be [B, Lq, {dim}] (the index's dim), got shape {tuple(Q.shape)}")
        if not Q.dtype.is_floating_point:
            raise TypeError(f"query embeddings must be floating point, got dtype {Q.dtype}")
        if not bool(torch.isfinite(Q).all()):
            raise ValueError("query embeddings hold NaN or inf values")
        if q_mask is None:
            q_mask = torch.ones(Q.shape[:2], dtype=torch.bool)
        q_mask = torch.as_tensor(q_mask)
        if q_mask.dtype != torch.bool or tuple(q_mask.shape) != tuple(Q.shape[:2]):
            raise ValueError(
                f"q_mask must be bool [B, Lq] = {tuple(Q.shape[:2])}, got {q_mask.dtype} {tuple(q_mask.shape)}"
            )
        return Q.to(self.device, torch.float32), q_mask.to(self.device)

    # ---- scoring -----------------------------------------------------------------------------

    def _finish(self, scores: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        """cosine -> l2 when asked: for unit vectors -|q - d|^2 = 2<q, d> - 2, per query token."""
        if self.similarity == "l2":
            nq = q_mask.sum(dim=1, keepdim=True).to(scores.dtype)
            scores = 2.0 * scores - 2.0 * nq  # -inf (empty slot) stays -inf
        return scores

    def score(self, Q: torch.Tensor, q_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Exact MaxSim of each query against its candidate rows: fp32 [B, K]; row -1 scores -inf.

        Q fp32 [B, Lq, dim] and q_mask bool [B, Lq] on the searcher's device; rows int64 [B, K]
        (doc rows of this index, -1 = empty slot). Timed as the "score" stage.
        """
        self.docs_scored += rows.numel()  # -1 slots included: they cost (almost) nothing
        with self.timer.stage("score"):
            scores = cf.maxsim_packed(Q, self.docs, rows, q_mask, backend=self.backend)
            return self._finish(scores, q_mask)

    def _rank(self, scores: torch.Tensor, rows: torch.Tensor, k: int, certified=False, cells=0.0) -> list[Ranking]:
        """Rankings of the best k per query; certified and cells: a bool/float or one per query."""
        with self.timer.stage("topk"):
            top, top_rows = best_k(scores, rows, k)  # equal scores: ascending row, in every mode
            return self._rankings(top, top_rows, certified, cells)

    def _rankings(self, top: torch.Tensor, top_rows: torch.Tensor, certified, cells) -> list[Ranking]:
        B = top.shape[0]
        certified = certified.tolist() if isinstance(certified, torch.Tensor) else [certified] * B
        cells = cells.tolist() if isinstance(cells, torch.Tensor) else [cells] * B
        pids = self.index.pids
        return [
            Ranking([(pids[r], s) for r, s in zip(rrow, srow) if r >= 0 and s != float("-inf")], c, f)
            for rrow, srow, c, f in zip(top_rows.cpu().tolist(), top.cpu().tolist(), certified, cells)
        ]

    def _exhaustive(
        self, Q: torch.Tensor, q_mask: torch.Tensor, k: int, allowed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every doc (or every allowed doc) scored, chunk by chunk, keeping a running top k:
        (scores [B, k'], rows [B, k']). The chunks run over the allowed rows, so no other doc is read."""
        B = Q.shape[0]
        if allowed is None:
            doc_rows = torch.arange(self.index.num_docs, device=self.device)
        else:
            doc_rows = allowed.nonzero().squeeze(1)
        step = max(1, EXHAUSTIVE_PAIRS_PER_CALL // B)
        best_scores = torch.empty(B, 0, device=self.device)
        best_rows = torch.empty(B, 0, dtype=torch.int64, device=self.device)
        for start in range(0, doc_rows.numel(), step):
            rows = doc_rows[start : start + step].expand(B, -1).contiguous()
            scores = self.score(Q, q_mask, rows)
            with self.timer.stage("topk"):
                scores = torch.cat([best_scores, scores], dim=1)
                rows = torch.cat([best_rows, rows], dim=1)
                best_scores, best_rows = best_k(scores, rows, k)
        return best_scores, best_rows

    def candidates(self, Q: torch.Tensor, q_mask: torch.Tensor, neighbors_per_token: int, nprobe: int) -> torch.Tensor:
        """Paper 3.6's candidate generation: int64 [B, K] doc rows, -1 padded (ascending per query)."""
        ivf = self.ivf
        with self.timer.stage("candidates"):
            B, Lq, _ = Q.shape
            kprime = max(1, min(neighbors_per_token, ivf.ntotal))
            flat = Q.reshape(B * Lq, -1)[q_mask.reshape(-1)].float().cpu().numpy()
            owner = torch.arange(B).repeat_interleave(q_mask.sum(dim=1).cpu())  # query of each searched token
            ivf.nprobe = nprobe  # set per call: Searchers may share one Index
            _, token_ids = ivf.search(np.ascontiguousarray(flat), kprime)
            token_ids = torch.from_numpy(token_ids)
            found = token_ids >= 0
            docs = self.index.token_to_doc[token_ids.clamp(min=0)].to(torch.int64)
            n = self.index.num_docs
            # Union per query in one pass: unique over (query, doc) keys.
            keys = (owner[:, None] * n + docs)[found]
            keys = torch.unique(keys)
            qidx, didx = keys // n, keys % n
            counts = torch.bincount(qidx, minlength=B)
            width = int(counts.max()) if keys.numel() else 0
            starts = torch.cumsum(counts, 0) - counts
            out = torch.full((B, width), -1, dtype=torch.int64)
            out[qidx, torch.arange(keys.numel()) - starts[qidx]] = didx
            return out.to(self.device)

    def _budget_covers_collection(self, q_mask: torch.Tensor, neighbors: int, allowed=None) -> bool:
        """Whether the union of neighbours could reach every (allowed) doc: then scoring them all is as
        cheap and exact. With a filter the union scored is at most the allowed docs, hence that count."""
        if not self.score_all_if_covered:
            return False
        return int(q_mask.sum(dim=1).max()) * neighbors >= self._reachable(allowed)

    def _cheaper_to_score_all(self, q_mask: torch.Tensor, nprobe: int, ncandidates: int, allowed=None) -> bool:
        """Centroid mode: whether scoring every (allowed) doc beats the engine, and is exact too.

        Either the docs to score exactly number at least the allowed docs (the engine would score
        them all anyway, after probing lists and bounding every doc), or the allowed docs hold at
        most SCORE_ALL_ENGINE_WORK times the engine's work in doc tokens (engine_work: a selective
        filter on a large collection; at E1 100k a filter of 1,000 docs was scored whole in 8 ms
        where the engine took 25 ms, about what it takes whatever the filter).
        """
        if not self.score_all_if_covered:
            return False
        if ncandidates >= self._reachable(allowed):
            return True
        docs = self.index.docs
        tokens = docs.num_tokens if allowed is None else int(docs.lengths[allowed.to(docs.lengths.device)].sum())
        return tokens <= SCORE_ALL_ENGINE_WORK * self.engine_work(int(q_mask.sum(dim=1).max()), nprobe, ncandidates)

    def engine_work(self, query_tokens: int, nprobe: int, ncandidates: int) -> float:
        """The centroid engine's work for one query, in doc tokens scored (SCORE_ALL_ENGINE_WORK)."""
        docs, centroids = self.index.docs, max(self.engine.num_centroids, 1)
        mean_doc = docs.num_tokens / max(docs.num_docs, 1)
        entries = query_tokens * min(nprobe, centroids) * docs.num_tokens / centroids
        return ncandidates * mean_doc + centroids + entries / ENTRIES_PER_SCORED_TOKEN

    def _reachable(self, allowed) -> int:
        return self.index.num_docs if allowed is None else int(allowed.sum())

    def _exhaustive_rankings(self, Q, q_mask, k: int, allowed) -> list[Ranking]:
        """Every (allowed) doc scored: the exact top k, certified; cells a share of the collection."""
        scores, rows = self._exhaustive(Q, q_mask, k, allowed)
        cells = 1.0 if allowed is None else int(allowed.sum()) / max(self.index.num_docs, 1)
        return self._rank(scores, rows, k, True, cells)

    def _allowed_rows(self, allowed) -> torch.Tensor | None:
        """search's `allowed` as None or a bool mask [num_docs] over doc rows, on the searcher's device.

        Pids (any iterable but a string) go through index.rows_of: KeyError naming an unknown one.
        TypeError for anything else; ValueError for a tensor or array that is not bool [num_docs].
        """
        if allowed is None:
            return None
        n = self.index.num_docs
        if isinstance(allowed, np.ndarray) and allowed.dtype == np.bool_:
            allowed = torch.from_numpy(allowed)
        if isinstance(allowed, torch.Tensor):
            if allowed.dtype != torch.bool or tuple(allowed.shape) != (n,):
                raise ValueError(
                    f"allowed as a tensor must be bool [{n}] (one flag per doc row), "
                    f"got {allowed.dtype} {list(allowed.shape)}"
                )
            return allowed.to(self.device)
        if isinstance(allowed, (str, bytes)):  # iterable, but surely one pid, not a set of them
            raise TypeError("allowed must be an iterable of pids; wrap a single pid in a list")
        try:
            pids = list(allowed)
        except TypeError:
            raise TypeError(
                f"allowed must be None, an iterable of pids or a bool tensor [{n}], got {type(allowed).__name__}"
            ) from None
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.tensor(self.index.rows_of(pids), dtype=torch.int64)] = True
        return mask.to(self.device)

    def budget(self, k: int, mode: str | None = None) -> tuple[int, int]:
        """(nprobe, neighbors_per_token) that a paper-mode search for top k uses."""
        mode = _check_mode(mode or self.mode)
        index_nprobe = int(self.index.manifest["index_config"]["nprobe"])
        nprobe, neighbors = candidate_budget(k, mode, index_nprobe)
        partitions = (self.index.manifest.get("ivf") or {}).get("partitions", nprobe)
        return min(self.nprobe or nprobe, partitions), self.neighbors_per_token or neighbors

    # ---- public ------------------------------------------------------------------------------

    def rerank(
        self, queries, candidates: Sequence[Sequence[str]], k: int | None = None, *, q_mask=None
    ) -> list[Ranking]:
        """Re-rank each query's candidate pids (paper 3.5): exact MaxSim over their stored embeddings.

        Args:
            queries: B query strings, or their embeddings (a [B, Lq, dim] tensor with an optional
                q_mask, or a list of [Lq_i, dim] tensors).
            candidates: B lists of collection pids (e.g. BM25's top 1000); unknown pids raise KeyError,
                repeated ones are scored once.
            k: keep the best k per query (default: all).

        Returns:
            B lists of (pid, score), best first.
        """
        _positive_int("k", k)
        if len(queries) != len(candidates):
            raise ValueError(f"got {len(queries)} queries but {len(candidates)} candidate lists")
        if len(queries) == 0:
            return []
        # A pid listed twice is scored once (dict keeps the first occurrence's order).
        rows, _ = pad_ids([self.index.rows_of(list(dict.fromkeys(str(p) for p in c))) for c in candidates])
        ((Q, q_mask),) = self._query_batches(queries, q_mask, rows.shape[0])
        rows = rows.to(self.device)
        width = rows.shape[1]
        if width == 0:
            return [[] for _ in range(rows.shape[0])]
        scores = self.score(Q, q_mask, rows)
        return self._rank(scores, rows, width if k is None else k, False, (rows >= 0).sum(dim=1) / self.index.num_docs)

    def search(
        self,
        queries,
        k: int = 10,
        *,
        mode: str | None = None,
        nprobe: int | None = None,
        neighbors_per_token: int | None = None,
        ncandidates: int | None = None,
        exact: bool = False,
        q_mask: torch.Tensor | None = None,
        batch_size: int = 32,
        allowed=None,
    ) -> list[Ranking]:
        """End-to-end retrieval: the top k (pid, score) per query, best first.

        Args:
            queries: query strings, or their embeddings: a [B, Lq, dim] tensor (q_mask: bool
                [B, Lq], True = real token; default all) or a list of [Lq_i, dim] tensors/arrays.
            k: results per query.
            mode: "accurate", "fast", "paper", "centroid" or "exhaustive" (default: the Searcher's).
            nprobe: IVF cells (paper modes) or centroids (centroid) probed per query token.
            neighbors_per_token: paper modes: token vectors faiss returns per query token.
            ncandidates: centroid mode: docs scored exactly per query (at least k; default from
                centroid_budget, with nprobe: they grow with the collection).
            exact: centroid mode: widen each query's search until its top k is certified (then it
                equals exhaustive search). Exhaustive search is exact anyway.
            batch_size: queries encoded and scored together.
            allowed: filtered search: None (every doc), an iterable of pids (strings as in
                index.pids; an unknown one raises KeyError) or a bool tensor [num_docs] over doc
                rows; the same for every query. Only allowed docs are scored or returned, and a
                certified Ranking is the exact top k over them (exhaustive: always). An empty set
                returns empty Rankings, certified, cells_scored 0.

        Returns:
            one Ranking per query, with .certified and .cells_scored (see the module doc).

        Raises:
            TypeError for an `allowed` of the wrong type, ValueError for a mask of the wrong
            dtype or shape, KeyError for an unknown pid.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        _positive_int("batch_size", batch_size)
        _positive_int("nprobe", nprobe)
        _positive_int("neighbors_per_token", neighbors_per_token)
        _positive_int("ncandidates", ncandidates)
        mode = _check_mode(mode or self.mode)
        if mode != "centroid" and ncandidates is not None:
            raise ValueError(f"ncandidates goes with mode='centroid', not {mode!r}")
        if mode in PAPER_MODES and exact:
            raise ValueError(f"exact=True goes with mode='centroid' (or 'exhaustive', exact anyway), not {mode!r}")
        if mode == "centroid" and neighbors_per_token is not None:
            raise ValueError("neighbors_per_token goes with the paper modes, not mode='centroid'")
        if mode == "centroid":
            engine = self.engine  # fails here, before any encoding, for a store without centroids
        allowed = self._allowed_rows(allowed)
        results: list[Ranking] = []
        n = self.index.num_docs
        for Q, q_mask_b in self._query_batches(queries, q_mask, batch_size):
            if allowed is not None and not bool(allowed.any()):
                # Nothing may be returned: the empty answer is exact without reading a doc.
                results.extend(Ranking((), True, 0.0) for _ in range(Q.shape[0]))
                continue
            if mode == "centroid":
                default_probe, default_wanted = centroid_budget(k, n, engine.num_centroids)
                probe = nprobe or self.nprobe or default_probe
                wanted = ncandidates or default_wanted
                if self._cheaper_to_score_all(q_mask_b, probe, wanted, allowed):
                    results.extend(self._exhaustive_rankings(Q, q_mask_b, k, allowed))
                    continue
                top, top_rows, stats = engine.search(
                    Q, q_mask_b, k, probe, wanted, exact=exact, timer=self.timer, allowed=allowed
                )
                self.docs_scored += int(round(float(stats.cells_scored.sum()) * n))
                results.extend(
                    self._rankings(self._finish(top, q_mask_b), top_rows, stats.certified, stats.cells_scored)
                )
                continue
            probe, neighbors = (None, None) if mode == "exhaustive" else self.budget(k, mode)
            neighbors = neighbors_per_token or neighbors
            if mode == "exhaustive" or self._budget_covers_collection(q_mask_b, neighbors, allowed):
                results.extend(self._exhaustive_rankings(Q, q_mask_b, k, allowed))
                continue
            rows = self.candidates(Q, q_mask_b, neighbors, nprobe or probe)
            if allowed is not None:
                rows = _only_allowed(rows, allowed)
            if rows.shape[1] == 0:
                results.extend(Ranking() for _ in range(Q.shape[0]))
                continue
            scores = self.score(Q, q_mask_b, rows)
            results.extend(self._rank(scores, rows, k, False, (rows >= 0).sum(dim=1) / max(n, 1)))
        return results


def _only_allowed(rows: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Candidate rows [B, K] (-1 padded) without the disallowed ones: the kept rows move to the front
    in their order, -1 after them, and the width shrinks to the widest query's count."""
    keep = (rows >= 0) & allowed[rows.clamp(min=0)]
    # A stable sort of "not kept" moves kept slots to the front, each query's order unchanged.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    width = int(keep.sum(dim=1).max()) if rows.numel() else 0
    kept = torch.where(keep, rows, torch.full_like(rows, -1))
    return torch.gather(kept, 1, order)[:, :width]


def _pad_queries(queries: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of [Lq_i, dim] query embeddings -> (Q [B, max Lq_i, dim], q_mask [B, max Lq_i])."""
    for i, q in enumerate(queries):
        if q.dim() != 2 or q.shape[0] < 1:
            raise ValueError(f"queries[{i}] must be [Lq, dim] with Lq >= 1, got shape {tuple(q.shape)}")
        if q.shape[1] != queries[0].shape[1]:
            raise ValueError(f"queries[{i}] has dim {q.shape[1]}, queries[0] has {queries[0].shape[1]}")
    return pad_vectors(queries)


def _maybe_gpu(ivf, device: torch.device):
    """Move the faiss index to the GPU when the store is there and faiss has GPU support."""
    if device.type != "cuda":
        return ivf
    faiss = require_faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return ivf  # faiss-cpu: the IVF search stays on the host, the scoring runs on the GPU
    try:
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, device.index or 0, ivf)
        gpu._colbert_fast_res = res  # keep the resources alive with the index
        return gpu
    except (RuntimeError, AttributeError):
        return ivf
