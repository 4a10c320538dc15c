"""`colbert-fast sharded index | search | rerank`: the pipeline over a sharded index (colbert_fast.retrieval.sharded).

Run under torchrun for several ranks; without torchrun it is one process serving every shard.
"""

from __future__ import annotations

from .arguments import (
    add_budget_arguments,
    add_build_arguments,
    index_config,
    non_negative_int,
    output_file,
    positive_float,
    positive_int,
    with_epilog,
)

HELP = "sharded index / search / rerank across processes and machines (run under torchrun)"

EPILOG = """\
examples (one machine, 2 processes; CPU ranks use gloo, GPU ranks NCCL):
  torchrun --nproc-per-node 2 -m colbert_fast sharded index --checkpoint models/colbertv2.0 \\
      --collection collection.tsv --index indexes/msmarco-sharded
  torchrun --nproc-per-node 2 -m colbert_fast sharded search --index indexes/msmarco-sharded \\
      --queries queries.dev.small.tsv --output run.tsv --k 1000 --timings
  colbert-fast sharded index ... --shards 1          # rebuild shard 1 alone, in one process

Shard s is built and served by rank s % world size. Rank 0 writes the output file. See docs/sharded.md.
"""


def add_arguments(parser) -> None:
    with_epilog(parser, EPILOG)
    sub = parser.add_subparsers(dest="sharded_command", metavar="ACTION")
    sub.required = True

    def common(p) -> None:
        p.add_argument("--index", required=True, help="sharded index directory")
        p.add_argument("--checkpoint", help="model directory (default: the one in the index manifest)")
        p.add_argument("--device", help="cpu or cuda (default: cuda:LOCAL_RANK under NCCL, else cpu)")
        p.add_argument("--dist-backend", choices=("gloo", "nccl"), help="default nccl with CUDA, else gloo")
        p.add_argument("--timeout", type=positive_float, default=600.0, help="seconds before a silent rank is reported")

    p = sub.add_parser("index", help="encode a collection into a sharded index (each rank its shards)")
    common(p)
    p.add_argument("--collection", required=True, help="collection TSV: 'pid<TAB>text' per line")
    p.add_argument("--num-shards", type=positive_int, help="default: the number of ranks")
    p.add_argument("--shards", type=non_negative_int, nargs="+", help="build only these shards (rebuild one alone)")
    add_build_arguments(p, partitions_help="IVF partitions per shard (default ~8*sqrt(#vectors))")
    p.add_argument(
        "--build-timeout",
        type=positive_float,
        default=7 * 24 * 3600.0,
        help="seconds to wait for the other ranks' shards",
    )

    for name, text in (("search", "retrieve the global top k per query"), ("rerank", "re-rank a run's candidates")):
        p = sub.add_parser(name, help=text)
        common(p)
        p.add_argument("--queries", required=True, help="queries TSV: 'qid<TAB>query text' per line")
        p.add_argument(
            "--output", required=True, type=output_file, help="run file rank 0 writes: 'qid<TAB>pid<TAB>rank<TAB>score'"
        )
        p.add_argument("--batch-size", type=positive_int, default=32, help="queries per batch (default 32)")
        p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the shard files")
        p.add_argument("--allow-partial", action="store_true", help="answer from the shards that answered")
        p.add_argument("--timings", action="store_true", help="print throughput, latency and per-stage times")
        p.add_argument("--repeat", type=positive_int, default=1, help="run the queries this many times (benchmarking)")
        if name == "search":
            p.add_argument("--k", type=positive_int, default=1000, help="passages per query (default 1000)")
            add_budget_arguments(
                p,
                "IVF partitions probed per shard (default: the accurate budget)",
                "k': token neighbours per query token per shard (default: the accurate budget for k)",
            )
            p.add_argument(
                "--split-candidates", action="store_true", help="k'/#shards neighbours per shard (less work)"
            )
        else:
            p.add_argument("--run", required=True, help="candidate run file to re-rank")
            p.add_argument("--k", type=positive_int, help="keep the best k per query (default: all candidates)")


def _cluster(args):
    import os

    from colbert_fast.retrieval.sharded import Cluster

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return Cluster.init(args.dist_backend, device=args.device, timeout=args.timeout)
    return Cluster.local(args.device)


def run(args) -> int:
    cluster = _cluster(args)
    try:
        if args.sharded_command == "index":
            return _index(args, cluster)
        return _query(args, cluster)
    finally:
        cluster.close()


def _index(args, cluster) -> int:
    from pathlib import Path

    from colbert_fast.retrieval.encoder import ColBERT
    from colbert_fast.retrieval.sharded import build_sharded_index

    if not args.checkpoint:
        raise SystemExit("sharded index needs --checkpoint")
    encoder = ColBERT.load(args.checkpoint, device=str(cluster.device))
    if args.ivf is None:
        args.ivf = True  # sharded search takes candidates from each shard's faiss IVF
    config = index_config(args)
    index = build_sharded_index(
        args.collection,
        args.index,
        encoder,
        config,
        cluster=cluster,
        num_shards=args.num_shards,
        shards=args.shards,
        checkpoint=str(Path(args.checkpoint).resolve()),
        resume=not args.restart,
        progress=not args.quiet and cluster.rank == 0,
        build_timeout=args.build_timeout,
    )
    if cluster.rank == 0:
        for s in index.manifest["shards"]:
            print(
                f"shard {s['shard']}: docs [{s['doc_start']}, {s['doc_end']}), {s['num_tokens']} token vectors, "
                f"{s['ivf']['codec']} IVF with {s['ivf']['partitions']} partitions"
            )
        print(f"indexed {index.num_docs} docs into {len(index.shards)} shards at {args.index}")
    return 0


def _query(args, cluster) -> int:
    import statistics
    import time

    from colbert_fast.retrieval.sharded import ShardedSearcher
    from colbert_fast.retrieval.tsv import load_run, read_queries, write_run

    qids, texts = read_queries(args.queries)
    searcher = ShardedSearcher(
        args.index,
        cluster,
        args.checkpoint,
        nprobe=getattr(args, "nprobe", None),
        neighbors_per_token=getattr(args, "neighbors_per_token", None),
        verify=not args.no_verify,
        load_ivf=args.sharded_command == "search",
        allow_partial=args.allow_partial,
        split_candidates=getattr(args, "split_candidates", False),
    )
    if args.sharded_command == "rerank":
        candidates = load_run(args.run)
        keep = [i for i, q in enumerate(qids) if q in candidates]
        if not keep:
            raise SystemExit(f"no query of {args.queries} has candidates in {args.run}")
        qids = [qids[i] for i in keep]
        texts = [texts[i] for i in keep]
        cands = [candidates[q] for q in qids]

    walls, batch_walls = [], []
    for _ in range(max(1, args.repeat)):
        searcher.reset_timings()
        out = []
        t0 = time.perf_counter()
        for s in range(0, len(texts), args.batch_size):
            tb = time.perf_counter()
            if args.sharded_command == "search":
                out.extend(searcher.search(texts[s : s + args.batch_size], k=args.k, batch_size=args.batch_size))
            else:
                out.extend(searcher.rerank(texts[s : s + args.batch_size], cands[s : s + args.batch_size], k=args.k))
            batch_walls.append(time.perf_counter() - tb)
        walls.append(time.perf_counter() - t0)
    if cluster.rank == 0:
        write_run(args.output, zip(qids, out))
        print(f"wrote {sum(len(r) for r in out)} results for {len(qids)} queries to {args.output}")
        if searcher.report.failed:
            print(f"PARTIAL: shards {searcher.report.answered} answered; failed: {searcher.report.failed}")
        if args.timings:
            wall = statistics.median(walls)
            print(
                f"ranks {cluster.world_size} ({cluster.backend or 'local'}, {cluster.device}), "
                f"{len(qids)} queries, batch {args.batch_size}, {len(walls)} repeat(s): "
                f"throughput {len(qids) / wall:.1f} queries/s, "
                f"batch latency median {1000 * statistics.median(batch_walls):.1f} ms "
                f"(min {1000 * min(batch_walls):.1f}, max {1000 * max(batch_walls):.1f})"
            )
            print(
                "rank 0 stage times per query (ms, last repeat): "
                + ", ".join(f"{k} {1000 * v / len(qids):.2f}" for k, v in searcher.timings.items())
                + "; of local: "
                + ", ".join(f"{k} {1000 * v / len(qids):.2f}" for k, v in searcher.shard_timings().items())
            )
    return 0
