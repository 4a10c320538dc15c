"""The indexer (paper 3.4 and 3.6): a collection -> packed doc embeddings + a faiss IVFPQ index.

An index is a directory:

    manifest.json            the commit point: config, versions, file names, sizes, sha256
    docs-<tag>.safetensors   PackedDocs, fp16, every doc's kept tokens in collection order
    ivf-<tag>.faiss          faiss IVFPQ (or IVFFlat for small collections) over every token row;
                             faiss id = row in docs, so emb2pid is lengths repeated
    ids-<tag>.json           the collection's pids, in order (internal doc i -> pid string)
    partial-<fingerprint>/   only while building: finished chunks, so a killed run resumes

Every file is written under a temporary name and renamed into place; the manifest is replaced
last, atomically, and names the files of exactly one finished build. A crash at any point leaves
the previous manifest (and its files) or no index, plus partial chunks a rerun picks up: never a
manifest that points at a half-written file. Loading checks sizes and sha256 before reading a
byte of the data, and nothing is unpickled (faiss reads its own serialization format).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .files import atomic_path, write_bytes_atomic
from .packed import PackedDocs, write_store

__all__ = [
    "CorruptIndexError",
    "Index",
    "IndexConfig",
    "build_index",
    "build_index_from_embeddings",
    "choose_partitions",
    "read_collection",
]

INDEX_FORMAT = "colbert_fast.index/1"
# Data files of a build (and their temp names): the only files a new build may delete.
_OURS = re.compile(r"(docs-[0-9a-f]{12}\.safetensors|ivf-[0-9a-f]{12}\.faiss|ids-[0-9a-f]{12}\.json)(\.tmp\d+)?")
MANIFEST = "manifest.json"


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


@dataclasses.dataclass
class IndexConfig:
    """How to build an index.

    Args:
        partitions: IVF cells; None picks ~8*sqrt(#token vectors), capped so each cell gets >= 39
            training vectors (small collections get few cells).
        pq_subvectors, pq_bits: product quantization (paper: 16 x 8 bits). Sub-vectors must divide dim.
        codec: "pq", "flat" (exact vectors in the IVF lists), or "auto": pq from 10,000 token
            vectors up (PQ's 256 centroids per sub-space need that many to train), else flat.
        train_samples: token vectors sampled to train the quantizers; None -> 100 per cell
            (k-means needs >= 39), >= 10,000.
        nprobe: default cells probed per query token at search time (stored in the manifest).
        batch_size: docs per encoder batch (batches are length-sorted).
        chunk_size: docs per resumable chunk.
        seed: sampling seed.
    """

    partitions: int | None = None
    pq_subvectors: int = 16
    pq_bits: int = 8
    codec: str = "auto"
    train_samples: int | None = None
    nprobe: int = 10
    batch_size: int = 64
    chunk_size: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.codec not in ("auto", "pq", "flat"):
            raise ValueError(f"codec must be 'auto', 'pq' or 'flat', got {self.codec!r}")
        for name in ("pq_subvectors", "pq_bits", "nprobe", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.partitions is not None and self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")


def choose_partitions(num_vectors: int, train_samples: int) -> int:
    """~8 sqrt(n) cells rounded to a power of two, at most one per 39 training vectors."""
    if num_vectors < 1:
        raise ValueError("cannot index an empty collection (no token vectors)")
    wanted = 1 << math.ceil(math.log2(max(1.0, 8 * math.sqrt(num_vectors))))
    return max(1, min(wanted, train_samples // 39))


# ---- collection ------------------------------------------------------------------------------


def read_collection(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """An MS MARCO collection TSV: `pid \\t text` per line (a third column is a title: "title | text").

    A header line starting with "id\\t" is skipped. Raises ValueError naming the line for a line
    without a tab, an empty pid, or a duplicate pid.
    """
    pids, texts, seen = [], [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if lineno == 1 and parts[0] == "id":
                continue
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'pid<TAB>text', found no tab")
            pid, text = parts[0].strip(), parts[1]
            if len(parts) >= 3 and parts[2].strip():
                text = f"{parts[2].strip()} | {text}"
            if not pid:
                raise ValueError(f"{path}:{lineno}: empty pid")
            if pid in seen:
                raise ValueError(f"{path}:{lineno}: duplicate pid {pid!r}")
            seen.add(pid)
            pids.append(pid)
            texts.append(text)
    if not pids:
        raise ValueError(f"{path} holds no passages")
    return pids, texts


# ---- files -------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_faiss(faiss, ivf, path: Path) -> None:
    """faiss's own (pickle-free) format, straight to a temp file, then renamed into place."""
    with atomic_path(path) as tmp:
        faiss.write_index(ivf, str(tmp))


def _model_fingerprint(encoder) -> str:
    h = hashlib.sha256(json.dumps(encoder.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _versions() -> dict:
    """Versions recorded in the manifest, read from package metadata (importing transformers just
    to ask would cost a searcher seconds and hundreds of MB)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    versions = {"colbert_fast": __version__, "torch": torch.__version__, "numpy": np.__version__}
    for name, dists in (("faiss", ("faiss-cpu", "faiss-gpu", "faiss")), ("transformers", ("transformers",))):
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return versions


# ---- building ----------------------------------------------------------------------------------


def _chunks(n: int, size: int) -> Iterator[tuple[int, int, int]]:
    for c, start in enumerate(range(0, n, size)):
        yield c, start, min(n, start + size)


def _encode_chunk(encoder, texts: Sequence[str], batch_size: int, progress) -> PackedDocs:
    """Encode in length-sorted batches (less padding), then restore the collection order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor | None] = [None] * len(texts)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        for i, emb in zip(idx, encoder.encode_docs([texts[i] for i in idx])):
            out[i] = emb.to(device="cpu", dtype=torch.float16)
        if progress is not None:
            progress.update(len(idx))
    return PackedDocs.from_list(out)


def build_index(
    collection: str | os.PathLike,
    index_dir: str | os.PathLike,
    encoder,
    config: IndexConfig | None = None,
    *,
    checkpoint: str | None = None,
    resume: bool = True,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
) -> Index:
    """Encode `collection` with `encoder` and write an index to `index_dir` (replacing any there).

    Args:
        collection: MS MARCO TSV (pid \\t text).
        index_dir: the index directory (created if needed).
        encoder: a colbert_fast.model.ColBERT.
        config: IndexConfig.
        checkpoint: the model directory, recorded in the manifest so search can find the encoder.
        resume: reuse chunks a previous, interrupted run with the same collection, model and
            config finished; False starts from scratch.
        progress: show a tqdm progress bar.
        on_chunk: called with the chunk number after each chunk is saved (tests simulate crashes).

    Returns:
        the loaded Index.
    """
    faiss = require_faiss()
    config = config or IndexConfig()
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    collection = Path(collection)
    pids, texts = read_collection(collection)
    collection_sha = _sha256(collection)
    fingerprint = _build_fingerprint(collection_sha, _model_fingerprint(encoder), config)
    partial = _partial_dir(index_dir, fingerprint, resume)
    chunk_files = _encode_collection(encoder, texts, config, partial, progress, on_chunk)
    tag = uuid.uuid4().hex[:12]
    docs_file = f"docs-{tag}.safetensors"
    # One store for the whole collection, streamed from the chunk files (never all in memory).
    docs = _concat_stores(chunk_files, index_dir / docs_file)
    model = {"checkpoint": checkpoint, "config": encoder.config.to_dict(), "fingerprint": _model_fingerprint(encoder)}
    source = {"path": str(collection.resolve()), "sha256": collection_sha}
    index = _finish_build(faiss, index_dir, tag, docs, pids, config, model, source)
    shutil.rmtree(partial, ignore_errors=True)
    return index


def build_index_from_embeddings(
    embeddings,
    index_dir: str | os.PathLike,
    config: IndexConfig | None = None,
    *,
    ids: Sequence | None = None,
    similarity: str = "cosine",
) -> Index:
    """Write an index of token embeddings you already have (no encoder): any model, any dim.

    Args:
        embeddings: a PackedDocs, or a list of [L_i, dim] tensors / numpy arrays (L_i may be 0),
            float32/float16/bfloat16. Stored as fp16. ColBERT-style models emit L2-normalized
            rows; the candidate stage assumes it (exhaustive search is exact whatever they hold).
        index_dir: the index directory (created if needed; an index there is replaced).
        config: IndexConfig (its encoder-side fields are unused).
        ids: the caller's doc ids, one per doc, unique (stored as strings); default "0".."N-1".
        similarity: "cosine" (dot products, the default) or "l2", recorded for search.

    Returns:
        the loaded Index. Search it with query embeddings (Searcher.search accepts tensors).
    """
    faiss = require_faiss()
    config = config or IndexConfig()
    if similarity not in ("cosine", "l2"):
        raise ValueError(f"similarity must be 'cosine' or 'l2', got {similarity!r}")
    docs = _as_packed(embeddings)
    ids = [str(i) for i in range(docs.num_docs)] if ids is None else [str(i) for i in ids]
    if len(ids) != docs.num_docs:
        raise ValueError(f"got {len(ids)} ids for {docs.num_docs} docs")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    docs_file = index_dir / f"docs-{tag}.safetensors"
    step = max(1, (64 << 20) // max(1, docs.dim * 4))  # converted to fp16 a piece at a time
    emb = docs.embeddings
    write_store(
        docs_file,
        docs.lengths.cpu(),
        (emb[s : s + step].to(device="cpu", dtype=torch.float16) for s in range(0, docs.num_tokens, step)),
        docs.dim,
        torch.float16,
    )
    stored = PackedDocs.load(docs_file, mmap=True)
    model = {"checkpoint": None, "config": {"dim": docs.dim, "similarity": similarity}, "fingerprint": None}
    source = {"embeddings": True, "sha256": _sha256(docs_file)}
    return _finish_build(faiss, index_dir, tag, stored, ids, config, model, source)


def _as_packed(embeddings) -> PackedDocs:
    if isinstance(embeddings, PackedDocs):
        docs = embeddings
    else:
        if isinstance(embeddings, torch.Tensor) or not isinstance(embeddings, Sequence):
            raise TypeError(
                "embeddings must be a PackedDocs or a list of [L_i, dim] tensors/arrays, "
                f"got {type(embeddings).__name__}"
            )
        docs = PackedDocs.from_list([torch.as_tensor(e) for e in embeddings])
    if docs.num_docs == 0:
        raise ValueError("cannot index an empty collection (no docs)")
    if docs.num_tokens and not bool(torch.isfinite(docs.embeddings).all()):
        raise ValueError("embeddings hold NaN or inf values")
    return docs


def _build_fingerprint(collection_sha: str, model_fingerprint: str, config: IndexConfig) -> str:
    """What decides the encoded chunks: a resumed build reuses chunks only when all of it matches."""
    key = {
        "collection": collection_sha,
        "model": model_fingerprint,
        "chunk_size": config.chunk_size,
        "batch_size": config.batch_size,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _partial_dir(index_dir: Path, fingerprint: str, resume: bool) -> Path:
    """The folder of finished chunks for this build; other builds' leftovers are removed."""
    partial = index_dir / f"partial-{fingerprint}"
    for stale in index_dir.glob("partial-*"):
        if stale != partial or not resume:
            shutil.rmtree(stale)
    partial.mkdir(exist_ok=True)
    return partial


def _encode_collection(encoder, texts, config: IndexConfig, partial: Path, progress: bool, on_chunk) -> list[Path]:
    """Encode chunk by chunk; each finished chunk is a complete file (atomic save), reused on resume."""
    chunks = list(_chunks(len(texts), config.chunk_size))
    paths = [partial / f"chunk-{c:06d}.safetensors" for c, _, _ in chunks]
    done = {c for c, _, _ in chunks if paths[c].exists()}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), unit="doc", desc="encoding", dynamic_ncols=True)
        bar.update(sum(end - start for c, start, end in chunks if c in done))
    try:
        for c, start, end in chunks:
            if c in done:
                try:
                    PackedDocs.load(paths[c])  # a chunk that doesn't load is encoded again
                    continue
                except ValueError:
                    paths[c].unlink()
            _encode_chunk(encoder, texts[start:end], config.batch_size, bar).save(paths[c])
            if on_chunk is not None:
                on_chunk(c)
    finally:
        if bar is not None:
            bar.close()
    return paths


def _finish_build(faiss, index_dir: Path, tag: str, docs: PackedDocs, pids, config, model, source) -> Index:
    """faiss over the store's token rows, the other files under the store's tag, then the manifest
    (the commit point), then removal of what the old manifest named."""
    files = {"docs": f"docs-{tag}.safetensors", "ivf": f"ivf-{tag}.faiss", "ids": f"ids-{tag}.json"}
    ivf, ivf_info = _train_ivf(faiss, docs, config)  # faiss ids are row numbers in the store
    _write_faiss(faiss, ivf, index_dir / files["ivf"])
    write_bytes_atomic(index_dir / files["ids"], json.dumps(list(pids)).encode())
    manifest = {
        "format": INDEX_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "model": model,
        "collection": source,
        "index_config": dataclasses.asdict(config),
        "ivf": ivf_info,
        "stats": {"num_docs": docs.num_docs, "num_tokens": docs.num_tokens, "dim": docs.dim, "dtype": "float16"},
        "files": {
            key: {"name": name, "bytes": (index_dir / name).stat().st_size, "sha256": _sha256(index_dir / name)}
            for key, name in files.items()
        },
    }
    _write_manifest(index_dir, manifest)
    _fsync_dir(index_dir)
    live = set(files.values()) | {MANIFEST}
    for path in index_dir.iterdir():  # only files this module names: never a user's file
        if path.is_file() and path.name not in live and _OURS.fullmatch(path.name):
            path.unlink()
    return Index.load(index_dir, verify=False)


def _concat_stores(parts: list[Path], out: Path) -> PackedDocs:
    """Write the chunk stores back to back as one PackedDocs safetensors file; return it memory-mapped.

    Streams chunk by chunk, so building never needs the whole collection's vectors in memory.
    """
    stores = [PackedDocs.load(p, mmap=True) for p in parts]
    dim, dtype = stores[0].dim, stores[0].dtype
    if any(s.dim != dim or s.dtype != dtype for s in stores):
        raise ValueError("chunk stores disagree on dim or dtype")
    write_store(out, torch.cat([s.lengths for s in stores]), (s.embeddings for s in stores), dim, dtype)
    return PackedDocs.load(out, mmap=True)


def _write_manifest(index_dir: Path, manifest: dict) -> None:
    write_bytes_atomic(index_dir / MANIFEST, json.dumps(manifest, indent=2).encode())


def _train_ivf(faiss, docs: PackedDocs, config: IndexConfig):
    n, dim = docs.num_tokens, docs.dim
    if n == 0:
        raise ValueError("the collection has no token vectors to index (every doc is empty)")
    train_n = config.train_samples
    partitions = config.partitions
    if train_n is None:
        train_n = max(10_000, 100 * (partitions or choose_partitions(n, n)))
    train_n = min(train_n, n)
    if partitions is None:
        partitions = choose_partitions(n, train_n)
    if partitions > train_n:
        raise ValueError(f"partitions={partitions} needs at least that many training vectors; have {train_n}")
    codec = config.codec
    if codec == "auto":
        codec = "pq" if train_n >= 10_000 else "flat"
    if codec == "pq":
        if dim % config.pq_subvectors:
            raise ValueError(f"pq_subvectors={config.pq_subvectors} must divide dim={dim}")
        if train_n < (1 << config.pq_bits):
            raise ValueError(
                f"PQ with {config.pq_bits} bits needs >= {1 << config.pq_bits} training vectors, have {train_n}: "
                "use codec='flat' for so small a collection"
            )
    generator = torch.Generator().manual_seed(config.seed)
    sample = torch.randperm(n, generator=generator)[:train_n].sort().values
    train = docs.embeddings[sample].float().numpy()
    quantizer = faiss.IndexFlatL2(dim)  # unit vectors: L2 order == inner-product order
    if codec == "pq":
        ivf = faiss.IndexIVFPQ(quantizer, dim, partitions, config.pq_subvectors, config.pq_bits)
    else:
        ivf = faiss.IndexIVFFlat(quantizer, dim, partitions)
    ivf.cp.seed = config.seed
    ivf.train(train)
    step = 1 << 18
    for start in range(0, n, step):
        ivf.add(docs.embeddings[start : start + step].float().numpy())
    ivf.nprobe = min(config.nprobe, partitions)
    info = {"codec": codec, "partitions": partitions, "train_samples": train_n, "ntotal": int(ivf.ntotal)}
    if codec == "pq":
        info.update(pq_subvectors=config.pq_subvectors, pq_bits=config.pq_bits)
    return ivf, info


# ---- loading -----------------------------------------------------------------------------------


class Index:
    """A loaded index: docs (PackedDocs), doc_ids (pid strings), ivf (faiss, or None until
    open_ivf()), emb2pid (token row -> doc, built on first use), manifest."""

    def __init__(self, path: Path, manifest: dict, docs: PackedDocs, doc_ids: list[str], ivf, verify: bool = True):
        self.path = path
        self.manifest = manifest
        self.docs = docs
        self.doc_ids = doc_ids
        self.ivf = ivf
        self._verify = verify
        self._emb2pid: torch.Tensor | None = None
        self._pid_index: dict[str, int] | None = None

    @property
    def emb2pid(self) -> torch.Tensor:
        """Token row -> doc index; only the candidate stage needs it, so it is built on first use.
        int32 while it fits: it is as long as the whole token store."""
        if self._emb2pid is None:
            idx_dtype = torch.int32 if self.docs.num_docs < 2**31 else torch.int64
            self._emb2pid = torch.repeat_interleave(
                torch.arange(self.docs.num_docs, dtype=idx_dtype), self.docs.lengths.cpu().to(torch.int64)
            )
        return self._emb2pid

    def open_ivf(self):
        """The faiss index, read (and checked against the manifest) on first use."""
        if self.ivf is None:
            self.ivf = _read_ivf(self.path, self.manifest, self.docs, self._verify)
        return self.ivf

    @property
    def num_docs(self) -> int:
        return self.docs.num_docs

    def internal_ids(self, pids: Sequence[str]) -> list[int]:
        """Doc indices of collection pids; KeyError naming the first unknown one."""
        if self._pid_index is None:
            self._pid_index = {p: i for i, p in enumerate(self.doc_ids)}
        out = []
        for p in pids:
            i = self._pid_index.get(str(p))
            if i is None:
                raise KeyError(f"pid {p!r} is not in the index ({self.num_docs} docs at {self.path})")
            out.append(i)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = True, mmap: bool = True, load_ivf: bool = True) -> Index:
        """Open an index directory.

        Args:
            verify: check every file's sha256 against the manifest before reading it (sizes are
                always checked). Turn off only for a trusted index too large to hash each time.
            mmap: memory-map the doc store instead of reading it into memory.
            load_ivf: also load the faiss index (rerank needs only the doc store).

        Raises CorruptIndexError (a ValueError) naming the file for a missing, truncated, tampered or
        inconsistent index; FileNotFoundError when there is no index at `path`.
        """
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.exists():
            hint = (
                " (an interrupted build left partial chunks: rerun `index` to resume)"
                if any(path.glob("partial-*"))
                else ""
            )
            raise FileNotFoundError(f"no index at {path}: {MANIFEST} is missing{hint}")
        manifest = read_manifest(mpath, INDEX_FORMAT)
        try:
            files = {k: manifest["files"][k] for k in ("docs", "ivf", "ids")}
            stats = manifest["stats"]
        except (KeyError, TypeError) as e:
            raise CorruptIndexError(f"{mpath} lacks entry {e}") from None
        for info in files.values():
            fpath = path / str(info["name"])
            if fpath.name != info["name"] or fpath.parent != path:
                raise CorruptIndexError(
                    f"{mpath}: file name {info['name']!r} is not a plain name in the index directory"
                )
            if not fpath.exists():
                raise CorruptIndexError(f"index file {fpath} is missing")
            size = fpath.stat().st_size
            if size != info["bytes"]:
                raise CorruptIndexError(
                    f"index file {fpath} is truncated or altered: {size} bytes, the manifest says {info['bytes']}"
                )
        if verify:
            for key in ("docs", "ids"):
                _check_sha(path / files[key]["name"], files[key]["sha256"])
        try:
            doc_ids = json.loads((path / files["ids"]["name"]).read_text())
            docs = PackedDocs.load(path / files["docs"]["name"], mmap=mmap)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptIndexError(f"index at {path} is corrupt: {e}") from None
        if not isinstance(doc_ids, list) or len(doc_ids) != docs.num_docs or docs.num_docs != stats.get("num_docs"):
            raise CorruptIndexError(
                f"index at {path} is inconsistent: pid list, doc store and manifest disagree on #docs"
            )
        if docs.num_tokens != stats.get("num_tokens") or docs.dim != stats.get("dim"):
            raise CorruptIndexError(f"index at {path} is inconsistent: doc store shape differs from the manifest")
        index = cls(path, manifest, docs, [str(p) for p in doc_ids], None, verify)
        if load_ivf:
            index.open_ivf()
        return index


def _read_ivf(path: Path, manifest: dict, docs: PackedDocs, verify: bool):
    faiss = require_faiss()
    info = manifest["files"]["ivf"]
    ivf_path = path / info["name"]
    if verify:  # before faiss parses a byte: its reader trusts its input
        _check_sha(ivf_path, info["sha256"])
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
        manifest = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptIndexError(f"{mpath} is corrupt: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        raise CorruptIndexError(f"{mpath} is not a {expected_format} manifest")
    return manifest


def _check_sha(path: Path, expected: str) -> None:
    if _sha256(path) != expected:
        raise CorruptIndexError(f"index file {path} fails its sha256 check: tampered or corrupt")
