"""A sharded index on disk, and how every rank builds its shards.

A sharded index is a directory:

    sharded.json        the commit point: collection, model, config, and per shard its directory,
                        document range [doc_start, doc_end) and the sha256 of its manifest
    shard-0000/         an ordinary index (colbert_fast.retrieval.index) over rows [0, n_0)
    shard-0001/         ... over [n_0, n_1), and so on

A row here is global: a passage's line in the collection. Shard s holds rows [doc_start, doc_end)
as its own rows 0..n_s-1. Each rank builds the shards it owns (shard s belongs to rank
s % world_size) with the ordinary indexer, so a shard is rebuilt alone by building just that
shard (`shards=[s]`), in any process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from colbert_fast.files import NotRegularFileError, WriterLock, read_regular, sha256, verified_file

from .. import tsv
from ..build import IndexConfig, build_index
from ..index import INDEX_FORMAT, CorruptIndexError, Index, RowLookup, read_manifest
from .cluster import Cluster, error_text, raise_failures

__all__ = ["Shard", "ShardedIndex", "build_sharded_index", "shard_dir_name", "shard_ranges"]

SHARDED_FORMAT = "colbert_fast.sharded/1"
TOP_MANIFEST = "sharded.json"


def shard_dir_name(shard: int) -> str:
    return f"shard-{shard:04d}"


def shard_ranges(num_docs: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous document ranges, sizes differing by at most one: [(doc_start, doc_end), ...]."""
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    if num_shards > num_docs:
        raise ValueError(f"cannot split {num_docs} documents into {num_shards} non-empty shards")
    return [(s * num_docs // num_shards, (s + 1) * num_docs // num_shards) for s in range(num_shards)]


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
        self._pids: list[str] | None = None
        self._lookup: RowLookup | None = None

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

    def _check_shard_manifest(self, s: Shard) -> Path:
        shard_path = self.path / s.dir
        mpath = shard_path / "manifest.json"
        if not mpath.exists():
            raise CorruptIndexError(f"shard {s.shard} at {shard_path} has no manifest: rebuild it (shards=[{s.shard}])")
        try:
            found = sha256(mpath)
        except NotRegularFileError as e:
            raise CorruptIndexError(str(e)) from None
        if found != s.manifest_sha256:
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

    def pids(self, verify: bool = True) -> list[str]:
        """Every shard's pids in collection order (global row -> pid)."""
        if self._pids is None:
            out: list[str] = []
            for s in self.shards:
                shard_path = self._check_shard_manifest(s)
                info = read_manifest(shard_path / "manifest.json", INDEX_FORMAT).get("files", {})
                info = info.get("ids") if isinstance(info, dict) else None
                if not isinstance(info, dict) or not isinstance(info.get("name"), str) or "/" in info["name"]:
                    raise CorruptIndexError(f"shard {s.shard}: its manifest has no valid files.ids entry")
                ids_path = shard_path / info["name"]
                try:
                    if verify and sha256(ids_path) != info.get("sha256"):
                        raise CorruptIndexError(f"shard {s.shard}: {ids_path} fails its sha256 check")
                    ids = json.loads(read_regular(ids_path, "index file"))
                except (OSError, ValueError) as e:  # missing, not a regular file, not JSON
                    if isinstance(e, CorruptIndexError):
                        raise
                    raise CorruptIndexError(f"shard {s.shard}: cannot read {ids_path}: {e}") from None
                if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
                    raise CorruptIndexError(f"shard {s.shard}: {ids_path} is not a list of pid strings")
                if len(ids) != s.num_docs:
                    raise CorruptIndexError(f"shard {s.shard}: {len(ids)} pids, expected {s.num_docs}")
                out.extend(ids)
            self._pids = out
        return self._pids

    def rows_of(self, pids: Sequence[str]) -> list[int]:
        """Global rows of collection pids; KeyError naming the first unknown one."""
        if self._lookup is None:
            self._lookup = RowLookup(self.pids(), f"the sharded index at {self.path}")
        return self._lookup.rows_of(pids)


# ---- building ------------------------------------------------------------------------------------


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
        encoder: a colbert_fast.retrieval.encoder.ColBERT (on this rank's device).
        config: IndexConfig, applied to every shard (each shard trains its own IVF: sharded search
            takes its candidates from the shards' faiss IVFs, so config.ivf must be True; the
            default is IndexConfig(ivf=True), the residual 2-bit store with an IVF).
        cluster: this rank (default Cluster.local(): one process builds every shard it is asked for).
        num_shards: default world_size, or the existing index's count when rebuilding shards.
        shards: build only these shards (rebuild one alone: shards=[s]); split among the ranks.
            The other shards must already exist with the same collection and layout.
        checkpoint, resume, progress: as colbert_fast.retrieval.build.build_index, per shard.
        build_timeout: seconds rank 0 waits for the other ranks to finish their shards (a shard of a
            large collection takes hours; the cluster's own timeout is for search steps).

    Returns:
        the ShardedIndex, once sharded.json names every shard (written by rank 0 last).
    Raises ShardError naming the rank and shard when a rank fails (every rank raises).
    """
    cluster = cluster or Cluster.local()
    config = config or IndexConfig(ivf=True)
    if not config.ivf:
        raise ValueError(
            "sharded search takes its candidates from each shard's faiss IVF: build with IndexConfig(ivf=True) "
            "(sharded index --ivf)"
        )
    index_dir, collection = Path(index_dir), Path(collection)
    pids, texts = tsv.read_collection(collection)
    collection_sha = sha256(collection)
    num_shards = _num_shards(index_dir, collection, collection_sha, num_shards, shards, cluster)
    ranges = shard_ranges(len(pids), num_shards)
    todo = list(range(num_shards)) if shards is None else sorted(set(shards))
    bad = [s for s in todo if not isinstance(s, int) or not 0 <= s < num_shards]
    if bad:
        raise ValueError(f"shards {bad} are outside 0..{num_shards - 1}")
    owners = {r: [s for i, s in enumerate(todo) if i % cluster.world_size == r] for r in range(cluster.world_size)}
    mine = owners[cluster.rank]

    status, error = "ok", None
    try:
        _build_shards(mine, ranges, pids, texts, index_dir, encoder, config, checkpoint, resume, progress)
    except Exception as e:  # reported to every rank, then raised here too
        status, error = f"shards {mine}: {error_text(e)}", e
    saved, cluster.timeout = cluster.timeout, build_timeout
    try:
        _, built = cluster.exchange(status)
    finally:
        cluster.timeout = saved
    raise_failures(built, "building", owners, error)

    publish = "ok"
    if cluster.rank == 0:
        try:
            _write_top_manifest(index_dir, collection, collection_sha, len(pids), ranges, config, checkpoint)
        except Exception as e:
            publish, error = f"writing {TOP_MANIFEST}: {error_text(e)}", e
    _, published = cluster.exchange(publish)
    raise_failures(published, "publishing", {0: []}, error)
    return ShardedIndex.load(index_dir)


def _num_shards(index_dir: Path, collection: Path, collection_sha: str, num_shards, shards, cluster) -> int:
    """How many shards: when rebuilding some shards of an existing index, its count (and it must
    have been built from this collection); else num_shards, by default one per rank."""
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
    return num_shards or cluster.world_size


def _build_shards(mine, ranges, pids, texts, index_dir: Path, encoder, config, checkpoint, resume, progress) -> None:
    """This rank's shards, each an ordinary index of its slice of the collection."""
    index_dir.mkdir(parents=True, exist_ok=True)
    for s in mine:
        start, end = ranges[s]
        # The shard's own collection: the same passages, so build_index (and its resume) applies as is.
        part = tsv.write_collection(
            index_dir / f"{shard_dir_name(s)}.collection.tsv", pids[start:end], texts[start:end]
        )
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


def _write_top_manifest(
    index_dir: Path, collection: Path, collection_sha: str, num_docs: int, ranges, config, checkpoint
) -> None:
    """sharded.json (the commit point), from the shards' own manifests: they must agree on the model.
    Written under the directory's writer lock (a rebuild of one shard alone may run beside a job),
    verified like every index file."""
    with WriterLock(index_dir, "sharded index"):
        _write_top_manifest_locked(index_dir, collection, collection_sha, num_docs, ranges, config, checkpoint)


def _write_top_manifest_locked(
    index_dir: Path, collection: Path, collection_sha: str, num_docs: int, ranges, config, checkpoint
) -> None:
    shards, fingerprint = [], None
    for s, (start, end) in enumerate(ranges):
        mpath = index_dir / shard_dir_name(s) / "manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(f"shard {s} is not built yet ({mpath} is missing): build it (shards=[{s}])")
        sub = read_manifest(mpath, INDEX_FORMAT)
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
                "manifest_sha256": sha256(mpath),
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
    with verified_file(index_dir / TOP_MANIFEST) as f:
        f.write(json.dumps(manifest, indent=2).encode())
