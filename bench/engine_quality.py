"""The centroid engine, measured: recall against exhaustive MaxSim, latency, certificates, cells scored.

    python bench/engine_quality.py [--out bench/results/engine] [--e1-docs 10000] [--threads 1]

Two collections, each indexed with a residual 2-bit store and no faiss IVF
(IndexConfig(store="residual", store_nbits=2, ivf=False)):
    Cranfield   1,400 abstracts, 225 judged queries, embedded all-MiniLM-L6-v2 (384-d), text index
    E1 10k      the synthetic clustered collection (colbert_fast.testing.clustered_collection),
                128-d, indexed from its embeddings, 64 queries of 32 tokens
The ground truth is exhaustive MaxSim over the same store (Searcher mode "exhaustive"). Each
setting (nprobe centroids per query token, ncandidates docs scored exactly) is searched one query
at a time by its embeddings (no encoding) with mode "centroid", for k = 10 and k = 100: recall@k,
p50/p95 latency, the fraction of queries certified, and the mean fraction of (doc, query token)
cells scored. exact=True rows add whether every answer equals exhaustive scoring's. A diagnosis
per collection gives the median k-th exact score and the median largest bound of a doc left
unscored (the certificate needs the first above the second).
Writes results.json and results.md with the machine's load average before and after and the git sha.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

NPROBES = (4, 16, 64)
NCANDIDATES = (64, 256, 1024)
KS = (10, 100)
CONFIG = dict(store="residual", store_nbits=2, ivf=False)
TARGETS = "certified >= 90% of queries while scoring <= 25% of the cells; recall@10 >= 0.95"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cranfield(workdir: Path):
    from colbert_fast.retrieval.build import IndexConfig, build_index
    from colbert_fast.retrieval.datasets import load_cranfield
    from colbert_fast.retrieval.embedded import EMBEDDED, load_embedded

    data = load_cranfield(None)
    encoder = load_embedded()
    index_dir = workdir / "cranfield_residual2"
    if not (index_dir / "manifest.json").exists():
        t0 = time.perf_counter()
        collection = data.write_collection(workdir / "cranfield.tsv")
        build_index(collection, index_dir, encoder, IndexConfig(**CONFIG), checkpoint=EMBEDDED, progress=False)
        print(f"built {index_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    qtext = dict(zip(data.qids, data.queries))
    Q, q_mask = encoder.encode_queries([qtext[q] for q in data.judged_qids()])
    return index_dir, Q, q_mask


def e1(workdir: Path, num_docs: int):
    from colbert_fast.retrieval.build import IndexConfig, build_index_from_embeddings
    from colbert_fast.testing import clustered_collection

    docs, Q, _ = clustered_collection(num_docs, num_queries=64)
    index_dir = workdir / f"e1_{num_docs}_residual2"
    if not (index_dir / "manifest.json").exists():
        t0 = time.perf_counter()
        build_index_from_embeddings(docs, index_dir, IndexConfig(**CONFIG))
        print(f"built {index_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    return index_dir, Q, torch.ones(Q.shape[:2], dtype=torch.bool)


def ground_truth(searcher, Q, q_mask) -> list[list[str]]:
    """Exhaustive top max(KS) pids per query, best first."""
    out = []
    for s in range(0, Q.shape[0], 16):
        out += [[p for p, _ in r] for r in searcher.search(Q[s : s + 16], q_mask=q_mask[s : s + 16], k=max(KS),
                                                           mode="exhaustive")]  # fmt: skip
    return out


def measure(searcher, Q, q_mask, k: int, truth: list[list[str]], **settings) -> dict:
    """One query at a time: recall@k, latency, certified fraction, cells scored, equality with truth."""
    recalls, times, certified, cells, equal = [], [], [], [], []
    for b in range(Q.shape[0]):
        t0 = time.perf_counter()
        ranking = searcher.search(Q[b : b + 1], q_mask=q_mask[b : b + 1], k=k, mode="centroid", **settings)[0]
        times.append(time.perf_counter() - t0)
        want = truth[b][:k]
        got = [p for p, _ in ranking]
        recalls.append(len(set(got) & set(want)) / len(want))
        equal.append(got == want)
        certified.append(ranking.certified)
        cells.append(ranking.cells_scored)
    times.sort()
    return {
        "recall": statistics.fmean(recalls),
        "min_recall": min(recalls),
        "p50_ms": 1000 * statistics.median(times),
        "p95_ms": 1000 * times[min(len(times) - 1, int(0.95 * len(times)))],
        "certified": statistics.fmean(certified),
        "cells_scored": statistics.fmean(cells),
        "equal_to_exhaustive": statistics.fmean(equal),
    }


def diagnose(searcher, Q, q_mask, k=10, nprobe=16, ncandidates=256) -> dict:
    """Median k-th exact score and median largest bound left, and what the bound is made of."""
    engine = searcher.engine
    _, _, stats = engine.search(Q, q_mask, k, nprobe, ncandidates)
    _, _, theta = engine.probe(Q.float(), nprobe)
    stats_d = engine.doc_stats
    return {
        "setting": {"k": k, "nprobe": nprobe, "ncandidates": ncandidates},
        "median_kth_score": float(stats.kth_score.median()),
        "median_bound_left": float(stats.bound.median()),
        "median_sum_theta": float((theta * q_mask).sum(dim=1).median()),
        "median_doc_rmax": float(stats_d[:, 2].median()),
        "median_doc_smax": float(stats_d[:, 1].median()),
        "query_tokens": float(q_mask.sum(dim=1).float().mean()),
    }


def run_collection(name: str, index_dir: Path, Q, q_mask) -> dict:
    from colbert_fast.retrieval.search import Searcher

    searcher = Searcher(index_dir, device="cpu")
    docs = searcher.index.docs
    out = {"index": str(index_dir), "queries": int(Q.shape[0]), "num_docs": docs.num_docs,
           "num_tokens": docs.num_tokens, "dim": docs.dim, "centroids": int(docs.centroids.shape[0]),
           "bytes_per_token": docs.bytes_per_token}  # fmt: skip
    t0 = time.perf_counter()
    truth = ground_truth(searcher, Q, q_mask)
    out["exhaustive_ms_per_query"] = 1000 * (time.perf_counter() - t0) / Q.shape[0]
    for k in KS:
        rows = {}
        for nprobe in NPROBES:
            for ncand in NCANDIDATES:
                row = measure(searcher, Q, q_mask, k, truth, nprobe=nprobe, ncandidates=ncand)
                rows[f"nprobe={nprobe},ncandidates={ncand}"] = {"nprobe": nprobe, "ncandidates": ncand, **row}
                print(f"{name} k={k} nprobe {nprobe:>3} ncand {ncand:>4}: recall {row['recall']:.4f} "
                      f"certified {row['certified']:.2f} cells {row['cells_scored']:.3f} "
                      f"p50 {row['p50_ms']:.1f} ms", flush=True)  # fmt: skip
        if k == min(KS):
            row = measure(searcher, Q, q_mask, k, truth, nprobe=16, ncandidates=256, exact=True)
            rows["exact=True (nprobe=16,ncandidates=256)"] = {"nprobe": 16, "ncandidates": 256, "exact": True, **row}
            print(f"{name} k={k} exact: recall {row['recall']:.4f} equal {row['equal_to_exhaustive']:.3f} "
                  f"cells {row['cells_scored']:.3f} p50 {row['p50_ms']:.1f} ms", flush=True)  # fmt: skip
        out[f"k={k}"] = rows
    out["diagnosis"] = diagnose(searcher, Q, q_mask)
    return out


def markdown(results: dict) -> str:
    lines = [
        "# Centroid engine: recall against exhaustive MaxSim, latency, certificates",
        "",
        f"{results['machine']}, torch threads {results['torch_threads']}, load average "
        f"{results['load_before']} before, {results['load_after']} after; git {results['git']}.",
        "Residual 2-bit stores, no faiss IVF. Latency: one query at a time, by its embeddings (no encoding),",
        "p50/p95 over the queries. cells: mean fraction of (doc, query token) cells scored exactly.",
        f"Targets (issue 18): {TARGETS}.",
        "",
    ]
    for name, col in results["collections"].items():
        lines += [f"## {name}: {col['num_docs']} docs, {col['num_tokens']} tokens, dim {col['dim']}, "
                  f"{col['centroids']} centroids, {col['queries']} queries", "",
                  f"Exhaustive scoring (batches of 16): {col['exhaustive_ms_per_query']:.1f} ms per query.",
                  ""]  # fmt: skip
        for k in KS:
            lines += [f"k = {k}", "", "| setting | recall@k | min recall | certified | cells | = exhaustive "
                      "| p50 ms | p95 ms |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for setting, r in col[f"k={k}"].items():
                lines.append(
                    f"| {setting} | {r['recall']:.4f} | {r['min_recall']:.2f} | {r['certified']:.2f} "
                    f"| {r['cells_scored']:.3f} | {r['equal_to_exhaustive']:.2f} | {r['p50_ms']:.1f} "
                    f"| {r['p95_ms']:.1f} |"
                )
            lines.append("")
        d = col["diagnosis"]
        lines += [f"Diagnosis at k={d['setting']['k']}, nprobe={d['setting']['nprobe']}, "
                  f"ncandidates={d['setting']['ncandidates']}: median k-th exact score {d['median_kth_score']:.2f}, "
                  f"median largest bound left {d['median_bound_left']:.2f}; of the bound, the sum over "
                  f"{d['query_tokens']:.1f} query tokens of the best unprobed centroid score is "
                  f"{d['median_sum_theta']:.2f} and a doc's largest scaled residual norm (times each |q_i|) "
                  f"is {d['median_doc_rmax']:.2f} (median doc), max scale {d['median_doc_smax']:.2f}.", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def start_run(args) -> tuple[Path, Path, dict]:
    """Threads set, --workdir and --out made: (workdir, out, the run's header: machine, torch threads,
    git sha (marked when the tree has uncommitted changes) and the load average before)."""
    torch.set_num_threads(args.threads)
    workdir, out = Path(args.workdir), Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return (
        workdir,
        out,
        {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch_threads": torch.get_num_threads(),
            "git": git + (" (with uncommitted changes)" if dirty.stdout.strip() else ""),
            "load_before": _load(),
        },
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/engine")
    ap.add_argument("--workdir", default="out/engine_quality", help="where the indexes are built (reused)")
    ap.add_argument("--e1-docs", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    workdir, out, results = start_run(args)
    results["collections"] = {}
    cdir, cQ, cmask = cranfield(workdir)
    results["collections"]["Cranfield"] = run_collection("Cranfield", cdir, cQ, cmask)
    edir, eQ, emask = e1(workdir, args.e1_docs)
    results["collections"][f"E1 {args.e1_docs}"] = run_collection("E1", edir, eQ, emask)
    results["load_after"] = _load()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
