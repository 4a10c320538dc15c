"""A built index on disk (paper 3.4 and 3.6): packed doc embeddings + a faiss IVFPQ index.

An index is a directory:

    manifest.json            the commit point: config, versions, file names, sizes, sha256
    docs-<tag>.safetensors   the token store, every doc's kept tokens in collection order: a
                             PackedDocs (fp16), or a CompressedDocs (codes-<tag>.safetensors:
                             residual or int8, IndexConfig.store) scored from its codes
    ivf-<tag>.faiss          faiss IVFPQ (or IVFFlat for small collections) over every token row;
                             faiss id = token row in docs, so token_to_doc is lengths repeated
                             (absent when built with IndexConfig(ivf=False))
    engine-<tag>.safetensors residual stores only: the centroid engine's centroid -> docs lists
                             and per-doc bounds (colbert_fast.retrieval.engine)
    ids-<tag>.json           the collection's pids, in order (row i -> pid string)
    partial-<fingerprint>/   only while building: finished chunks, so a killed run resumes

Every file is written under a temporary name, read back and checked (size, sha256), and renamed
into place; the manifest is replaced last, atomically, and names the files of exactly one
finished build (colbert_fast.retrieval.writer: one writer at a time, under a lock file `.lock`).
A crash or a failed write at any point leaves the previous manifest (and its files) or no index,
plus partial chunks a rerun picks up: never a manifest that points at a half-written file.
Loading checks sizes and sha256 before reading a byte of the data, reads only regular files, and
nothing is unpickled (faiss reads its own serialization format).
Building: colbert_fast.retrieval.build.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import torch

from colbert_fast import CompressedDocs, PackedDocs
from colbert_fast.files import NotRegularFileError, read_regular, sha256

from .engine import load_engine
from .segments import Segment, merge_segments

__all__ = ["CorruptIndexError", "Index", "RowLookup", "checked_entries", "parse_manifest", "read_manifest",
           "require_faiss", "segment_keys"]  # fmt: skip

INDEX_FORMAT = "colbert_fast.index/1"
MANIFEST = "manifest.json"
# Data files of a generation, "<kind>-<12 hex tag>.<ext>" (docs-, codes-, ivf-, ids-, and any kind
# a later writer adds), and their temp names: the only files a writer may delete.
OUR_FILES = re.compile(r"[a-z][a-z0-9_]*-[0-9a-f]{12}\.[a-z0-9]+(\.tmp\d+)?")
# What the manifest's stats.store says the store is: "fp16" (a PackedDocs), else a CompressedDocs.
FLOAT_STORE = "fp16"


class CorruptIndexError(ValueError):
    """An index that is missing, truncated, tampered with or inconsistent."""


def require_faiss():
    """Import faiss, or say how to get it (the package itself never needs it)."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "faiss is needed to build or search an index: pip install faiss-cpu (or faiss-gpu), "
            "or pip install 'colbert_fast[pipeline]'"
        ) from e
    return faiss


class RowLookup:
    """pid -> row for a list of pids (row i holds pids[i]); the dict is built on first use."""

    def __init__(self, pids: Sequence[str], where: str):
        self.pids = pids
        self.where = where
        self._row_of: dict[str, int] | None = None

    def rows_of(self, pids: Sequence[str]) -> list[int]:
        """Rows of collection pids; KeyError naming the first unknown one."""
        if self._row_of is None:
            row_of = {p: i for i, p in enumerate(self.pids)}
            if len(row_of) != len(self.pids):  # one pid, two rows: which one would a lookup mean?
                raise CorruptIndexError(f"{self.where} lists some pid twice")
            self._row_of = row_of
        out = []
        for p in pids:
            i = self._row_of.get(str(p))
            if i is None:
                raise KeyError(f"pid {p!r} is not in {self.where}")
            out.append(i)
        return out


class Index:
    """A loaded index: docs (PackedDocs, or CompressedDocs for a compressed store), pids (row -> the
    collection's pid string), ivf (faiss, or None until open_ivf()), token_to_doc (token row -> doc
    row, built on first use), engine (the centroid engine's tensors for a residual store, else
    None), manifest."""

    def __init__(
        self, path: Path, manifest: dict, docs: PackedDocs, pids: list[str], ivf, verify: bool = True, engine=None
    ):
        self.path = path
        self.manifest = manifest
        self.docs = docs
        self.pids = pids
        self.ivf = ivf
        self.engine = engine
        self._verify = verify
        self._token_to_doc: torch.Tensor | None = None
        self._lookup = RowLookup(pids, f"the index ({len(pids)} docs at {path})")

    @property
    def token_to_doc(self) -> torch.Tensor:
        """Token row -> doc row; only the candidate stage needs it, so it is built on first use.
        int32 while it fits: it is as long as the whole token store."""
        if self._token_to_doc is None:
            idx_dtype = torch.int32 if self.docs.num_docs < 2**31 else torch.int64
            self._token_to_doc = torch.repeat_interleave(
                torch.arange(self.docs.num_docs, dtype=idx_dtype), self.docs.lengths.cpu().to(torch.int64)
            )
        return self._token_to_doc

    @property
    def has_ivf(self) -> bool:
        """Whether the build wrote a faiss IVF (IndexConfig.ivf)."""
        return "ivf" in self.manifest["files"]

    def open_ivf(self):
        """The faiss index, read (and checked against the manifest) on first use."""
        if not self.has_ivf:
            raise ValueError(
                f"the index at {self.path} was built without the faiss IVF (the default for a residual store): "
                "search it with mode='centroid' or mode='exhaustive', or rebuild it with IndexConfig(ivf=True) "
                "(`index --ivf`) for the paper's modes"
            )
        if self.ivf is None:
            self.ivf = _read_ivf(self.path, self.manifest, self.docs, self._verify)
        return self.ivf

    @property
    def num_docs(self) -> int:
        return self.docs.num_docs

    def rows_of(self, pids: Sequence[str]) -> list[int]:
        """Rows of collection pids; KeyError naming the first unknown one."""
        return self._lookup.rows_of(pids)

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = True, mmap: bool = True, load_ivf: bool = True) -> Index:
        """Open an index directory.

        Args:
            verify: check every file's sha256 against the manifest before reading it (sizes are
                always checked). Turn off only for a trusted index too large to hash each time.
            mmap: memory-map the doc store instead of reading it into memory.
            load_ivf: also load the faiss index when the index has one (rerank needs only the doc
                store; the centroid engine, loaded whenever the index has one, needs no faiss).

        Raises CorruptIndexError (a ValueError) naming the file for a missing, truncated, tampered,
        malformed or inconsistent index, or one that is not a regular file; FileNotFoundError when
        there is no index at `path`. A writer committing a new generation meanwhile (and removing
        the files of the one being read) is noticed and the new one is read instead.
        """
        path = Path(path)
        mpath = path / MANIFEST
        for attempt in range(3):
            raw = _read_manifest_bytes(path, mpath)
            try:
                return cls._load(path, mpath, raw, verify, mmap, load_ivf)
            except CorruptIndexError:
                try:
                    changed = _read_manifest_bytes(path, mpath) != raw
                except (FileNotFoundError, CorruptIndexError):
                    changed = False
                if not changed or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, path: Path, mpath: Path, raw: bytes, verify: bool, mmap: bool, load_ivf: bool) -> Index:
        manifest = parse_manifest(raw, mpath, INDEX_FORMAT)
        files, stats = checked_entries(manifest, mpath)
        for info in files.values():
            fpath = path / info["name"]
            try:
                st = fpath.stat()
            except FileNotFoundError:
                raise CorruptIndexError(f"index file {fpath} is missing") from None
            if not stat.S_ISREG(st.st_mode):
                raise CorruptIndexError(f"index file {fpath} is not a regular file")
            if st.st_size != info["bytes"]:
                raise CorruptIndexError(
                    f"index file {fpath} is truncated or altered: {st.st_size} bytes, the manifest says {info['bytes']}"
                )
        if verify:  # every file but faiss's (checked when it is opened) and a kept fp16 store (never read)
            for key, info in files.items():
                if key not in ("ivf", "fp16"):
                    _check_sha(path / info["name"], info["sha256"])
        store = stats["store"].get("codec", FLOAT_STORE) if isinstance(stats.get("store"), dict) else FLOAT_STORE
        store_type = PackedDocs if store == FLOAT_STORE else CompressedDocs
        layout = segment_keys(manifest, mpath)
        segments = [_load_segment(path, files, keys, store_type, mmap) for keys in layout]
        deleted = _read_tombstones(path, files, layout, segments)
        if len(segments) == 1 and not any(deleted):
            docs, pids, engine = segments[0]  # the common case: mapped, never copied
        else:
            try:
                docs, pids, engine = merge_segments(segments, deleted)
            except ValueError as e:
                raise CorruptIndexError(f"index at {path} is inconsistent: {e}") from None
        if docs.num_docs != stats["num_docs"]:
            raise CorruptIndexError(
                f"index at {path} is inconsistent: pid list, doc store and manifest disagree on #docs"
            )
        if docs.num_tokens != stats["num_tokens"] or docs.dim != stats["dim"]:
            raise CorruptIndexError(f"index at {path} is inconsistent: doc store shape differs from the manifest")
        index = cls(path, manifest, docs, pids, None, verify, engine)
        if load_ivf and index.has_ivf:
            index.open_ivf()
        return index


def _read_manifest_bytes(path: Path, mpath: Path) -> bytes:
    try:
        return read_regular(mpath, "index manifest")
    except FileNotFoundError:
        hint = (
            " (an interrupted build left partial chunks: rerun `index` to resume)"
            if any(path.glob("partial-*"))
            else ""
        )
        raise FileNotFoundError(f"no index at {path}: {MANIFEST} is missing{hint}") from None
    except NotRegularFileError as e:
        raise CorruptIndexError(str(e)) from None


def segment_keys(manifest: dict, mpath: Path) -> list[dict[str, str]]:
    """The manifest's segments, each {"docs": key, "ids": key[, "engine": key]} of its "files".

    An index built once has one segment, named by the keys "docs", "ids" (and "engine"); a live
    index lists its segments under "segments" (live.py), the first one being that same one.
    """
    files = manifest["files"]
    segments = manifest.get("segments")
    if segments is None:
        return [{"docs": "docs", "ids": "ids", **({"engine": "engine"} if "engine" in files else {})}]
    ok = isinstance(segments, list) and len(segments) >= 1
    for seg in segments if ok else ():
        ok = ok and isinstance(seg, dict) and {"docs", "ids"} <= set(seg) <= {"docs", "ids", "engine"}
        ok = ok and all(isinstance(v, str) and v in files for v in seg.values())
    if not ok:
        raise CorruptIndexError(f"{mpath} is malformed: 'segments' must list {{docs, ids[, engine]}} keys of 'files'")
    if len({seg["docs"] for seg in segments}) != len(segments):
        raise CorruptIndexError(f"{mpath} is malformed: two segments name the same store")
    return segments


def _load_segment(path: Path, files: dict, keys: dict[str, str], store_type, mmap: bool) -> Segment:
    """One segment's store, pids and engine tensors, each checked against the others."""
    docs_name, ids_name = files[keys["docs"]]["name"], files[keys["ids"]]["name"]
    try:
        pids = json.loads(read_regular(path / ids_name, "index file"))
        docs = store_type.load(path / docs_name, mmap=mmap)
    except FileNotFoundError as e:
        raise CorruptIndexError(f"index file {e.filename} is missing") from None
    except (ValueError, UnicodeDecodeError) as e:  # NotRegularFileError and JSONDecodeError included
        raise CorruptIndexError(f"index at {path} is corrupt: {e}") from None
    if not isinstance(pids, list) or not all(isinstance(p, str) for p in pids):
        raise CorruptIndexError(f"index file {ids_name} is not a list of pid strings")
    if len(pids) != docs.num_docs:
        raise CorruptIndexError(
            f"index at {path} is inconsistent: pid list, doc store and manifest disagree on #docs ({ids_name})"
        )
    engine = None
    if "engine" in keys:
        name = files[keys["engine"]]["name"]
        try:
            engine = load_engine(path / name, docs)
        except FileNotFoundError:
            raise CorruptIndexError(f"index file {path / name} is missing") from None
        except (ValueError, AttributeError) as e:
            raise CorruptIndexError(f"index at {path}: engine file {name}: {e}") from None
    return Segment(docs, pids, engine)


def _read_tombstones(path: Path, files: dict, layout: list[dict], segments: list[Segment]) -> list[list[int]]:
    """Per segment, its deleted rows (the "tombstones" file: {store file name: [rows]}; none: [])."""
    if "tombstones" not in files:
        return [[] for _ in segments]
    name = files["tombstones"]["name"]
    try:
        dead = json.loads(read_regular(path / name, "index file"))
    except FileNotFoundError:
        raise CorruptIndexError(f"index file {path / name} is missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptIndexError(f"index file {name} is corrupt: {e}") from None
    stores = [files[keys["docs"]]["name"] for keys in layout]
    ok = isinstance(dead, dict) and set(dead) <= set(stores)
    out = []
    for store, seg in zip(stores, segments):
        rows = dead.get(store, []) if ok else None
        ok = ok and isinstance(rows, list) and all(type(r) is int and 0 <= r < seg.docs.num_docs for r in rows)
        ok = ok and len(set(rows)) == len(rows)
        out.append(rows if ok else [])
    if not ok:
        raise CorruptIndexError(f"index file {name} must map store names to unique rows in range")
    return out


def checked_entries(manifest: dict, mpath: Path) -> tuple[dict, dict]:
    """The manifest's file entries and stats, each of the expected type (CorruptIndexError naming
    what is malformed, never a KeyError or TypeError from deep inside the loader)."""
    files_in = manifest.get("files")
    stats = manifest.get("stats")
    if not isinstance(files_in, dict) or not isinstance(stats, dict):
        raise CorruptIndexError(f"{mpath} is malformed: 'files' and 'stats' must be objects")
    # ivf: unless built with IndexConfig(ivf=False); fp16: a compressed store's fp16 vectors, kept on
    # request; engine: a residual store's centroid engine (engine.py); the files of added segments
    # and the tombstones of a live index (segment_keys, live.py).
    keys = ("docs", "ids") + tuple(k for k in files_in if k not in ("docs", "ids"))
    files = {}
    for key in keys:
        info = files_in.get(key)
        ok = (
            isinstance(info, dict)
            and isinstance(info.get("name"), str)
            and type(info.get("bytes")) is int
            and isinstance(info.get("sha256"), str)
        )
        if not ok:
            raise CorruptIndexError(f"{mpath} is malformed: files.{key} needs a name, bytes (int) and sha256")
        name = info["name"]
        if Path(name).name != name or name in ("", ".", ".."):
            raise CorruptIndexError(f"{mpath}: file name {name!r} is not a plain name in the index directory")
        files[key] = info
    for key in ("num_docs", "num_tokens", "dim"):
        if type(stats.get(key)) is not int:
            raise CorruptIndexError(f"{mpath} is malformed: stats.{key} must be an int")
    return files, stats


def _read_ivf(path: Path, manifest: dict, docs: PackedDocs, verify: bool):
    faiss = require_faiss()
    info = manifest["files"]["ivf"]
    ivf_path = path / info["name"]
    if verify:  # before faiss parses a byte: its reader trusts its input
        _check_sha(ivf_path, info["sha256"])
    elif not ivf_path.is_file():  # faiss would block on a FIFO
        raise CorruptIndexError(f"index file {ivf_path} is not a regular file")
    try:
        ivf = faiss.read_index(str(ivf_path))
    except RuntimeError as e:
        raise CorruptIndexError(f"cannot read faiss index {info['name']}: {e}") from None
    if ivf.ntotal != docs.num_tokens or ivf.d != docs.dim:
        raise CorruptIndexError(f"index at {path} is inconsistent: faiss holds {ivf.ntotal} vectors of dim {ivf.d}")
    return ivf


def read_manifest(mpath: Path, expected_format: str) -> dict:
    """A manifest's JSON, checked to be a dict of the expected format (CorruptIndexError if not)."""
    try:
        raw = read_regular(mpath, "manifest")
    except NotRegularFileError as e:
        raise CorruptIndexError(str(e)) from None
    return parse_manifest(raw, mpath, expected_format)


def parse_manifest(raw: bytes, mpath: Path, expected_format: str) -> dict:
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptIndexError(f"{mpath} is corrupt: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        raise CorruptIndexError(f"{mpath} is not a {expected_format} manifest")
    return manifest


def _check_sha(path: Path, expected: str) -> None:
    try:
        found = sha256(path)
    except FileNotFoundError:  # e.g. removed by a writer since the manifest was read: load retries
        raise CorruptIndexError(f"index file {path} is missing") from None
    except NotRegularFileError as e:
        raise CorruptIndexError(str(e)) from None
    if found != expected:
        raise CorruptIndexError(f"index file {path} fails its sha256 check: tampered or corrupt")
