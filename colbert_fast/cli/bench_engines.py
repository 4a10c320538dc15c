"""`colbert-fast bench --workload E1,E2`: end-to-end search, colbert_fast beside the engine peers.

The measuring is colbert_fast/benchmark/engines.py (and its subprocess protocol,
engine_driver.py); this module builds the two workloads from the retrieval system and holds
colbert_fast's own adapter, which the benchmark runs as a subprocess of the project's
interpreter: `python -m colbert_fast.cli.bench_engines SPEC OUT`.

    E1  colbert_fast.benchmark.collections.clustered_collection(num_docs), 64 queries, dim 128
    E2  Cranfield embedded with the package's MiniLM model (docs and the 225 judged queries),
        nDCG@10 and MRR@10 from its qrels

colbert_fast's engines: one index config each and a list of (label, search kwargs) settings. The
default is the fp16 index with the three paper-path modes (exhaustive, accurate, fast = the
paper's IVFPQ budget), the default index (residual 2-bit store, no IVF) under the centroid engine
(exhaustive, centroid at two budgets, exact) and the 4-bit residual store likewise;
`--cf-engines JSON` replaces it, e.g. one 4-bit store with one setting:
    [{"name": "colbert_fast residual", "index": {"store": "residual", "store_nbits": 4},
      "settings": [["centroid", {"mode": "centroid", "nprobe": 8}]]}]
Rows are compared (ratios) with the engine named "colbert_fast", setting "accurate".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import colbert_fast
from colbert_fast.benchmark import engine_driver, engines

DEFAULT_CF_ENGINES = [
    {  # the paper's system: fp16 store, faiss IVFPQ candidates
        "name": "colbert_fast",
        "index": {"store": "fp16", "ivf": True},
        "settings": [
            ["exhaustive", {"mode": "exhaustive"}],
            ["accurate", {"mode": "accurate"}],
            ["fast", {"mode": "fast"}],
        ],
    },
    {  # the default store (residual 2-bit) with the centroid engine and no second copy of the tokens
        "name": "colbert_fast residual2",
        "index": {"store": "residual", "store_nbits": 2, "ivf": False},
        "settings": [
            ["exhaustive", {"mode": "exhaustive"}],
            ["centroid", {"mode": "centroid"}],
            ["centroid nprobe 16", {"mode": "centroid", "nprobe": 16, "ncandidates": 64}],
            ["centroid exact", {"mode": "centroid", "exact": True}],
        ],
    },
    {  # 4 bits per dimension: where 2 bits lose recall against the fp16 vectors (E1: 0.78 at 10)
        "name": "colbert_fast residual4",
        "index": {"store": "residual", "store_nbits": 4, "ivf": False},
        "settings": [
            ["exhaustive", {"mode": "exhaustive"}],
            ["centroid", {"mode": "centroid"}],
            ["centroid exact", {"mode": "centroid", "exact": True}],
        ],
    },
]


class ColbertFast:
    """colbert_fast's side of the driver protocol: build_index_from_embeddings + Searcher.search."""

    def build(self, docs, index_dir, threads, **index_config):
        from colbert_fast.retrieval.build import IndexConfig, build_index_from_embeddings

        build_index_from_embeddings(docs, index_dir, IndexConfig(**index_config))

    def open(self, index_dir, threads):
        from colbert_fast.retrieval.search import Searcher

        searcher = Searcher(index_dir, device="cpu")
        if searcher.load_ivf and searcher.index.has_ivf:
            searcher.ivf  # noqa: B018 -- faiss is opened lazily: load it here, inside the timed load
        self.queries = 0
        return searcher

    def reset(self, handle):
        handle.reset_timings()
        self.queries = 0

    def search(self, handle, queries, k, threads, **kwargs):
        from colbert_fast.retrieval.padding import pad_vectors

        Q, q_mask = pad_vectors(queries)
        self.queries += len(queries)
        ranking = handle.search(Q, k=k, q_mask=q_mask, **kwargs)
        return [[int(p) for p, _ in r] for r in ranking]

    def cells_fraction(self, handle):
        """Docs scored exactly per query / docs in the collection (Searcher.docs_scored)."""
        if not self.queries or not hasattr(handle, "docs_scored"):
            return None
        return handle.docs_scored / (self.queries * handle.index.num_docs)


def colbert_fast_engines(spec: list[dict] | None = None, timeout_s: float | None = None) -> list:
    """SubprocessEngines for colbert_fast: one per {"name", "index": IndexConfig kwargs, "settings"}."""
    root = str(Path(colbert_fast.__file__).resolve().parents[1])
    return [
        engines.SubprocessEngine(
            e["name"],
            [sys.executable, "-m", "colbert_fast.cli.bench_engines"],
            "colbert_fast",
            [(label, kw) for label, kw in e["settings"]],
            build=e.get("index", {}),
            timeout_s=timeout_s,
            env={"PYTHONPATH": root},  # this checkout's package, whatever the interpreter has installed
        )
        for e in (spec or DEFAULT_CF_ENGINES)
    ]


# ---- workloads -----------------------------------------------------------------------------------


def e1(num_docs: int = 10_000, num_queries: int = 64) -> engines.Collection:
    from colbert_fast.benchmark.collections import clustered_collection

    docs, Q, targets = clustered_collection(num_docs, num_queries=num_queries)
    name = f"E1-{num_docs // 1000}k" if num_docs % 1000 == 0 else f"E1-{num_docs}"
    return engines.Collection(
        name, docs, Q, torch.ones(Q.shape[:2], dtype=torch.bool), info={"kind": "synthetic clustered, seed 0"}
    )


def e2(workdir: Path, cranfield: str | None = None, num_queries: int | None = None) -> engines.Collection:
    """Cranfield with the embedded model; the encoded docs and queries are cached in workdir.

    num_queries: only the first N judged queries (all 225 by default), for every engine alike.
    """
    from colbert_fast.retrieval import metrics
    from colbert_fast.retrieval.build import encode_docs
    from colbert_fast.retrieval.datasets import load_cranfield
    from colbert_fast.retrieval.embedded import EMBEDDED, load_embedded

    data = load_cranfield(cranfield)
    qids = data.judged_qids()
    cache = workdir / "E2-cranfield.encoded.pt"
    if cache.exists():
        emb, lengths, Q, q_mask = torch.load(cache)
        docs = colbert_fast.PackedDocs(emb, lengths)
    else:
        encoder = load_embedded(device="cpu")
        docs = encode_docs(encoder, data.texts, batch_size=64)
        qtext = dict(zip(data.qids, data.queries))
        with torch.inference_mode():
            Q, q_mask = encoder.encode_queries([qtext[q] for q in qids])
        workdir.mkdir(parents=True, exist_ok=True)
        torch.save((docs.embeddings, docs.lengths, Q.cpu(), q_mask.cpu()), cache)
    if num_queries:
        qids, Q, q_mask = qids[:num_queries], Q[:num_queries], q_mask[:num_queries]
    qrels = {q: data.qrels[q] for q in qids}

    def quality(run):
        return {"nDCG@10": metrics.ndcg_at(run, qrels, 10), "MRR@10": metrics.mrr_at(run, qrels, 10)}

    return engines.Collection(
        "E2-cranfield",
        docs,
        Q.float(),
        q_mask.bool(),
        pids=list(data.pids),
        qids=qids,
        quality=quality,
        info={"kind": "Cranfield", "model": str(EMBEDDED), "queries_of_225": len(qids)},
    )


def collections_for(
    names: list[str], workdir: Path, e1_docs: list[int], cranfield: str | None = None, e2_queries: int | None = None
):
    out = []
    for name in names:
        if name == "E1":
            out += [e1(n) for n in e1_docs]
        elif name == "E2":
            out.append(e2(workdir, cranfield, e2_queries))
        else:
            raise ValueError(f"unknown end-to-end workload {name!r} (E1, E2)")
    return out


def run(args, names: list[str]) -> int:
    out, workdir = Path(args.out), Path(args.engines_workdir)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cf_spec = json.loads(args.cf_engines) if args.cf_engines else None
    threads = [int(t) for t in args.engine_threads.split(",") if t.strip()]
    e1_docs = [int(n) for n in args.e1_docs.split(",") if n.strip()]
    timeout = args.engine_timeout
    all_engines = colbert_fast_engines(cf_spec, timeout) + (
        engines.peer_engines(args.engines_python, timeout) if args.peers else []
    )
    collections = collections_for(names, workdir, e1_docs, getattr(args, "cranfield", None), args.e2_queries)
    doc = engines.run(
        collections,
        all_engines,
        out,
        workdir,
        threads=threads,
        batch=args.engine_batch,
        latency_queries=args.latency_queries,
        log=log,
    )
    print(engines.markdown(doc))
    print(f"wrote {out / 'engines.json'}, {out / 'engines.md'}, {out / 'engines.png'}")
    bad = [r for r in doc["rows"] if r["engine"].startswith("colbert_fast") and r["status"] != "ok"]
    return 1 if bad else 0


def main(argv=None) -> int:
    """The driver protocol (engine_driver.py) with colbert_fast's adapter."""
    return engine_driver.main(argv, engines={"colbert_fast": ColbertFast})


if __name__ == "__main__":
    sys.exit(main())
