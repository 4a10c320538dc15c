"""The evaluation protocol's outputs for people: the terminal tables and the quality-vs-latency PNG.

They read the results dict of colbert_fast.retrieval.experiment.run_experiment (and ablation).
"""

from __future__ import annotations

import os
from pathlib import Path

from .experiment import METRICS, STAGES

__all__ = ["format_ablation", "format_table", "plot"]


def format_table(results: dict) -> str:
    """The terminal table: quality and per-query latency per system, then index facts."""
    head = f"{'system':<16}" + "".join(f"{m:>11}" for m in METRICS) + "  |" + "".join(f"{s:>11}" for s in STAGES)
    head += f"{'total ms':>11}"
    lines = [
        f"{results['dataset']}: quality over {_nq(results)} queries; latency in ms per query",
        head,
        "-" * len(head),
    ]
    for name, sys_ in results["systems"].items():
        q, lat = sys_["quality"], sys_["latency_ms"]
        cells = "".join(f"{q[m]:>11.4f}" for m in METRICS) + "  |"
        cells += "".join(f"{lat[s]:>11.3f}" if s in lat else f"{'-':>11}" for s in STAGES)
        lines.append(f"{name:<16}{cells}{lat['total']:>11.3f}")
    ix = results["index"]
    lines.append(
        f"index: {ix['num_docs']} docs, {ix['num_tokens']} vectors x {ix['dim']}, built in {ix['seconds']:.1f} s "
        f"({ix['docs_per_s']:.1f} docs/s), {ix['total_bytes'] / 2**20:.2f} MiB on disk "
        f"(store {ix['bytes']['docs'] / 2**20:.2f}, faiss {ix['bytes']['ivf'] / 2**20:.2f}); "
        f"{ix['ivf']['codec']} IVF, {ix['ivf']['partitions']} partitions"
    )
    e2e = results["systems"].get("ColBERT e2e", {})
    if "nprobe" in e2e:
        recall = e2e.get("recall_vs_exhaustive", {})
        lines.append(
            f"ColBERT e2e: nprobe {e2e['nprobe']}, k' {e2e['neighbors_per_token']}"
            + "".join(f", recall@{c} vs exhaustive {v:.4f}" for c, v in recall.items())
        )
    ex = results.get("exactness")
    if ex:
        lines.append(
            "exhaustive search vs reference MaxSim: "
            f"nDCG@10 {ex['quality_e2e_exhaustive']['nDCG@10']:.4f} vs {ex['quality_reference']['nDCG@10']:.4f}, "
            f"equal: {ex['quality_equal']}, identical top-k lists: {ex['identical_top_k']}/{_nq(results)}, "
            f"max |score diff| {ex['max_abs_score_diff']:.1e}"
        )
    return "\n".join(lines)


def format_ablation(abl: dict) -> str:
    cols = list(next(iter(abl.values())).keys())[1:]
    head = f"{'variant':<22}" + "".join(f"{c + ' ' + m:>34}" for c in cols for m in ("nDCG@10", "MRR@10"))
    lines = [head, "-" * len(head)]
    for name, row in abl.items():
        lines.append(f"{name:<22}" + "".join(f"{row[c][m]:>34.4f}" for c in cols for m in ("nDCG@10", "MRR@10")))
    return "\n".join(lines)


def _nq(results: dict) -> int:
    return next(iter(results["systems"].values()))["quality"]["queries"]


def plot(results: dict, path: str | os.PathLike) -> Path:
    """PNG: nDCG@10 and MRR@10 against per-query latency, one point per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, sys_ in results["systems"].items():
        x = sys_["latency_ms"]["total"]
        for metric, marker in (("nDCG@10", "o"), ("MRR@10", "s")):
            ax.scatter([x], [sys_["quality"][metric]], marker=marker, color=_color(name))
        ax.annotate(name, (x, sys_["quality"]["nDCG@10"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per query, ms (log scale)")
    ax.set_ylabel("quality (o nDCG@10, s MRR@10)")
    ax.set_title(f"{results['dataset']}: quality vs latency ({results['protocol']['device']})")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_stores(stores: dict) -> str:
    """The token stores' table: bytes per token, quality under exhaustive scoring, overlap with fp16."""
    head = f"{'store':<10}{'B/token':>9}" + "".join(f"{m:>11}" for m in ("nDCG@10", "MRR@10", "Recall@100"))
    head += f"{'d nDCG@10':>11}{'d MRR@10':>10}{'top10 ovl':>11}{'score ms':>10}"
    lines = ["token stores, exhaustive scoring (d = change against fp16)", head, "-" * len(head)]
    base = stores["fp16"]["quality"]
    for name, row in stores.items():
        q = row["quality"]
        lines.append(
            f"{name:<10}{row['bytes_per_token']:>9g}"
            + "".join(f"{q[m]:>11.4f}" for m in ("nDCG@10", "MRR@10", "Recall@100"))
            + f"{q['nDCG@10'] - base['nDCG@10']:>+11.4f}{q['MRR@10'] - base['MRR@10']:>+10.4f}"
            + f"{row.get('top10_overlap', 1.0):>11.3f}{row['score_ms']:>10.2f}"
        )
    engines = {name: row["centroid_engine"] for name, row in stores.items() if "centroid_engine" in row}
    if engines:
        head = f"{'store':<10}{'nDCG@10':>9}{'MRR@10':>9}{'recall@10':>11}{'ms/query':>10}{'certified':>11}{'cells':>8}"
        title = "the centroid engine over the residual stores (the default search without an IVF; recall against"
        lines += ["", title, "the same store's exhaustive top 10; one query at a time)", head, "-" * len(head)]
        for name, e in engines.items():
            lines.append(
                f"{name:<10}{e['quality']['nDCG@10']:>9.4f}{e['quality']['MRR@10']:>9.4f}{e['recall@10']:>11.3f}"
                f"{e['ms_per_query']:>10.2f}{e['certified']:>11.2f}{e['cells_scored']:>8.3f}"
            )
    return "\n".join(lines)


def plot_stores(results: dict, path: str | os.PathLike) -> Path:
    """PNG, two panels against bytes per token (one point per token store): nDCG@10 and MRR@10
    under exhaustive scoring, and the mean overlap of each query's top 10 with the fp16 store's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stores = results["stores"]
    xs = [row["bytes_per_token"] for row in stores.values()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for metric, marker in (("nDCG@10", "o"), ("MRR@10", "s")):
        left.plot(xs, [row["quality"][metric] for row in stores.values()], marker=marker, label=metric)
    right.plot(xs, [row.get("top10_overlap", 1.0) for row in stores.values()], marker="o", color="tab:green")
    for name, row in stores.items():
        left.annotate(name, (row["bytes_per_token"], row["quality"]["nDCG@10"]), textcoords="offset points",
                      xytext=(4, 6), fontsize=8)  # fmt: skip
        right.annotate(name, (row["bytes_per_token"], row.get("top10_overlap", 1.0)), textcoords="offset points",
                       xytext=(4, -12), fontsize=8)  # fmt: skip
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("bytes per token (log scale)")
        ax.grid(True, alpha=0.3)
    left.set_ylabel("quality, exhaustive scoring")
    left.legend()
    right.set_ylabel("top-10 overlap with the fp16 store")
    fig.suptitle(f"{results['dataset']}: quality vs store size")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _color(name: str) -> str:
    return {"BM25": "tab:gray", "single-vector": "tab:orange", "ColBERT rerank": "tab:blue"}.get(name, "tab:green")
