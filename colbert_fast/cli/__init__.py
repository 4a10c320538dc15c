"""The `colbert-fast` command line (also `python -m colbert_fast`): one subcommand per module of this package.

Every command of the project lives here; the libraries they drive (colbert_fast.benchmark,
colbert_fast.retrieval, the scoring API) parse no arguments. Each entry of COMMANDS names a
module that defines
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
    "env": "colbert_fast.cli.env",
    "bench": "colbert_fast.cli.bench",
    "profile": "colbert_fast.cli.profile",
    "index": "colbert_fast.cli.index",
    "search": "colbert_fast.cli.search",
    "rerank": "colbert_fast.cli.rerank",
    "eval": "colbert_fast.cli.eval",
    "sharded": "colbert_fast.cli.sharded",
    "experiment": "colbert_fast.cli.experiment",
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
