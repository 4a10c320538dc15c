"""Arguments and printing shared by the subcommands (each subcommand's own are in its module)."""

from __future__ import annotations

import argparse
import math

# ---- argument types: a bad number or output path is an argparse error (exit 2) before any work ----


def _int_at_least(low: int, doc: str):
    """An argparse type: an integer >= low (else an argparse error naming the bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__doc__ = doc
    return parse


positive_int = _int_at_least(1, "An integer >= 1 (k, batch sizes, recall cut-offs, nprobe, repetitions, ...).")
non_negative_int = _int_at_least(0, "An integer >= 0 (shard numbers).")


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds: timeouts and budgets). NaN and inf are refused: a NaN timeout
    never fires and compares false everywhere."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def output_file(text: str) -> str:
    """A path a file may be written to: new, a regular file, or a symbolic link to one (followed).
    A FIFO, device node, socket, dangling link or directory is refused here, before the command
    works for hours, and again when the file is written (colbert_fast.files.atomic_path)."""
    from colbert_fast.files import check_output_file

    try:
        check_output_file(text)
    except OSError as e:
        raise argparse.ArgumentTypeError(e.strerror or str(e)) from None
    return text


def add_searcher_arguments(parser) -> None:
    """What `search` and `rerank` both take: the index, queries, output file and search options."""
    parser.add_argument("--index", required=True, help="index directory written by `colbert-fast index`")
    parser.add_argument("--queries", required=True, help="queries TSV: one 'qid<TAB>query text' per line")
    parser.add_argument(
        "--output", required=True, type=output_file, help="run file to write: 'qid<TAB>pid<TAB>rank<TAB>score' lines"
    )
    parser.add_argument(
        "--checkpoint", help="model directory (default: the one recorded in the index manifest at build time)"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="queries per batch (default 32)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the index files")
    parser.add_argument("--timings", action="store_true", help="print the per-stage latency breakdown")


def add_budget_arguments(parser, nprobe_help: str, neighbors_help: str) -> None:
    """--nprobe and --neighbors-per-token (alias --ncandidates): a candidate budget that overrides the default."""
    parser.add_argument("--nprobe", type=positive_int, help=nprobe_help)
    parser.add_argument(
        "--neighbors-per-token", "--ncandidates", dest="neighbors_per_token", type=positive_int, help=neighbors_help
    )


def add_build_arguments(parser, partitions_help: str = "IVF partitions (default ~8*sqrt(#token vectors))") -> None:
    """What `index` and `sharded index` both take to build (IndexConfig, resume, progress)."""
    parser.add_argument("--batch-size", type=positive_int, default=64, help="docs per encoder batch (default 64)")
    parser.add_argument(
        "--chunk-size", type=positive_int, default=10_000, help="docs per resumable chunk (default 10000)"
    )
    parser.add_argument("--partitions", type=positive_int, help=partitions_help)
    parser.add_argument("--nprobe", type=positive_int, default=10, help="default partitions probed at search time (10)")
    parser.add_argument(
        "--codec",
        choices=("auto", "pq", "flat"),
        default="auto",
        help="pq: 16 sub-vectors x 8 bits (paper); flat: exact; auto: pq from 10k vectors up",
    )
    parser.add_argument(
        "--store",
        choices=("fp16", "residual", "int8"),
        default="residual",
        help="token store: residual (ColBERTv2 codes, 38 B/token at dim 128 and 2 bits; the default), "
        "int8 (130 B/token), fp16 (256 B/token, the paper's); compressed stores are scored from their codes",
    )
    parser.add_argument("--nbits", type=int, choices=(1, 2, 4), default=2, help="bits per dim of --store residual (2)")
    parser.add_argument(
        "--keep-fp16", action="store_true", help="keep the fp16 vectors on disk beside a compressed store"
    )
    parser.add_argument(
        "--ivf",
        action=argparse.BooleanOptionalAction,
        help="--ivf: also build the faiss IVFPQ over every token (the paper's candidates, search --mode "
        "accurate|fast); --no-ivf: none (search by --mode centroid or exhaustive; the index can change "
        "in place: index add/delete/compact). Default: none for --store residual, built for fp16 and int8",
    )
    parser.add_argument("--restart", action="store_true", help="ignore the chunks of an interrupted run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def with_epilog(parser, epilog: str) -> None:
    """Show `epilog` (examples) under --help as written."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = epilog


def index_config(args):
    """The IndexConfig that the index and sharded-index commands build from their arguments."""
    from colbert_fast.retrieval.build import IndexConfig

    return IndexConfig(
        partitions=args.partitions,
        nprobe=args.nprobe,
        codec=args.codec,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        store=args.store,
        store_nbits=args.nbits,
        keep_fp16=args.keep_fp16,
        ivf=args.ivf,
    )


def print_timings(searcher, num_queries: int) -> None:
    total = sum(searcher.timings.values())
    print(f"latency per query over {num_queries} queries (ms):")
    for stage, seconds in searcher.timings.items():
        print(f"  {stage:<11} {1000 * seconds / num_queries:9.3f}")
    print(f"  {'total':<11} {1000 * total / num_queries:9.3f}")
