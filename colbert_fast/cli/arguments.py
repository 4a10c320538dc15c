"""Helpers shared by the pipeline subcommands."""

from __future__ import annotations

import os


def read_queries(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """A queries TSV: 'qid <TAB> text' per line. Returns (qids, texts)."""
    qids, texts = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            qid, sep, text = line.partition("\t")
            if not sep or not qid.strip():
                raise ValueError(f"{path}:{lineno}: expected 'qid<TAB>query text'")
            qids.append(qid.strip())
            texts.append(text)
    if not qids:
        raise ValueError(f"{path} holds no queries")
    return qids, texts


def add_searcher_arguments(parser) -> None:
    parser.add_argument("--index", required=True, help="index directory written by `colbert-fast index`")
    parser.add_argument("--queries", required=True, help="queries TSV: one 'qid<TAB>query text' per line")
    parser.add_argument("--output", required=True, help="run file to write: 'qid<TAB>pid<TAB>rank<TAB>score' lines")
    parser.add_argument(
        "--checkpoint", help="model directory (default: the one recorded in the index manifest at build time)"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=32, help="queries per batch (default 32)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the index files")
    parser.add_argument("--timings", action="store_true", help="print the per-stage latency breakdown")


def print_timings(searcher, num_queries: int) -> None:
    total = sum(searcher.timings.values())
    print(f"latency per query over {num_queries} queries (ms):")
    for stage, seconds in searcher.timings.items():
        print(f"  {stage:<11} {1000 * seconds / num_queries:9.3f}")
    print(f"  {'total':<11} {1000 * total / num_queries:9.3f}")


def index_config(args):
    """The IndexConfig that the index and sharded-index commands build from their arguments."""
    from ..index import IndexConfig

    return IndexConfig(
        partitions=args.partitions,
        nprobe=args.nprobe,
        codec=args.codec,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
    )
