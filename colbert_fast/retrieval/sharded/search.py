"""Search and re-ranking over a sharded index: every rank of the job calls the same methods (SPMD).

Rank 0 encodes the queries once and broadcasts them; every rank generates candidates from its own
faiss shard(s) and scores them with cf.maxsim_packed on its own store (through
colbert_fast.retrieval.search.Searcher); per-query top-k lists are all-gathered and merged into
the global top k, ordered by score, ties by global row (the passage's line in the collection).
Re-ranking broadcasts the candidate list as global rows; each rank scores exactly the rows inside
its shards' ranges.

Before and after each collective step the ranks exchange their status through the control plane
(cluster.py), so a failing or silent rank is named instead of blocking the others. With
allow_partial=True the answering shards' top-k lists are read from the store instead and
`report` names the shards that answered.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..embedded import load_encoder
from ..padding import pad_ids
from ..search import Ranking, Searcher
from ..timing import StageTimer
from .cluster import Cluster, CollectiveError, ShardError, error_text, owned_shards, raise_failures
from .index import Shard, ShardedIndex

__all__ = ["SearchReport", "ShardedSearcher", "merge_topk"]

STAGES = ("encode", "broadcast", "local", "gather", "merge")


def merge_topk(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best k of each query's entries by score (descending), ties broken by id (ascending).

    Args:
        scores: float [B, N]; ids: int64 [B, N] (global rows), -1 for an empty slot (sorted last
            whatever its score).
    Returns:
        (scores [B, k], ids [B, k]) padded with (-inf, -1) when a query has fewer than k entries.
    Merging per-shard results of this function with this function gives the global result: the
    order is total, so the top k of a union is the top k of the union of top ks.
    """
    scores = torch.where(ids >= 0, scores.float(), torch.tensor(float("-inf"), device=scores.device))
    # Two stable sorts: by id, then by score; equal scores keep the id order.
    big = torch.iinfo(torch.int64).max
    by_id = torch.sort(torch.where(ids >= 0, ids, big), dim=1, stable=True).indices
    s1, i1 = torch.gather(scores, 1, by_id), torch.gather(ids, 1, by_id)
    by_score = torch.sort(s1, dim=1, descending=True, stable=True).indices[:, :k]
    top_s, top_i = torch.gather(s1, 1, by_score), torch.gather(i1, 1, by_score)
    top_i = torch.where(top_s == float("-inf"), torch.full_like(top_i, -1), top_i)
    if top_s.shape[1] < k:
        pad = k - top_s.shape[1]
        top_s = torch.cat([top_s, top_s.new_full((top_s.shape[0], pad), float("-inf"))], 1)
        top_i = torch.cat([top_i, top_i.new_full((top_i.shape[0], pad), -1)], 1)
    return top_s, top_i


@dataclasses.dataclass
class SearchReport:
    """Which shards answered the last call (all of them unless allow_partial hid a failure)."""

    answered: list[int]
    failed: dict[int, str]


class ShardedSearcher:
    """Search or re-rank over a sharded index; every rank of the cluster calls the same methods.

    Args:
        index: a sharded index directory (or ShardedIndex).
        cluster: this rank (Cluster.init() under torchrun; default Cluster.local()).
        encoder: a ColBERT, a checkpoint directory, or None for the one the manifest names. Only
            rank 0 encodes; the other ranks use it for the doc-side compatibility check.
        nprobe, neighbors_per_token, verify, backend, load_ivf: as colbert_fast.retrieval.search.Searcher, per
            shard (default: its "accurate" budget for k; nprobe is capped at each shard's partitions;
            k' token neighbours are fetched per shard).
        allow_partial: if a rank fails or times out, return the other shards' results instead of
            raising; `report` says which shards answered.
        split_candidates: fetch ceil(k' / #shards) token neighbours per shard instead of k', so the
            candidate work summed over shards stays that of one index (each shard's candidates
            are then fewer: recall can drop; the default keeps k' per shard, a superset).

    After each call: `report` (SearchReport) and `timings` (seconds per stage, this rank).
    Every rank returns the same rankings.
    """

    def __init__(
        self,
        index: ShardedIndex | str | os.PathLike,
        cluster: Cluster | None = None,
        encoder=None,
        *,
        nprobe: int | None = None,
        neighbors_per_token: int | None = None,
        verify: bool = True,
        backend: str = "auto",
        load_ivf: bool = True,
        allow_partial: bool = False,
        split_candidates: bool = False,
    ):
        self.cluster = cluster or Cluster.local()
        self.split_candidates = split_candidates
        self.index = index if isinstance(index, ShardedIndex) else ShardedIndex.load(index)
        self.allow_partial = allow_partial
        self.neighbors_per_token = neighbors_per_token
        self.my_shards = owned_shards(len(self.index.shards), self.cluster.rank, self.cluster.world_size)
        # Loading the model or a shard can fail (a missing file, a corrupt shard): report which rank
        # and shard to every rank before anyone searches, rather than leave the others waiting.
        self.searchers: list[tuple[Shard, Searcher]] = []
        status = "ok"
        try:
            if encoder is None:
                encoder = self.index.manifest["model"].get("checkpoint")
                if encoder is None:
                    raise ValueError("the sharded index names no checkpoint: pass encoder=")
            if not hasattr(encoder, "encode_queries"):
                encoder = load_encoder(encoder)
            for s in self.my_shards:
                shard_index = self.index.open_shard(s, verify=verify, load_ivf=load_ivf)
                searcher = Searcher(
                    shard_index,
                    encoder,
                    device=self.cluster.device,
                    nprobe=nprobe,
                    neighbors_per_token=neighbors_per_token,
                    backend=backend,
                    load_ivf=load_ivf,
                )
                self.searchers.append((self.index.shards[s], searcher))
            self.index.pids(verify=verify)
        except Exception as e:
            status = error_text(e)
        _, opened = self.cluster.exchange(status)
        raise_failures(opened, "opening the sharded index", self._shards_of())
        self.encoder = encoder
        self.report = SearchReport(list(range(len(self.index.shards))), {})
        self.timer = StageTimer(STAGES, self.cluster.device)

    def _shards_of(self) -> dict[int, list[int]]:
        n = len(self.index.shards)
        return {r: owned_shards(n, r, self.cluster.world_size) for r in range(self.cluster.world_size)}

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage (STAGES) on this rank since the last reset_timings()."""
        return self.timer.seconds

    def reset_timings(self) -> None:
        self.timer.reset()
        for _, searcher in self.searchers:
            searcher.reset_timings()

    def shard_timings(self) -> dict[str, float]:
        """Seconds per Searcher stage (candidates = faiss + union, score = MaxSim, ...), this rank's shards."""
        out: dict[str, float] = {}
        for _, searcher in self.searchers:
            for stage, seconds in searcher.timings.items():
                out[stage] = out.get(stage, 0.0) + seconds
        return out

    # ---- public --------------------------------------------------------------------------------

    def search(
        self,
        queries: Sequence[str] | None,
        k: int = 10,
        *,
        neighbors_per_token: int | None = None,
        batch_size: int = 32,
    ) -> list[Ranking]:
        """End-to-end retrieval over every shard: the global top k (pid, score) per query, best first.

        Rank 0's queries, k and neighbors_per_token are the ones used; other ranks may pass None.
        Each shard's candidate budget defaults to its Searcher's "accurate" one for k.
        """
        if self.cluster.rank != 0:
            return self._follow()
        try:
            if isinstance(queries, str) or queries is None:
                raise TypeError("queries must be a list of strings; wrap a single query in a list")
            if not isinstance(k, int) or k < 1:
                raise ValueError(f"k must be a positive int, got {k!r}")
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        except (TypeError, ValueError) as e:
            self._refuse(e)
        kprime = neighbors_per_token or self.neighbors_per_token or 0  # 0: each shard's default for k
        batches = [(list(queries[s : s + batch_size]), None) for s in range(0, len(queries), batch_size)]
        return self._lead("search", batches, k, kprime)

    def rerank(
        self, queries: Sequence[str] | None, candidates: Sequence[Sequence[str]] | None, k: int | None = None
    ) -> list[Ranking]:
        """Exact MaxSim of each query's candidate pids, each scored by the rank owning its shard.

        Rank 0's arguments are the ones used. Unknown pids raise KeyError (on rank 0; ShardError
        naming rank 0 on the others); a pid listed twice is scored once.
        """
        if self.cluster.rank != 0:
            return self._follow()
        if queries is None or candidates is None or len(queries) != len(candidates):
            self._refuse(ValueError("rerank needs as many candidate lists as queries"))
        if k is not None and (not isinstance(k, int) or k < 1):
            self._refuse(ValueError(f"k must be a positive int or None, got {k!r}"))
        return self._lead("rerank", [(list(queries), [list(c) for c in candidates])], k, 0)

    def serve(self) -> None:
        """Ranks other than 0: answer rank 0's calls until it calls stop()."""
        while True:
            try:
                if self._follow(until_stop=True) is None:
                    return
            except ShardError as e:
                if e.failures.get(0) == "no answer" or self.cluster.broken is not None:
                    raise  # rank 0 is gone, or a collective failed: the job must be restarted
                # a failed call (bad input, a failing shard) was reported to rank 0's caller: go on

    def _refuse(self, error: Exception):
        """Rank 0: a call with bad arguments; tell the other ranks (waiting for a header), then raise."""
        self.cluster.exchange(json.dumps({"op": "error", "last": True, "error": error_text(error)}))
        raise error

    def stop(self) -> None:
        """Rank 0: release the ranks looping in serve()."""
        if self.cluster.rank == 0:
            self.cluster.exchange(json.dumps({"op": "stop"}))

    # ---- the protocol ---------------------------------------------------------------------------

    def _lead(self, op: str, batches: list, k: int | None, kprime: int) -> list[Ranking]:
        results: list[Ranking] = []
        self.report = SearchReport([], {})
        if not batches:
            batches = [([], [])]
        for b, (texts, cands) in enumerate(batches):
            header = {"op": op, "last": b == len(batches) - 1, "B": len(texts), "kprime": kprime}
            payload, error = None, None
            try:
                with self.timer.stage("encode"):
                    rows = None
                    if cands is not None:
                        # A pid listed twice is scored once (dict keeps the first occurrence's order).
                        rows, _ = pad_ids([self.index.rows_of(list(dict.fromkeys(str(p) for p in c))) for c in cands])
                        header["W"] = rows.shape[1]
                    header["k"] = k if k is not None else max(header.get("W", 0), 1)
                    if texts:
                        Q, q_mask = self.encoder.encode_queries(texts)
                        header["Lq"], header["dim"] = Q.shape[1], Q.shape[2]
                        payload = (Q, q_mask, rows)
            except Exception as e:
                error = e
                header = {"op": op, "last": True, "error": error_text(e)}
            _, ready = self.cluster.exchange(json.dumps(header))
            if error is not None:
                raise error
            raise_failures(
                {r: ("ok" if r == 0 or v == "ready" else v) for r, v in ready.items()}, op, self._shards_of()
            )
            results.extend(self._round(header, payload))
        return results

    def _follow(self, until_stop: bool = False):
        results: list[Ranking] = []
        self.report = SearchReport([], {})
        while True:
            _, ready = self.cluster.exchange("ready", wait_for_zero=None if not until_stop else 1e9)
            header = json.loads(ready[0]) if ready[0] is not None else {"error": "no answer"}
            if header.get("op") == "stop":
                return None
            what = header.get("op") if header.get("op") in ("search", "rerank") else "the call"
            if "error" in header:
                raise ShardError(
                    f"{what} failed on rank 0 (shards {self._shards_of()[0]}): {header['error']}",
                    {0: header["error"]},
                )
            raise_failures(
                {r: ("ok" if r == 0 or v == "ready" else v) for r, v in ready.items()}, what, self._shards_of()
            )
            results.extend(self._round(header, None))
            if header["last"]:
                return results

    def _round(self, header: dict, payload) -> list[Ranking]:
        """One batch on every rank: broadcast, local top k, status exchange and gather, merge."""
        B, k = header["B"], header["k"]
        if B == 0:
            return []
        with self.timer.stage("broadcast"):
            Q, q_mask, rows = self._named(header["op"], lambda: self._broadcast(header, payload))
        with self.timer.stage("local"):
            status, local = "ok", None
            try:
                if header["op"] == "search":
                    local = self._local_search(Q, q_mask, header["kprime"], k)
                else:
                    local = self._local_rerank(Q, q_mask, rows.to(self.cluster.device), k)
            except Exception as e:
                status = error_text(e)
            if self.allow_partial and local is not None:
                # Posted before the status: a verdict naming this rank "ok" implies its data is there.
                scores, ids = local
                self.cluster.post(
                    scores.cpu().numpy().astype("<f4").tobytes() + ids.cpu().numpy().astype("<i8").tobytes()
                )
        with self.timer.stage("gather"):
            parts = self._named(header["op"], lambda: self._gather(header["op"], status, local, B, k))
        with self.timer.stage("merge"):
            top_s, top_i = merge_topk(
                torch.cat([p[0].cpu() for p in parts], 1), torch.cat([p[1].cpu() for p in parts], 1), k
            )
            pids = self.index.pids()
            return [
                [(pids[i], s) for i, s in zip(irow, srow) if i >= 0]
                for irow, srow in zip(top_i.tolist(), top_s.tolist())
            ]

    def _named(self, op: str, step):
        """step(), with a collective's failure re-raised as the documented ShardError naming the
        rank and its shards ("search failed on 1 rank(s): rank 1 (shards [1]): ...")."""
        try:
            return step()
        except CollectiveError as e:
            raise_failures(e.failures, op, self._shards_of(), cause=e)
            raise  # not reached: a CollectiveError always names a rank

    def _broadcast(self, header: dict, payload):
        """Rank 0's queries (and re-rank candidates) to every rank: (Q, q_mask, rows or None) on this rank's device."""
        c, B = self.cluster, header["B"]
        if c.rank == 0:
            Q, q_mask, rows = payload
            Q = c.broadcast(Q.float())
            q_mask = c.broadcast(q_mask.to(torch.uint8))
            if header["op"] == "rerank":
                rows = c.broadcast(rows)
        else:
            Q = c.broadcast(torch.empty((B, header["Lq"], header["dim"]), dtype=torch.float32))
            q_mask = c.broadcast(torch.empty((B, header["Lq"]), dtype=torch.uint8))
            rows = None
            if header["op"] == "rerank":
                rows = c.broadcast(torch.empty((B, header["W"]), dtype=torch.int64))
        return Q.to(c.device), q_mask.to(device=c.device, dtype=torch.bool), rows

    def _gather(self, op: str, status: str, local, B: int, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every rank's (scores [B, k], rows [B, k]): all-gathered, or, when some ranks failed and
        allow_partial, read from the store for the ranks that answered (self.report names them)."""
        c = self.cluster
        tag, done = c.exchange(status)
        failures = {r: ("no answer (timed out or died)" if v is None else v) for r, v in done.items() if v != "ok"}
        shards_of = self._shards_of()
        if failures and (not self.allow_partial or len(failures) == c.world_size):
            raise_failures(done, op, shards_of)  # partial results need some rank to answer
        failed_shards = {s: why for r, why in failures.items() for s in shards_of[r]}
        self.report.failed.update(failed_shards)
        self.report.answered = [s for s in range(len(self.index.shards)) if s not in self.report.failed]
        if not failures:
            return list(zip(c.all_gather(local[0]), c.all_gather(local[1])))
        parts = []
        for r in sorted(set(range(c.world_size)) - set(failures)):
            blob = c.fetch(tag, r)
            half = B * k * 4
            scores = torch.from_numpy(np.frombuffer(blob[:half], dtype="<f4").reshape(B, k).copy())
            ids = torch.from_numpy(np.frombuffer(blob[half:], dtype="<i8").reshape(B, k).copy())
            parts.append((scores, ids))
        return parts

    def _local_search(self, Q, q_mask, kprime: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's top k per query from its shards (global rows), as Searcher.search scores them."""
        scores, ids = [], []
        for shard, searcher in self.searchers:
            nprobe, neighbors = searcher.budget(k)
            neighbors = kprime or neighbors
            if self.split_candidates:
                neighbors = -(-neighbors // len(self.index.shards))
            rows = searcher.candidates(Q, q_mask, neighbors, nprobe)
            if rows.shape[1] == 0:
                continue
            scores.append(searcher.score(Q, q_mask, rows))
            ids.append(torch.where(rows >= 0, rows + shard.doc_start, -1))
        return self._local_topk(scores, ids, Q.shape[0], k)

    def _local_rerank(self, Q, q_mask, rows, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Score the candidates (global rows) inside this rank's ranges, compacted to the left; leave the rest."""
        scores, ids = [], []
        for shard, searcher in self.searchers:
            own = (rows >= shard.doc_start) & (rows < shard.doc_end)
            width = int(own.sum(1).max()) if rows.numel() else 0
            if width == 0:
                continue
            order = torch.sort((~own).to(torch.int8), dim=1, stable=True).indices[:, :width]
            local = torch.gather(torch.where(own, rows - shard.doc_start, -1), 1, order)
            scores.append(searcher.score(Q, q_mask, local))
            ids.append(torch.where(local >= 0, local + shard.doc_start, -1))
        return self._local_topk(scores, ids, Q.shape[0], k)

    def _local_topk(self, scores, ids, B: int, k: int):
        if not scores:
            return torch.full((B, k), float("-inf")), torch.full((B, k), -1, dtype=torch.int64)
        s, i = merge_topk(torch.cat(scores, 1), torch.cat(ids, 1), k)
        return s.cpu(), i.cpu()
