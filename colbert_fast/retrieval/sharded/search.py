"""Sharded indexes and search across processes and machines, on torch.distributed.

A sharded index is a directory:

    sharded.json        the commit point: collection, model, config, and per shard its directory,
                        document range [doc_start, doc_end) and the sha256 of its manifest
    shard-0000/         an ordinary index (colbert_fast.index) over documents [0, n_0)
    shard-0001/         ... over [n_0, n_1), and so on

Each rank builds the shards it owns (shard s belongs to rank s % world_size) with the ordinary
indexer, so a shard is rebuilt alone by building just that shard (`shards=[s]`), in any process.

Search is SPMD: every rank calls the same method. Rank 0 encodes the queries once and broadcasts
them; every rank generates candidates from its own faiss shard(s) and scores them with
cf.maxsim_packed on its own store (through colbert_fast.search.Searcher); per-query top-k lists are
all-gathered and merged into the global top k, ordered by score, ties by collection position (the
document's line in the collection: its global doc id). Re-ranking broadcasts the candidate list as
global doc ids; each rank scores exactly the ids inside its shards' ranges.

Data moves by torch.distributed collectives (gloo on CPU, NCCL on GPU). Control moves through the
rendezvous store: before and after each collective step every rank posts its status and rank 0
publishes a verdict, so a rank that raises, hangs or dies is named (rank and shard) within
`timeout` seconds instead of leaving the others blocked in a collective. With allow_partial=True
the answering shards' top-k lists are read from the store instead and `report` names the shards
that answered.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .files import write_bytes_atomic
from .index import CorruptIndexError, Index, IndexConfig, _sha256, build_index, read_collection, read_manifest
from .search import Ranking, Searcher

__all__ = [
    "Cluster",
    "ShardError",
    "ShardedIndex",
    "ShardedSearcher",
    "build_sharded_index",
    "merge_topk",
    "shard_ranges",
]

SHARDED_FORMAT = "colbert_fast.sharded/1"
TOP_MANIFEST = "sharded.json"
STAGES = ("encode", "broadcast", "local", "gather", "merge")


class ShardError(RuntimeError):
    """Some rank failed or did not answer in time. `failures` maps rank -> reason."""

    def __init__(self, message: str, failures: dict[int, str] | None = None):
        super().__init__(message)
        self.failures = failures or {}


def shard_dir_name(shard: int) -> str:
    return f"shard-{shard:04d}"


def shard_ranges(num_docs: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous document ranges, sizes differing by at most one: [(doc_start, doc_end), ...]."""
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    if num_shards > num_docs:
        raise ValueError(f"cannot split {num_docs} documents into {num_shards} non-empty shards")
    return [(s * num_docs // num_shards, (s + 1) * num_docs // num_shards) for s in range(num_shards)]


def owned_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Shard s is served (and built) by rank s % world_size."""
    return [s for s in range(num_shards) if s % world_size == rank]


# ---- the cluster: rank, world, collectives and the control store -------------------------------


@dataclasses.dataclass
class Cluster:
    """This process's place in the job.

    Build one with Cluster.init() under torchrun (or with RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT set), or Cluster.local() for a single process without torch.distributed.

    Attributes:
        rank, world_size: as torch.distributed numbers them.
        store: the control-plane key-value store (a prefix of the rendezvous store).
        backend: "gloo", "nccl", or None for a local cluster (no collectives needed).
        device: where this rank keeps its shards and scores (cuda:LOCAL_RANK with NCCL).
        timeout: seconds a rank may take for one step before it is reported as not answering.
    """

    rank: int
    world_size: int
    store: dist.Store
    backend: str | None
    device: torch.device
    timeout: float = 600.0
    _seq: int = 0
    _last_complete: str | None = None

    @classmethod
    def init(cls, backend: str | None = None, *, device: str | None = None, timeout: float = 600.0) -> Cluster:
        """Join the job via env:// rendezvous and start the process group.

        Args:
            backend: "gloo" or "nccl"; default nccl when CUDA is available, else gloo.
            device: default cuda:LOCAL_RANK with nccl, else cpu.
            timeout: seconds; also the process group's own collective timeout.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu"
        device = torch.device(device)
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("the nccl backend needs a cuda device")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        span = datetime.timedelta(seconds=timeout)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=span))
        if not dist.is_initialized():
            dist.init_process_group(
                backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=world_size, timeout=span
            )
        return cls(rank, world_size, dist.PrefixStore("colbert_fast", store), backend, device, timeout)

    @classmethod
    def local(cls, device: str | None = None) -> Cluster:
        """A world of one process: no process group, an in-memory store."""
        return cls(0, 1, dist.HashStore(), None, torch.device(device or "cpu"))

    def close(self, timeout: float = 30.0) -> None:
        """Leave the job: every rank together, so no rank tears down a connection a peer still uses.

        When some rank does not arrive within `timeout` seconds (it died), the process group is left
        as it is: destroying it could block on, or abort over, the dead peer.
        """
        if self.backend is None or not dist.is_initialized():
            return
        saved, self.timeout = self.timeout, timeout
        try:
            _, status = self.exchange("closing", wait_for_zero=timeout)
        except ShardError:
            return
        finally:
            self.timeout = saved
        if all(v is not None for v in status.values()):
            dist.barrier()
            dist.destroy_process_group()

    @property
    def comm_device(self) -> torch.device:
        """Collective tensors live here: the GPU for NCCL, the host for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ---- control plane -------------------------------------------------------------------------

    def exchange(self, mine: str, *, wait_for_zero: float | None = None) -> tuple[str, dict[int, str | None]]:
        """Post this rank's status; rank 0 collects every rank's (or None: no answer within timeout)
        and publishes them; every rank returns (tag, {rank: status}).

        Ranks other than 0 wait up to `wait_for_zero` seconds (default 2 * timeout + 30) for the
        verdict, then raise ShardError naming rank 0.
        """
        self._seq += 1
        tag = f"x{self._seq}"
        self.store.set(f"{tag}/{self.rank}", mine)
        if self.rank == 0:
            deadline = time.monotonic() + self.timeout
            status: dict[int, str | None] = {}
            for r in range(self.world_size):
                key = f"{tag}/{r}"
                try:
                    self.store.wait([key], datetime.timedelta(seconds=max(0.001, deadline - time.monotonic())))
                    status[r] = self.store.get(key).decode()
                except RuntimeError:  # the store's wait timeout (DistStoreError is a RuntimeError)
                    status[r] = None
            self.store.set(f"{tag}/verdict", json.dumps(status))
            if all(v is not None for v in status.values()):
                # Every rank posted this exchange, so each has read the previous verdict: drop it.
                if self._last_complete is not None:
                    last = self._last_complete
                    keys = [f"{last}/{r}" for r in range(self.world_size)] + [f"{last}/verdict"]
                    for key in keys + [f"{last}/data/{r}" for r in range(self.world_size)]:
                        self.store.delete_key(key)
                self._last_complete = tag
            return tag, status
        wait = wait_for_zero if wait_for_zero is not None else 2 * self.timeout + 30
        try:
            self.store.wait([f"{tag}/verdict"], datetime.timedelta(seconds=wait))
            raw = json.loads(self.store.get(f"{tag}/verdict").decode())
        except RuntimeError as e:
            raise ShardError(f"rank 0 did not answer within {wait:.0f} s ({e})", {0: "no answer"}) from None
        return tag, {int(r): v for r, v in raw.items()}

    # ---- collectives (identity in a world of one) -------------------------------------------------

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        t = tensor.to(self.comm_device).contiguous()
        dist.broadcast(t, src=0)
        return t

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.world_size == 1:
            return [tensor]
        t = tensor.to(self.comm_device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return out


def _error_text(e: BaseException) -> str:
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


# ---- top-k merge -----------------------------------------------------------------------------------


def merge_topk(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best k of each row by score (descending), ties broken by id (ascending); id -1 is empty.

    Args:
        scores: float [B, N]; ids: int64 [B, N], -1 for an empty slot (sorted last whatever its score).
    Returns:
        (scores [B, k], ids [B, k]) padded with (-inf, -1) when a row has fewer than k entries.
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


# ---- the sharded index ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shard:
    shard: int
    dir: str
    doc_start: int
    doc_end: int
    manifest_sha256: str

    @property
    def num_docs(self) -> int:
        return self.doc_end - self.doc_start


class ShardedIndex:
    """The top-level manifest of a sharded index and access to its shards."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.shards = [
            Shard(int(s["shard"]), str(s["dir"]), int(s["doc_start"]), int(s["doc_end"]), str(s["manifest_sha256"]))
            for s in manifest["shards"]
        ]
        self._doc_ids: list[str] | None = None
        self._pid_index: dict[str, int] | None = None

    @property
    def num_docs(self) -> int:
        return self.shards[-1].doc_end

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardedIndex:
        """Read and check sharded.json: format, and ranges that tile [0, num_docs) in order."""
        path = Path(path)
        mpath = path / TOP_MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"no sharded index at {path}: {TOP_MANIFEST} is missing")
        manifest = read_manifest(mpath, SHARDED_FORMAT)
        try:
            index = cls(path, manifest)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptIndexError(f"{mpath} has a malformed shard entry: {e}") from None
        start = 0
        for i, s in enumerate(index.shards):
            if s.shard != i or s.doc_start != start or s.doc_end <= s.doc_start or s.dir != shard_dir_name(i):
                raise CorruptIndexError(f"{mpath}: shard entry {i} does not continue the document ranges")
            start = s.doc_end
        if not index.shards or start != manifest.get("collection", {}).get("num_docs"):
            raise CorruptIndexError(f"{mpath}: shard ranges do not cover the collection")
        return index

    def shard_of(self, doc: int) -> int:
        for s in self.shards:
            if s.doc_start <= doc < s.doc_end:
                return s.shard
        raise IndexError(f"doc {doc} is outside the collection (0..{self.num_docs - 1})")

    def _check_shard_manifest(self, s: Shard) -> Path:
        shard_path = self.path / s.dir
        mpath = shard_path / "manifest.json"
        if not mpath.exists():
            raise CorruptIndexError(f"shard {s.shard} at {shard_path} has no manifest: rebuild it (shards=[{s.shard}])")
        if _sha256(mpath) != s.manifest_sha256:
            raise CorruptIndexError(
                f"shard {s.shard} at {shard_path} differs from {TOP_MANIFEST} (manifest sha256): "
                "it was rebuilt or altered without updating the top-level manifest"
            )
        return shard_path

    def open_shard(self, shard: int, *, verify: bool = True, load_ivf: bool = True) -> Index:
        s = self.shards[shard]
        index = Index.load(self._check_shard_manifest(s), verify=verify, load_ivf=load_ivf)
        if index.num_docs != s.num_docs:
            raise CorruptIndexError(f"shard {shard} holds {index.num_docs} docs, {TOP_MANIFEST} says {s.num_docs}")
        return index

    def doc_ids(self, verify: bool = True) -> list[str]:
        """Every shard's pids in collection order (global doc id -> pid)."""
        if self._doc_ids is None:
            out: list[str] = []
            for s in self.shards:
                shard_path = self._check_shard_manifest(s)
                info = json.loads((shard_path / "manifest.json").read_text())["files"]["ids"]
                ids_path = shard_path / info["name"]
                if verify and _sha256(ids_path) != info["sha256"]:
                    raise CorruptIndexError(f"shard {s.shard}: {ids_path} fails its sha256 check")
                ids = json.loads(ids_path.read_text())
                if len(ids) != s.num_docs:
                    raise CorruptIndexError(f"shard {s.shard}: {len(ids)} pids, expected {s.num_docs}")
                out.extend(str(p) for p in ids)
            self._doc_ids = out
        return self._doc_ids

    def global_ids(self, pids: Sequence[str]) -> list[int]:
        """Global doc ids of collection pids; KeyError naming the first unknown one."""
        if self._pid_index is None:
            self._pid_index = {p: i for i, p in enumerate(self.doc_ids())}
        out = []
        for p in pids:
            i = self._pid_index.get(str(p))
            if i is None:
                raise KeyError(f"pid {p!r} is not in the sharded index at {self.path}")
            out.append(i)
        return out


def _write_top_manifest(
    index_dir: Path, collection: Path, collection_sha: str, num_docs: int, ranges, config, checkpoint
):
    shards, fingerprint = [], None
    for s, (start, end) in enumerate(ranges):
        mpath = index_dir / shard_dir_name(s) / "manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(f"shard {s} is not built yet ({mpath} is missing): build it (shards=[{s}])")
        sub = json.loads(mpath.read_text())
        fp = sub["model"]["fingerprint"]
        if fingerprint is not None and fp != fingerprint:
            raise ValueError(f"shard {s} was built with another model than shard 0: rebuild it")
        fingerprint = fp
        if sub["stats"]["num_docs"] != end - start:
            raise ValueError(f"shard {s} holds {sub['stats']['num_docs']} docs, its range needs {end - start}")
        shards.append(
            {
                "shard": s,
                "dir": shard_dir_name(s),
                "doc_start": start,
                "doc_end": end,
                "num_tokens": sub["stats"]["num_tokens"],
                "ivf": sub["ivf"],
                "manifest_sha256": _sha256(mpath),
            }
        )
    manifest = {
        "format": SHARDED_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "collection": {"path": str(collection.resolve()), "sha256": collection_sha, "num_docs": num_docs},
        "model": {"checkpoint": checkpoint, "fingerprint": fingerprint},
        "index_config": dataclasses.asdict(config),
        "num_shards": len(ranges),
        "shards": shards,
    }
    write_bytes_atomic(index_dir / TOP_MANIFEST, json.dumps(manifest, indent=2).encode())


def build_sharded_index(
    collection: str | os.PathLike,
    index_dir: str | os.PathLike,
    encoder,
    config: IndexConfig | None = None,
    *,
    cluster: Cluster | None = None,
    num_shards: int | None = None,
    shards: Sequence[int] | None = None,
    checkpoint: str | None = None,
    resume: bool = True,
    progress: bool = False,
    build_timeout: float = 7 * 24 * 3600.0,
) -> ShardedIndex:
    """Build a sharded index: every rank of `cluster` encodes and writes the shards it owns.

    Args:
        collection: MS MARCO TSV (pid \\t text); every rank reads it (the text only, not vectors).
        index_dir: the sharded index directory.
        encoder: a colbert_fast.model.ColBERT (on this rank's device).
        config: IndexConfig, applied to every shard (each shard trains its own IVF).
        cluster: this rank (default Cluster.local(): one process builds every shard it is asked for).
        num_shards: default world_size, or the existing index's count when rebuilding shards.
        shards: build only these shards (rebuild one alone: shards=[s]); split among the ranks.
            The other shards must already exist with the same collection and layout.
        checkpoint, resume, progress: as colbert_fast.index.build_index, per shard.
        build_timeout: seconds rank 0 waits for the other ranks to finish their shards (a shard of a
            large collection takes hours; the cluster's own timeout is for search steps).

    Returns:
        the ShardedIndex, once sharded.json names every shard (written by rank 0 last).
    Raises ShardError naming the rank and shard when a rank fails (every rank raises).
    """
    cluster = cluster or Cluster.local()
    config = config or IndexConfig()
    index_dir, collection = Path(index_dir), Path(collection)
    pids, texts = read_collection(collection)
    collection_sha = _sha256(collection)
    existing = None
    if shards is not None:
        try:
            existing = ShardedIndex.load(index_dir)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if existing.manifest["collection"]["sha256"] != collection_sha:
                raise ValueError(f"{collection} is not the collection the sharded index at {index_dir} was built from")
            if num_shards is not None and num_shards != existing.manifest["num_shards"]:
                raise ValueError(f"the index has {existing.manifest['num_shards']} shards, not {num_shards}")
            num_shards = existing.manifest["num_shards"]
    num_shards = num_shards or cluster.world_size
    ranges = shard_ranges(len(pids), num_shards)
    todo = list(range(num_shards)) if shards is None else sorted(set(shards))
    bad = [s for s in todo if not isinstance(s, int) or not 0 <= s < num_shards]
    if bad:
        raise ValueError(f"shards {bad} are outside 0..{num_shards - 1}")
    mine = [s for i, s in enumerate(todo) if i % cluster.world_size == cluster.rank]

    status = "ok"
    error: BaseException | None = None
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        for s in mine:
            start, end = ranges[s]
            # The shard's own collection: the same passages, so build_index (and its resume) applies as is.
            part = index_dir / f"{shard_dir_name(s)}.collection.tsv"
            write_bytes_atomic(part, "".join(f"{pids[i]}\t{texts[i]}\n" for i in range(start, end)).encode())
            try:
                build_index(
                    part,
                    index_dir / shard_dir_name(s),
                    encoder,
                    config,
                    checkpoint=checkpoint,
                    resume=resume,
                    progress=progress,
                )
            finally:
                part.unlink(missing_ok=True)
    except Exception as e:  # reported to every rank, then raised here too
        status, error = f"shards {mine}: {_error_text(e)}", e
    saved, cluster.timeout = cluster.timeout, build_timeout
    try:
        _, built = cluster.exchange(status)
    finally:
        cluster.timeout = saved
    owners = {r: [s for i, s in enumerate(todo) if i % cluster.world_size == r] for r in built}
    _raise_failures(built, "building", owners, error)

    publish = "ok"
    if cluster.rank == 0:
        try:
            _write_top_manifest(index_dir, collection, collection_sha, len(pids), ranges, config, checkpoint)
        except Exception as e:
            publish, error = f"writing {TOP_MANIFEST}: {_error_text(e)}", e
    _, published = cluster.exchange(publish)
    _raise_failures(published, "publishing", {0: []}, error)
    return ShardedIndex.load(index_dir)


def _raise_failures(
    status: dict[int, str | None], what: str, shards_of: dict[int, list[int]], cause: BaseException | None = None
) -> None:
    """Raise ShardError naming every rank whose status is not "ok" (None: it did not answer in time)."""
    failures = {r: ("no answer (timed out or died)" if v is None else v) for r, v in status.items() if v != "ok"}
    if failures:
        lines = [f"rank {r} (shards {shards_of.get(r, [])}): {why}" for r, why in sorted(failures.items())]
        raise ShardError(f"{what} failed on {len(failures)} rank(s): " + "; ".join(lines), failures) from cause


# ---- search --------------------------------------------------------------------------------------


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
        nprobe, neighbors_per_token, verify, backend, load_ivf: as colbert_fast.search.Searcher, per
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
                from .model import ColBERT

                encoder = ColBERT.load(Path(encoder))
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
            self.index.doc_ids(verify=verify)
        except Exception as e:
            status = _error_text(e)
        _, opened = self.cluster.exchange(status)
        _raise_failures(opened, "opening the sharded index", self._shards_of())
        self.encoder = encoder
        self.report = SearchReport(list(range(len(self.index.shards))), {})
        self.timings = {s: 0.0 for s in STAGES}

    def _shards_of(self) -> dict[int, list[int]]:
        n = len(self.index.shards)
        return {r: owned_shards(n, r, self.cluster.world_size) for r in range(self.cluster.world_size)}

    def reset_timings(self) -> None:
        self.timings = {s: 0.0 for s in STAGES}
        for _, searcher in self.searchers:
            searcher.reset_timings()

    def shard_timings(self) -> dict[str, float]:
        """Seconds per Searcher stage (candidates = faiss + union, score = MaxSim, ...), this rank's shards."""
        out: dict[str, float] = {}
        for _, searcher in self.searchers:
            for stage, seconds in searcher.timings.items():
                out[stage] = out.get(stage, 0.0) + seconds
        return out

    def _tick(self, stage: str, t0: float) -> float:
        if self.cluster.device.type == "cuda":
            torch.cuda.synchronize(self.cluster.device)
        now = time.perf_counter()
        self.timings[stage] += now - t0
        return now

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
                if e.failures.get(0) == "no answer":
                    raise  # rank 0 is gone
                # a failed call (bad input, a failing shard) was reported to rank 0's caller: go on

    def _refuse(self, error: Exception):
        """Rank 0: a call with bad arguments; tell the other ranks (waiting for a header), then raise."""
        self.cluster.exchange(json.dumps({"op": "error", "last": True, "error": _error_text(error)}))
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
                t0 = time.perf_counter()
                gids = None
                if cands is not None:
                    rows = [self.index.global_ids(list(dict.fromkeys(str(p) for p in c))) for c in cands]
                    width = max((len(r) for r in rows), default=0)
                    gids = torch.full((len(rows), width), -1, dtype=torch.int64)
                    for i, r in enumerate(rows):
                        gids[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
                    header["W"] = width
                header["k"] = k if k is not None else max(header.get("W", 0), 1)
                if texts:
                    Q, q_mask = self.encoder.encode_queries(texts)
                    header["Lq"], header["dim"] = Q.shape[1], Q.shape[2]
                    payload = (Q, q_mask, gids)
                self._tick("encode", t0)
            except Exception as e:
                error = e
                header = {"op": op, "last": True, "error": _error_text(e)}
            _, ready = self.cluster.exchange(json.dumps(header))
            if error is not None:
                raise error
            _raise_failures(
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
            _raise_failures(
                {r: ("ok" if r == 0 or v == "ready" else v) for r, v in ready.items()}, what, self._shards_of()
            )
            results.extend(self._round(header, None))
            if header["last"]:
                return results

    def _round(self, header: dict, payload) -> list[Ranking]:
        """One batch on every rank: broadcast, local top k, status exchange, gather, merge."""
        c = self.cluster
        B, k = header["B"], header["k"]
        if B == 0:
            return []
        t0 = time.perf_counter()
        if c.rank == 0:
            Q, q_mask, gids = payload
            Q = c.broadcast(Q.float())
            q_mask = c.broadcast(q_mask.to(torch.uint8))
            if header["op"] == "rerank":
                gids = c.broadcast(gids)
        else:
            Q = c.broadcast(torch.empty((B, header["Lq"], header["dim"]), dtype=torch.float32))
            q_mask = c.broadcast(torch.empty((B, header["Lq"]), dtype=torch.uint8))
            gids = None
            if header["op"] == "rerank":
                gids = c.broadcast(torch.empty((B, header["W"]), dtype=torch.int64))
        Q, q_mask = Q.to(c.device), q_mask.to(device=c.device, dtype=torch.bool)
        t0 = self._tick("broadcast", t0)

        status, local = "ok", None
        try:
            if header["op"] == "search":
                local = self._local_search(Q, q_mask, header["kprime"], k)
            else:
                local = self._local_rerank(Q, q_mask, gids.to(c.device), k)
        except Exception as e:
            status = _error_text(e)
        if self.allow_partial and local is not None:
            # Posted before the status: a verdict naming this rank "ok" implies its data is there.
            s, i = local
            blob = s.cpu().numpy().astype("<f4").tobytes() + i.cpu().numpy().astype("<i8").tobytes()
            c.store.set(f"x{c._seq + 1}/data/{c.rank}", blob)
        t0 = self._tick("local", t0)
        tag, done = c.exchange(status)
        failures = {r: ("no answer (timed out or died)" if v is None else v) for r, v in done.items() if v != "ok"}
        shards_of = self._shards_of()
        if failures and (not self.allow_partial or len(failures) == c.world_size):
            _raise_failures(done, header["op"], shards_of)  # partial results need some rank to answer
        if not failures:
            parts = list(zip(c.all_gather(local[0]), c.all_gather(local[1])))
        else:
            parts = []
            for r in sorted(set(range(c.world_size)) - set(failures)):
                blob = c.store.get(f"{tag}/data/{r}")
                half = B * k * 4
                s = torch.from_numpy(np.frombuffer(blob[:half], dtype="<f4").reshape(B, k).copy())
                i = torch.from_numpy(np.frombuffer(blob[half:], dtype="<i8").reshape(B, k).copy())
                parts.append((s, i))
        t0 = self._tick("gather", t0)
        failed_shards = {s: why for r, why in failures.items() for s in shards_of[r]}
        self.report.failed.update(failed_shards)
        self.report.answered = [s for s in range(len(self.index.shards)) if s not in self.report.failed]
        scores = torch.cat([p[0].cpu() for p in parts], 1)
        ids = torch.cat([p[1].cpu() for p in parts], 1)
        top_s, top_i = merge_topk(scores, ids, k)
        names = self.index.doc_ids()
        out = [
            [(names[i], s) for i, s in zip(irow, srow) if i >= 0] for irow, srow in zip(top_i.tolist(), top_s.tolist())
        ]
        self._tick("merge", t0)
        return out

    def _local_search(self, Q, q_mask, kprime: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's top k per query from its shards (global doc ids), as Searcher.search scores them."""
        scores, ids = [], []
        for shard, searcher in self.searchers:
            nprobe, neighbors = searcher.budget(k)
            neighbors = kprime or neighbors
            if self.split_candidates:
                neighbors = -(-neighbors // len(self.index.shards))
            pids = searcher.candidates(Q, q_mask, neighbors, nprobe)
            if pids.shape[1] == 0:
                continue
            scores.append(searcher._score(Q, q_mask, pids))
            ids.append(torch.where(pids >= 0, pids + shard.doc_start, -1))
        return self._local_topk(scores, ids, Q.shape[0], k)

    def _local_rerank(self, Q, q_mask, gids, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Score the candidates inside this rank's ranges (compacted to the left), leave the rest."""
        scores, ids = [], []
        for shard, searcher in self.searchers:
            own = (gids >= shard.doc_start) & (gids < shard.doc_end)
            width = int(own.sum(1).max()) if gids.numel() else 0
            if width == 0:
                continue
            order = torch.sort((~own).to(torch.int8), dim=1, stable=True).indices[:, :width]
            local = torch.gather(torch.where(own, gids - shard.doc_start, -1), 1, order)
            scores.append(searcher._score(Q, q_mask, local))
            ids.append(torch.where(local >= 0, local + shard.doc_start, -1))
        return self._local_topk(scores, ids, Q.shape[0], k)

    def _local_topk(self, scores, ids, B: int, k: int):
        if not scores:
            return torch.full((B, k), float("-inf")), torch.full((B, k), -1, dtype=torch.int64)
        s, i = merge_topk(torch.cat(scores, 1), torch.cat(ids, 1), k)
        return s.cpu(), i.cpu()
