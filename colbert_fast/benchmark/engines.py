"""End-to-end search side by side: colbert_fast's search modes and the engine peers (E1, E2).

    `colbert-fast bench --workload E1,E2`   (colbert_fast/cli/bench_engines.py builds the workloads)

Workloads (docs/perf.md, issue 18):
    E1   the synthetic clustered collection (colbert_fast.benchmark.collections) at dim 128:
         10k docs (100k with --e1-docs 100000), 64 queries of 32 tokens
    E2   Cranfield (1,400 abstracts, 225 judged queries) embedded with the package's MiniLM model

Every engine gets the very same embeddings, exported once to a safetensors file, and runs in a
process of its own (so build and search peak RSS, VmHWM, are its own): `SubprocessEngine` runs
a driver script (engine_driver.py's protocol) once to build the index (timed, at the largest
thread count) and once per thread count to open it (timed) and search with each setting. The
peers (fast-plaid, xtr-warp-rs) run under .venv-engines/bin/python (`make peers-engines`); a
peer whose interpreter is missing gets rows that say "not installed". colbert_fast runs the same
protocol with the project's interpreter (its adapter takes a list of (label, search kwargs)
settings over one index config, so a new search mode is one more setting, not new code).

Per engine, setting and thread count: build s, index bytes per token on disk, peak RSS in build
and in search, load s, latency p50/p95 one query at a time, throughput searching batches of 64,
recall@10 and @100 against exhaustive MaxSim over the same embeddings (computed here once with
cf.maxsim_packed), the collection's own quality metrics where it has qrels (nDCG@10, MRR@10), and
the fraction of docs scored exactly where the engine reports it. Threads go to the subprocess as
torch.set_num_threads and OMP_NUM_THREADS / RAYON_NUM_THREADS / MKL_NUM_THREADS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import colbert_fast as cf
from colbert_fast import PackedDocs

from .report import git_info

__all__ = [
    "DRIVER",
    "ENGINES_PYTHON",
    "Collection",
    "SubprocessEngine",
    "exhaustive_topk",
    "export",
    "markdown",
    "peer_engines",
    "rewrite",
    "run",
    "write_plot",
]

DRIVER = Path(__file__).resolve().parent / "engine_driver.py"
ENGINES_PYTHON = Path(".venv-engines") / "bin" / "python"
KS = (10, 100)
SCHEMA = "colbert_fast.bench.engines/1"


@dataclasses.dataclass
class Collection:
    """One workload: docs, queries and (optionally) what judges a ranking by relevance.

    quality: a callable {qid: [pid, ...] best first} -> {metric: value} (e.g. nDCG@10, MRR@10).
    """

    name: str
    docs: PackedDocs
    Q: torch.Tensor  # fp32 [B, Lq, dim]
    q_mask: torch.Tensor  # bool [B, Lq]
    pids: list[str] | None = None  # the collection's doc ids by position (default "0".."N-1")
    qids: list[str] | None = None
    quality: Callable[[dict], dict] | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pids = self.pids or [str(i) for i in range(self.docs.num_docs)]
        self.qids = self.qids or [str(i) for i in range(self.Q.shape[0])]


def export(collection: Collection, path: Path) -> str:
    """Write the collection's embeddings for the drivers (safetensors); returns the docs' sha256 (16 hex)."""
    from safetensors.torch import save_file

    tensors = {
        "doc_embeddings": collection.docs.embeddings.to(torch.float16).contiguous(),
        "doc_lengths": collection.docs.lengths.to(torch.int64).contiguous(),
        "queries": collection.Q.to(torch.float32).contiguous(),
        "query_mask": collection.q_mask.to(torch.bool).contiguous(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    h = hashlib.sha256()  # of the docs alone: an index is reused whatever the queries
    for name in ("doc_embeddings", "doc_lengths"):
        h.update(tensors[name].view(torch.uint8).reshape(-1).numpy().tobytes())
    return h.hexdigest()[:16]


def exhaustive_topk(collection: Collection, k: int, pairs_per_call: int = 1 << 16) -> list[list[int]]:
    """The exact top k doc positions per query by MaxSim over every doc (the ground truth)."""
    docs, n = collection.docs, collection.docs.num_docs
    out = []
    for b in range(collection.Q.shape[0]):
        Q, m = collection.Q[b : b + 1], collection.q_mask[b : b + 1]
        best_s, best_r = torch.empty(0), torch.empty(0, dtype=torch.int64)
        for s in range(0, n, pairs_per_call):
            rows = torch.arange(s, min(n, s + pairs_per_call))
            scores = cf.maxsim_packed(Q.to(docs.dtype), docs, rows[None], m)[0].float()
            best_s, best_r = torch.cat([best_s, scores]), torch.cat([best_r, rows])
            top = torch.topk(best_s, min(k, best_s.numel()))
            best_s, best_r = top.values, best_r[top.indices]
        out.append(best_r.tolist())
    return out


class SubprocessEngine:
    """An engine driven over the engine_driver.py protocol in a subprocess.

    Args:
        name: the engine's name in the results ("fast-plaid", "colbert_fast", ...).
        command: the interpreter and script (or -m module) to run with SPEC OUT appended.
        engine: the driver's engine key (the spec's "engine").
        settings: [(label, search kwargs)].
        build: index creation kwargs.
        python: the interpreter that must exist (default command[0]); missing -> "not installed".
        timeout_s: per subprocess.
        env: extra environment variables (e.g. PYTHONPATH for the project's own interpreter).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        engine: str,
        settings: Sequence[tuple[str, dict]],
        build: dict | None = None,
        python: str | os.PathLike | None = None,
        timeout_s: float | None = None,
        env: dict | None = None,
    ):
        self.env = dict(env or {})
        self.name, self.command, self.engine = name, [str(c) for c in command], engine
        self.settings = [(label, dict(kw)) for label, kw in settings]
        self.build = dict(build or {})
        self.python = Path(python or command[0])
        self.timeout_s = timeout_s

    def available(self) -> str | None:
        """None when it can run, else why not."""
        if not (self.python.exists() or self.python == Path(sys.executable)):
            return f"not installed ({self.python} missing: make peers-engines)"
        return None

    def _call(self, spec: dict, workdir: Path, threads: int, tag: str) -> dict:
        spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.out.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        out_path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for var in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        env.update(self.env)
        proc = subprocess.run(
            [*self.command, str(spec_path), str(out_path)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=self.timeout_s,
        )
        (workdir / f"{tag}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not out_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"driver exited {proc.returncode}: {' | '.join(tail)}")
        return json.loads(out_path.read_text())

    def run(self, embeddings: Path, digest: str, workdir: Path, threads: Sequence[int], opts: dict) -> dict:
        """{"build": build phase output, "search": {threads: search phase output}}."""
        workdir = Path(os.path.abspath(workdir))  # the subprocess runs in workdir: no relative paths
        workdir.mkdir(parents=True, exist_ok=True)
        index_dir = workdir / "index"
        base = {"engine": self.engine, "embeddings": str(embeddings.resolve()), "index_dir": str(index_dir.resolve())}
        key = json.dumps({"digest": digest, "build": self.build, "command": self.command}, sort_keys=True)
        build_file = workdir / "build.json"
        build = json.loads(build_file.read_text()) if build_file.exists() else None
        if build is not None and build.get("key") == key and index_dir.is_dir() and opts.get("reuse", True):
            build["reused"] = True
        else:
            import shutil

            shutil.rmtree(index_dir, ignore_errors=True)
            t = max(threads)
            build = self._call({**base, "phase": "build", "build": self.build, "threads": t}, workdir, t, "build")
            build["key"], build["reused"] = key, False
            build_file.write_text(json.dumps(build))
        search = {}
        for t in threads:
            spec = {
                **base,
                "phase": "search",
                "threads": t,
                "settings": [{"label": label, "kwargs": kw} for label, kw in self.settings],
                "k": opts.get("k", max(KS)),
                "batch": opts.get("batch", 64),
                "latency_queries": opts.get("latency_queries", 10**9),
            }
            search[t] = self._call(spec, workdir, t, f"search_t{t}")
        return {"build": build, "search": search}


def peer_engines(python: str | os.PathLike = ENGINES_PYTHON, timeout_s: float | None = None) -> list[SubprocessEngine]:
    """fast-plaid and xtr-warp-rs, each at its defaults and at a setting tuned for recall.

    fast-plaid 1.7.0.2110: create(nbits=4 default); search(n_ivf_probe=8, n_full_scores=4096 by
        default); tuned: n_ivf_probe=32, n_full_scores=16384 (more IVF cells probed and more
        docs fully scored).
    xtr-warp-rs 2.1.0.2110: create(nbits=4 default); search parameters chosen by its own
        heuristics from the index's density when None (nprobe 2-32, t_prime, bound,
        centroid_score_threshold 0.4-0.5, max_candidates); tuned: nprobe=32, bound=512,
        centroid_score_threshold=0.3, t_prime=200000.
    """
    command = [os.path.abspath(python), "-P", str(DRIVER)]  # abspath, not resolve: keep the venv's link
    return [
        SubprocessEngine(
            "fast-plaid",
            command,
            "fast-plaid",
            [("defaults", {}), ("tuned", {"n_ivf_probe": 32, "n_full_scores": 16384})],
            build={"nbits": 4},
            timeout_s=timeout_s,
        ),
        SubprocessEngine(
            "xtr-warp",
            command,
            "xtr-warp",
            [
                ("defaults", {}),
                ("tuned", {"nprobe": 32, "bound": 512, "centroid_score_threshold": 0.3, "t_prime": 200_000}),
            ],
            build={"nbits": 4},
            timeout_s=timeout_s,
        ),
    ]


# ---- measuring -----------------------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _recall(found: list[list[int]], truth: list[list[int]], k: int) -> float:
    return statistics.fmean(len(set(f[:k]) & set(t[:k])) / max(1, len(t[:k])) for f, t in zip(found, truth))


def _rows(collection: Collection, engine, result: dict | None, truth, status: str, note: str = "") -> list[dict]:
    base = {"workload": collection.name, "engine": engine.name, "num_docs": collection.docs.num_docs}
    if result is None:
        return [
            {**base, "setting": label, "kwargs": kw, "threads": None, "status": status, "note": note}
            for label, kw in engine.settings
        ]
    build = result["build"]
    tokens = collection.docs.num_tokens
    rows = []
    for t, search in result["search"].items():
        for label, s in search["settings"].items():
            row = {
                **base,
                "setting": label,
                "kwargs": s.get("kwargs", {}),
                "threads": int(t),
                "status": "ok",
                "note": "index reused from an earlier run (its build figures)" if build.get("reused") else "",
                "build_s": build.get("build_s"),
                "build_threads": build.get("threads"),
                "index_bytes": build.get("index_bytes"),
                "bytes_per_token": build["index_bytes"] / tokens if build.get("index_bytes") else None,
                "build_rss_mb": build.get("peak_rss_mb"),
                "search_rss_mb": search.get("peak_rss_mb"),
                "load_s": search.get("load_s"),
            }
            if "error" in s:
                row.update(status="error", note=s["error"])
                rows.append(row)
                continue
            lat = s["latency_s"]
            row.update(
                p50_ms=1000 * statistics.median(lat) if lat else None,
                p95_ms=1000 * _pct(lat, 0.95) if lat else None,
                latency_queries=len(lat),
                batch_qps=s["batch_queries"] / s["batch_s"] if s["batch_s"] > 0 else None,
                cells_fraction=s.get("cells_fraction"),
            )
            ids = s["ids"]
            for k in KS:
                row[f"recall@{k}"] = _recall(ids, truth, k)
            if collection.quality is not None:
                run_ = {q: [collection.pids[i] for i in r] for q, r in zip(collection.qids, ids)}
                row.update(collection.quality(run_))
            rows.append(row)
    return rows


def run(
    collections: Sequence[Collection],
    engines: Sequence,
    out: Path,
    workdir: Path,
    *,
    threads: Sequence[int] = (1, 2),
    batch: int = 64,
    latency_queries: int | None = None,
    reuse: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """Every engine on every collection; writes engines.json, engines.md and engines.png to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_info(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "threads": list(threads),
        "batch": batch,
        "collections": {},
        "rows": [],
    }
    opts = {"k": max(KS), "batch": batch, "reuse": reuse}
    if latency_queries:
        opts["latency_queries"] = latency_queries
    for collection in collections:
        cdir = workdir / collection.name
        t0 = time.perf_counter()
        digest = export(collection, cdir / "embeddings.safetensors")
        truth = exhaustive_topk(collection, max(KS))
        info = {
            "num_docs": collection.docs.num_docs,
            "num_tokens": collection.docs.num_tokens,
            "dim": collection.docs.dim,
            "queries": int(collection.Q.shape[0]),
            "query_tokens": int(collection.q_mask.sum(1).max()),
            "sha256_16": digest,
            "ground_truth_s": round(time.perf_counter() - t0, 2),
            **collection.info,
        }
        doc["collections"][collection.name] = info
        log(f"{collection.name}: {info['num_docs']} docs, {info['num_tokens']} tokens, {info['queries']} queries")
        for engine in engines:
            why = engine.available()
            if why:
                log(f"{collection.name} {engine.name}: {why}")
                doc["rows"] += _rows(collection, engine, None, truth, "not installed", why)
                continue
            t0 = time.perf_counter()
            edir = cdir / engine.name.replace(" ", "_")
            try:
                result = engine.run(cdir / "embeddings.safetensors", digest, edir, threads, opts)
                rows = _rows(collection, engine, result, truth, "ok")
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
                rows = _rows(collection, engine, None, truth, "error", f"{type(e).__name__}: {e}")
            doc["rows"] += rows
            log(f"{collection.name} {engine.name}: {time.perf_counter() - t0:.0f} s")
            for r in rows:
                log("   " + _line(r))
            _write(doc, out)  # partial results survive a later failure
    doc["load_after"] = [round(x, 2) for x in os.getloadavg()]
    _write(doc, out)
    doc["plot"] = write_plot(doc, out / "engines.png")
    _write(doc, out)
    return doc


def rewrite(out: Path, note: str | None = None) -> dict:
    """Re-render engines.md and engines.png from out/engines.json (e.g. a run stopped part-way:
    its rows up to the last finished engine are there; `note` says why, and the load average now
    stands in for the missing one at the end)."""
    doc = json.loads((out / "engines.json").read_text())
    if "load_after" not in doc:
        doc["load_after"] = [round(x, 2) for x in os.getloadavg()]
        doc.setdefault("notes", []).append("load_after taken when the report was re-rendered (the run stopped early)")
    if note:
        doc.setdefault("notes", []).append(note)
    doc["plot"] = write_plot(doc, out / "engines.png")
    _write(doc, out)
    return doc


def _line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['engine']} {r['setting']}: {r['status']} {r['note']}"
    return (
        f"{r['engine']} {r['setting']} t{r['threads']}: recall@10 {r['recall@10']:.3f} @100 {r['recall@100']:.3f} "
        f"p50 {r['p50_ms']:.2f} ms, {r['batch_qps']:.1f} q/s"
    )


def _write(doc: dict, out: Path) -> None:
    (out / "engines.json").write_text(json.dumps(doc, indent=1))
    (out / "engines.md").write_text(markdown(doc))


# ---- report --------------------------------------------------------------------------------------


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def reference_row(rows: list[dict], r: dict, engine: str = "colbert_fast", setting: str = "accurate") -> dict | None:
    """colbert_fast's paper-path (accurate, fp16 + IVFPQ) row for r's workload and thread count: the ratios' base."""
    for x in rows:
        if (x["workload"], x["engine"], x["setting"], x["threads"], x["status"]) == (
            r["workload"],
            engine,
            setting,
            r["threads"],
            "ok",
        ):
            return x
    return None


def markdown(doc: dict) -> str:
    g = doc["git"]
    lines = [
        "# End-to-end search: colbert_fast and the engine peers (E1, E2)",
        "",
        f"- created {doc['created']}; git {g.get('sha')}{' (dirty)' if g.get('dirty') else ''}; {doc['machine']}",
        f"- load average (1, 5, 15 min) {doc['load_before']} before, {doc.get('load_after', '-')} after",
        f"- threads {doc['threads']}; batch throughput over batches of {doc['batch']} queries; latency one query at"
        " a time (p50/p95); recall against exhaustive MaxSim over the same embeddings",
        "- every engine searches for the top 100 (its budget heuristics see k = 100); recall@10, nDCG@10 and"
        " MRR@10 come from the first 10 of those 100",
        "- build: once, at the largest thread count, in its own process; RSS: VmHWM of the build process and of"
        " each search process (which loads the index and runs every setting)",
        "- ratios: p50 and q/s against colbert_fast accurate (the paper's path over fp16) at the same thread count"
        " (p50 x > 1: slower than colbert_fast; q/s x < 1: less throughput)",
        "",
    ]
    lines += [f"- {n}" for n in doc.get("notes", [])] + ([""] if doc.get("notes") else [])
    for name, info in doc["collections"].items():
        rows = [r for r in doc["rows"] if r["workload"] == name]
        lines += [
            f"## {name}: {info['num_docs']:,} docs, {info['num_tokens']:,} tokens, dim {info['dim']}, "
            f"{info['queries']} queries",
            "",
        ]
        quality = sorted({k for r in rows for k in r if k.startswith(("nDCG", "MRR"))})
        head = ["engine", "setting", "threads", "recall@10", "recall@100", *quality, "p50 ms", "p95 ms", "p50 x"]
        head += ["q/s", "q/s x", "docs scored", "build s", "bytes/token", "build RSS MB", "search RSS MB", "load s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['engine']} | {r['setting']} | - | {r['status']}: {r['note']} |")
                continue
            ref = reference_row(doc["rows"], r)
            p50x = r["p50_ms"] / ref["p50_ms"] if ref and ref.get("p50_ms") and r.get("p50_ms") else None
            qpsx = r["batch_qps"] / ref["batch_qps"] if ref and ref.get("batch_qps") and r.get("batch_qps") else None
            cells = [
                r["engine"],
                r["setting"],
                str(r["threads"]),
                _f(r["recall@10"], ".3f"),
                _f(r["recall@100"], ".3f"),
                *[_f(r.get(q), ".3f") for q in quality],
                _f(r["p50_ms"], ".2f"),
                _f(r["p95_ms"], ".2f"),
                _f(p50x, ".2f"),
                _f(r["batch_qps"], ".1f"),
                _f(qpsx, ".2f"),
                _f(r.get("cells_fraction"), ".3f"),
                _f(r["build_s"], ".1f") + (" (reused)" if r["note"].startswith("index reused") else ""),
                _f(r["bytes_per_token"], ".0f"),
                _f(r["build_rss_mb"], ".0f"),
                _f(r["search_rss_mb"], ".0f"),
                _f(r["load_s"], ".2f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        settings = {(r["engine"], r["setting"]): r["kwargs"] for r in rows}
        lines += ["", "Settings: " + "; ".join(f"{e} {s}: {json.dumps(kw)}" for (e, s), kw in settings.items()), ""]
    return "\n".join(lines) + "\n"


def write_plot(doc: dict, path: Path) -> str:
    """recall@10 against p50 latency, one panel per workload, one colour per engine."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed"
    names = list(doc["collections"])
    if not names:
        return "plot skipped: no workload"
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    engines = sorted({r["engine"] for r in doc["rows"]})
    colours = {e: f"C{i}" for i, e in enumerate(engines)}
    markers = {1: "o", 2: "s"}
    for ax, name in zip(axes[0], names):
        points: dict[tuple, list] = {}  # (engine, setting) -> its (threads, p50, recall@10), one per thread count
        for r in doc["rows"]:
            if r["workload"] != name or r["status"] != "ok" or not r.get("p50_ms"):
                continue
            ax.scatter(r["p50_ms"], r["recall@10"], c=colours[r["engine"]], marker=markers.get(r["threads"], "^"))
            points.setdefault((r["engine"], r["setting"]), []).append((r["threads"], r["p50_ms"], r["recall@10"]))
        for (engine, setting), pts in points.items():  # one label per setting, a line between its thread counts
            pts.sort()
            ax.plot([p[1] for p in pts], [p[2] for p in pts], c=colours[engine], lw=0.6, alpha=0.6)
            ax.annotate(setting, pts[0][1:], xytext=(4, 3), textcoords="offset points", fontsize=6, c=colours[engine])
        ax.set(xscale="log", xlabel="p50 latency per query (ms, log)", ylabel="recall@10 vs exhaustive", title=name)
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[e], marker="o", ls="", label=e) for e in engines]
    handles += [plt.Line2D([], [], color="grey", marker=m, ls="", label=f"{t} thread(s)") for t, m in markers.items()]
    axes[0][0].legend(handles=handles, fontsize=7, loc="lower right")
    fig.suptitle(f"load {doc['load_before']} -> {doc.get('load_after')}; git {str(doc['git'].get('sha'))[:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.name)
