"""`colbert-fast eval`: MRR@10, nDCG@10 and Recall@50/200/1000 of a run against qrels."""

from __future__ import annotations

from .arguments import positive_int, with_epilog

HELP = "score a run file against qrels: MRR@10, nDCG@10, Recall@50/200/1000"

EPILOG = """\
example:
  colbert-fast eval --qrels qrels.dev.small.tsv --run run.tsv

qrels: 'qid 0 pid grade' lines (MS MARCO/TREC; tabs or spaces). run: 'qid pid rank [score]' or TREC
'qid Q0 pid rank score tag'. Metrics average over queries with a relevant passage; a query missing
from the run scores 0.
"""


def add_arguments(parser) -> None:
    with_epilog(parser, EPILOG)
    parser.add_argument("--qrels", required=True, help="relevance judgements file")
    parser.add_argument("--run", required=True, help="run file to evaluate")
    parser.add_argument("--recall", type=positive_int, nargs="+", default=[50, 200, 1000], help="Recall@k cut-offs")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    import json

    from colbert_fast.retrieval.metrics import evaluate
    from colbert_fast.retrieval.tsv import load_qrels, load_run

    metrics = evaluate(load_run(args.run), load_qrels(args.qrels), args.recall)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for name, value in metrics.items():
            print(f"{name:<26} {value:.4f}" if isinstance(value, float) else f"{name:<26} {value}")
    return 0
