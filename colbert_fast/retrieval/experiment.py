"""The paper's evaluation protocol on one collection: four systems, quality and per-stage latency.

    1. index the collection (packed store + faiss), timing it (throughput) and sizing it on disk;
    2. for every query, one at a time (per-query latency, as in the paper):
         BM25           bm25s, English stopwords                                   (lexical baseline)
         single-vector  the same model's mean-pooled, normalized embedding; exact dot product
         ColBERT rerank MaxSim over BM25's top k (paper 3.5)
         ColBERT e2e    faiss candidates + MaxSim over their docs (paper 3.6, the "accurate" budget)
    3. MRR@10, nDCG@10, Recall@10/100 per system (colbert_fast.retrieval.metrics), latency per stage
       (tokenize, encode, candidate generation, gather+score, top-k) in ms per query;
    4. exactness: exhaustive search (every doc scored by the packed kernel) must rank exactly as the
       reference MaxSim (colbert_fast.reference over the stored vectors) and give the same quality
       numbers; the e2e system's recall@10/@100 against it is reported.

run_experiment does these steps, one function each. Results: a dict (written as JSON); the
terminal table and the PNG of quality vs latency are colbert_fast.retrieval.report's.
`ablation()` runs exact MaxSim and re-ranking for encoder variants (markers, [MASK] augmentation,
skiplist) without faiss, to show what ColBERT's choices do with a given model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

import colbert_fast as cf
from colbert_fast import reference

from . import tsv
from .bm25 import BM25
from .build import IndexConfig, build_index, encode_docs
from .datasets import Dataset
from .embedded import EMBEDDED, load_encoder
from .metrics import evaluate, recall_against
from .padding import pad_ids
from .search import Searcher
from .timing import StageTimer

__all__ = ["ExperimentConfig", "ablation", "exact_maxsim_scores", "run_experiment"]

STAGES = ("tokenize", "encode", "candidates", "score", "topk")
METRICS = ("MRR@10", "nDCG@10", "Recall@10", "Recall@100")


@dataclasses.dataclass
class ExperimentConfig:
    """Knobs of the protocol.

    Args:
        k: results kept per query and BM25's re-ranking depth (Recall@100 needs k >= 100).
        nprobe: IVF cells probed per query token (default: the Searcher's "accurate" budget).
        neighbors_per_token: k', faiss neighbours per query token (default: the same budget).
        codec, partitions: the faiss index (see IndexConfig).
        batch_size: docs per encoder batch while indexing.
        single_maxlen: truncation for the single-vector baseline (the model's own max_seq_length).
        exhaustive: also run the exhaustive searcher and compare it with the reference.
        device: where the encoder, store and scoring run (default cuda when available).
        stores: token stores to compare by exhaustive scoring against the fp16 one (quality, top-10
            overlap, bytes per token): "int8", "residual4", "residual2", "residual1"; () skips it.
    """

    k: int = 100
    nprobe: int | None = None
    neighbors_per_token: int | None = None
    codec: str = "auto"
    partitions: int | None = None
    batch_size: int = 64
    single_maxlen: int = 256
    exhaustive: bool = True
    device: str | None = None
    stores: tuple = ("int8", "residual4", "residual2", "residual1")

    def __post_init__(self) -> None:
        if self.k < 10:
            raise ValueError(f"k must be >= 10 (MRR@10, nDCG@10), got {self.k}")


@dataclasses.dataclass
class _Queries:
    """The judged queries of a dataset, in order, with what every system needs of them."""

    qids: list[str]
    texts: list[str]
    qrels: dict
    pids: list[str]  # the collection's pid of each row

    @classmethod
    def of(cls, dataset: Dataset) -> _Queries:
        qids = dataset.judged_qids()
        qtext = dict(zip(dataset.qids, dataset.queries))
        return cls(qids, [qtext[q] for q in qids], {q: dataset.qrels[q] for q in qids}, dataset.pids)


# ---- small pieces ------------------------------------------------------------------------------------


def _time_tokenize(encoder, query: str) -> float:
    """Seconds to tokenize one query (the encode stage includes it; it is reported apart)."""
    t0 = time.perf_counter()
    encoder.tokenize_queries([query])
    return time.perf_counter() - t0


def _quality(run: dict[str, list[str]], qrels: dict) -> dict[str, float]:
    out = evaluate(run, qrels, recall_ks=(10, 100))
    return {m: float(out[m]) for m in METRICS} | {"queries": int(out["queries"])}


@torch.inference_mode()
def mean_pooled(encoder, texts: Sequence[str], maxlen: int, batch_size: int = 64) -> torch.Tensor:
    """The sentence-transformers embedding: mean of the last hidden states over real tokens, L2-normalized.

    Plain tokenizer output ([CLS] text [SEP], truncated to maxlen): no ColBERT markers, no projection.
    """
    out = torch.empty(len(texts), encoder.backbone.config.hidden_size)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = encoder.tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=maxlen, return_tensors="pt"
        )
        enc = {k: v.to(encoder.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        hidden = encoder.backbone(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        out[idx] = F.normalize(pooled, dim=-1).cpu()
    return out


@torch.inference_mode()
def exact_maxsim_scores(Q: torch.Tensor, q_mask: torch.Tensor, docs, chunk: int = 256) -> torch.Tensor:
    """Reference MaxSim of every query against every doc of a PackedDocs (or CompressedDocs): fp32 [B, N].

    colbert_fast.reference over the stored vectors (its gather, then its all-pairs maxsim), docs in
    chunks so the [B, n, Lq, Ld] similarity tensor stays small.
    """
    docs = docs.to("cpu")
    if isinstance(docs, cf.CompressedDocs):  # the stored vectors are the decoded ones
        docs = docs.decode()
    Q, q_mask = Q.cpu(), q_mask.cpu()
    out = []
    for s in range(0, docs.num_docs, chunk):
        rows = torch.arange(s, min(docs.num_docs, s + chunk))
        D, d_mask = reference.gather(docs.embeddings, docs.offsets, docs.lengths, rows)
        out.append(
            torch.cat([reference.maxsim(Q[b : b + 8], D, q_mask[b : b + 8], d_mask) for b in range(0, len(Q), 8)])
        )
    return torch.cat(out, dim=1)


def _top(scores: torch.Tensor, k: int) -> list[list[int]]:
    """Top-k rows per query, ties broken by row (a stable, documented order)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return order.tolist()


# ---- the protocol ------------------------------------------------------------------------------------


def run_experiment(
    dataset: Dataset,
    workdir: str | os.PathLike,
    encoder=None,
    *,
    checkpoint: str | None = None,
    config: ExperimentConfig | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    runs_dir: str | os.PathLike | None = None,
) -> dict:
    """Index `dataset` under workdir/index and evaluate the four systems; returns the results dict.

    encoder: a ColBERT (None: the embedded default model). checkpoint: what the index manifest
    records as the model (a directory, or embedded.EMBEDDED). runs_dir: write each system's run there.
    """
    config = config or ExperimentConfig()
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if encoder is None:
        encoder, checkpoint = load_encoder(None, device=device), EMBEDDED
    encoder = encoder.to(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    queries = _Queries.of(dataset)
    say(f"{dataset.name}: {len(dataset.pids)} docs, {len(queries.qids)} judged queries, device {device}")

    index, index_info = _index_step(dataset, workdir, encoder, checkpoint, config, progress, say)
    results: dict = {
        "dataset": dataset.name,
        "model": {"checkpoint": checkpoint, "config": encoder.config.to_dict()},
        "protocol": dataclasses.asdict(config) | {"device": str(device)},
        "index": index_info,
        "systems": {},
    }
    systems, runs = results["systems"], {}
    systems["BM25"], runs["BM25"], bm25_top = _bm25_system(dataset, queries, config.k)
    say(f"single-vector baseline: encoding {len(dataset.texts)} docs (mean-pooled, maxlen {config.single_maxlen})")
    systems["single-vector"], runs["single-vector"] = _single_vector_system(dataset, queries, encoder, config, device)
    searcher = Searcher(
        index, encoder, device=device, nprobe=config.nprobe, neighbors_per_token=config.neighbors_per_token
    )
    results["scoring_backend"] = cf.selected_backend(searcher.docs.device, searcher.backend)
    systems["ColBERT rerank"], runs["ColBERT rerank"] = _colbert_system(
        searcher, queries, config.k, rerank_from=bm25_top, bm25_ms=systems["BM25"]
    )
    systems["ColBERT e2e"], runs["ColBERT e2e"] = _colbert_system(searcher, queries, config.k)
    systems["ColBERT e2e"]["nprobe"], systems["ColBERT e2e"]["neighbors_per_token"] = searcher.budget(config.k)
    if config.exhaustive:
        results["exactness"], runs["exact MaxSim (reference)"] = _exactness_step(
            index, encoder, queries, config.k, device, systems["ColBERT e2e"], runs["ColBERT e2e"], say
        )
    if config.stores and isinstance(index.docs, cf.PackedDocs):  # compressed stores are encoded from fp16
        results["stores"] = store_quality(index.docs, encoder, queries, config.stores, device, say)
    if runs_dir is not None:
        write_runs(runs, runs_dir)
    return results


# Compressed token stores compared in the experiment: name -> (codec, nbits) of colbert_fast.CompressedDocs.
STORES = {"int8": ("int8", 8), "residual4": ("residual", 4), "residual2": ("residual", 2), "residual1": ("residual", 1)}


def store_quality(docs, encoder, queries: _Queries, stores, device, say, seed: int = 0) -> dict:
    """Exhaustive scoring (every doc, cf.maxsim_packed) from the fp16 store and from each compressed
    store encoded from it: quality (MRR@10, nDCG@10, Recall@10/100), the mean overlap of each
    query's top 10 with the fp16 store's, bytes per token, and per-query scoring latency."""
    Q, q_mask = encoder.encode_queries(queries.texts)
    out = {}
    for name in ("fp16", *stores):
        if name == "fp16":
            store, bytes_per_token = docs.to(device), docs.dim * 2
        else:
            codec, nbits = STORES[name]
            t0 = time.perf_counter()
            store = cf.CompressedDocs.from_packed(docs, codec, nbits, seed=seed).to(device)
            encode_s = time.perf_counter() - t0
            bytes_per_token = store.bytes_per_token
        t0 = time.perf_counter()
        scores = _score_all(Q, q_mask, store)
        score_ms = 1000 * (time.perf_counter() - t0) / max(len(queries.qids), 1)
        top = _top(scores, 100)
        run = {q: [queries.pids[d] for d in row] for q, row in zip(queries.qids, top)}
        row = {"bytes_per_token": bytes_per_token, "quality": _quality(run, queries.qrels), "score_ms": score_ms}
        if name == "fp16":
            fp16_top10 = [set(t[:10]) for t in top]
        else:
            row["top10_overlap"] = sum(len(set(t[:10]) & f) / 10 for t, f in zip(top, fp16_top10)) / len(top)
            row["encode_seconds"] = encode_s
            row["nbits"] = store.nbits
        if getattr(store, "codec", None) == "residual":
            row["centroid_engine"] = _engine_row(store, Q, q_mask, queries, top)
        out[name] = row
        q = row["quality"]
        say(
            f"store {name:<9} {bytes_per_token:>5g} B/token  nDCG@10 {q['nDCG@10']:.4f}  MRR@10 {q['MRR@10']:.4f}"
            + (f"  top-10 overlap with fp16 {row['top10_overlap']:.3f}" if "top10_overlap" in row else "")
        )
        if "centroid_engine" in row:
            e = row["centroid_engine"]
            say(
                f"  centroid engine (the default search of such an index): nDCG@10 {e['quality']['nDCG@10']:.4f}  "
                f"recall@10 vs this store's exhaustive {e['recall@10']:.3f}  {e['ms_per_query']:.1f} ms/query "
                f"(exhaustive, batched {score_ms:.1f})  certified {e['certified']:.2f}  cells {e['cells_scored']:.3f}"
            )
    return out


def _engine_row(store, Q, q_mask, queries: _Queries, exhaustive_top, k: int = 100) -> dict:
    """The centroid engine (the default search of an index without IVF) over a residual store at the
    Searcher's default budget, beside exhaustive scoring of the same store: quality, recall@10 of the
    store's exhaustive top 10, latency one query at a time, certified fraction and cells scored."""
    from .engine import CentroidEngine, SearchStats, build_engine
    from .search import centroid_budget

    engine = CentroidEngine(store, build_engine(store))
    nprobe, ncand = centroid_budget(k, engine.num_docs, engine.num_centroids)
    Q, q_mask = Q.to(store.device), q_mask.to(store.device)
    tops, stats = [], []
    t0 = time.perf_counter()
    for b in range(Q.shape[0]):
        _, rows, st = engine.search(Q[b : b + 1], q_mask[b : b + 1], k, nprobe, ncand)
        tops.append([int(r) for r in rows[0].tolist() if r >= 0])
        stats.append(st)
    ms = 1000 * (time.perf_counter() - t0) / max(Q.shape[0], 1)
    run = {q: [queries.pids[d] for d in row] for q, row in zip(queries.qids, tops)}
    truth = {q: [queries.pids[d] for d in row] for q, row in zip(queries.qids, exhaustive_top)}
    summary = SearchStats.cat(stats).summary()
    return {
        "nprobe": nprobe,
        "ncandidates": ncand,
        "quality": _quality(run, queries.qrels),
        "recall@10": recall_against(run, truth, (10,))["10"],
        "ms_per_query": ms,
        "certified": summary["certified"],
        "cells_scored": summary["cells_scored"],
    }


@torch.inference_mode()
def _score_all(Q, q_mask, store, pairs_per_call: int = 1 << 16) -> torch.Tensor:
    """fp32 [B, N]: every query against every doc of `store`, in chunks of docs."""
    B, n = Q.shape[0], store.num_docs
    step = max(1, pairs_per_call // B)
    Q, q_mask = Q.to(store.device), q_mask.to(store.device)
    cols = []
    for s in range(0, n, step):
        rows = torch.arange(s, min(n, s + step), device=store.device).expand(B, -1).contiguous()
        cols.append(cf.maxsim_packed(Q, store, rows, q_mask).cpu())
    return torch.cat(cols, dim=1)


def _index_step(dataset, workdir: Path, encoder, checkpoint, config: ExperimentConfig, progress, say):
    """Step 1: index the collection; the Index and its facts (throughput, size on disk, faiss layout)."""
    collection = dataset.write_collection(workdir / "collection.tsv")
    t0 = time.perf_counter()
    index = build_index(
        collection,
        workdir / "index",
        encoder,
        IndexConfig(
            partitions=config.partitions,
            codec=config.codec,
            batch_size=config.batch_size,
            store="fp16",  # the paper's store; the compressed ones are compared against it (--stores)
            ivf=True,  # the paper's candidates: faiss IVFPQ over every token
        ),
        checkpoint=checkpoint,
        resume=False,
        progress=progress,
    )
    build_s = time.perf_counter() - t0
    stats, files = index.manifest["stats"], index.manifest["files"]
    info = {
        "seconds": build_s,
        "docs_per_s": stats["num_docs"] / build_s,
        "tokens_per_s": stats["num_tokens"] / build_s,
        "num_docs": stats["num_docs"],
        "num_tokens": stats["num_tokens"],
        "dim": stats["dim"],
        "bytes": {key: f["bytes"] for key, f in files.items()},
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "ivf": index.manifest["ivf"],
    }
    say(
        f"indexed in {build_s:.1f} s ({info['docs_per_s']:.1f} docs/s, {info['tokens_per_s']:.0f} tokens/s), "
        f"{info['total_bytes'] / 2**20:.1f} MiB on disk, {info['ivf']['codec']} IVF "
        f"with {info['ivf']['partitions']} partitions"
    )
    return index, info


def _bm25_system(dataset: Dataset, queries: _Queries, k: int):
    """Step 2a: BM25, one query at a time. Returns (its results, its run, its top k rows per qid)."""
    bm25 = BM25(dataset.texts)
    timer, top = StageTimer(("candidates",)), {}
    for q, text in zip(queries.qids, queries.texts):
        with timer.stage("candidates"):
            top[q] = [row for row, _ in bm25.search([text], k)[0]]
    run = {q: [queries.pids[row] for row in rows] for q, rows in top.items()}
    system = {"quality": _quality(run, queries.qrels), "latency_ms": timer.per_query_ms(len(queries.qids))}
    return system, run, top


def _single_vector_system(dataset: Dataset, queries: _Queries, encoder, config: ExperimentConfig, device):
    """Step 2b: mean-pooled single vectors (docs encoded up front, like an index), exact dot product."""
    t0 = time.perf_counter()
    doc_vecs = mean_pooled(encoder, dataset.texts, config.single_maxlen, config.batch_size).to(device)
    build_s = time.perf_counter() - t0
    timer, run = StageTimer(("tokenize", "encode", "score", "topk"), device), {}
    with torch.inference_mode():
        for q, text in zip(queries.qids, queries.texts):
            timer.add("tokenize", _time_tokenize(encoder, text))  # measured apart, as for ColBERT
            with timer.stage("encode"):
                qv = mean_pooled(encoder, [text], config.single_maxlen).to(device)
            with timer.stage("score"):
                scores = doc_vecs @ qv[0]
            with timer.stage("topk"):
                top = torch.topk(scores, min(config.k, len(queries.pids))).indices.tolist()
            run[q] = [queries.pids[row] for row in top]
    lat = timer.per_query_ms(len(queries.qids))
    lat["encode"] = max(0.0, lat["encode"] - lat["tokenize"])  # its encode included tokenizing
    lat["total"] = sum(v for s, v in lat.items() if s != "total")
    system = {
        "quality": _quality(run, queries.qrels),
        "latency_ms": lat,
        "build_seconds": build_s,
        "maxlen": config.single_maxlen,
    }
    return system, run


def _colbert_system(searcher, queries: _Queries, k: int, rerank_from=None, bm25_ms=None):
    """Steps 2c/2d: one query at a time (per-query latency); tokenize is timed apart and taken out of encode."""
    searcher.reset_timings()
    tokenize_s, run = 0.0, {}
    for q, text in zip(queries.qids, queries.texts):
        tokenize_s += _time_tokenize(searcher.encoder, text)
        if rerank_from is None:
            ranking = searcher.search([text], k=k, batch_size=1)[0]
        else:
            ranking = searcher.rerank([text], [[queries.pids[row] for row in rerank_from[q]]], k=k)[0]
        run[q] = [pid for pid, _ in ranking]
    n = len(queries.qids)
    lat = {"tokenize": 1000 * tokenize_s / n, "encode": max(0.0, 1000 * (searcher.timings["encode"] - tokenize_s) / n)}
    if rerank_from is not None:
        lat["candidates"] = bm25_ms["latency_ms"]["candidates"]  # BM25 supplies the candidates
    else:
        lat["candidates"] = 1000 * searcher.timings["candidates"] / n
    lat["score"] = 1000 * searcher.timings["score"] / n
    lat["topk"] = 1000 * searcher.timings["topk"] / n
    lat["total"] = sum(lat.values())
    # What the search scored: the whole collection when the candidate budget covers it (search.py).
    scored = searcher.docs_scored / max(n, 1)
    return {"quality": _quality(run, queries.qrels), "latency_ms": lat, "docs_scored_per_query": scored}, run


def _exactness_step(index, encoder, queries: _Queries, k: int, device, e2e: dict, e2e_run: dict, say):
    """Step 4: exhaustive search against the reference over the whole collection, and the e2e
    system's recall against exhaustive search (added to `e2e`). Returns (exactness, reference run)."""
    ex = check_exhaustive(index, encoder, queries.qids, queries.texts, queries.qrels, queries.pids, k, device)
    e2e["recall_vs_exhaustive"] = recall_against(e2e_run, ex.pop("run_exhaustive"), (10, k))
    say(
        f"exhaustive search vs reference MaxSim: {ex['identical_top_k']} of {len(queries.qids)} top-{k} lists "
        f"identical, max |score diff| {ex['max_abs_score_diff']:.2e}, quality equal: {ex['quality_equal']}; "
        f"e2e recall vs exhaustive: " + ", ".join(f"@{c} {v:.4f}" for c, v in e2e["recall_vs_exhaustive"].items())
    )
    return ex, ex.pop("run_reference")


def write_runs(runs: dict[str, dict[str, list[str]]], directory: str | os.PathLike) -> None:
    """One run file per system ('qid pid rank score', score = -rank): metrics can be recomputed later."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
        tsv.write_run(
            directory / f"{slug}.tsv", [(q, [(p, -float(r)) for r, p in enumerate(pids, 1)]) for q, pids in run.items()]
        )


def check_exhaustive(index, encoder, qids, queries, qrels, pid_of, k, device) -> dict:
    """Exhaustive search (every doc scored by the packed kernel) against the reference oracle.

    The ranking must be exact MaxSim's: the scores agree within the tolerance rule and the order
    agrees except among docs whose reference scores are tied within that tolerance.
    """
    ex = Searcher(index, encoder, device=device, mode="exhaustive", load_ivf=False)
    rankings = [ex.search([t], k=len(pid_of), batch_size=1)[0] for t in queries]
    Q, q_mask = encoder.encode_queries(queries)
    ref = exact_maxsim_scores(Q, q_mask, index.docs)
    # The fp16 floor per query token of docs/spec.md's tolerance rule: both sides read the same
    # fp16 vectors and sum in fp32, so only the summation order differs (observed differences are
    # far below it).
    tol = reference.TOLERANCE_FLOOR[torch.float16] * Q.shape[1]
    row = {p: i for i, p in enumerate(pid_of)}
    max_diff, complete, tie_only = 0.0, True, True
    run_e2e, run_ref = {}, {}
    ref_top = _top(ref, k)
    for b, (q, ranking) in enumerate(zip(qids, rankings)):
        complete &= len(ranking) == len(pid_of)
        got = torch.tensor([row[p] for p, _ in ranking], dtype=torch.int64)
        got_scores = torch.tensor([s for _, s in ranking], dtype=torch.float32)
        max_diff = max(max_diff, (got_scores - ref[b, got]).abs().max().item())
        run_e2e[q] = [p for p, _ in ranking[:k]]
        run_ref[q] = [pid_of[d] for d in ref_top[b]]
        if run_e2e[q] != run_ref[q]:
            # Allowed only where the reference scores of the swapped docs are tied (within 2x the
            # largest score difference seen): then either order is exact MaxSim's.
            r = ref[b, got[:k]]
            tie_only &= bool((r[1:] - r[:-1] <= 2 * max_diff + 1e-6).all())
    q_e2e, q_ref = _quality(run_e2e, qrels), _quality(run_ref, qrels)
    return {
        "mode": "exhaustive",
        "every_doc_ranked": bool(complete),
        "max_abs_score_diff": max_diff,
        "score_tolerance": tol,
        "scores_within_tolerance": max_diff <= tol,
        "identical_top_k": sum(run_e2e[q] == run_ref[q] for q in qids),
        "differences_are_ties_only": tie_only,
        "quality_e2e_exhaustive": q_e2e,
        "quality_reference": q_ref,
        "quality_equal": all(math.isclose(q_e2e[m], q_ref[m], abs_tol=1e-12) for m in METRICS),
        "run_reference": run_ref,
        "run_exhaustive": run_e2e,
    }


# ---- ablation: what ColBERT's choices do with a model ------------------------------------------------

VARIANTS = {
    "plain": {},
    "+markers": {"query_marker": "[unused0]", "doc_marker": "[unused1]"},
    "+[MASK] augmentation": {"query_expansion": True},
    "+skiplist": {"mask_punctuation": True},
    "all three (ColBERT)": {
        "query_marker": "[unused0]",
        "doc_marker": "[unused1]",
        "query_expansion": True,
        "mask_punctuation": True,
    },
}


def ablation(
    dataset: Dataset,
    load: Callable[..., object],
    variants: dict[str, dict] | None = None,
    *,
    k: int = 100,
    batch_size: int = 64,
    progress: bool = True,
    say: Callable[[str], None] = print,
    runs_dir: str | os.PathLike | None = None,
) -> dict:
    """Exact MaxSim over the whole collection and re-ranking of BM25's top k, per encoder variant.

    load(**overrides) returns the encoder for a variant (e.g. embedded.load_embedded). Doc vectors
    are encoded once per distinct doc-side setting and scored with cf.maxsim_packed (fp16 store,
    as the index keeps it).
    """
    variants = variants or VARIANTS
    queries = _Queries.of(dataset)
    bm25_top = [[row for row, _ in r] for r in BM25(dataset.texts).search(queries.texts, k)]
    cand, _ = pad_ids(bm25_top)
    stores: dict[str, object] = {}
    out = {}
    for name, overrides in variants.items():
        enc = load(**overrides)
        doc_side = json.dumps({f: enc.config.to_dict()[f] for f in ("doc_marker", "mask_punctuation", "doc_maxlen")})
        if doc_side not in stores:
            stores[doc_side] = _encode_variant(enc, dataset.texts, batch_size, name if progress else None)
        docs = stores[doc_side]
        Q, q_mask = enc.encode_queries(queries.texts)
        every_row = torch.arange(docs.num_docs).expand(len(queries.texts), -1).contiguous()
        full = cf.maxsim_packed(Q, docs, every_row, q_mask)
        run_full = {q: [dataset.pids[row] for row in top] for q, top in zip(queries.qids, _top(full, k))}
        rr = cf.maxsim_packed(Q, docs, cand, q_mask)
        order = torch.sort(rr, dim=1, descending=True, stable=True).indices
        run_rr = {
            q: [dataset.pids[int(cand[i, j])] for j in order[i].tolist() if cand[i, j] >= 0]
            for i, q in enumerate(queries.qids)
        }
        if runs_dir is not None:
            write_runs({f"{name} MaxSim": run_full, f"{name} rerank": run_rr}, runs_dir)
        out[name] = {
            "overrides": overrides,
            "MaxSim (all docs)": _quality(run_full, queries.qrels),
            f"rerank BM25 top {k}": _quality(run_rr, queries.qrels),
        }
        say(
            f"{name:<22} MaxSim nDCG@10 {out[name]['MaxSim (all docs)']['nDCG@10']:.4f}  "
            f"rerank nDCG@10 {out[name][f'rerank BM25 top {k}']['nDCG@10']:.4f}"
        )
    return out


def _encode_variant(encoder, texts: Sequence[str], batch_size: int, bar_name: str | None):
    """The fp16 store of one doc-side setting (a progress bar named after the variant, or none)."""
    if bar_name is None:
        return encode_docs(encoder, texts, batch_size)
    from tqdm import tqdm

    with tqdm(total=len(texts), unit="doc", desc=f"encoding ({bar_name})", dynamic_ncols=True) as bar:
        return encode_docs(encoder, texts, batch_size, bar)
