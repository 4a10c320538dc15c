"""The centroid engine's default budget as the collection grows: recall and latency per E1 size.

    python bench/engine_scaling.py [--e1-docs 10000,30000,100000] [--threads 1] [--out bench/results/engine]
                                   [--workdir out/engine_quality]

Per size, the synthetic clustered collection (colbert_fast.testing.clustered_collection, 64
queries of 32 tokens) indexed with the default IndexConfig (residual 2-bit store, no faiss IVF;
indexes in --workdir are reused, shared with bench/engine_quality.py), and for k = 10 and 100:
    fixed     the 10k budget at every size (nprobe 64, max(256, 10 k) candidates: the defaults
              before they grew with the collection)
    default   what Searcher uses now (retrieval.search.centroid_budget)
searched one query at a time by embeddings (recall@k against exhaustive MaxSim over the same
store, p50/p95 latency, cells scored), beside exhaustive scoring's time per query; then filtered
search at k = 10 (random filters of 1-24% of the docs): the filter scored whole against the engine,
and the path the default Searcher takes. Writes
scaling.json, scaling.md and scaling.png (recall and p50 against docs) with the load average before
and after and the git sha.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# Shared with the settings grid of the same engine (bench/engine_quality.py, this directory).
from engine_quality import CONFIG, e1, ground_truth, measure, start_run

KS = (10, 100)
FILTER_SHARES = (0.01, 0.02, 0.04, 0.08, 0.24)  # of the docs, allowed by a random filter


def fixed_budget(k: int) -> tuple[int, int]:
    from colbert_fast.retrieval.search import CENTROID_CANDIDATES, CENTROID_CANDIDATES_PER_K, CENTROID_NPROBE

    return CENTROID_NPROBE, max(CENTROID_CANDIDATES, CENTROID_CANDIDATES_PER_K * k)


def run_size(workdir: Path, num_docs: int) -> dict:
    from colbert_fast.retrieval.search import Searcher, centroid_budget

    index_dir, Q, q_mask = e1(workdir, num_docs)
    searcher = Searcher(index_dir, device="cpu")
    docs = searcher.index.docs
    out = {"num_docs": docs.num_docs, "num_tokens": docs.num_tokens, "centroids": int(docs.centroids.shape[0]),
           "queries": int(Q.shape[0]), "bytes_per_token": docs.bytes_per_token, "rows": []}  # fmt: skip
    t0 = time.perf_counter()
    truth = ground_truth(searcher, Q, q_mask)
    out["exhaustive_ms_per_query"] = 1000 * (time.perf_counter() - t0) / Q.shape[0]
    for k in KS:
        budgets = {"fixed": fixed_budget(k), "default": centroid_budget(k, docs.num_docs, out["centroids"])}
        for name, (nprobe, ncand) in budgets.items():
            row = measure(searcher, Q, q_mask, k, truth, nprobe=nprobe, ncandidates=ncand)
            out["rows"].append({"budget": name, "k": k, "nprobe": nprobe, "ncandidates": ncand, **row})
            print(f"E1 {num_docs} k={k} {name} (nprobe {nprobe}, {ncand} candidates): recall {row['recall']:.4f} "
                  f"p50 {row['p50_ms']:.1f} ms, cells {row['cells_scored']:.3f}", flush=True)  # fmt: skip
    out["pass"] = pass_rows(searcher, Q, q_mask)
    out["filters"] = filter_rows(index_dir, Q, q_mask, docs)
    return out


def pass_rows(searcher, Q, q_mask, k: int = 10, queries: int = 16) -> dict:
    """The candidate pass alone (cf.centroid_interaction, step 3) at the default budget's nprobe, one
    query at a time, per backend that has it: p50 ms, side by side over the same probes."""
    import colbert_fast as cf
    from colbert_fast.retrieval.search import centroid_budget

    engine = searcher.engine
    nprobe, _ = centroid_budget(k, engine.num_docs, engine.num_centroids)
    probes = [engine.probe(Q[b : b + 1].float(), nprobe) for b in range(min(queries, Q.shape[0]))]
    row = {"nprobe": nprobe}
    for backend, available in cf.available_backends().items():
        if backend not in ("cpu", "torch") or available is not None:
            continue
        times = []
        for b, (ids, vals, theta) in enumerate(probes):
            t0 = time.perf_counter()
            cf.centroid_interaction(ids, vals, theta, engine.ivf_offsets, engine.ivf_docs, engine.num_docs,
                                    q_mask[b : b + 1], backend=backend)  # fmt: skip
            times.append(time.perf_counter() - t0)
        row[f"{backend}_ms"] = 1000 * statistics.median(times)
    print(f"E1 {engine.num_docs} candidate pass (nprobe {nprobe}): {row}", flush=True)
    return row


def filter_rows(index_dir, Q, q_mask, docs, k: int = 10, queries: int = 8) -> list[dict]:
    """Filtered search at the default budget, per share of allowed docs: scoring the filter whole
    (mode exhaustive) against the engine (score_all_if_covered off), p50 over `queries` one-query
    searches, and the path the default Searcher takes (SCORE_ALL_ENGINE_WORK)."""
    from colbert_fast.retrieval import search as search_module

    default, engine_only = (search_module.Searcher(index_dir, device="cpu", score_all_if_covered=on) for on in (1, 0))
    nprobe, ncandidates = search_module.centroid_budget(k, docs.num_docs, int(docs.centroids.shape[0]))
    work = default.engine_work(int(q_mask.sum(dim=1).max()), nprobe, ncandidates)
    g = torch.Generator().manual_seed(0)
    rows = []
    for share in FILTER_SHARES:
        allowed = torch.zeros(docs.num_docs, dtype=torch.bool)
        allowed[torch.randperm(docs.num_docs, generator=g)[: max(1, int(share * docs.num_docs))]] = True

        def p50(searcher, mode, allowed=allowed):
            times = []
            for b in range(queries + 1):  # the first is a warm-up
                t0 = time.perf_counter()
                ranking = searcher.search(Q[b : b + 1], q_mask=q_mask[b : b + 1], k=k, mode=mode, allowed=allowed)[0]
                times.append(time.perf_counter() - t0)
            return 1000 * statistics.median(times[1:]), ranking.certified

        whole, _ = p50(engine_only, "exhaustive")
        engine, _ = p50(engine_only, "centroid")
        chosen, certified = p50(default, "centroid")
        tokens = int(docs.lengths[allowed].sum())
        rows.append({"share": share, "allowed": int(allowed.sum()), "tokens": tokens, "engine_work": work,
                     "whole_ms": whole, "engine_ms": engine, "default_ms": chosen, "default_certified": certified,
                     "scored_whole": tokens <= search_module.SCORE_ALL_ENGINE_WORK * work})  # fmt: skip
        print(f"E1 {docs.num_docs} filter {share:.0%}: whole {whole:.1f} ms, engine {engine:.1f} ms, default "
              f"{chosen:.1f} ms (tokens / engine work {tokens / work:.2f})", flush=True)  # fmt: skip
    return rows


def markdown(results: dict) -> str:
    lines = [
        "# Centroid engine: the default budget as the collection grows (E1)",
        "",
        f"{results['machine']}, torch threads {results['torch_threads']}, load average "
        f"{results['load_before']} before, {results['load_after']} after; git {results['git']}.",
        f"Index: {results['config']}. Recall@k against exhaustive MaxSim over the same store; latency one query",
        "at a time by embeddings. fixed = the 10k budget at every size; default = centroid_budget.",
        "exhaustive ms: exhaustive search per query in batches of 16 (k = 100: the truth).",
        "",
        "| docs | centroids | k | budget | nprobe | candidates | recall@k | min recall | p50 ms | p95 ms | cells "
        "| exhaustive ms | p50 / exhaustive |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        ex = size["exhaustive_ms_per_query"]
        for r in size["rows"]:
            lines.append(
                f"| {size['num_docs']} | {size['centroids']} | {r['k']} | {r['budget']} | {r['nprobe']} "
                f"| {r['ncandidates']} | {r['recall']:.4f} | {r['min_recall']:.2f} | {r['p50_ms']:.1f} "
                f"| {r['p95_ms']:.1f} | {r['cells_scored']:.3f} | {ex:.1f} | {r['p50_ms'] / ex:.3f} |"
            )
    lines += ["", "The candidate pass alone (cf.centroid_interaction at the default nprobe for k = 10, one query at",
              "a time, p50 over 16 queries, the same probes): the C++ kernel (backend cpu, what the engine runs",
              "on the CPU) and the torch pass (what it runs on a GPU; the CPU's before the kernel).", "",
              "| docs | nprobe | C++ ms | torch ms | torch / C++ |", "|---|---|---|---|---|"]  # fmt: skip
    for size in results["sizes"]:
        r = size.get("pass")
        if r and "cpu_ms" in r and "torch_ms" in r:
            lines.append(f"| {size['num_docs']} | {r['nprobe']} | {r['cpu_ms']:.2f} | {r['torch_ms']:.2f} "
                         f"| {r['torch_ms'] / r['cpu_ms']:.1f} |")  # fmt: skip
    lines += ["", "Filtered search (k = 10, default budget; p50 of one-query searches): the filter scored whole",
              "(exhaustive over the allowed docs), the engine, and what the default Searcher does (it scores",
              "the filter whole when its tokens are at most SCORE_ALL_ENGINE_WORK times the engine's work in",
              "doc tokens, Searcher.engine_work).", "",
              "| docs | allowed | tokens / engine work | whole ms | engine ms | whole / engine | default ms "
              "| default path |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for size in results["sizes"]:
        for r in size.get("filters", []):
            path = "whole (certified)" if r["scored_whole"] else "engine"
            lines.append(
                f"| {size['num_docs']} | {r['allowed']} | {r['tokens'] / r['engine_work']:.2f} | {r['whole_ms']:.1f} "
                f"| {r['engine_ms']:.1f} | {r['whole_ms'] / r['engine_ms']:.2f} | {r['default_ms']:.1f} | {path} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    for k in KS:
        for budget, style in (("fixed", "--"), ("default", "-")):
            pts = [(s["num_docs"], r) for s in results["sizes"] for r in s["rows"]
                   if (r["k"], r["budget"]) == (k, budget)]  # fmt: skip
            xs = [n for n, _ in pts]
            ax_r.plot(xs, [r["recall"] for _, r in pts], style, marker="o", label=f"k={k} {budget}")
            ax_t.plot(xs, [r["p50_ms"] for _, r in pts], style, marker="o", label=f"k={k} {budget}")
    xs = [s["num_docs"] for s in results["sizes"]]
    ax_t.plot(xs, [s["exhaustive_ms_per_query"] for s in results["sizes"]], ":", color="gray", label="exhaustive")
    ax_r.axhline(0.99, color="gray", lw=0.8)
    ax_r.set(xscale="log", xlabel="docs", ylabel="recall@k vs exhaustive (same store)", title="recall")
    ax_t.set(xscale="log", yscale="log", xlabel="docs", ylabel="p50 ms, one query", title="latency")
    for ax in (ax_r, ax_t):
        ax.legend(fontsize=8)
    fig.suptitle(f"centroid engine budget vs collection size (git {results['git']}, load {results['load_before']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/engine")
    ap.add_argument("--workdir", default="out/engine_quality", help="where the indexes are built (reused)")
    ap.add_argument("--e1-docs", default="10000,30000,100000", help="comma-separated collection sizes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    workdir, out, results = start_run(args)
    results["config"] = CONFIG
    results["sizes"] = [run_size(workdir, int(n)) for n in args.e1_docs.split(",")]
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    (out / "scaling.json").write_text(json.dumps(results, indent=2))
    (out / "scaling.md").write_text(markdown(results))
    plot(results, out / "scaling.png")
    print(f"wrote {out / 'scaling.json'}, {out / 'scaling.md'} and {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
