"""Throughput and latency of sharded search with 1 and 2 ranks on this machine (gloo, CPU), beside the
single-process Searcher on the same collection.

    PYTHONPATH=$PWD python bench/sharded_bench.py --workdir /tmp/sharded-bench [--docs 3000]

Builds (once, in --workdir) a tiny dim-128 ColBERT (random weights; colbert_fast.testing), a
generated collection, a 1-shard and a 2-shard index (same settings), then runs
`torchrun -m colbert_fast sharded search --timings` with 1 and 2 ranks and prints one row per
configuration. The model is tiny on purpose: the numbers measure the sharded machinery (faiss
candidates, MaxSim over the shard, broadcast, gather, merge), not BERT.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def torchrun(nproc: int, args: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", "29761", "-m", "colbert_fast", "sharded", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(out.stdout + out.stderr)
    return out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    import torch

    from colbert_fast.retrieval.build import IndexConfig
    from colbert_fast.retrieval.search import Searcher
    from colbert_fast.retrieval.sharded import build_sharded_index
    from colbert_fast.retrieval.tsv import read_queries
    from colbert_fast.testing import tiny_encoder, write_collection, write_queries

    w = args.workdir
    w.mkdir(parents=True, exist_ok=True)
    config = IndexConfig(codec="pq", partitions=256, batch_size=64)
    if not (w / "s2" / "sharded.json").exists():
        enc = tiny_encoder(w / "tiny", dim=128)
        enc.save(w / "model")
        write_collection(w / "collection.tsv", args.docs, seed=3, lo=20, hi=120)
        write_queries(w / "queries.tsv", args.queries, seed=4)
        for shards in (1, 2):
            build_sharded_index(
                w / "collection.tsv", w / f"s{shards}", enc, config, num_shards=shards, checkpoint=str(w / "model")
            )
    common = ["--queries", str(w / "queries.tsv"), "--k", str(args.k), "--batch-size", str(args.batch_size)]
    common += ["--repeat", str(args.repeat), "--timings", "--dist-backend", "gloo", "--device", "cpu"]

    # The single-process Searcher over shard 0 of the 1-shard index (= the whole collection).
    torch.set_num_threads(1)
    _, texts = read_queries(w / "queries.tsv")
    searcher = Searcher(w / "s1" / "shard-0000", device="cpu")
    searcher.search(texts[: args.batch_size], k=args.k)  # warm up
    walls, lat = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for s in range(0, len(texts), args.batch_size):
            tb = time.perf_counter()
            searcher.search(texts[s : s + args.batch_size], k=args.k, batch_size=args.batch_size)
            lat.append(time.perf_counter() - tb)
        walls.append(time.perf_counter() - t0)
    print(f"load before: {os.getloadavg()}")
    print(
        f"Searcher (1 process, 1 thread): throughput {len(texts) / statistics.median(walls):.1f} queries/s, "
        f"batch latency median {1000 * statistics.median(lat):.1f} ms"
    )
    # One thread per rank: the machine has 2 cores (more threads per rank oversubscribe it).
    for nproc, index, extra in ((1, "s1", []), (2, "s2", []), (2, "s2", ["--split-candidates"]), (1, "s2", [])):
        cmd = ["search", "--index", str(w / index), "--output", str(w / "run.tsv"), *common, *extra]
        out = torchrun(nproc, cmd, 1)
        row = [line for line in out.splitlines() if line.startswith(("ranks", "rank 0"))]
        print(f"[{nproc} rank(s), index {index} {' '.join(extra)}] " + " | ".join(row))
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
