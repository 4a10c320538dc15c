"""Building an index (paper 3.4 and 3.6): a collection -> packed doc embeddings + a faiss IVFPQ index.

The steps of build_index, one function each:

    1. read the collection and fingerprint the build      (collection sha256, model, chunking)
    2. encode it chunk by chunk into partial-<fp>/         (encode_chunks; a killed run resumes)
    3. write one packed store from the chunks              (concat_stores, streamed)
    4. train faiss over every token row, write the other files, then the manifest (finish_build)

build_index_from_embeddings skips 1-2: the caller brings the token vectors. The layout on disk
and the crash guarantees are described in colbert_fast.retrieval.index; every step writes through
colbert_fast.retrieval.writer.IndexWriter (one writer per index, held for the whole build;
verified files; a commit that never deletes the previous generation before the new one is whole).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

import colbert_fast
from colbert_fast import CompressedDocs, PackedDocs
from colbert_fast.files import sha256
from colbert_fast.packed import write_store

from .engine import build_engine, save_engine
from .index import INDEX_FORMAT, Index, require_faiss
from .tsv import read_collection
from .writer import IndexWriter

__all__ = ["IndexConfig", "build_index", "build_index_from_embeddings", "choose_partitions", "encode_docs"]


STORES = ("fp16", "residual", "int8")


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
        store: how the token vectors are kept for scoring: "residual" (the default: ColBERTv2's
            codes, centroid id + store_nbits per dimension + a scale; 38 bytes per token at dim
            128 and 2 bits), "int8" (130 bytes) or "fp16" (256 bytes, the paper's store).
            Compressed stores are scored from their codes (colbert_fast.CompressedDocs); faiss is
            still trained on the fp16 vectors, which are deleted after the build unless keep_fp16.
        store_nbits: bits per dimension of a residual store: 1, 2 or 4.
        keep_fp16: keep the fp16 store on disk beside a compressed one (never read by search).
        ivf: build the faiss IVF over every token row (the "paper" search modes' candidates: a
            second copy of the tokens). False: a residual store's centroid engine (mode
            "centroid", the default search) finds candidates from the store's own centroids; any
            store serves "exhaustive", which needs no candidates; and the index can change in
            place (retrieval/live.py: the IVF would not know added docs). None (the default):
            False for a residual store (the engine needs no IVF and beat the paper's path on the
            E1/E2 benchmark, bench/results/engines), True for fp16 and int8 stores (without it
            they could only be searched exhaustively).
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
    store: str = "residual"  # 2-bit: within the quality bar on Cranfield (bench/results/cranfield)
    store_nbits: int = 2
    keep_fp16: bool = False
    ivf: bool | None = None

    def __post_init__(self) -> None:
        if self.ivf is None:
            self.ivf = self.store != "residual"
        if self.codec not in ("auto", "pq", "flat"):
            raise ValueError(f"codec must be 'auto', 'pq' or 'flat', got {self.codec!r}")
        for name in ("pq_subvectors", "pq_bits", "nprobe", "batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.partitions is not None and self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")
        if self.store not in STORES:
            raise ValueError(f"store must be one of {STORES}, got {self.store!r}")
        if self.store == "residual" and self.store_nbits not in (1, 2, 4):
            raise ValueError(f"store_nbits must be 1, 2 or 4 for a residual store, got {self.store_nbits!r}")


def choose_partitions(num_vectors: int, train_samples: int) -> int:
    """~8 sqrt(n) cells rounded to a power of two, at most one per 39 training vectors."""
    if num_vectors < 1:
        raise ValueError("cannot index an empty collection (no token vectors)")
    wanted = 1 << math.ceil(math.log2(max(1.0, 8 * math.sqrt(num_vectors))))
    return max(1, min(wanted, train_samples // 39))


# ---- the two entry points ------------------------------------------------------------------------


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
        encoder: a colbert_fast.retrieval.encoder.ColBERT.
        config: IndexConfig.
        checkpoint: the model directory, recorded in the manifest so search can find the encoder.
        resume: reuse chunks a previous, interrupted run with the same collection, model and
            config finished; False starts from scratch.
        progress: show a tqdm progress bar.
        on_chunk: called with the chunk number after each chunk is saved (tests simulate crashes).

    Returns:
        the loaded Index.
    """
    config = config or IndexConfig()
    faiss = require_faiss() if config.ivf else None
    index_dir = Path(index_dir)
    collection = Path(collection)
    pids, texts = read_collection(collection)
    collection_sha = sha256(collection)
    model_fingerprint = _model_fingerprint(encoder)
    fingerprint = _build_fingerprint(collection_sha, model_fingerprint, config)
    with IndexWriter(index_dir, keep=(f"partial-{fingerprint}",)) as writer:
        partial = _partial_dir(index_dir, fingerprint, resume)
        chunk_files = encode_chunks(encoder, texts, config, partial, progress, on_chunk)
        tag = uuid.uuid4().hex[:12]
        # One store for the whole collection, streamed from the chunk files (never all in memory).
        docs = concat_stores(chunk_files, writer, f"docs-{tag}.safetensors")
        model = {"checkpoint": checkpoint, "config": encoder.config.to_dict(), "fingerprint": model_fingerprint}
        source = {"path": str(collection.resolve()), "sha256": collection_sha}
        finish_build(faiss, writer, tag, docs, pids, config, model, source, progress=progress)
    shutil.rmtree(partial, ignore_errors=True)
    return Index.load(index_dir, verify=False)


def build_index_from_embeddings(
    embeddings,
    index_dir: str | os.PathLike,
    config: IndexConfig | None = None,
    *,
    ids: Sequence | None = None,
    similarity: str = "cosine",
    codebook=None,
    progress: bool = False,
) -> Index:
    """Write an index of token embeddings you already have (no encoder): any model, any dim.

    Args:
        embeddings: a PackedDocs, or a list of [L_i, dim] tensors / numpy arrays (L_i may be 0),
            float32/float16/bfloat16. Stored as fp16. ColBERT-style models emit L2-normalized
            rows; the candidate stage assumes it (exhaustive search is exact whatever they hold).
        index_dir: the index directory (created if needed; an index there is replaced).
        config: IndexConfig (its encoder-side fields are unused).
        ids: the caller's doc ids (the index's pids), one per doc, unique (stored as strings);
            default "0".."N-1".
        similarity: "cosine" (dot products, the default) or "l2", recorded for search.
        codebook: a residual store's centroids and buckets to encode with instead of training
            them (e.g. another index's, to compare it with a fresh build of the same docs).
        progress: tqdm bars for the long steps (a residual store's k-means passes and encoding).

    Returns:
        the loaded Index. Search it with query embeddings (Searcher.search accepts tensors).
    """
    config = config or IndexConfig()
    faiss = require_faiss() if config.ivf else None
    if similarity not in ("cosine", "l2"):
        raise ValueError(f"similarity must be 'cosine' or 'l2', got {similarity!r}")
    docs = as_packed(embeddings, torch.float16)  # what the store holds: half the bytes of fp32 lists
    ids = [str(i) for i in range(docs.num_docs)] if ids is None else [str(i) for i in ids]
    if len(ids) != docs.num_docs:
        raise ValueError(f"got {len(ids)} ids for {docs.num_docs} docs")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    with IndexWriter(index_dir) as writer:
        tag = uuid.uuid4().hex[:12]
        name = f"docs-{tag}.safetensors"
        writer.check_space(docs.num_tokens * docs.dim * 2, "the fp16 token store")
        step = max(1, (64 << 20) // max(1, docs.dim * 4))  # converted to fp16 a piece at a time
        emb = docs.embeddings
        record = write_store(
            writer.path(name),
            docs.lengths.cpu(),
            (emb[s : s + step].to(device="cpu", dtype=torch.float16) for s in range(0, docs.num_tokens, step)),
            docs.dim,
            torch.float16,
        )
        writer.add(name, record)
        stored = PackedDocs.load(writer.path(name), mmap=True)
        model = {"checkpoint": None, "config": {"dim": stored.dim, "similarity": similarity}, "fingerprint": None}
        source = {"embeddings": True, "sha256": record["sha256"]}
        # The rest reads the written store: drop our packed copy (a list's fp16 pack, 2.5 GB at E1
        # 100k) so it is not held beside the store's pages while the codebook trains.
        del docs, emb
        finish_build(faiss, writer, tag, stored, ids, config, model, source, codebook, progress)
    return Index.load(index_dir, verify=False)


def as_packed(embeddings, dtype: torch.dtype | None = None) -> PackedDocs:
    """Token embeddings in (a PackedDocs or a list of [L_i, dim] tensors/arrays) as one PackedDocs:
    at least one doc, every value finite (ValueError), else TypeError for what is not embeddings.

    dtype: pack a list straight into this dtype (builds store fp16: packing a list of fp32 docs as
    fp16 holds half the bytes, and a value beyond fp16's range is caught here instead of being
    stored as inf). A PackedDocs is returned as it is.
    """
    if isinstance(embeddings, PackedDocs):
        docs = embeddings
    else:
        if isinstance(embeddings, torch.Tensor) or not isinstance(embeddings, Sequence):
            raise TypeError(
                "embeddings must be a PackedDocs or a list of [L_i, dim] tensors/arrays, "
                f"got {type(embeddings).__name__}"
            )
        items = [torch.as_tensor(e) for e in embeddings]
        docs = PackedDocs.from_list(items) if dtype is None else _pack_into(items, dtype)
    if docs.num_docs == 0:
        raise ValueError("cannot index an empty collection (no docs)")
    if not _all_finite(docs.embeddings):
        beyond = " (or beyond fp16's range, +-65504: the store is fp16)" if docs.dtype == torch.float16 else ""
        raise ValueError(f"embeddings hold NaN or inf values{beyond}")
    return docs


def _pack_into(items: list[torch.Tensor], dtype: torch.dtype) -> PackedDocs:
    """PackedDocs.from_list's checks, then each doc copied into one [T, dim] buffer of dtype."""
    if not items:
        raise ValueError("cannot index an empty collection (no docs)")
    dim = items[0].shape[1] if items[0].dim() == 2 else "dim"
    for i, d in enumerate(items):
        if d.dim() != 2 or d.shape[1] != dim:
            raise ValueError(f"embeddings[{i}] must be a [L, {dim}] tensor, got {tuple(d.shape)}")
        if not d.dtype.is_floating_point:
            raise TypeError(f"embeddings[{i}] must be floating point, got {d.dtype}")
    lengths = [d.shape[0] for d in items]
    out = torch.empty(sum(lengths), dim, dtype=dtype)
    at = 0
    for d in items:
        out[at : at + d.shape[0]].copy_(d)
        at += d.shape[0]
    return PackedDocs(out, lengths)


def _all_finite(x: torch.Tensor, rows: int = 1 << 20) -> bool:
    """Whether every value of x [T, dim] is finite, a block of rows at a time (no [T, dim] bool copy)."""
    return all(bool(torch.isfinite(x[s : s + rows]).all()) for s in range(0, x.shape[0], rows))


# ---- step 1: what decides a build ------------------------------------------------------------------


def _model_fingerprint(encoder) -> str:
    h = hashlib.sha256(json.dumps(encoder.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


# ---- step 2: encoding ------------------------------------------------------------------------------


def _chunks(n: int, size: int) -> Iterator[tuple[int, int, int]]:
    for c, start in enumerate(range(0, n, size)):
        yield c, start, min(n, start + size)


def encode_docs(encoder, texts: Sequence[str], batch_size: int, progress=None) -> PackedDocs:
    """Encode docs into an fp16 CPU store, in collection order.

    Batches are length-sorted (less padding), then the collection order is restored. progress:
    None, or a tqdm-like object whose update(n) is called per batch.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor | None] = [None] * len(texts)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        for i, emb in zip(idx, encoder.encode_docs([texts[i] for i in idx])):
            out[i] = emb.to(device="cpu", dtype=torch.float16)
        if progress is not None:
            progress.update(len(idx))
    return PackedDocs.from_list(out)


def encode_chunks(encoder, texts, config: IndexConfig, partial: Path, progress: bool, on_chunk) -> list[Path]:
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
            encode_docs(encoder, texts[start:end], config.batch_size, bar).save(paths[c])
            if on_chunk is not None:
                on_chunk(c)
    finally:
        if bar is not None:
            bar.close()
    return paths


# ---- step 3: one store -----------------------------------------------------------------------------


def concat_stores(parts: list[Path], writer: IndexWriter, name: str) -> PackedDocs:
    """Write the chunk stores back to back as one PackedDocs safetensors file `name` of the writer's
    generation; return it memory-mapped.

    Streams chunk by chunk, so building never needs the whole collection's vectors in memory.
    """
    stores = [PackedDocs.load(p, mmap=True) for p in parts]
    dim, dtype = stores[0].dim, stores[0].dtype
    if any(s.dim != dim or s.dtype != dtype for s in stores):
        raise ValueError("chunk stores disagree on dim or dtype")
    writer.check_space(sum(p.stat().st_size for p in parts), "the token store")
    lengths = torch.cat([s.lengths for s in stores])
    writer.add(name, write_store(writer.path(name), lengths, (s.embeddings for s in stores), dim, dtype))
    return PackedDocs.load(writer.path(name), mmap=True)


# ---- step 4: faiss, the other files, the manifest ---------------------------------------------------


def finish_build(
    faiss, writer: IndexWriter, tag: str, docs: PackedDocs, pids, config, model, source, codebook=None, progress=False
) -> dict:
    """faiss over the store's token rows (unless config.ivf is False), the compressed store and the
    centroid engine's file (residual), the other files under the store's tag (each verified), then
    the manifest (the commit point), then removal of what the old manifest named. Returns the
    manifest written. progress: tqdm bars while the compressed store is trained and encoded."""
    files = {"docs": f"docs-{tag}.safetensors", "ids": f"ids-{tag}.json"}
    if docs.num_tokens == 0:
        raise ValueError("the collection has no token vectors to index (every doc is empty)")
    ids_blob = json.dumps(list(pids)).encode()
    writer.check_space(_estimated_bytes(docs, config) + len(ids_blob), "the faiss index and the other index files")
    ivf_info = None
    if config.ivf:
        ivf, ivf_info = train_ivf(faiss, docs, config)  # faiss ids are token rows of the store
        files["ivf"] = f"ivf-{tag}.faiss"
    store = {"codec": "fp16", "bytes_per_token": docs.dim * 2}
    if config.store != "fp16":  # the codes become the store; the fp16 file stays only if asked
        codes_name = f"codes-{tag}.safetensors"
        codes, record = write_compressed_store(docs, config, writer.path(codes_name), codebook, progress)
        writer.add(codes_name, record)
        store = {"codec": config.store, "nbits": codes.nbits, "bytes_per_token": codes.bytes_per_token}
        if config.keep_fp16:
            files["fp16"] = files["docs"]
        files["docs"] = codes_name
        if config.store == "residual":  # the centroid engine's lists and bounds (engine.py)
            files["engine"] = f"engine-{tag}.safetensors"
            writer.add(files["engine"], save_engine(writer.path(files["engine"]), build_engine(codes)))
    if config.ivf:
        # faiss's own (pickle-free) format, streamed through our verified writer rather than written
        # by faiss to a path: a full disk then raises here (faiss's own file writer only prints
        # "close error" and returns), and the bytes on disk are checked against the bytes faiss produced.
        writer.write(files["ivf"], lambda f: faiss.write_index(ivf, faiss.PyCallbackIOWriter(f.write)))
    writer.write(files["ids"], lambda f: f.write(ids_blob))
    manifest = {
        "format": INDEX_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "model": model,
        "collection": source,
        "index_config": dataclasses.asdict(config),
        "ivf": ivf_info,
        "stats": {
            "num_docs": docs.num_docs,
            "num_tokens": docs.num_tokens,
            "dim": docs.dim,
            "dtype": "float16",
            "store": store,
        },
    }
    return write_manifest(writer, manifest, files)


def _estimated_bytes(docs: PackedDocs, config: IndexConfig) -> int:
    """Bytes the rest of a build writes after the fp16 store: the faiss index (codes and ids of
    every token vector, plus the coarse centroids) and a compressed store."""
    n, dim = docs.num_tokens, docs.dim
    per_vector = 8 + (config.pq_subvectors * config.pq_bits // 8 if config.codec == "pq" else dim * 4)
    total = n * per_vector + (config.partitions or choose_partitions(max(n, 1), max(n, 1))) * dim * 4
    if config.store == "residual":
        total += n * (4 + 2 + -(-dim * config.store_nbits // 8))
    elif config.store == "int8":
        total += n * (dim + 2)
    return total


def write_compressed_store(
    docs: PackedDocs, config: IndexConfig, path: Path, codebook=None, progress=False
) -> tuple[CompressedDocs, dict]:  # codebook: a CompressedDocs.codebook (compressed.ResidualCodec)
    """Encode the fp16 store with config.store's codec (residual: `codebook`, or one trained on it)
    and write it atomically and verified to `path`; returns the store and the file's record.
    progress: a tqdm bar per long step (k-means passes, tokens encoded)."""
    nbits = config.store_nbits if config.store == "residual" else 8
    if codebook is not None and config.store != "residual":
        raise ValueError(f"a codebook goes with store='residual', not {config.store!r}")
    if codebook is not None:
        nbits = codebook.nbits
        if codebook.centroids.shape[1] != docs.dim:
            raise ValueError(f"the codebook's dim is {codebook.centroids.shape[1]}, the docs' {docs.dim}")
    bars = StageBars() if progress else None
    try:
        codes = CompressedDocs.from_packed(
            docs, config.store, nbits, seed=config.seed, codebook=codebook, progress=bars
        )
    finally:
        if bars is not None:
            bars.close()
    return codes, codes.save(path)


class StageBars:
    """progress(stage, done, total) as one tqdm bar per stage (CompressedDocs.from_packed's protocol)."""

    def __init__(self):
        self.bars = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            self.close()  # the stage before it is over
            passes = stage == "k-means"
            unit = "pass" if passes else "token"
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit=unit, unit_scale=not passes, dynamic_ncols=True)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def write_manifest(writer: IndexWriter, manifest: dict, files: dict[str, str]) -> dict:
    """The commit point of a build: every file checked, then one atomic replace of manifest.json."""
    return writer.commit(manifest, files)


def train_ivf(faiss, docs: PackedDocs, config: IndexConfig):
    """A trained and filled faiss IVF index over every token row of `docs`, and its manifest entry."""
    n, dim = docs.num_tokens, docs.dim
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


def _versions() -> dict:
    """Versions recorded in the manifest, read from package metadata (importing transformers just
    to ask would cost a searcher seconds and hundreds of MB)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"colbert_fast": colbert_fast.__version__, "torch": torch.__version__, "numpy": np.__version__}
    for name, dists in (("faiss", ("faiss-cpu", "faiss-gpu", "faiss")), ("transformers", ("transformers",))):
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return versions
