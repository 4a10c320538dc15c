"""Writers for benchmark results: terminal table (rich), JSON, CSV, markdown, PNG plots, --compare.

The JSON document is the source of truth (`SCHEMA` below); CSV, markdown and plots are views of
it. --compare reads earlier JSON documents (the committed bench/results/*.json) and prints, per
row found in both, the ratio of medians (on the same device) and of speedups over the baseline.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

SCHEMA = "colbert_fast.bench/1"
ROW_FIELDS = (
    "workload",
    "dtype",
    "impl",
    "kind",
    "status",
    "note",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "reps",
    "warmup_ms",
    "useful_flops",
    "padded_flops",
    "min_bytes",
    "TFLOPs",
    "GBps",
    "frac_peak_flops",
    "frac_gemm",
    "frac_peak_bw",
    "frac_roofline",
    "kernel_ms",
    "kernel_warm_ms",
    "kernel_method",
    "kernel_TFLOPs",
    "kernel_GBps",
    "kernel_frac_roofline",
    "speedup",
    "peak_mem_bytes",
    "max_err",
    "tolerance",
    "docs_per_query",
    "queries",
)
TOP_FIELDS = ("schema", "created", "device", "versions", "git", "args", "peaks", "workloads", "notes", "rows")


def versions() -> dict:
    from .. import __version__

    def dist(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "colbert_fast": __version__,
        "torch": torch.__version__,
        "triton": dist("triton"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
    }


def git_info(path: Path | None = None) -> dict:
    """The commit the measured code came from: the package's source tree, or COLBERT_FAST_GIT_SHA
    where the tree is a copy without .git (a lent GPU machine)."""
    env_sha = os.environ.get("COLBERT_FAST_GIT_SHA")
    if env_sha:
        return {"sha": env_sha, "dirty": None}
    path = path or Path(__file__).resolve().parents[2]

    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], check=False, capture_output=True, text=True, timeout=10)

    try:
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"sha": sha.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def _utc_now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 (datetime.UTC needs Python 3.11)
    return now.isoformat(timespec="seconds")


def document(results, args: dict) -> dict:
    return {
        "schema": SCHEMA,
        "created": _utc_now(),
        "device": results.device,
        "versions": versions(),
        "git": git_info(),
        "args": args,
        "peaks": results.peaks,
        "workloads": results.workloads,
        "notes": results.notes,
        "rows": results.rows,
    }


# ---- files -------------------------------------------------------------------------------------


def write_json(doc: dict, path: Path) -> None:
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def write_csv(doc: dict, path: Path) -> None:
    meta = {
        "device": doc["device"].get("name"),
        "torch": doc["versions"]["torch"],
        "triton": doc["versions"]["triton"],
        "cuda": doc["versions"]["cuda"],
        "colbert_fast": doc["versions"]["colbert_fast"],
        "git_sha": doc["git"]["sha"],
    }
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROW_FIELDS) + list(meta))
        w.writeheader()
        for row in doc["rows"]:
            w.writerow({**{k: row.get(k) for k in ROW_FIELDS}, **meta})


def _fmt(x, spec: str, empty: str = "-") -> str:
    return empty if x is None else format(x, spec)


def _mem(n) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _groups(doc: dict):
    """[(workload description, rows)] in run order."""
    out = []
    for w in doc["workloads"]:
        rows = [r for r in doc["rows"] if r["workload"] == w["name"] and r["dtype"] == w["dtype"]]
        out.append((w, rows))
    return out


def _heading(w: dict, rows: list[dict]) -> str:
    r = rows[0] if rows else {}
    useful, padded = r.get("useful_flops", 0), r.get("padded_flops", 0)
    waste = 1 - useful / padded if padded else 0
    scaled = f" (scaled: {w['scaled']})" if w.get("scaled") else ""
    return (
        f"{w['name']} {w['dtype']}: {w['title']}{scaled} | useful {useful / 1e9:.3g} GFLOP, baseline "
        f"{padded / 1e9:.3g} GFLOP ({100 * waste:.0f}% padding), min {r.get('min_bytes', 0) / 1e6:.3g} MB"
    )


def _kernel_cell(r: dict) -> str:
    if r.get("kernel_ms") is None:
        return "-"
    how = "graph" if r.get("kernel_method") == "cuda graph" else "b2b"
    return f"{r['kernel_ms']:.3f} ({how})"


def _cells(r: dict) -> list[str]:
    spread = f"{_fmt(r['median_ms'], '.3f')} ({_fmt(r['p20_ms'], '.3f')}-{_fmt(r['p80_ms'], '.3f')})"
    status = r["status"] if r["status"] != "ok" else ""
    note = (status + ": " if status else "") + (r.get("note") or "")
    method = r.get("kernel_method") or ""
    if method.startswith(("back-to-back (", "failed")):
        note = (note + "; " if note else "") + f"kernel: {method}"
    return [
        r["impl"],
        spread if r["median_ms"] is not None else "-",
        _kernel_cell(r),
        _fmt(r["warmup_ms"], ".1f"),
        _fmt(r["TFLOPs"], ".3g"),
        _fmt(r["GBps"], ".3g"),
        _pct(r["frac_peak_flops"]),
        _pct(r.get("frac_gemm")),
        _pct(r["frac_peak_bw"]),
        _pct(r["frac_roofline"]),
        _pct(r.get("kernel_frac_roofline")),
        _fmt(r["speedup"], ".2f", "-") + ("x" if r["speedup"] else ""),
        _mem(r["peak_mem_bytes"]),
        note,
    ]


HEADERS = [
    "impl",
    "call ms (p20-p80)",
    "kernel ms",
    "warm-up ms",
    "TFLOP/s",
    "GB/s",
    "%peak",
    "%GEMM",
    "%copy",
    "%roofline",
    "kernel %roofline",
    "speedup",
    "peak mem",
    "note",
]


def _peaks_line(doc: dict) -> str:
    p = doc["peaks"]
    mm = ", ".join(f"{k} GEMM {v:.3g} TFLOP/s" for k, v in p["matmul_TFLOPs"].items())
    line = f"measured peaks: copy {p['copy_GBps']:.4g} GB/s, {mm} (torch.mm)"
    src = p.get("compute_source", {})
    ceilings = [
        f"{k} {v:.3g} TFLOP/s ({src.get(k, '?')})"
        for k, v in p.get("compute_TFLOPs", {}).items()
        if src.get(k) != "torch.mm"
    ]
    return line + (f"; arithmetic ceilings (%peak): {', '.join(ceilings)}" if ceilings else "")


def print_table(doc: dict, console=None) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is in the bench extra; fall back to plain text
        print(markdown(doc))
        return
    console = console or Console(width=max(160, Console().width))
    d = doc["device"]
    console.print(
        f"[bold]{d.get('name')}[/bold] ({d['type']}, {d['threads']} threads) | "
        f"torch {doc['versions']['torch']} | git {str(doc['git']['sha'])[:10]}"
    )
    console.print(_peaks_line(doc))
    for w, rows in _groups(doc):
        table = Table(title=_heading(w, rows), title_justify="left", show_lines=False)
        for h in HEADERS:
            table.add_column(h, overflow="fold", max_width=60 if h == "note" else None)
        for r in rows:
            if r["status"] == "unavailable":
                continue
            style = {"wrong": "red", "error": "red", "skipped": "dim"}.get(r["status"])
            table.add_row(*_cells(r), style=style)
        console.print(table)
    for n in doc["notes"]:
        console.print(f"[dim]note: {n}[/dim]")


def markdown(doc: dict) -> str:
    d, v, g = doc["device"], doc["versions"], doc["git"]
    lines = [
        f"# colbert_fast benchmark: {d.get('name')}",
        "",
        f"- created {doc['created']}; git {g['sha']}{' (dirty)' if g.get('dirty') else ''}",
        (
            f"- torch {v['torch']}, triton {v['triton']}, CUDA {v['cuda']}, colbert_fast {v['colbert_fast']}, "
            f"python {v['python']}; {d['threads']} CPU threads"
        ),
        f"- {_peaks_line(doc)}",
        "",
    ]
    for w, rows in _groups(doc):
        lines += [f"## {_heading(w, rows)}", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += [
            "| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |"
            for r in rows
            if r["status"] != "unavailable"
        ]
        lines.append("")
    lines += [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


# ---- plots -------------------------------------------------------------------------------------


def write_plots(doc: dict, out: Path) -> list[str]:
    """latency_vs_docs.png and roofline.png; returns notes (e.g. why plots were skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["plots skipped: matplotlib is not installed (pip install matplotlib)"]
    timed = [r for r in doc["rows"] if r["median_ms"]]
    notes = []
    # Latency against the number of docs each query scores, one line per (impl, dtype), over the
    # single-query rerank workloads (R1, R2 and the --sweep points S<K>).
    fig, ax = plt.subplots(figsize=(7, 5))
    series: dict = {}
    for r in timed:
        if r["queries"] == 1 and r["workload"][0] in "RS":
            series.setdefault((r["impl"], r["dtype"]), []).append((r["docs_per_query"], r["median_ms"]))
    for (impl, dt), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{impl} {dt}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="candidate docs per query",
        ylabel="median latency (ms)",
        title=f"1-query rerank latency: {doc['device'].get('name')}",
    )
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_vs_docs.png", dpi=120)
    plt.close(fig)
    # Roofline against the measured ceilings.
    fig, ax = plt.subplots(figsize=(8, 6))
    peaks = doc["peaks"]
    bw = peaks["copy_GBps"] * 1e9
    xs = [2.0**e for e in range(-4, 14)]
    for dt, tf in peaks.get("compute_TFLOPs", peaks["matmul_TFLOPs"]).items():
        ax.plot(
            xs,
            [min(tf, x * bw / 1e12) for x in xs],
            "--",
            label=f"ceiling {dt}: {tf:.3g} TFLOP/s, {peaks['copy_GBps']:.3g} GB/s",
        )
    markers = "osD^v<>ph*"
    wl = sorted({r["workload"] for r in timed})
    for r in timed:
        x = r["useful_flops"] / r["min_bytes"]
        ax.scatter([x], [r["TFLOPs"]], marker=markers[wl.index(r["workload"]) % len(markers)], s=25)
        ax.annotate(f"{r['workload']} {r['impl']}", (x, r["TFLOPs"]), fontsize=6)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="useful FLOPs per minimum byte",
        ylabel="achieved TFLOP/s (useful)",
        title=f"roofline: {doc['device'].get('name')}",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roofline.png", dpi=120)
    plt.close(fig)
    notes.append(f"plots: {out / 'latency_vs_docs.png'}, {out / 'roofline.png'}")
    return notes


def write_all(doc: dict, out: Path, stem: str = "bench") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.csv", out / f"{stem}.md"]
    write_json(doc, paths[0])
    write_csv(doc, paths[1])
    paths[2].write_text(markdown(doc))
    return paths


# ---- --compare ---------------------------------------------------------------------------------


# Results written before the padded-PyTorch row was named "baseline" call it "reference".
_OLD_NAMES = {"reference": "baseline", "reference+compile": "baseline+compile"}


def load(path: Path) -> dict:
    doc = json.loads(Path(path).read_text())
    missing = [k for k in TOP_FIELDS if k not in doc]
    if doc.get("schema") != SCHEMA or missing:
        raise ValueError(f"{path} is not a colbert_fast benchmark result ({SCHEMA}); missing {missing}")
    for r in doc["rows"]:
        r["impl"] = _OLD_NAMES.get(r.get("impl"), r.get("impl"))
        r["kind"] = _OLD_NAMES.get(r.get("kind"), r.get("kind"))
    return doc


def _key(doc: dict, r: dict) -> tuple:
    size = next((w["size"] for w in doc["workloads"] if w["name"] == r["workload"]), None)
    return (r["workload"], size, r["dtype"], r["impl"])


def compare(current: dict, earlier: list[tuple[str, dict]]) -> list[dict]:
    """Rows present (and timed) in both: median ratio now/then (same device only) and speedups."""
    out = []
    cur_dev = current["device"].get("name")
    for label, old in earlier:
        same_device = old["device"].get("name") == cur_dev
        old_rows = {_key(old, r): r for r in old["rows"] if r.get("median_ms")}
        for r in current["rows"]:
            o = old_rows.get(_key(current, r))
            if o is None or not r.get("median_ms"):
                continue
            out.append(
                {
                    "against": label,
                    "same_device": same_device,
                    "workload": r["workload"],
                    "dtype": r["dtype"],
                    "impl": r["impl"],
                    "then_ms": o["median_ms"],
                    "now_ms": r["median_ms"],
                    "time_ratio": r["median_ms"] / o["median_ms"] if same_device else None,
                    "then_speedup": o.get("speedup"),
                    "now_speedup": r.get("speedup"),
                }
            )
    return out


def print_compare(current: dict, earlier: list[tuple[str, dict]]) -> list[dict]:
    rows = compare(current, earlier)
    if not earlier:
        print("--compare: no earlier results found")
        return rows
    for label, old in earlier:
        if old["device"].get("name") != current["device"].get("name"):
            print(
                f"--compare {label}: measured on {old['device'].get('name')!r}, not {current['device'].get('name')!r}:"
                " times are not comparable; speedups over the baseline are shown"
            )
    if not rows:
        print("--compare: no row (workload, size, dtype, impl) is in both")
        return rows
    header = (
        f"{'against':28s} {'workload':8s} {'dtype':5s} {'impl':24s} {'then ms':>10s} {'now ms':>10s} "
        f"{'now/then':>9s} {'speedup then':>12s} {'speedup now':>11s}"
    )
    print(header)
    for c in rows:
        ratio = "-" if c["time_ratio"] is None else f"{c['time_ratio']:.2f}"
        print(
            f"{c['against'][-28:]:28s} {c['workload']:8s} {c['dtype']:5s} {c['impl']:24s} {c['then_ms']:10.3f} "
            f"{c['now_ms']:10.3f} {ratio:>9s} {_fmt(c['then_speedup'], '.2f'):>12s} "
            f"{_fmt(c['now_speedup'], '.2f'):>11s}"
        )
    return rows
