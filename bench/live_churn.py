"""Live index churn (issue 19): add/delete cycles, then the churned index against a fresh build.

    python bench/live_churn.py [--docs 20000 --cycles 25 --add 1000 --delete 500 --out bench/results/live]

The defaults are the issue's protocol. The synthetic clustered collection (E1,
colbert_fast.benchmark.collections, dim 128) of docs + cycles * add documents is generated once
with one seed; LiveIndex.create indexes the first `docs` (residual 2-bit codes, no IVF: the
default live IndexConfig), then each cycle adds the next `add` docs (one add_documents call) and
deletes `delete` ids drawn at random (fixed seed) from the live ones (one delete_documents call).
Compaction follows live.py's own policy (more than MAX_SEGMENTS segments or MAX_DELETED of the
stored docs deleted) but is run as its own timed step, so the add and delete times are those of
the change alone.

Then the churned index, as it stands, is compared with a FRESH build of its surviving docs in the
same order with the same codebook (LiveIndex.create(..., codebook=churned codebook)):
    equality   exhaustive top-100 of the 64 queries: same ids, scores within 1e-4 * Lq; the stores
               (codes, scales, centroid ids, codebook, lengths) compared bit for bit
    overlap    centroid mode (default nprobe / ncandidates): |churned top-100 & fresh top-100| / 100
    latency    p50 / p95 of one query at a time, per mode, churned and fresh interleaved in one process
    memory     peak RSS (VmHWM) of a process that loads the index and searches the queries in both
               modes, one process per side
    disk       bytes per live token (index_stats), before and after a final compaction
Add throughput counts the add_documents call only (the embeddings exist beforehand).
Writes results.json, results.csv (one metric per row) and README.md, with the load average before
and after, the machine and torch's thread count.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

K = 100
TARGETS = {"peak_rss_ratio": 1.2, "p95_ratio": 1.2}

_RSS_PROBE = r"""
import json, sys, time, torch
from colbert_fast.retrieval.index import Index
from colbert_fast.retrieval.search import Searcher
index_dir, queries_file, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
Q = torch.load(queries_file)
t0 = time.perf_counter()
s = Searcher(Index.load(index_dir, load_ivf=False), device="cpu", mode="centroid")
for mode in ("centroid", "exhaustive"):
    for b in range(Q.shape[0]):
        s.search(Q[b : b + 1], k=k, mode=mode)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent.
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": hwm_kb / 1024, "seconds": time.perf_counter() - t0}))
"""


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _subset(P, rows):
    """The docs `rows` of a PackedDocs (fp16, CPU) as a new PackedDocs, in that order."""
    from colbert_fast import PackedDocs
    from colbert_fast.retrieval.segments import token_rows

    rows = torch.as_tensor(rows, dtype=torch.int64)
    tokens = token_rows(P.offsets, P.lengths, rows)
    return PackedDocs(P.embeddings[tokens], P.lengths[rows])


def churn(path: Path, P, ids: list[str], args, log) -> dict:
    """Create from the first args.docs docs, then the add/delete cycles; the timings."""
    from colbert_fast.retrieval.live import (
        LiveIndex,
        _needs_compaction,
        add_documents,
        compact_index,
        delete_documents,
        index_stats,
    )

    t0 = time.perf_counter()
    initial = _subset(P, range(args.docs))
    codebook = None
    if args.centroids:  # a smaller codebook than PLAID's rule (the default): training time
        from colbert_fast.compressed import ResidualCodec

        codebook = ResidualCodec.train(initial.embeddings, 2, args.centroids, seed=args.seed)
    LiveIndex.create(path, initial, ids[: args.docs], codebook=codebook)
    create_s = time.perf_counter() - t0
    log(f"created {args.docs} docs in {create_s:.1f} s")
    live = list(ids[: args.docs])  # the live ids, for drawing deletions
    rng = random.Random(args.seed)
    adds, deletes, compactions = [], [], []

    def maybe_compact(after: str, cycle: int) -> None:
        if _needs_compaction(index_stats(path)):
            t = time.perf_counter()
            compact_index(path)
            compactions.append({"cycle": cycle, "after": after, "seconds": time.perf_counter() - t})
            log(f"  cycle {cycle}: compacted after the {after} in {compactions[-1]['seconds']:.2f} s")

    for cycle in range(args.cycles):
        first = args.docs + cycle * args.add
        rows = range(first, first + args.add)
        new = _subset(P, rows)  # outside the timing: the embeddings exist before the add
        new_ids = [ids[r] for r in rows]
        t = time.perf_counter()
        add_documents(path, new_ids, new, auto_compact=False)
        seconds = time.perf_counter() - t
        adds.append({"docs": len(new_ids), "tokens": new.num_tokens, "seconds": seconds})
        live.extend(new_ids)
        maybe_compact("add", cycle)
        gone = rng.sample(live, args.delete)
        t = time.perf_counter()
        delete_documents(path, gone, auto_compact=False)
        deletes.append({"docs": len(gone), "seconds": time.perf_counter() - t})
        gone_set = set(gone)
        live = [p for p in live if p not in gone_set]
        maybe_compact("delete", cycle)
        log(f"cycle {cycle}: add {adds[-1]['seconds']:.2f} s, delete {deletes[-1]['seconds']:.3f} s, "
            f"{len(live)} live")  # fmt: skip
    return {"create_s": create_s, "adds": adds, "deletes": deletes, "compactions": compactions, "live": live}


def same_store(a, b) -> bool:
    """Bit-for-bit equal stores (every tensor a CompressedDocs/PackedDocs file would hold)."""
    if type(a) is not type(b):
        return False
    if not torch.equal(a.lengths.cpu(), b.lengths.cpu()):
        return False
    for name in ("codes", "scales", "centroid_ids", "centroids", "bucket_cutoffs", "bucket_weights", "embeddings"):
        x, y = getattr(a, name, None), getattr(b, name, None)
        if (x is None) != (y is None):
            return False
        if x is not None and not torch.equal(torch.as_tensor(x).cpu(), torch.as_tensor(y).cpu()):
            return False
    return True


def compare(churned, fresh, Q: torch.Tensor, log) -> dict:
    """Exhaustive equality, centroid overlap and interleaved latency of two Searchers."""
    lq = Q.shape[1]
    out = {}
    a = churned.search(Q, k=K, mode="exhaustive")
    b = fresh.search(Q, k=K, mode="exhaustive")
    ids_equal = all([p for p, _ in x] == [p for p, _ in y] for x, y in zip(a, b))
    worst = max(abs(sx - sy) for x, y in zip(a, b) for (_, sx), (_, sy) in zip(x, y))
    out["exhaustive"] = {
        "ids_equal": ids_equal,
        "max_score_diff": worst,
        "tolerance": 1e-4 * lq,
        "equal": ids_equal and worst <= 1e-4 * lq,
    }
    a = churned.search(Q, k=K, mode="centroid")
    b = fresh.search(Q, k=K, mode="centroid")
    overlaps = [len({p for p, _ in x} & {p for p, _ in y}) / max(1, len(y)) for x, y in zip(a, b)]
    out["centroid"] = {
        "overlap_mean": statistics.fmean(overlaps),
        "overlap_min": min(overlaps),
        "ids_equal": all([p for p, _ in x] == [p for p, _ in y] for x, y in zip(a, b)),
    }
    log(f"exhaustive top-{K} equal: {out['exhaustive']['equal']} (max |diff| {worst:.2e}); "
        f"centroid overlap {out['centroid']['overlap_mean']:.4f}")  # fmt: skip
    for mode in ("centroid", "exhaustive"):
        times = {"churned": [], "fresh": []}
        for q in range(Q.shape[0]):
            order = (("churned", churned), ("fresh", fresh)) if q % 2 == 0 else (("fresh", fresh), ("churned", churned))
            for side, searcher in order:
                t = time.perf_counter()
                searcher.search(Q[q : q + 1], k=K, mode=mode)
                times[side].append(1000 * (time.perf_counter() - t))
        out[f"latency_{mode}"] = {
            side: {"p50_ms": _pct(ms, 0.5), "p95_ms": _pct(ms, 0.95)} for side, ms in times.items()
        }
        lat = out[f"latency_{mode}"]
        log(f"{mode}: p50 {lat['churned']['p50_ms']:.1f} / {lat['fresh']['p50_ms']:.1f} ms, "
            f"p95 {lat['churned']['p95_ms']:.1f} / {lat['fresh']['p95_ms']:.1f} ms (churned / fresh)")  # fmt: skip
    return out


def peak_rss(index_dir: Path, queries_file: Path) -> dict:
    here = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(here))
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(index_dir), str(queries_file), str(K)],
        cwd=here,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args, log=print) -> dict:
    from colbert_fast.benchmark.collections import clustered_collection
    from colbert_fast.retrieval.index import Index
    from colbert_fast.retrieval.live import LiveIndex, compact_index, index_stats
    from colbert_fast.retrieval.search import Searcher

    if args.threads:
        torch.set_num_threads(args.threads)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {
        "protocol": {k: getattr(args, k) for k in ("docs", "cycles", "add", "delete", "queries", "seed", "centroids")},
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "git": git,
        "load_before": _load(),
    }
    total = args.docs + args.cycles * args.add
    t = time.perf_counter()
    P, Q, _ = clustered_collection(total, num_queries=args.queries, seed=args.seed)
    log(f"generated {total} docs, {P.num_tokens} tokens in {time.perf_counter() - t:.1f} s")
    ids = [f"d{i}" for i in range(total)]
    row_of = {p: i for i, p in enumerate(ids)}
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = Path(work)
        churned_dir, fresh_dir = work / "churned", work / "fresh"
        t = time.perf_counter()
        c = churn(churned_dir, P, ids, args, log)
        churn_s = time.perf_counter() - t
        churned_index = Index.load(churned_dir, load_ivf=False)
        survivors = list(churned_index.pids)
        assert sorted(survivors) == sorted(c["live"]), "the churned index does not hold the live ids"
        t = time.perf_counter()
        LiveIndex.create(fresh_dir, _subset(P, [row_of[p] for p in survivors]), survivors,
                         codebook=churned_index.docs.codebook)  # fmt: skip
        fresh_s = time.perf_counter() - t
        fresh_index = Index.load(fresh_dir, load_ivf=False)
        log(f"fresh build of {len(survivors)} survivors in {fresh_s:.1f} s")
        stats_churned, stats_fresh = index_stats(churned_dir), index_stats(fresh_dir)
        stores_equal = same_store(churned_index.docs, fresh_index.docs)
        churned = Searcher(churned_index, device="cpu", mode="centroid")
        fresh = Searcher(fresh_index, device="cpu", mode="centroid")
        cmp = compare(churned, fresh, Q, log)
        del churned, fresh, churned_index, fresh_index
        queries_file = work / "queries.pt"
        torch.save(Q, queries_file)
        rss = {"churned": peak_rss(churned_dir, queries_file), "fresh": peak_rss(fresh_dir, queries_file)}
        log(f"peak RSS: churned {rss['churned']['peak_rss_mb']:.0f} MB, fresh {rss['fresh']['peak_rss_mb']:.0f} MB")
        t = time.perf_counter()
        final = compact_index(churned_dir)
        final_compact_s = time.perf_counter() - t
        stats_compacted = index_stats(churned_dir)

    adds, deletes = c["adds"], c["deletes"]
    add_s = sum(a["seconds"] for a in adds)
    delete_ms = [1000 * d["seconds"] for d in deletes]
    comp = c["compactions"]
    results.update(
        churn_seconds=churn_s,
        create_seconds=c["create_s"],
        fresh_build_seconds=fresh_s,
        add={
            "docs_per_s": sum(a["docs"] for a in adds) / add_s,
            "tokens_per_s": sum(a["tokens"] for a in adds) / add_s,
            "p50_s": _pct([a["seconds"] for a in adds], 0.5),
            "max_s": max(a["seconds"] for a in adds),
        },
        delete={"p50_ms": _pct(delete_ms, 0.5), "max_ms": max(delete_ms)},
        compactions={
            "count": len(comp),
            "seconds": [round(x["seconds"], 3) for x in comp],
            "at": [f"{x['cycle']}:{x['after']}" for x in comp],
            "final_seconds": final_compact_s if final["compacted"] else 0.0,
        },
        stats={"churned": stats_churned, "fresh": stats_fresh, "churned_after_final_compaction": stats_compacted},
        stores_equal=stores_equal,
        comparison=cmp,
        peak_rss=rss,
        load_after=_load(),
    )
    results["ratios"] = {
        "peak_rss_ratio": rss["churned"]["peak_rss_mb"] / rss["fresh"]["peak_rss_mb"],
        **{
            f"p95_ratio_{m}": cmp[f"latency_{m}"]["churned"]["p95_ms"] / cmp[f"latency_{m}"]["fresh"]["p95_ms"]
            for m in ("centroid", "exhaustive")
        },  # fmt: skip
        **{
            f"p50_ratio_{m}": cmp[f"latency_{m}"]["churned"]["p50_ms"] / cmp[f"latency_{m}"]["fresh"]["p50_ms"]
            for m in ("centroid", "exhaustive")
        },  # fmt: skip
        "bytes_per_token_ratio": stats_churned["bytes_per_token"] / stats_fresh["bytes_per_token"],
    }
    r = results["ratios"]
    results["verdict"] = {
        "top100_equal": cmp["exhaustive"]["equal"],
        "peak_rss_within_1.2x": r["peak_rss_ratio"] <= TARGETS["peak_rss_ratio"],
        "p95_within_1.2x": max(r["p95_ratio_centroid"], r["p95_ratio_exhaustive"]) <= TARGETS["p95_ratio"],
    }
    return results


def rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(metric, churned, fresh, ratio or note) for the table and the CSV."""
    cmp, rss, st, r = results["comparison"], results["peak_rss"], results["stats"], results["ratios"]
    ch, fr = st["churned"], st["fresh"]
    out = [
        ("add throughput (docs/s)", f"{results['add']['docs_per_s']:.0f}", "", ""),
        ("add throughput (tokens/s)", f"{results['add']['tokens_per_s']:.0f}", "", ""),
        ("add of one batch p50 / max (s)", f"{results['add']['p50_s']:.3f} / {results['add']['max_s']:.3f}", "", ""),
        (
            "delete latency p50 / max (ms)",
            f"{results['delete']['p50_ms']:.1f} / {results['delete']['max_ms']:.1f}",
            "",
            "",
        ),  # fmt: skip
        (
            "auto-compactions (policy of live.py)",
            str(results["compactions"]["count"]),
            "",
            ", ".join(results["compactions"]["at"]) or "none",
        ),  # fmt: skip
        ("compaction time(s) (s)", ", ".join(f"{s:.2f}" for s in results["compactions"]["seconds"]) or "-", "", ""),
        ("final compaction after the comparison (s)", f"{results['compactions']['final_seconds']:.2f}", "", ""),
        (
            "build (s)",
            f"{results['create_seconds']:.1f} (create, {results['protocol']['docs']} docs)",
            f"{results['fresh_build_seconds']:.1f}",
            "fresh: same codebook, no training",
        ),  # fmt: skip
        ("live docs / tokens", f"{ch['docs']} / {ch['tokens']}", f"{fr['docs']} / {fr['tokens']}", ""),
        (
            "segments / deleted docs",
            f"{ch['segments']} / {ch['deleted_docs']}",
            f"{fr['segments']} / {fr['deleted_docs']}",
            "",
        ),  # fmt: skip
        ("stores bit-identical (as loaded)", str(results["stores_equal"]), "", ""),
        (
            f"exhaustive top-{K} equal (ids; scores within 1e-4*Lq)",
            str(cmp["exhaustive"]["equal"]),
            "",
            f"max |score diff| {cmp['exhaustive']['max_score_diff']:.2e}",
        ),  # fmt: skip
        (
            f"centroid top-{K} overlap mean / min",
            f"{cmp['centroid']['overlap_mean']:.4f} / {cmp['centroid']['overlap_min']:.2f}",
            "",
            f"identical lists: {cmp['centroid']['ids_equal']}",
        ),  # fmt: skip
    ]
    for m in ("centroid", "exhaustive"):
        lat = cmp[f"latency_{m}"]
        out.append((f"{m} latency p50 (ms)", f"{lat['churned']['p50_ms']:.1f}", f"{lat['fresh']['p50_ms']:.1f}",
                    f"{r[f'p50_ratio_{m}']:.2f}x"))  # fmt: skip
        out.append((f"{m} latency p95 (ms)", f"{lat['churned']['p95_ms']:.1f}", f"{lat['fresh']['p95_ms']:.1f}",
                    f"{r[f'p95_ratio_{m}']:.2f}x (target <= 1.2x)"))  # fmt: skip
    out += [
        (
            "peak RSS, load + search (MB)",
            f"{rss['churned']['peak_rss_mb']:.0f}",
            f"{rss['fresh']['peak_rss_mb']:.0f}",
            f"{r['peak_rss_ratio']:.2f}x (target <= 1.2x)",
        ),  # fmt: skip
        (
            "bytes on disk per live token",
            f"{ch['bytes_per_token']:.1f}",
            f"{fr['bytes_per_token']:.1f}",
            f"{r['bytes_per_token_ratio']:.2f}x; "
            f"{st['churned_after_final_compaction']['bytes_per_token']:.1f} after the final compaction",
        ),  # fmt: skip
    ]
    return out


def markdown(results: dict) -> str:
    p = results["protocol"]
    v = results["verdict"]
    lines = [
        "# Live index churn (issue 19)",
        "",
        f"Protocol: E1 synthetic clustered collection, dim 128, {p['docs']:,} docs, {p['cycles']} cycles of add "
        f"{p['add']:,} / delete {p['delete']:,} (seed {p['seed']}), then the churned index against a fresh build "
        f"of its surviving docs (same order, same codebook); {p['queries']} queries, k = {K}. "
        "Made by `python bench/live_churn.py "
        + " ".join(f"--{k} {p[k]}" for k in ("docs", "cycles", "add", "delete", "centroids") if p[k] is not None)
        + "`. Residual codes, 2 bits, no IVF (the live default); codebook: "
        + (f"{p['centroids']:,} centroids trained on the initial docs" if p["centroids"] else "the default size")
        + ".",
        "",
        f"{results['machine']}, torch threads {results['torch_threads']}, load average {results['load_before']} "
        f"before, {results['load_after']} after (a machine shared with other jobs); git {results['git']}; "
        f"churn took {results['churn_seconds']:.0f} s.",
        "",
        f"Verdict: top-{K} equal: **{v['top100_equal']}**; peak memory <= 1.2x fresh: **{v['peak_rss_within_1.2x']}**; "
        f"p95 <= 1.2x fresh: **{v['p95_within_1.2x']}**.",
        "",
        "| metric | churned | fresh | ratio / note |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    lines += [
        "",
        "Add throughput: the add_documents call alone (encoding with the index's codebook, writing the segment "
        "and its centroid-engine file, committing), the embeddings generated beforehand. Compaction: live.py's "
        "policy (more than 8 segments, or more than 20% of the stored docs deleted), run as its own step after "
        "the change that triggered it. Latency: one query at a time by its embeddings, churned and fresh "
        "interleaved in one process (alternating which goes first). Peak RSS: VmHWM of one process per side "
        "that loads the index and searches every query in both modes (the churned index, when it has several "
        "segments or tombstones, is copied into one store at load; a single clean segment is memory-mapped).",
        "",
    ]
    return "\n".join(lines)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "churned", "fresh", "ratio_or_note"])
        w.writerows(rows(results))
    (out / "README.md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000, help="docs of the initial index (20000)")
    ap.add_argument("--cycles", type=int, default=25, help="add/delete cycles (25)")
    ap.add_argument("--add", type=int, default=1000, help="docs added per cycle (1000)")
    ap.add_argument("--delete", type=int, default=500, help="docs deleted per cycle (500)")
    ap.add_argument("--queries", type=int, default=64, help="queries (64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--centroids",
        type=int,
        help="residual codebook size, trained on the initial docs (default: the index default, "
        "2**floor(log2(16 sqrt(tokens))): 16,384 at 20,000 docs)",
    )
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="bench/results/live", help="results directory ('' writes nothing)")
    ap.add_argument("--workdir", help="where the two indexes are built (a temporary directory, removed)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    results = run(args, log)
    if args.out:
        write(results, Path(args.out))
        log(f"wrote {args.out}/README.md")
    log(json.dumps(results["verdict"]))
    return results


if __name__ == "__main__":
    main()
