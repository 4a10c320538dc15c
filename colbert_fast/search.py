"""Re-ranking (paper 3.5) and end-to-end retrieval (paper 3.6) over an index.

    rerank(query, pids):  encode the query, score its candidates (e.g. BM25's top 1000) exactly
                          with MaxSim against their stored embeddings, sort.
    search(query, k):     encode the query; for every query token ask faiss for its k' nearest
                          token vectors; map them to their docs (emb2pid) and take the union;
                          score that candidate set exactly with MaxSim; keep the top k.

All MaxSim scoring goes through cf.maxsim_packed (backend "auto": the fastest kernel available
for the store's device). The store is moved to the GPU when there is one. Searcher.timings holds a
per-stage latency breakdown: encode, candidates (faiss + union), score (gather + MaxSim), topk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from . import ops
from .index import Index, require_faiss

__all__ = ["Ranking", "Searcher"]

STAGES = ("encode", "candidates", "score", "topk")
# Encoder settings that shape the stored doc vectors: a searcher's encoder must agree on them.
_DOC_SIDE = ("dim", "doc_maxlen", "doc_marker", "mask_punctuation", "skiplist")

# One query's result: (pid, score) pairs, best first.
Ranking = list[tuple[str, float]]


class Searcher:
    """Search or re-rank with a ColBERT encoder over an index built by colbert_fast.index.

    Args:
        index: an Index or its directory.
        encoder: a colbert_fast.model.ColBERT, or a checkpoint directory; None loads the
            checkpoint the index manifest names.
        device: where the doc store, the encoder and the scoring live; default cuda when
            available, else cpu.
        nprobe: IVF cells probed per query token (default: the index's, 10).
        ncandidates: k', token neighbours fetched per query token (default: max(k // 2, 1)).
        verify: check the index checksums on load.
        backend: scoring backend for cf.maxsim_packed ("auto" picks the fastest).

    Example:
        >>> s = Searcher("indexes/msmarco")
        >>> s.search(["what is late interaction"], k=10)[0][:2]     # [(pid, score), ...]
        >>> s.rerank(["what is late interaction"], [["7", "42", "9"]])
        >>> s.timings                                               # seconds per stage
    """

    def __init__(
        self,
        index: Index | str | os.PathLike,
        encoder=None,
        *,
        device: str | torch.device | None = None,
        nprobe: int | None = None,
        ncandidates: int | None = None,
        verify: bool = True,
        backend: str = "auto",
        load_ivf: bool = True,
    ):
        for name, value in (("nprobe", nprobe), ("ncandidates", ncandidates)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(index, Index):
            index = Index.load(index, verify=verify, load_ivf=load_ivf)
        self.index = index
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.encoder = self._encoder(encoder)
        self.docs = index.docs.to(self.device)
        self.backend = backend
        self.ncandidates = ncandidates
        self.similarity = self.encoder.config.similarity
        self.ivf = index.ivf
        partitions = index.manifest.get("ivf", {}).get("partitions", 1)
        self.nprobe = int(min(nprobe or index.manifest["index_config"]["nprobe"], partitions))
        if self.ivf is not None:
            self.ivf = _maybe_gpu(self.ivf, self.device)
        self.timings = {s: 0.0 for s in STAGES}

    def _encoder(self, encoder):
        from .model import EMBEDDED, ColBERT, load_embedded

        recorded = self.index.manifest.get("model", {}).get("config") or {}
        if not isinstance(encoder, ColBERT):
            if encoder is None:
                encoder = self.index.manifest.get("model", {}).get("checkpoint")
                if encoder is None:
                    raise ValueError("the index manifest names no checkpoint: pass encoder= (a model or its directory)")
            if str(encoder) == EMBEDDED:  # built with the embedded default model, in the settings recorded
                encoder = load_embedded(**recorded)
            else:
                encoder = ColBERT.load(Path(encoder))
        # Query-side settings and the similarity may differ from the build; what shaped the stored
        # doc vectors may not.
        mine = encoder.config.to_dict()
        differ = [f for f in _DOC_SIDE if f in recorded and recorded[f] != mine[f]]
        if differ:
            raise ValueError(
                "the encoder does not match the index: "
                + ", ".join(f"{f} is {mine[f]!r}, the index was built with {recorded[f]!r}" for f in differ)
            )
        return encoder.to(self.device)

    # ---- timing ------------------------------------------------------------------------------

    @contextmanager
    def _stage(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] += time.perf_counter() - t0

    def reset_timings(self) -> None:
        self.timings = {s: 0.0 for s in STAGES}

    # ---- scoring -----------------------------------------------------------------------------

    def _finish(self, scores: torch.Tensor, q_mask: torch.Tensor) -> torch.Tensor:
        """cosine -> l2 when asked: for unit vectors -|q - d|^2 = 2<q, d> - 2, per query token."""
        if self.similarity == "l2":
            nq = q_mask.sum(dim=1, keepdim=True).to(scores.dtype)
            scores = 2.0 * scores - 2.0 * nq  # -inf (empty slot) stays -inf
        return scores

    def _score(self, Q: torch.Tensor, q_mask: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        with self._stage("score"):
            scores = ops.maxsim_packed(Q, self.docs, pids, q_mask, backend=self.backend)
            return self._finish(scores, q_mask)

    def _rank(self, scores: torch.Tensor, pids: torch.Tensor, k: int) -> list[Ranking]:
        with self._stage("topk"):
            k = min(k, scores.shape[1])
            top, pos = torch.topk(scores, k, dim=1) if k > 0 else (scores[:, :0], scores[:, :0].long())
            top_pids = torch.gather(pids, 1, pos).cpu().tolist()
            top = top.cpu().tolist()
            ids = self.index.doc_ids
            return [
                [(ids[p], s) for p, s in zip(prow, srow) if p >= 0 and s != float("-inf")]
                for prow, srow in zip(top_pids, top)
            ]

    def encode(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Q [B, Lq, dim] fp32 and q_mask [B, Lq] on the searcher's device."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings; wrap a single query in a list")
        with self._stage("encode"):
            return self.encoder.encode_queries(list(queries))

    def rerank(
        self, queries: Sequence[str], candidates: Sequence[Sequence[str]], k: int | None = None
    ) -> list[Ranking]:
        """Re-rank each query's candidate pids (paper 3.5): exact MaxSim over their stored embeddings.

        Args:
            queries: B query strings.
            candidates: B lists of collection pids (e.g. BM25's top 1000); unknown pids raise KeyError,
                repeated ones are scored once.
            k: keep the best k per query (default: all).

        Returns:
            B lists of (pid, score), best first.
        """
        if len(queries) != len(candidates):
            raise ValueError(f"got {len(queries)} queries but {len(candidates)} candidate lists")
        if len(queries) == 0:
            return []
        # A pid listed twice is scored once (dict keeps the first occurrence's order).
        rows = [self.index.internal_ids(list(dict.fromkeys(str(p) for p in c))) for c in candidates]
        width = max((len(r) for r in rows), default=0)
        pids = torch.full((len(rows), width), -1, dtype=torch.int64)
        for i, r in enumerate(rows):
            pids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        Q, q_mask = self.encode(queries)
        pids = pids.to(self.device)
        if width == 0:
            return [[] for _ in rows]
        scores = self._score(Q, q_mask, pids)
        return self._rank(scores, pids, width if k is None else k)

    def candidates(self, Q: torch.Tensor, q_mask: torch.Tensor, ncandidates: int) -> torch.Tensor:
        """Paper 3.6's candidate generation: int64 [B, K] doc indices, -1 padded (sorted per row)."""
        if self.ivf is None:
            raise RuntimeError("this Searcher was opened without the faiss index (load_ivf=False): use rerank")
        with self._stage("candidates"):
            B, Lq, _ = Q.shape
            kprime = max(1, min(ncandidates, self.ivf.ntotal))
            flat = Q.reshape(B * Lq, -1)[q_mask.reshape(-1)].float().cpu().numpy()
            owner = torch.arange(B).repeat_interleave(q_mask.sum(dim=1).cpu())  # query of each searched token
            self.ivf.nprobe = self.nprobe  # set per call: Searchers may share one Index
            _, token_ids = self.ivf.search(np.ascontiguousarray(flat), kprime)
            token_ids = torch.from_numpy(token_ids)
            found = token_ids >= 0
            docs = self.index.emb2pid[token_ids.clamp(min=0)].to(torch.int64)
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

    def search(
        self, queries: Sequence[str], k: int = 10, *, ncandidates: int | None = None, batch_size: int = 32
    ) -> list[Ranking]:
        """End-to-end retrieval (paper 3.6) for each query: the top k (pid, score), best first.

        Args:
            queries: query strings.
            k: results per query.
            ncandidates: k' (default: the Searcher's, else max(k // 2, 1), as in the paper).
            batch_size: queries encoded and scored together.
        """
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings; wrap a single query in a list")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        kprime = ncandidates or self.ncandidates or max(k // 2, 1)
        results: list[Ranking] = []
        for s in range(0, len(queries), batch_size):
            Q, q_mask = self.encode(queries[s : s + batch_size])
            pids = self.candidates(Q, q_mask, kprime)
            if pids.shape[1] == 0:
                results.extend([] for _ in range(Q.shape[0]))
                continue
            scores = self._score(Q, q_mask, pids)
            results.extend(self._rank(scores, pids, k))
        return results


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
