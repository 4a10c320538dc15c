"""The centroid engine on one device, end to end: the GPU check's engine stage (bench/gpu_check.sh).

    python bench/engine_gpu.py [--device cuda] [--docs 10000,100000] [--budget 120] [--out DIR]

Per E1 size (colbert_fast.testing.clustered_collection, dim 128, 64 queries of 32 tokens): the
residual 2-bit store trained and encoded on the device (k-means included) and the engine's lists;
the truth, exhaustive MaxSim over the same store; then the default search (k 10 at the Searcher's
default budget, retrieval.search.centroid_budget: nprobe 64 and 256 candidates at 10k docs) three
ways, each on a batch of 64 queries: data-sized (reads sizes back), static shapes run eagerly, and
static shapes replayed from a CUDA graph (retrieval.captured.CapturedSearch); plus one query at a
time from a graph of batch 1 (p50/p95).
Every way must return the same top 10 (checked); recall@10 is against the exhaustive truth over
the same store (the codec's loss is not the engine's), with the fraction certified. Scoring uses
each backend in --backends that loads here (auto = what `auto` picks on this device).

A size is skipped when the time left (--budget) is under 6x the previous size's time (E1 grows
~10x a step, but the first size also pays the start-up costs; a size cut off loses only itself:
the files are written after each). Writes engine.json and engine.md to --out (gpu_check.sh folds
them into its summary). On the CPU (no graph) the same runs end to end at small sizes
(tests/benchmark/test_gpu_check.py).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import colbert_fast as cf  # noqa: E402
from colbert_fast import CompressedDocs  # noqa: E402
from colbert_fast.retrieval.captured import CapturedSearch  # noqa: E402
from colbert_fast.retrieval.engine import CentroidEngine, best_k, build_engine  # noqa: E402
from colbert_fast.retrieval.search import centroid_budget  # noqa: E402
from colbert_fast.testing import clustered_collection  # noqa: E402

K = 10
BATCH = 64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, reps: int) -> list[float]:
    """Seconds per call over `reps` calls after one warm-up."""
    fn()
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def truth(store, Q, device, chunk: int = 2048):
    """The exhaustive top K over the store: rows [B, K]."""
    B, n = Q.shape[0], store.num_docs
    best_s = torch.full((B, 0), float("-inf"), device=device)
    best_r = torch.full((B, 0), -1, dtype=torch.int64, device=device)
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk), device=device).expand(B, -1).contiguous()
        scores = cf.maxsim_packed(Q, store, rows)
        best_s, best_r = best_k(torch.cat([best_s, scores], 1), torch.cat([best_r, rows], 1), K)
    return best_r


def one_size(n: int, device: torch.device, backends: list[str], reps: int) -> dict:
    row: dict = {"docs": n}
    t0 = time.perf_counter()
    docs, Q, _ = clustered_collection(n, num_queries=BATCH)
    row["tokens"] = docs.num_tokens
    row["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = CompressedDocs.from_packed(docs.to(device), "residual", 2)
    sync(device)
    row["store_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tensors = build_engine(store)
    row["engine_build_s"] = time.perf_counter() - t0
    row["centroids"] = store.centroids.shape[0]
    Q = Q.to(device)
    q_mask = torch.ones(Q.shape[:2], dtype=torch.bool, device=device)
    t0 = time.perf_counter()
    want = truth(store, Q, device)
    sync(device)
    row["exhaustive_s"] = time.perf_counter() - t0
    nprobe, ncandidates = centroid_budget(K, store.num_docs, store.centroids.shape[0])  # the Searcher's defaults
    settings = dict(k=K, nprobe=nprobe, ncandidates=ncandidates)
    row["settings"] = settings
    row["backends"] = {}
    for backend in backends:
        res: dict = {}
        row["backends"][backend] = res
        try:
            sized = CentroidEngine(store, tensors, backend=backend, static_shapes=False)
            static = CentroidEngine(store, tensors, backend=backend, static_shapes=True)
            a = sized.search(Q, q_mask, **settings)
            b = static.search(Q, q_mask, **settings)
            graph = CapturedSearch(static, BATCH, Q.shape[1], **settings)
            c = graph(Q, q_mask)
            for name, got in (("static", b), ("captured", c)):
                width = a[1].shape[1]
                if not torch.equal(got[1][:, :width].cpu(), a[1].cpu()):
                    res["problem"] = f"{name} top {K} differs from the data-sized search's"
            found = a[1].cpu()
            res["recall_at_10"] = (
                sum(len(set(f.tolist()) & set(w.tolist())) / K for f, w in zip(found, want.cpu())) / found.shape[0]
            )
            res["certified"] = float(a[2].certified.float().mean())
            res["cells_scored"] = float(a[2].cells_scored.mean())
            res["recorded_as_graph"] = graph.graph is not None
            for name, fn in (
                ("data_sized", lambda e=sized: e.search(Q, q_mask, **settings)),
                ("static", lambda e=static: e.search_on_device(Q, q_mask, **settings)),
                ("captured", lambda g=graph: g(Q, q_mask)),
            ):
                t = statistics.median(timed(fn, device, reps))
                res[f"{name}_batch_ms"] = t * 1e3
                res[f"{name}_qps"] = BATCH / t
            single = CapturedSearch(static, 1, Q.shape[1], **settings)
            lat = [timed(lambda i=i, g=single: g(Q[i : i + 1], q_mask[i : i + 1]), device, 1)[0] for i in range(16)]
            res["captured_p50_ms"] = statistics.median(lat) * 1e3
            res["captured_p95_ms"] = sorted(lat)[int(0.95 * (len(lat) - 1))] * 1e3
        except Exception as e:  # a backend that fails is a result, not the end of the stage
            res["error"] = f"{type(e).__name__}: {e}"[:300]
    return row


def markdown(doc: dict) -> str:
    lines = [
        f"# Centroid engine on {doc['device_name']} (git {doc['git_sha']})",
        "",
        f"E1, residual 2-bit, k {K}, the Searcher's default budget, batch {BATCH}; load {doc['load_before']} -> "
        f"{doc.get('load_after')}. q/s = queries per second for a batch of {BATCH}.",
        "",
        "| docs | tokens | store s | nprobe / candidates | backend | recall@10 | certified | data-sized q/s "
        "| static q/s | graph q/s | graph p50 / p95 ms (1 query) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["sizes"]:
        for backend, r in row.get("backends", {}).items():

            def f(key, fmt="{:.1f}", r=r):
                return fmt.format(r[key]) if key in r else "-"

            note = r.get("error") or r.get("problem") or ("" if r.get("recorded_as_graph") else "no graph (CPU)")
            lines.append(
                f"| {row['docs']} | {row['tokens']} | {row['store_s']:.1f} "
                f"| {row['settings']['nprobe']} / {row['settings']['ncandidates']} | {backend} "
                f"| {f('recall_at_10', '{:.3f}')} "
                f"| {f('certified', '{:.2f}')} | {f('data_sized_qps')} | {f('static_qps')} | {f('captured_qps')} "
                f"| {f('captured_p50_ms', '{:.2f}')} / {f('captured_p95_ms', '{:.2f}')} | {note} |"
            )
    for skipped in doc.get("skipped", []):
        lines.append(f"\nskipped: {skipped}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--docs", default="10000,100000", help="E1 sizes, a comma list, smallest first")
    p.add_argument("--backends", default="auto,cuda,triton")
    p.add_argument("--budget", type=float, default=120.0, help="seconds for the whole run")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="out/engine_gpu")
    args = p.parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    doc = {
        "device": str(device),
        "device_name": name,
        "git_sha": os.environ.get("COLBERT_FAST_GIT_SHA", "unknown"),
        "torch": torch.__version__,
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "sizes": [],
        "skipped": [],
    }
    backends = [b for b in args.backends.split(",") if b]
    last = None
    for n in (int(x) for x in args.docs.split(",") if x):
        left = args.budget - (time.perf_counter() - start)
        if last is not None and left < 6 * last:
            doc["skipped"].append(f"E1 {n}: {left:.0f} s left, the previous size took {last:.0f} s")
            continue
        t0 = time.perf_counter()
        doc["sizes"].append(one_size(n, device, backends, args.reps))
        last = time.perf_counter() - t0
        doc["sizes"][-1]["total_s"] = last
        doc["load_after"] = [round(x, 2) for x in os.getloadavg()]
        (out / "engine.json").write_text(json.dumps(doc, indent=1))  # after each size: a cut run keeps it
        (out / "engine.md").write_text(markdown(doc))
    (out / "engine.json").write_text(json.dumps(doc, indent=1))
    (out / "engine.md").write_text(markdown(doc))
    print(markdown(doc))
    problems = [r for s in doc["sizes"] for r in s["backends"].values() if "problem" in r]
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
