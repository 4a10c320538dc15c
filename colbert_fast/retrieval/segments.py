"""One searchable view of an index made of several segments with deleted rows (the live index).

A live index (colbert_fast.retrieval.live) adds documents as new segments, each a store of its own
(same kind, same dim, for a residual store the same codebook), and deletes by tombstones: rows of
a segment that search must never return. Index.load turns such a generation into what every
search path already knows, one store, one pid list and one centroid engine, by copying the live
rows of every segment in segment order (merge_segments). The result is the store a fresh build of
the surviving documents, in that order and with the same codebook, would hold: the same codes,
hence the same scores; deleted rows are not even loaded. A single segment without tombstones is
not copied (Index.load maps it as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from colbert_fast import CompressedDocs, PackedDocs

__all__ = ["Segment", "join_stores", "kept_rows", "merge_segments", "same_codebook", "token_rows"]


class Segment(NamedTuple):
    """One segment as loaded: its store, its pids (row -> id) and its engine tensors (or None)."""

    docs: PackedDocs | CompressedDocs
    pids: list[str]
    engine: dict[str, torch.Tensor] | None


def kept_rows(num_docs: int, deleted: Sequence[int]) -> torch.Tensor:
    """int64 rows of a segment that are not deleted, ascending."""
    keep = torch.ones(num_docs, dtype=torch.bool)
    keep[torch.as_tensor(list(deleted), dtype=torch.int64)] = False
    return torch.nonzero(keep).flatten()


def token_rows(offsets: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """int64 token rows of docs `rows` (in that order): offsets[r] .. offsets[r] + lengths[r] - 1 each."""
    lens = lengths[rows]
    total = int(lens.sum())
    starts = torch.repeat_interleave(offsets[rows], lens, output_size=total)
    first = torch.cumsum(lens, 0) - lens  # where each doc's tokens begin in the output
    within = torch.arange(total) - torch.repeat_interleave(first, lens, output_size=total)
    return starts + within


def same_codebook(a, b) -> bool:
    """Whether two stores can be scored as one: same kind, dim and (residual) codebook."""
    if type(a) is not type(b) or a.dim != b.dim:
        return False
    if isinstance(a, PackedDocs):
        return a.dtype == b.dtype
    if (a.codec, a.nbits) != (b.codec, b.nbits):
        return False
    if a.codec != "residual":
        return True
    return all(torch.equal(getattr(a, t), getattr(b, t)) for t in ("centroids", "bucket_cutoffs", "bucket_weights"))


def _select(store, rows: torch.Tensor):
    """A copy of docs `rows` of one store, in memory."""
    store = store.to("cpu")
    tokens = token_rows(store.offsets.cpu(), store.lengths.cpu(), rows)
    lengths = store.lengths.cpu()[rows]
    if isinstance(store, PackedDocs):
        return PackedDocs(store.embeddings[tokens], lengths)
    if store.codec == "int8":
        return CompressedDocs("int8", 8, lengths, store.codes[tokens], store.scales[tokens])
    book = {k: getattr(store, k).clone() for k in ("centroids", "bucket_cutoffs", "bucket_weights")}
    return CompressedDocs(
        "residual", store.nbits, lengths, store.codes[tokens], store.scales[tokens], store.centroid_ids[tokens], **book
    )


def join_stores(parts: list):
    """One store of several (same kind and codebook), docs in order."""
    first = parts[0]
    lengths = torch.cat([p.lengths for p in parts])
    if isinstance(first, PackedDocs):
        return PackedDocs(torch.cat([p.embeddings for p in parts]), lengths)
    codes = torch.cat([p.codes for p in parts])
    scales = torch.cat([p.scales for p in parts])
    if first.codec == "int8":
        return CompressedDocs("int8", 8, lengths, codes, scales)
    book = {k: getattr(first, k) for k in ("centroids", "bucket_cutoffs", "bucket_weights")}
    ids = torch.cat([p.centroid_ids for p in parts])
    return CompressedDocs("residual", first.nbits, lengths, codes, scales, ids, **book)


def _merge_engines(engines: list[dict], kept: list[torch.Tensor], sizes: list[int]) -> dict[str, torch.Tensor]:
    """The centroid engine of the merged store: each segment's lists renumbered to merged rows (deleted
    docs dropped), concatenated, then grouped by centroid (stable: docs stay ascending), and the
    kept docs' stats in order. Equal to build_engine over the merged store, without decoding a token."""
    num_c = engines[0]["ivf_offsets"].numel() - 1
    cents, docs, stats = [], [], []
    base = 0
    for engine, rows, size in zip(engines, kept, sizes):
        offsets = engine["ivf_offsets"].to(torch.int64)
        new_row = torch.full((size,), -1, dtype=torch.int64)
        new_row[rows] = torch.arange(rows.numel()) + base
        seg_docs = new_row[engine["ivf_docs"].to(torch.int64)]
        seg_cents = torch.repeat_interleave(torch.arange(num_c), offsets[1:] - offsets[:-1])
        live = seg_docs >= 0
        cents.append(seg_cents[live])
        docs.append(seg_docs[live])
        stats.append(engine["doc_stats"][rows])
        base += rows.numel()
    cent = torch.cat(cents)
    order = torch.sort(cent, stable=True).indices
    ivf_offsets = torch.zeros(num_c + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(cent, minlength=num_c), 0, out=ivf_offsets[1:])
    return {
        "ivf_offsets": ivf_offsets,
        "ivf_docs": torch.cat(docs)[order].to(torch.int32),
        "doc_stats": torch.cat(stats).contiguous(),
    }


def merge_segments(segments: list[Segment], deleted: list[Sequence[int]]) -> Segment:
    """The live docs of every segment, in segment then row order, as one in-memory Segment.

    deleted[i]: the rows of segments[i] that are deleted. Raises ValueError when the segments
    cannot be one store (different kind, dim or codebook), or only some have an engine.
    """
    first = segments[0].docs
    for i, seg in enumerate(segments[1:], 1):
        if not same_codebook(first, seg.docs):
            raise ValueError(f"segment {i} is not encoded like segment 0 (store kind, dim or codebook differ)")
    if len({seg.engine is None for seg in segments}) != 1:
        raise ValueError("some segments have a centroid engine file and some do not")
    kept = [kept_rows(seg.docs.num_docs, dead) for seg, dead in zip(segments, deleted)]
    docs = join_stores([_select(seg.docs, rows) for seg, rows in zip(segments, kept)])
    pids = [seg.pids[r] for seg, rows in zip(segments, kept) for r in rows.tolist()]
    engine = None
    if segments[0].engine is not None:
        sizes = [seg.docs.num_docs for seg in segments]
        engine = _merge_engines([seg.engine for seg in segments], kept, sizes)
    return Segment(docs, pids, engine)
