"""The `colbert-fast` command line: one subcommand per module.

Each entry of COMMANDS names a module that defines
    HELP: str                               one line for `colbert-fast --help`
    add_arguments(parser) -> None
    run(args) -> int | None
Every module is imported to build the parser, so each imports its optional heavy dependencies
(faiss, transformers, matplotlib) inside run(): a missing one never breaks another command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "env": "colbert_fast.env",
    "bench": "colbert_fast.benchmark.cli",
    "profile": "colbert_fast.benchmark.profiler",
    "index": "colbert_fast.pipeline_cli.index",
    "search": "colbert_fast.pipeline_cli.search",
    "rerank": "colbert_fast.pipeline_cli.rerank",
    "eval": "colbert_fast.pipeline_cli.eval",
    "sharded": "colbert_fast.pipeline_cli.sharded",
    "experiment": "colbert_fast.pipeline_cli.experiment",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colbert-fast", description="Fused ColBERT late-interaction scoring.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
