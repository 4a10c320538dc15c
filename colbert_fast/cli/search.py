"""`colbert-fast search`: end-to-end retrieval over an index (paper section 3.6)."""

from __future__ import annotations

from .arguments import add_budget_arguments, add_searcher_arguments, positive_int, print_timings, with_epilog

HELP = "retrieve the top k passages for each query from an index (exact MaxSim over faiss candidates, or every doc)"

EPILOG = """\
example:
  colbert-fast search --index indexes/msmarco --queries queries.dev.small.tsv --output run.tsv --k 1000
  colbert-fast eval --qrels qrels.dev.small.tsv --run run.tsv

--mode centroid (the default for an index with a residual store and no faiss IVF, as `index`
builds them) takes candidates from the store's own centroids (--nprobe per query token), keeps the
best --ncandidates by centroid scores and scores those exactly; --exact widens it until the top k
is certified, which then equals exhaustive search (docs/spec.md section 12).
--mode accurate (the default for an index with a faiss IVF, `index --ivf`): for every query token faiss returns
its nearest token vectors (a budget measured to find the exact top k); their passages are scored
exactly with MaxSim and the best --k are written. --mode fast uses the paper's smaller budget
(approximate); --mode paper is the same faiss path with --nprobe and --neighbors-per-token as
given. --mode exhaustive scores every passage (exact; no faiss; the default for an index with
neither IVF nor centroids).
"""


def add_arguments(parser) -> None:
    with_epilog(parser, EPILOG)
    add_searcher_arguments(parser)
    parser.add_argument("--k", type=positive_int, default=1000, help="passages per query (default 1000)")
    parser.add_argument(
        "--mode",
        choices=("accurate", "fast", "paper", "centroid", "exhaustive"),
        help="search mode (default: accurate with a faiss IVF, else centroid, else exhaustive)",
    )
    parser.add_argument(
        "--candidates", type=positive_int, help="centroid mode: docs scored exactly per query (default max(256, 10 k))"
    )
    parser.add_argument(
        "--exact", action="store_true", help="centroid mode: widen until the top k is certified (= exhaustive)"
    )
    add_budget_arguments(
        parser,
        "IVF partitions probed per query token (default: from --mode)",
        "k': token neighbours faiss returns per query token (default: from --mode and --k)",
    )


def run(args) -> int:
    from colbert_fast.retrieval.search import Searcher
    from colbert_fast.retrieval.tsv import read_queries, write_run

    qids, texts = read_queries(args.queries)
    searcher = Searcher(
        args.index,
        args.checkpoint,
        device=args.device,
        mode=args.mode,
        nprobe=args.nprobe,
        neighbors_per_token=args.neighbors_per_token,
        verify=not args.no_verify,
    )
    if searcher.mode != "centroid" and (args.candidates is not None or args.exact):
        raise SystemExit("colbert-fast search: --candidates and --exact apply to --mode centroid only")
    engine = {"ncandidates": args.candidates, "exact": args.exact} if searcher.mode == "centroid" else {}
    rankings = searcher.search(texts, k=args.k, batch_size=args.batch_size, **engine)
    write_run(args.output, zip(qids, rankings))
    print(f"wrote {sum(len(r) for r in rankings)} results for {len(qids)} queries to {args.output}")
    if args.timings:
        print_timings(searcher, len(qids))
    return 0
