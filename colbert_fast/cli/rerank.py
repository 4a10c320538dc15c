"""`colbert-fast rerank`: re-rank another system's candidates (e.g. BM25 top 1000; paper section 3.5)."""

from __future__ import annotations

from .arguments import add_searcher_arguments, positive_int, print_timings, with_epilog

HELP = "re-rank each query's candidates from a run file (e.g. BM25's top 1000) with exact MaxSim"

EPILOG = """\
example:
  colbert-fast rerank --index indexes/msmarco --queries queries.dev.small.tsv \\
      --run bm25.top1000.tsv --output reranked.tsv
  colbert-fast eval --qrels qrels.dev.small.tsv --run reranked.tsv

--run holds the candidates: 'qid pid rank [score]' or TREC 'qid Q0 pid rank score tag' lines. Every
candidate pid must be in the index. The faiss part of the index is not needed (or loaded).
"""


def add_arguments(parser) -> None:
    with_epilog(parser, EPILOG)
    add_searcher_arguments(parser)
    parser.add_argument("--run", required=True, help="candidate run file to re-rank")
    parser.add_argument("--k", type=positive_int, help="keep the best k per query (default: all candidates)")


def run(args) -> int:
    from colbert_fast.retrieval.search import Searcher
    from colbert_fast.retrieval.tsv import load_run, read_queries, write_run

    qids, texts = read_queries(args.queries)
    candidates = load_run(args.run)
    keep = [i for i, q in enumerate(qids) if q in candidates]
    if not keep:
        raise SystemExit(f"no query of {args.queries} has candidates in {args.run}")
    searcher = Searcher(args.index, args.checkpoint, device=args.device, verify=not args.no_verify, load_ivf=False)
    out = []
    for s in range(0, len(keep), args.batch_size):
        batch = keep[s : s + args.batch_size]
        ranked = searcher.rerank([texts[i] for i in batch], [candidates[qids[i]] for i in batch], k=args.k)
        out.extend(zip([qids[i] for i in batch], ranked))
    write_run(args.output, out)
    skipped = len(qids) - len(keep)
    print(f"re-ranked {len(keep)} queries into {args.output}" + (f" ({skipped} had no candidates)" if skipped else ""))
    if args.timings:
        print_timings(searcher, len(keep))
    return 0
