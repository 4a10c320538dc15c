"""The live index: add, delete, update and compact an index in place, each change one crash-safe generation.

    idx = LiveIndex.create("indexes/mine", embeddings, ids)    # token embeddings in, no encoder
    idx.add(["d7", "d8"], [emb7, emb8])                        # a new segment, encoded with the
                                                               # index's own codebook (no retraining)
    idx.delete(["d1"])                                         # a tombstone: never returned again
    idx.update(["d2"], [emb2b])                                # delete + add, one generation
    idx.search(Q, k=10)                                        # Rankings of (id, score)
    idx.search(Q, k=10, allowed=["d2", "d7"])                  # only among these ids
    idx.compact()                                              # one segment again, space reclaimed

On disk a live index is an ordinary index directory (colbert_fast.retrieval.index) built without
the faiss IVF (IndexConfig(ivf=False): the IVF would not know the new docs) whose manifest lists
`segments` (each a store, its ids and, for a residual store, its centroid-engine file) and names a
`tombstones` file ({store file: [deleted rows]}). Every change goes through IndexWriter: under the
index's lock (a second writer gets LockHeldError), it writes the new files, carries the unchanged
ones, and commits a manifest with `generation` + 1: a kill at any moment leaves the previous
generation whole and searchable, and the next writer removes what the dead one left.

Readers: Index.load copies the live rows of every segment into one store (retrieval.segments), so
a Searcher sees exactly one generation however writers go on; it is the store a fresh build of
the surviving docs (in the same order, same codebook) would hold, so it scores the same. A single
segment with no tombstones is memory-mapped as before. A LiveIndex searches the generation it
last opened; its own writes, and refresh(), move it to the newest one.

Compaction (compact(), or automatically after a write when more than `max_segments` segments or
more than `max_deleted` of the stored tokens are deleted) rewrites the live docs as one segment.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch

from colbert_fast import CompressedDocs, PackedDocs
from colbert_fast.packed import write_store

from .build import IndexConfig, as_packed, build_index_from_embeddings
from .engine import build_engine, save_engine
from .index import FLOAT_STORE, INDEX_FORMAT, MANIFEST, Index, checked_entries, read_manifest, segment_keys
from .segments import join_stores, token_rows
from .writer import IndexWriter

__all__ = ["LiveIndex", "add_documents", "compact_index", "delete_documents", "index_stats", "update_documents"]

MAX_SEGMENTS = 8  # more, and a write compacts: each segment costs a copy at load
MAX_DELETED = 0.2  # of the stored tokens: more, and a write compacts (memory and disk come back)
_ENCODE_DOCS = 4096  # docs encoded per step (the progress bar's unit of work)


class _Committed:
    """The committed generation as a writer needs it: manifest, segments, their ids, tombstones.
    Reads ids and tombstones only (stores are opened on demand: the codebook, compaction)."""

    def __init__(self, index_dir: Path):
        self.dir = index_dir
        self.manifest = read_manifest(index_dir / MANIFEST, INDEX_FORMAT)
        checked_entries(self.manifest, index_dir / MANIFEST)
        self.files = self.manifest["files"]
        self.segments = segment_keys(self.manifest, index_dir / MANIFEST)
        self.ids = [json.loads((index_dir / self.files[s["ids"]]["name"]).read_bytes()) for s in self.segments]
        dead = {}
        if "tombstones" in self.files:
            dead = json.loads((index_dir / self.files["tombstones"]["name"]).read_bytes())
        self.dead = [set(dead.get(self.store_name(s), [])) for s in self.segments]
        self.where = {}  # live id -> (segment number, row)
        for n, ids in enumerate(self.ids):
            for row, pid in enumerate(ids):
                if row not in self.dead[n]:
                    self.where[pid] = (n, row)

    def store_name(self, segment: dict) -> str:
        return self.files[segment["docs"]]["name"]

    @property
    def store_kind(self) -> str:
        return self.manifest["stats"]["store"].get("codec", FLOAT_STORE)

    def open_store(self, n: int):
        path = self.dir / self.store_name(self.segments[n])
        return (PackedDocs if self.store_kind == FLOAT_STORE else CompressedDocs).load(path, mmap=True)

    def check_writable(self) -> None:
        if "ivf" in self.files:
            raise ValueError(
                f"the index at {self.dir} has a faiss IVF over its tokens, which added docs would not be in: "
                "live changes need an index built without the faiss IVF: IndexConfig(ivf=False) (the default for a "
                "residual store; `index --no-ivf`), LiveIndex.create"
            )
        if "fp16" in self.files:
            raise ValueError(
                f"the index at {self.dir} keeps an fp16 copy of its store (keep_fp16), which changes would make "
                "stale: rebuild it without keep_fp16 to change it in place"
            )


# ---- checking what comes in ---------------------------------------------------------------------


def _checked_ids(ids, what: str) -> list[str]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{what} must be a list of ids, got {type(ids).__name__}")
    out = [str(i) for i in ids]
    if any(not p or p != p.strip() for p in out):
        raise ValueError(f"{what}: ids must be non-empty and without surrounding whitespace")
    return out


def _checked_new_docs(ids, embeddings, committed: _Committed) -> tuple[list[str], PackedDocs]:
    ids = _checked_ids(ids, "ids")
    if not ids:
        raise ValueError("an add needs at least one document (got no ids)")
    if isinstance(embeddings, PackedDocs):
        docs = embeddings
    else:
        if isinstance(embeddings, torch.Tensor) or not isinstance(embeddings, Sequence):
            raise TypeError(f"embeddings must be a list of [L_i, dim] tensors/arrays or a PackedDocs, "
                            f"got {type(embeddings).__name__}")  # fmt: skip
        items = [torch.as_tensor(e) for e in embeddings]
        for i, e in enumerate(items):
            if e.dim() != 2:
                raise ValueError(f"embeddings[{i}] must be [L, dim], got shape {tuple(e.shape)}")
            if not e.dtype.is_floating_point:
                raise TypeError(f"embeddings[{i}] must be floating point, got {e.dtype}")
        embeddings = items
    if len(ids) != (embeddings.num_docs if isinstance(embeddings, PackedDocs) else len(embeddings)):
        raise ValueError(f"got {len(ids)} ids for {len(embeddings)} documents")
    dim = committed.manifest["stats"]["dim"]
    for i, e in enumerate([] if isinstance(embeddings, PackedDocs) else embeddings):
        if e.shape[1] != dim:
            raise ValueError(f"embeddings[{i}] has dim {e.shape[1]}, the index has dim {dim}")
    docs = as_packed(embeddings)
    if docs.dim != dim:
        raise ValueError(f"the embeddings have dim {docs.dim}, the index has dim {dim}")
    seen = set()
    twice = [p for p in ids if p in seen or seen.add(p)]
    if twice:
        raise ValueError(f"ids repeat within one add: {twice[:5]}")
    return ids, docs


# ---- writing a segment --------------------------------------------------------------------------


def _encode(docs: PackedDocs, committed: _Committed, progress: bool):
    """The new docs as the index stores them: fp16, or codes with the index's own codebook."""
    kind = committed.store_kind
    if kind == FLOAT_STORE:
        return docs.to("cpu", torch.float16)
    codebook = committed.open_store(0).codebook if kind == "residual" else None
    nbits = codebook.nbits if codebook is not None else 8
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=docs.num_docs, unit="doc", desc="encoding", dynamic_ncols=True)
    parts = []
    try:
        for start in range(0, docs.num_docs, _ENCODE_DOCS):
            rows = torch.arange(start, min(docs.num_docs, start + _ENCODE_DOCS))
            tokens = token_rows(docs.offsets.cpu(), docs.lengths.cpu(), rows)
            part = PackedDocs(docs.embeddings[tokens].float(), docs.lengths.cpu()[rows])
            parts.append(CompressedDocs.from_packed(part, kind, nbits, codebook=codebook))
            if bar is not None:
                bar.update(rows.numel())
    finally:
        if bar is not None:
            bar.close()
    return join_stores(parts)


def _write_segment(writer: IndexWriter, store, ids: list[str]) -> dict[str, tuple[str, str]]:
    """Write one segment's files; returns {role: (manifest key, file name)} for docs, ids[, engine]."""
    tag = uuid.uuid4().hex[:12]
    kind = "docs" if isinstance(store, PackedDocs) else "codes"
    out = {"docs": (f"docs.{tag}", f"{kind}-{tag}.safetensors"), "ids": (f"ids.{tag}", f"ids-{tag}.json")}
    blob = json.dumps(ids).encode()
    per_token = store.bytes_per_token if kind == "codes" else store.dim * 2
    writer.check_space(int(store.num_tokens * per_token) + len(blob), "the new segment")
    if isinstance(store, PackedDocs):
        record = write_store(writer.path(out["docs"][1]), store.lengths.cpu(), [store.embeddings], store.dim,
                             torch.float16)  # fmt: skip
    else:
        record = store.save(writer.path(out["docs"][1]))
    writer.add(out["docs"][1], record)
    writer.write(out["ids"][1], lambda f: f.write(blob))
    if isinstance(store, CompressedDocs) and store.codec == "residual":
        out["engine"] = (f"engine.{tag}", f"engine-{tag}.safetensors")
        writer.add(out["engine"][1], save_engine(writer.path(out["engine"][1]), build_engine(store)))
    return out


# ---- one generation -----------------------------------------------------------------------------


def _next_manifest(writer: IndexWriter, committed: _Committed, segments: list[dict], dead: list[set], new_files):
    """(manifest, files) of a generation made of `segments` (manifest keys) with tombstones `dead`:
    the files of old segments are carried, the tombstones written. new_files: {key: file name}
    this writer wrote. The caller sets the manifest's stats and commits."""
    files = dict(new_files)
    for seg in segments:
        for key in seg.values():
            if key not in files:
                info = committed.files[key]
                writer.carry(info["name"], info)
                files[key] = info["name"]
    tombstones = {files[seg["docs"]]: sorted(rows) for seg, rows in zip(segments, dead) if rows}
    if tombstones:
        files["tombstones"] = f"tombstones-{uuid.uuid4().hex[:12]}.json"
        blob = json.dumps(tombstones).encode()
        writer.write(files["tombstones"], lambda f: f.write(blob))
    manifest = _successor(committed.manifest)
    if len(segments) > 1 or tombstones:
        manifest["segments"] = segments
    return manifest, files


def _successor(old: dict) -> dict:
    """The next generation's manifest, before its files, segments and stats are set."""
    manifest = {k: v for k, v in old.items() if k not in ("files", "segments")}
    manifest["generation"] = int(old.get("generation", 0)) + 1
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return manifest


def _stats(manifest: dict, lengths: list[torch.Tensor], dead: list[set]) -> dict:
    """The manifest's stats for segments of these doc lengths with these deleted rows."""
    live_docs = sum(len(ls) - len(d) for ls, d in zip(lengths, dead))
    live_tokens = sum(int(ls.sum()) - sum(int(ls[r]) for r in d) for ls, d in zip(lengths, dead))
    stats = dict(manifest["stats"])
    stats.update(num_docs=live_docs, num_tokens=live_tokens)
    stats["live"] = {
        "segments": len(lengths),
        "stored_docs": sum(len(ls) for ls in lengths),
        "stored_tokens": sum(int(ls.sum()) for ls in lengths),
        "deleted_docs": sum(len(d) for d in dead),
    }
    return stats


def _change(index_dir, *, add=None, delete=None, missing="error", progress=False, auto_compact=True) -> dict:
    """One generation: delete `delete` ids (tombstones), then add (ids, embeddings) as a new segment."""
    if missing not in ("error", "ignore"):
        raise ValueError(f"missing must be 'error' or 'ignore', got {missing!r}")
    index_dir = _existing(index_dir)
    with IndexWriter(index_dir) as writer:
        committed = _Committed(index_dir)
        committed.check_writable()
        dead = [set(d) for d in committed.dead]
        removed = 0
        if delete is not None:
            wanted = list(dict.fromkeys(_checked_ids(delete, "ids to delete")))
            unknown = [p for p in wanted if p not in committed.where]
            if unknown and missing == "error":
                raise KeyError(f"{len(unknown)} ids to delete are not in the index: {unknown[:5]} "
                               "(missing='ignore' skips them)")  # fmt: skip
            for p in wanted:
                if p in committed.where:
                    n, row = committed.where[p]
                    dead[n].add(row)
                    removed += 1
        segments = [dict(s) for s in committed.segments]
        new_files: dict[str, str] = {}
        lengths = [committed.open_store(n).lengths.cpu() for n in range(len(segments))]
        added = 0
        if add is not None:
            ids, docs = _checked_new_docs(*add, committed)
            replaced = {str(p) for p in (delete or ())}  # ids are compared as the strings stored
            already = [p for p in ids if p in committed.where and str(p) not in replaced]
            if already:
                raise ValueError(f"{len(already)} ids are already in the index: {already[:5]} (update them instead)")
            store = _encode(docs, committed, progress)
            written = _write_segment(writer, store, ids)
            segments.append({role: key for role, (key, _) in written.items()})
            new_files.update({key: name for key, name in written.values()})
            dead.append(set())
            lengths.append(store.lengths.cpu())
            added = len(ids)
        if not added and not removed:
            return {"generation": int(committed.manifest.get("generation", 0)), "added": 0, "deleted": 0}
        manifest, files = _next_manifest(writer, committed, segments, dead, new_files)
        manifest["stats"] = _stats(committed.manifest, lengths, dead)
        writer.commit(manifest, files)
        report = {"generation": manifest["generation"], "added": added, "deleted": removed}
    if auto_compact and _needs_compaction(manifest["stats"]["live"]):
        compact_index(index_dir, progress=progress)
        report["compacted"] = True
    return report


def _existing(index_dir) -> Path:
    """The directory of an index; FileNotFoundError, before IndexWriter creates the directory, when
    there is none (a mistyped path must not become an empty directory)."""
    index_dir = Path(index_dir)
    if not (index_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"no index at {index_dir} (no {MANIFEST})")
    return index_dir


def _needs_compaction(live: dict, max_segments: int = MAX_SEGMENTS, max_deleted: float = MAX_DELETED) -> bool:
    dead_docs = live["deleted_docs"]
    return live["segments"] > max_segments or (dead_docs > 0 and dead_docs > max_deleted * live["stored_docs"])


# ---- the public functions -----------------------------------------------------------------------


def add_documents(index_dir, ids, embeddings, *, progress: bool = False, auto_compact: bool = True) -> dict:
    """Add documents (ids, and a list of [L_i, dim] tensors/arrays or a PackedDocs) as a new segment.

    Encoded with the index's own codebook (no retraining: no drift). Errors, with nothing changed:
    an id already in the index or given twice (ValueError), the wrong dim or a NaN/inf value
    (ValueError), a non-float dtype (TypeError), no documents (ValueError), another writer
    (LockHeldError). Returns {"generation", "added", "deleted"}.
    """
    return _change(index_dir, add=(ids, embeddings), progress=progress, auto_compact=auto_compact)


def delete_documents(index_dir, ids, *, missing: str = "error", auto_compact: bool = True) -> dict:
    """Delete documents by id (tombstones: search never returns them; compaction reclaims the space).

    missing: "error" (KeyError naming them, nothing deleted) or "ignore" ids not in the index.
    """
    _checked_ids(ids, "ids to delete")  # None too: _change reads delete=None as "nothing to delete"
    return _change(index_dir, delete=ids, missing=missing, auto_compact=auto_compact)


def update_documents(index_dir, ids, embeddings, *, progress: bool = False, auto_compact: bool = True) -> dict:
    """Replace documents (each id must be in the index): delete + add in one generation."""
    return _change(index_dir, add=(ids, embeddings), delete=ids, progress=progress, auto_compact=auto_compact)


def compact_index(index_dir, *, progress: bool = False) -> dict:
    """Rewrite the live docs as one segment without tombstones (a no-op when it is one already)."""
    index_dir = _existing(index_dir)
    with IndexWriter(index_dir) as writer:
        committed = _Committed(index_dir)
        if len(committed.segments) == 1 and not any(committed.dead):
            return {"generation": int(committed.manifest.get("generation", 0)), "compacted": False}
        if progress:
            print(f"compacting {len(committed.segments)} segments of {index_dir}", flush=True)
        index = Index.load(index_dir, verify=True, load_ivf=False)  # under the lock: this very generation
        tag = uuid.uuid4().hex[:12]
        store = index.docs
        kind = "docs" if isinstance(store, PackedDocs) else "codes"
        files = {"docs": f"{kind}-{tag}.safetensors", "ids": f"ids-{tag}.json"}
        writer.add(files["docs"], store.save(writer.path(files["docs"])))
        blob = json.dumps(index.pids).encode()
        writer.write(files["ids"], lambda f: f.write(blob))
        if index.engine is not None:
            files["engine"] = f"engine-{tag}.safetensors"
            writer.add(files["engine"], save_engine(writer.path(files["engine"]), index.engine))
        manifest = _successor(committed.manifest)
        manifest["stats"] = _stats(committed.manifest, [store.lengths.cpu()], [set()])
        writer.commit(manifest, files)
    return {"generation": manifest["generation"], "compacted": True}


def index_stats(index_dir) -> dict:
    """Docs, tokens, segments, deleted docs, bytes on disk and per live token, generation."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir / MANIFEST, INDEX_FORMAT)
    stats = manifest["stats"]
    on_disk = sum(int(info["bytes"]) for info in manifest["files"].values()) + (index_dir / MANIFEST).stat().st_size
    live = stats.get("live") or {"segments": 1, "stored_docs": stats["num_docs"],
                                 "stored_tokens": stats["num_tokens"], "deleted_docs": 0}  # fmt: skip
    return {
        "generation": int(manifest.get("generation", 0)),
        "docs": stats["num_docs"],
        "tokens": stats["num_tokens"],
        "dim": stats["dim"],
        "store": stats["store"].get("codec", FLOAT_STORE),
        **live,
        "bytes_on_disk": on_disk,
        "bytes_per_token": on_disk / max(1, stats["num_tokens"]),
        "ivf": "ivf" in manifest["files"],
    }


class LiveIndex:
    """An index you add to, delete from and search (see the module doc).

    Args:
        path: the index directory (an index built with IndexConfig(ivf=False), e.g. by create).
        device: where search runs (default: cuda when available).
        backend: scoring backend for cf.maxsim_packed.
        auto_compact: compact after a write that leaves more than MAX_SEGMENTS segments or more
            than MAX_DELETED of the stored docs deleted.
    """

    def __init__(self, path, *, device=None, backend: str = "auto", auto_compact: bool = True):
        self.path = Path(path)
        if not (self.path / MANIFEST).exists():
            raise FileNotFoundError(f"no index at {self.path}: create one with LiveIndex.create")
        self.device, self.backend, self.auto_compact = device, backend, auto_compact
        self._searcher = None

    @classmethod
    def create(
        cls,
        path,
        embeddings,
        ids: Sequence | None = None,
        *,
        config: IndexConfig | None = None,
        codebook=None,
        similarity: str = "cosine",
        **kwargs,
    ) -> LiveIndex:
        """A new index of token embeddings (a list of [L_i, dim] tensors/arrays or a PackedDocs) with
        the caller's ids; config defaults to IndexConfig(ivf=False) (residual 2-bit codes)."""
        config = config or IndexConfig(ivf=False)
        if config.ivf:
            config = dataclasses.replace(config, ivf=False)
        build_index_from_embeddings(embeddings, path, config, ids=ids, similarity=similarity, codebook=codebook)
        return cls(path, **kwargs)

    # ---- changes --------------------------------------------------------------------------------

    def add(self, ids, embeddings, *, progress: bool = False) -> dict:
        return self._after(add_documents(self.path, ids, embeddings, progress=progress, auto_compact=self.auto_compact))

    def delete(self, ids, *, missing: str = "error") -> dict:
        return self._after(delete_documents(self.path, ids, missing=missing, auto_compact=self.auto_compact))

    def update(self, ids, embeddings, *, progress: bool = False) -> dict:
        report = update_documents(self.path, ids, embeddings, progress=progress, auto_compact=self.auto_compact)
        return self._after(report)

    def compact(self) -> dict:
        return self._after(compact_index(self.path))

    def _after(self, report: dict) -> dict:
        self._searcher = None  # the next search opens the generation just written
        return report

    # ---- reading --------------------------------------------------------------------------------

    def stats(self) -> dict:
        return index_stats(self.path)

    @property
    def searcher(self):
        """The Searcher over the generation this object last opened (opened on first use)."""
        if self._searcher is None:
            from .search import Searcher

            index = Index.load(self.path, load_ivf=False)
            self._searcher = Searcher(index, device=self.device, backend=self.backend)
        return self._searcher

    @property
    def generation(self) -> int:
        """The generation searches see."""
        return int(self.searcher.index.manifest.get("generation", 0))

    def refresh(self) -> bool:
        """Open the newest committed generation; True when it differs from the one searched.

        The whole manifest is compared, not only its generation number: an index rebuilt in place
        (build_index_from_embeddings, `index`) starts again at generation 0."""
        newest = read_manifest(self.path / MANIFEST, INDEX_FORMAT)
        if self._searcher is not None and newest == self.searcher.index.manifest:
            return False
        self._searcher = None
        return True

    def __len__(self) -> int:
        return self.searcher.index.num_docs

    def search(self, queries, k: int = 10, *, mode: str | None = None, allowed=None, **kwargs):
        """Top k per query (Searcher.search): query embeddings ([B, Lq, dim] with q_mask, or a list of
        [Lq_i, dim]) or strings (with the index's model). mode: "centroid" (the default for a residual
        store; exact=True makes it certified-exact) or "exhaustive" (the default for fp16 and int8
        stores, which have no centroids). allowed: ids the results may come from (filtered search)."""
        return self.searcher.search(queries, k, mode=mode, allowed=allowed, **kwargs)

    def __repr__(self) -> str:
        return f"LiveIndex({str(self.path)!r})"
