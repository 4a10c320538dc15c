"""One engine, one phase, in a process of its own: the subprocess side of the E1/E2 benchmark.

    python -P engine_driver.py SPEC.json OUT.json

Run by colbert_fast/benchmark/engines.py with the engines' own interpreter (.venv-engines, where
fast-plaid and xtr-warp-rs live with the torch they pin), so this file imports nothing of
colbert_fast: only the standard library, torch, safetensors and the engine itself. colbert_fast's
own adapter (colbert_fast/cli/bench_engines.py) reuses `drive` with the project's interpreter.

SPEC (JSON):
    engine        "fast-plaid" or "xtr-warp" (ENGINES below)
    phase         "build": read the docs, build the index in index_dir (timed);
                  "search": open the index (timed), then per setting search every query
    embeddings    a safetensors file: doc_embeddings [T, dim] fp16, doc_lengths int64 [N],
                  queries fp32 [B, Lq, dim], query_mask bool [B, Lq]
    index_dir     where the index is (or goes)
    build         keyword arguments of the engine's index creation
    settings      [{"label": str, "kwargs": {...}}]: search keyword arguments per setting
    k             results per query (100)
    batch         queries per batch call (64): every query is searched in batches (their top-k
                  ids are the setting's results) and the batches' wall time gives the throughput
    latency_queries  how many queries (the first ones) are also searched one at a time for p50/p95
    threads       the thread count (also set in the environment by the caller)

OUT (JSON): build: build_s, index_bytes, peak_rss_mb; search: load_s, peak_rss_mb and per
setting label: ids (top-k doc positions per query), latency_s (one query at a time),
batch_s (total), batch_queries, error (a setting that raised: its message, no results).
peak_rss_mb is VmHWM from /proc/self/status (not ru_maxrss, which Linux carries over exec).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path


def peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def dir_bytes(path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def read_queries(path):
    """The queries, a list of fp32 [Lq_b, dim], from the exported file (the docs are not read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        Q, mask = f.get_tensor("queries").float(), f.get_tensor("query_mask").bool()
    return [q[m] for q, m in zip(Q, mask)]


def read_docs(path, chunk_tokens: int = 1 << 20):
    """The docs, a list of fp32 [L_i, dim], read a chunk of fp16 rows at a time with plain reads.

    Neither safetensors' load_file (the whole fp16 tensor) nor its mmap'd slices (the pages read
    stay resident) would do: either puts the file's 2.5 GB (E1 100k) into the build's peak RSS
    beside the 5 GB of fp32 docs the engines get."""
    import numpy as np
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        lengths = f.get_tensor("doc_lengths").tolist()
    with open(path, "rb") as raw:
        header = json.loads(raw.read(int.from_bytes(raw.read(8), "little")))
        entry = header["doc_embeddings"]
        if entry["dtype"] != "F16":
            raise ValueError(f"doc_embeddings must be F16, got {entry['dtype']}")
        dim = entry["shape"][1]
        raw.seek(raw.tell() + entry["data_offsets"][0])  # offsets count from the header's end
        docs, i = [], 0
        while i < len(lengths):
            j, n = i, 0
            while j < len(lengths) and (n == 0 or n + lengths[j] <= chunk_tokens):
                n, j = n + lengths[j], j + 1
            block = torch.from_numpy(np.fromfile(raw, dtype=np.float16, count=n * dim).reshape(n, dim))
            docs.extend(t.float() for t in torch.split(block, lengths[i:j]))  # each its own fp32 copy
            i = j
    return docs


def _as_batch(queries):
    """A [B, Lq, dim] tensor when every query has the same length, else the list."""
    import torch

    return torch.stack(queries) if len({q.shape[0] for q in queries}) == 1 else queries


def _pairs(result):
    return [[int(i) for i, _ in row] for row in result]


class FastPlaid:
    """fast-plaid (PLAID in Rust, the index behind PyLate): FastPlaid(index, device).create/search."""

    def build(self, docs, index_dir, threads, **kwargs):
        from fast_plaid import search

        search.FastPlaid(index=str(index_dir), device="cpu").create(documents_embeddings=docs, **kwargs)

    def open(self, index_dir, threads):
        from fast_plaid import search

        return search.FastPlaid(index=str(index_dir), device="cpu")

    def search(self, handle, queries, k, threads, **kwargs):
        return _pairs(handle.search(queries_embeddings=_as_batch(queries), top_k=k, show_progress=False, **kwargs))


class XtrWarp:
    """xtr-warp-rs (WARP): XTRWarp(index).create(docs, device), .load(device), .search(num_threads=...)."""

    def build(self, docs, index_dir, threads, **kwargs):
        from xtr_warp import search

        search.XTRWarp(index=str(index_dir), device="cpu").create(docs, device="cpu", show_progress=False, **kwargs)

    def open(self, index_dir, threads):
        from xtr_warp import search

        return search.XTRWarp(index=str(index_dir), device="cpu").load(device="cpu")

    def search(self, handle, queries, k, threads, **kwargs):
        kwargs.setdefault("num_threads", threads)
        return _pairs(handle.search(_as_batch(queries), top_k=k, show_progress=False, **kwargs))


ENGINES = {"fast-plaid": FastPlaid, "xtr-warp": XtrWarp}


def drive(spec: dict, engine) -> dict:
    """Run one phase of `spec` on `engine` (an object with build/open/search as above)."""
    threads = int(spec.get("threads", 1))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    index_dir = Path(spec["index_dir"])
    out: dict = {"engine": spec["engine"], "phase": spec["phase"], "threads": threads}
    if spec["phase"] == "build":
        docs = read_docs(spec["embeddings"])
        num_tokens = sum(d.shape[0] for d in docs)
        t0 = time.perf_counter()
        engine.build(docs, index_dir, threads, **spec.get("build", {}))
        out["build_s"] = time.perf_counter() - t0
        out["index_bytes"] = dir_bytes(index_dir)
        out["num_tokens"] = num_tokens
        out["peak_rss_mb"] = peak_rss_mb()
        return out
    # The search process reads the queries alone: its peak RSS is the engine's, not the docs' (it
    # read every doc as fp32 before, 7.5 GB of the 8 GB peak at E1 100k).
    queries = read_queries(spec["embeddings"])
    k, batch = int(spec.get("k", 100)), int(spec.get("batch", 64))
    t0 = time.perf_counter()
    handle = engine.open(index_dir, threads)
    out["load_s"] = time.perf_counter() - t0
    out["settings"] = {}
    for setting in spec["settings"]:
        kwargs = dict(setting.get("kwargs", {}))
        row: dict = {"kwargs": kwargs}
        if hasattr(engine, "reset"):
            engine.reset(handle)
        try:
            engine.search(handle, queries[:1], k, threads, **kwargs)  # warm-up, untimed
            ids, batch_s = [], 0.0
            for s in range(0, len(queries), batch):
                t1 = time.perf_counter()
                ids.extend(engine.search(handle, queries[s : s + batch], k, threads, **kwargs))
                batch_s += time.perf_counter() - t1
            latency = []
            for q in queries[: int(spec.get("latency_queries", len(queries)))]:
                t1 = time.perf_counter()
                engine.search(handle, [q], k, threads, **kwargs)
                latency.append(time.perf_counter() - t1)
            row.update(ids=ids, batch_s=batch_s, batch_queries=len(queries), latency_s=latency)
            if hasattr(engine, "cells_fraction"):
                row["cells_fraction"] = engine.cells_fraction(handle)
        except Exception as e:  # one setting failing leaves the others' rows
            row["error"] = f"{type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc(limit=5)
        out["settings"][setting["label"]] = row
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main(argv=None, engines=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    engines = ENGINES if engines is None else engines
    out = drive(spec, engines[spec["engine"]]())
    tmp = Path(argv[1] + ".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
