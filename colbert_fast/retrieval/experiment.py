"""The paper's evaluation protocol on one collection: four systems, quality and per-stage latency.

    1. index the collection (packed store + faiss), timing it (throughput) and sizing it on disk;
    2. for every query, one at a time (per-query latency, as in the paper):
         BM25           bm25s, English stopwords                                   (lexical baseline)
         single-vector  the same model's mean-pooled, normalized embedding; exact dot product
         ColBERT rerank MaxSim over BM25's top k (paper 3.5)
         ColBERT e2e    faiss candidates + MaxSim over their docs (paper 3.6, the "accurate" budget)
    3. MRR@10, nDCG@10, Recall@10/100 per system (colbert_fast.evaluate), latency per stage
       (tokenize, encode, candidate generation, gather+score, top-k) in ms per query;
    4. exactness: exhaustive search (every doc scored by the packed kernel) must rank exactly as the
       reference MaxSim (colbert_fast.reference over the stored vectors) and give the same quality
       numbers; the e2e system's recall@10/@100 against it is reported.

Results: a dict (written as JSON), a terminal table, and a PNG of quality vs latency.
`ablation()` runs exact MaxSim and re-ranking for encoder variants (markers, [MASK] augmentation,
skiplist) without faiss, to show what ColBERT's choices do with a given model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from . import backends, reference
from . import evaluate as ev
from .datasets import Dataset

__all__ = ["ExperimentConfig", "ablation", "format_table", "plot", "run_experiment", "exact_maxsim_scores"]

log = logging.getLogger(__name__)

SYSTEMS = ("BM25", "single-vector", "ColBERT rerank", "ColBERT e2e")
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

    def __post_init__(self) -> None:
        if self.k < 10:
            raise ValueError(f"k must be >= 10 (MRR@10, nDCG@10), got {self.k}")


# ---- small pieces ------------------------------------------------------------------------------------


class _Clock:
    """Accumulates seconds per stage."""

    def __init__(self, stages: Sequence[str]):
        self.seconds = {s: 0.0 for s in stages}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def per_query_ms(self, n: int) -> dict[str, float]:
        out = {s: 1000.0 * v / max(n, 1) for s, v in self.seconds.items()}
        out["total"] = sum(out.values())
        return out


def _time_tokenize(encoder, query: str) -> float:
    """Seconds to tokenize one query (the encode stage includes it; it is reported apart)."""
    t0 = time.perf_counter()
    encoder.tokenize_queries([query])
    return time.perf_counter() - t0


def _quality(run: dict[str, list[str]], qrels: dict) -> dict[str, float]:
    out = ev.evaluate(run, qrels, recall_ks=(10, 100))
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
    """Reference MaxSim of every query against every doc of a PackedDocs: fp32 [B, N].

    colbert_fast.reference over the stored vectors (its gather, then its all-pairs maxsim), docs in
    chunks so the [B, n, Lq, Ld] similarity tensor stays small.
    """
    docs = docs.to("cpu")
    Q, q_mask = Q.cpu(), q_mask.cpu()
    out = []
    for s in range(0, docs.num_docs, chunk):
        pids = torch.arange(s, min(docs.num_docs, s + chunk))
        D, d_mask = reference.gather(docs.embeddings, docs.offsets, docs.lengths, pids)
        out.append(
            torch.cat([reference.maxsim(Q[b : b + 8], D, q_mask[b : b + 8], d_mask) for b in range(0, len(Q), 8)])
        )
    return torch.cat(out, dim=1)


def _top(scores: torch.Tensor, k: int) -> list[list[int]]:
    """Top-k doc numbers per row, ties broken by doc number (a stable, documented order)."""
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
    records as the model (a directory, or model.EMBEDDED). runs_dir: write each system's run there.
    """
    from .bm25 import BM25
    from .index import IndexConfig, build_index
    from .model import EMBEDDED, load_encoder
    from .search import Searcher

    config = config or ExperimentConfig()
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if encoder is None:
        encoder = load_encoder(None, device=device)
        checkpoint = EMBEDDED
    encoder = encoder.to(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    qids = dataset.judged_qids()
    qtext = dict(zip(dataset.qids, dataset.queries))
    queries = [qtext[q] for q in qids]
    qrels = {q: dataset.qrels[q] for q in qids}
    k = config.k
    say(f"{dataset.name}: {len(dataset.pids)} docs, {len(qids)} judged queries, device {device}")

    # 1. Index.
    collection = dataset.write_collection(workdir / "collection.tsv")
    t0 = time.perf_counter()
    index = build_index(
        collection,
        workdir / "index",
        encoder,
        IndexConfig(partitions=config.partitions, codec=config.codec, batch_size=config.batch_size),
        checkpoint=checkpoint,
        resume=False,
        progress=progress,
    )
    build_s = time.perf_counter() - t0
    stats = index.manifest["stats"]
    index_info = {
        "seconds": build_s,
        "docs_per_s": stats["num_docs"] / build_s,
        "tokens_per_s": stats["num_tokens"] / build_s,
        "num_docs": stats["num_docs"],
        "num_tokens": stats["num_tokens"],
        "dim": stats["dim"],
        "bytes": {key: f["bytes"] for key, f in index.manifest["files"].items()},
        "total_bytes": sum(f["bytes"] for f in index.manifest["files"].values()),
        "ivf": index.manifest["ivf"],
    }
    say(
        f"indexed in {build_s:.1f} s ({index_info['docs_per_s']:.1f} docs/s, "
        f"{index_info['tokens_per_s']:.0f} tokens/s), "
        f"{index_info['total_bytes'] / 2**20:.1f} MiB on disk, {index_info['ivf']['codec']} IVF "
        f"with {index_info['ivf']['partitions']} partitions"
    )
    results: dict = {
        "dataset": dataset.name,
        "model": {"checkpoint": checkpoint, "config": encoder.config.to_dict()},
        "protocol": dataclasses.asdict(config) | {"device": str(device)},
        "index": index_info,
        "systems": {},
    }
    pid_of = dataset.pids

    # 2a. BM25.
    bm25 = BM25(dataset.texts)
    clock, bm25_top = _Clock(("candidates",)), {}
    for q, text in zip(qids, queries):
        t0 = time.perf_counter()
        bm25_top[q] = [d for d, _ in bm25.search([text], k)[0]]
        clock.add("candidates", time.perf_counter() - t0)
    run = {q: [pid_of[d] for d in ds] for q, ds in bm25_top.items()}
    runs = {"BM25": run}
    results["systems"]["BM25"] = {"quality": _quality(run, qrels), "latency_ms": clock.per_query_ms(len(qids))}

    # 2b. Single vector, mean-pooled (docs encoded up front, like an index).
    say(f"single-vector baseline: encoding {len(dataset.texts)} docs (mean-pooled, maxlen {config.single_maxlen})")
    t0 = time.perf_counter()
    doc_vecs = mean_pooled(encoder, dataset.texts, config.single_maxlen, config.batch_size).to(device)
    single_build_s = time.perf_counter() - t0
    clock, run = _Clock(STAGES[:2] + STAGES[3:]), {}
    with torch.inference_mode():
        for q, text in zip(qids, queries):
            clock.add("tokenize", _time_tokenize(encoder, text))  # measured apart, as for ColBERT
            t0 = time.perf_counter()
            qv = mean_pooled(encoder, [text], config.single_maxlen).to(device)
            t1 = time.perf_counter()
            scores = doc_vecs @ qv[0]
            _sync(device)
            t2 = time.perf_counter()
            top = torch.topk(scores, min(k, len(pid_of))).indices.tolist()
            t3 = time.perf_counter()
            clock.add("encode", t1 - t0)
            clock.add("score", t2 - t1)
            clock.add("topk", t3 - t2)
            run[q] = [pid_of[d] for d in top]
    lat = clock.per_query_ms(len(qids))
    lat["encode"] = max(0.0, lat["encode"] - lat["tokenize"])  # its encode included tokenizing
    runs["single-vector"] = run
    results["systems"]["single-vector"] = {
        "quality": _quality(run, qrels),
        "latency_ms": lat,
        "build_seconds": single_build_s,
        "maxlen": config.single_maxlen,
    }

    # 2c/2d. ColBERT: re-rank BM25's top k, and end to end.
    searcher = Searcher(
        index, encoder, device=device, nprobe=config.nprobe, neighbors_per_token=config.neighbors_per_token
    )
    results["scoring_backend"] = backends.select(searcher.backend, searcher.docs.device).__name__.rsplit(".", 1)[-1]
    results["systems"]["ColBERT rerank"], runs["ColBERT rerank"] = _colbert_system(
        searcher, qids, queries, qrels, pid_of, k, rerank_from=bm25_top, bm25_ms=results["systems"]["BM25"]
    )
    results["systems"]["ColBERT e2e"], runs["ColBERT e2e"] = _colbert_system(searcher, qids, queries, qrels, pid_of, k)
    nprobe, neighbors = searcher.budget(k)
    results["systems"]["ColBERT e2e"]["nprobe"] = nprobe
    results["systems"]["ColBERT e2e"]["neighbors_per_token"] = neighbors

    # 3. Exactness: exhaustive search against the reference over the whole collection, and the
    #    e2e system's recall against exhaustive search.
    if config.exhaustive:
        results["exactness"] = check_exhaustive(index, encoder, qids, queries, qrels, pid_of, k, device)
        ex = results["exactness"]
        e2e = results["systems"]["ColBERT e2e"]
        e2e["recall_vs_exhaustive"] = recall_against(runs["ColBERT e2e"], ex["run_exhaustive"], (10, k))
        say(
            f"exhaustive search vs reference MaxSim: {ex['identical_top_k']} of {len(qids)} top-{k} lists identical, "
            f"max |score diff| {ex['max_abs_score_diff']:.2e}, quality equal: {ex['quality_equal']}; "
            f"e2e recall vs exhaustive: " + ", ".join(f"@{c} {v:.4f}" for c, v in e2e["recall_vs_exhaustive"].items())
        )
        ex.pop("run_exhaustive")
        runs["exact MaxSim (reference)"] = results["exactness"].pop("run_reference")
    if runs_dir is not None:
        write_runs(runs, runs_dir)
    return results


def write_runs(runs: dict[str, dict[str, list[str]]], directory: str | os.PathLike) -> None:
    """One run file per system ('qid pid rank score', score = -rank): metrics can be recomputed later."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
        ev.write_run(
            directory / f"{slug}.tsv", [(q, [(p, -float(r)) for r, p in enumerate(pids, 1)]) for q, pids in run.items()]
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _colbert_system(searcher, qids, queries, qrels, pid_of, k, rerank_from=None, bm25_ms=None) -> dict:
    """Run one query at a time (per-query latency); tokenize is timed apart and taken out of encode."""
    searcher.reset_timings()
    tokenize_s, run = 0.0, {}
    for q, text in zip(qids, queries):
        tokenize_s += _time_tokenize(searcher.encoder, text)
        if rerank_from is None:
            ranking = searcher.search([text], k=k, batch_size=1)[0]
        else:
            ranking = searcher.rerank([text], [[pid_of[d] for d in rerank_from[q]]], k=k)[0]
        run[q] = [pid for pid, _ in ranking]
    n = len(qids)
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
    return {"quality": _quality(run, qrels), "latency_ms": lat, "docs_scored_per_query": scored}, run


def recall_against(run: dict[str, list[str]], truth: dict[str, list[str]], cutoffs) -> dict[str, float]:
    """Mean fraction of each query's top-c in `truth` that `run` has in its top-c, per cutoff c."""
    out = {}
    for c in sorted(set(cutoffs)):
        fractions = [len(set(run.get(q, [])[:c]) & set(t[:c])) / len(t[:c]) for q, t in truth.items() if t]
        out[str(c)] = sum(fractions) / max(len(fractions), 1)
    return out


def check_exhaustive(index, encoder, qids, queries, qrels, pid_of, k, device) -> dict:
    """Exhaustive search (every doc scored by the packed kernel) against the reference oracle.

    The ranking must be exact MaxSim's: the scores agree within the tolerance rule and the order
    agrees except among docs whose reference scores are tied within that tolerance.
    """
    from .search import Searcher

    ex = Searcher(index, encoder, device=device, mode="exhaustive", load_ivf=False)
    rankings = [ex.search([t], k=len(pid_of), batch_size=1)[0] for t in queries]
    Q, q_mask = encoder.encode_queries(queries)
    ref = exact_maxsim_scores(Q, q_mask, index.docs)
    # The SPEC's fp16 floor per query token: both sides read the same fp16 vectors and sum in
    # fp32, so only the summation order differs (observed differences are far below it).
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

    load(**overrides) returns the encoder for a variant (e.g. model.load_embedded). Doc vectors
    are encoded once per distinct doc-side setting and scored with cf.maxsim_packed (fp16 store,
    as the index keeps it).
    """
    from . import ops
    from .bm25 import BM25
    from .index import _encode_chunk

    variants = variants or VARIANTS
    qids = dataset.judged_qids()
    qtext = dict(zip(dataset.qids, dataset.queries))
    queries = [qtext[q] for q in qids]
    qrels = {q: dataset.qrels[q] for q in qids}
    bm25_top = [[d for d, _ in r] for r in BM25(dataset.texts).search(queries, k)]
    width = max(len(r) for r in bm25_top)
    cand = torch.full((len(queries), width), -1, dtype=torch.int64)
    for i, r in enumerate(bm25_top):
        cand[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    stores: dict[str, object] = {}
    out = {}
    for name, overrides in variants.items():
        enc = load(**overrides)
        doc_side = json.dumps({f: enc.config.to_dict()[f] for f in ("doc_marker", "mask_punctuation", "doc_maxlen")})
        if doc_side not in stores:
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(dataset.texts), unit="doc", desc=f"encoding ({name})", dynamic_ncols=True)
            stores[doc_side] = _encode_chunk(enc, dataset.texts, batch_size, bar)
            if bar is not None:
                bar.close()
        docs = stores[doc_side]
        Q, q_mask = enc.encode_queries(queries)
        all_pids = torch.arange(docs.num_docs).expand(len(queries), -1).contiguous()
        full = ops.maxsim_packed(Q, docs, all_pids, q_mask)
        run_full = {q: [dataset.pids[d] for d in row] for q, row in zip(qids, _top(full, k))}
        rr = ops.maxsim_packed(Q, docs, cand, q_mask)
        order = torch.sort(rr, dim=1, descending=True, stable=True).indices
        run_rr = {
            q: [dataset.pids[int(cand[i, j])] for j in order[i].tolist() if cand[i, j] >= 0] for i, q in enumerate(qids)
        }
        if runs_dir is not None:
            write_runs({f"{name} MaxSim": run_full, f"{name} rerank": run_rr}, runs_dir)
        out[name] = {
            "overrides": overrides,
            "MaxSim (all docs)": _quality(run_full, qrels),
            f"rerank BM25 top {k}": _quality(run_rr, qrels),
        }
        say(
            f"{name:<22} MaxSim nDCG@10 {out[name]['MaxSim (all docs)']['nDCG@10']:.4f}  "
            f"rerank nDCG@10 {out[name][f'rerank BM25 top {k}']['nDCG@10']:.4f}"
        )
    return out


# ---- output ------------------------------------------------------------------------------------------


def format_table(results: dict) -> str:
    """The terminal table: quality and per-query latency per system, then index facts."""
    head = f"{'system':<16}" + "".join(f"{m:>11}" for m in METRICS) + "  |" + "".join(f"{s:>11}" for s in STAGES)
    head += f"{'total ms':>11}"
    lines = [
        f"{results['dataset']}: quality over {_nq(results)} queries; latency in ms per query",
        head,
        "-" * len(head),
    ]
    for name, sys_ in results["systems"].items():
        q, lat = sys_["quality"], sys_["latency_ms"]
        cells = "".join(f"{q[m]:>11.4f}" for m in METRICS) + "  |"
        cells += "".join(f"{lat[s]:>11.3f}" if s in lat else f"{'-':>11}" for s in STAGES)
        lines.append(f"{name:<16}{cells}{lat['total']:>11.3f}")
    ix = results["index"]
    lines.append(
        f"index: {ix['num_docs']} docs, {ix['num_tokens']} vectors x {ix['dim']}, built in {ix['seconds']:.1f} s "
        f"({ix['docs_per_s']:.1f} docs/s), {ix['total_bytes'] / 2**20:.2f} MiB on disk "
        f"(store {ix['bytes']['docs'] / 2**20:.2f}, faiss {ix['bytes']['ivf'] / 2**20:.2f}); "
        f"{ix['ivf']['codec']} IVF, {ix['ivf']['partitions']} partitions"
    )
    e2e = results["systems"].get("ColBERT e2e", {})
    if "nprobe" in e2e:
        recall = e2e.get("recall_vs_exhaustive", {})
        lines.append(
            f"ColBERT e2e: nprobe {e2e['nprobe']}, k' {e2e['neighbors_per_token']}"
            + "".join(f", recall@{c} vs exhaustive {v:.4f}" for c, v in recall.items())
        )
    ex = results.get("exactness")
    if ex:
        lines.append(
            "exhaustive search vs reference MaxSim: "
            f"nDCG@10 {ex['quality_e2e_exhaustive']['nDCG@10']:.4f} vs {ex['quality_reference']['nDCG@10']:.4f}, "
            f"equal: {ex['quality_equal']}, identical top-k lists: {ex['identical_top_k']}/{_nq(results)}, "
            f"max |score diff| {ex['max_abs_score_diff']:.1e}"
        )
    return "\n".join(lines)


def format_ablation(abl: dict) -> str:
    cols = list(next(iter(abl.values())).keys())[1:]
    head = f"{'variant':<22}" + "".join(f"{c + ' ' + m:>34}" for c in cols for m in ("nDCG@10", "MRR@10"))
    lines = [head, "-" * len(head)]
    for name, row in abl.items():
        lines.append(f"{name:<22}" + "".join(f"{row[c][m]:>34.4f}" for c in cols for m in ("nDCG@10", "MRR@10")))
    return "\n".join(lines)


def _nq(results: dict) -> int:
    return next(iter(results["systems"].values()))["quality"]["queries"]


def plot(results: dict, path: str | os.PathLike) -> Path:
    """PNG: nDCG@10 and MRR@10 against per-query latency, one point per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, sys_ in results["systems"].items():
        x = sys_["latency_ms"]["total"]
        for metric, marker in (("nDCG@10", "o"), ("MRR@10", "s")):
            ax.scatter([x], [sys_["quality"][metric]], marker=marker, color=_color(name))
        ax.annotate(name, (x, sys_["quality"]["nDCG@10"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per query, ms (log scale)")
    ax.set_ylabel("quality (o nDCG@10, s MRR@10)")
    ax.set_title(f"{results['dataset']}: quality vs latency ({results['protocol']['device']})")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _color(name: str) -> str:
    return {"BM25": "tab:gray", "single-vector": "tab:orange", "ColBERT rerank": "tab:blue"}.get(name, "tab:green")
