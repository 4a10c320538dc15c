"""`colbert-fast bench`: every backend, the padded plain-PyTorch baseline and installed peers on
the workloads of docs/perf.md, side by side in one run.

    colbert-fast bench                       quick on CPU (scaled workloads, fp32), full on GPU (fp16, bf16)
    colbert-fast bench --workload R1,R2 --dtype bf16 --backend torch,cpu
    colbert-fast bench --compare bench/results      ... and ratios against earlier results (files or folders)
    colbert-fast bench --results out/bench/bench.json --compare old.json    compare without running
    colbert-fast bench --workload E1,E2      end-to-end search beside fast-plaid and xtr-warp-rs
                                             (make peers-engines; colbert_fast/cli/bench_engines.py)

Nothing is read from the working directory unless named: --compare takes the files (or folders of
*.json) to compare with; only the output goes to --out (default out/bench under the cwd).
The measuring library is colbert_fast/benchmark/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .arguments import positive_float, positive_int

E2E_WORKLOADS = ("E1", "E2")  # end-to-end search beside the engine peers: colbert_fast/cli/bench_engines.py
HELP = "benchmark every backend against the padded plain-PyTorch baseline and peers on the docs/perf.md workloads"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from colbert_fast.benchmark.workloads import CODECS, DEFAULT_CODECS, WORKLOADS

    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when a GPU is visible)")
    parser.add_argument(
        "--workload",
        default=",".join(WORKLOADS),
        help=f"comma list of {','.join(WORKLOADS)}, or of the end-to-end {','.join(E2E_WORKLOADS)} (only when named)",
    )
    parser.add_argument(
        "--dtype", default=None, help="comma list of fp32,fp16,bf16 (default: fp16,bf16 on GPU; fp32 on CPU)"
    )
    parser.add_argument(
        "--backend",
        default=None,
        help="comma list of rows to run: backends (torch,cpu,triton,cuda), 'compiled', peers; "
        "the baseline always runs (default: everything available)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="scaled-down workloads (the CPU default)")
    size.add_argument("--full", action="store_true", help="docs/perf.md sizes (the GPU default)")
    size.add_argument("--tiny", action="store_true", help="seconds-long smoke sizes (tests, CI)")
    parser.add_argument(
        "--out", default="out/bench", help="directory for bench.json/.csv/.md and plots (default: out/bench)"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="JSON",
        help="compare with earlier results: JSON files, or folders whose *.json are read (e.g. bench/results)",
    )
    parser.add_argument(
        "--results", default=None, metavar="JSON", help="load these results instead of running (use with --compare)"
    )
    parser.add_argument(
        "--reps", type=positive_int, default=20, help="timed repetitions per row (fewer if --budget runs out)"
    )
    parser.add_argument(
        "--budget",
        type=positive_float,
        default=None,
        help="seconds of timed repetitions per row (default 2 on GPU, 0.5 on CPU)",
    )
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="include the torch.compile'd baseline (default on; on CPU capped by --compile-budget)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument(
        "--compile-budget",
        type=positive_float,
        default=None,
        help="seconds torch.compile may take in total (default: none on GPU, 15 on CPU)",
    )
    parser.add_argument("--no-peers", dest="peers", action="store_false", help="skip peer libraries")
    parser.add_argument(
        "--no-kernel-timing",
        dest="kernel_timing",
        action="store_false",
        help="skip the kernel-only timings (CUDA-graph replay of the calls; per-call times are always taken)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also run the 1-query rerank at 100..100k candidates (S<K> rows; first dtype only) "
        "for the latency-vs-docs plot",
    )
    parser.add_argument(
        "--codecs",
        default=",".join(DEFAULT_CODECS),
        help=f"compressed stores scored beside the float store in packed workloads: a comma list of "
        f"{','.join(CODECS)}, or none (default {','.join(DEFAULT_CODECS)})",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    e2e = parser.add_argument_group("end-to-end workloads (E1, E2)")
    e2e.add_argument("--e1-docs", default="10000", help="E1 collection sizes, a comma list (default 10000)")
    e2e.add_argument(
        "--e2-queries", type=positive_int, default=None, help="E2: the first N judged Cranfield queries (default all)"
    )
    e2e.add_argument(
        "--engines-python",
        default=".venv-engines/bin/python",
        help="the interpreter of fast-plaid and xtr-warp-rs (make peers-engines; default .venv-engines/bin/python)",
    )
    e2e.add_argument("--engine-threads", default="1,2", help="thread counts, a comma list (default 1,2)")
    e2e.add_argument(
        "--engine-batch", type=positive_int, default=64, help="queries per batch for throughput (default 64)"
    )
    e2e.add_argument(
        "--latency-queries", type=positive_int, default=None, help="queries also searched one at a time (default: all)"
    )
    e2e.add_argument("--engine-timeout", type=positive_float, default=None, help="seconds per engine subprocess")
    e2e.add_argument(
        "--engines-workdir", default="out/engines_work", help="exported embeddings and indexes (reused when unchanged)"
    )
    e2e.add_argument("--cf-engines", default=None, metavar="JSON", help="colbert_fast's index configs and settings")


def _options(args):
    from colbert_fast.benchmark import runner

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no GPU")
    size = (
        "tiny"
        if args.tiny
        else "quick"
        if args.quick
        else "full"
        if args.full
        else ("full" if device.type == "cuda" else "quick")
    )
    dtypes_text = args.dtype or ("fp16,bf16" if device.type == "cuda" else "fp32")
    bad = [d for d in _csv(dtypes_text) if d not in runner.DTYPES]
    if bad:
        raise SystemExit(f"--dtype: unknown {bad}; choose from {list(runner.DTYPES)}")
    from colbert_fast.benchmark.workloads import WORKLOADS

    names = [w.upper() for w in _csv(args.workload) if w.upper() not in E2E_WORKLOADS]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"--workload: unknown {unknown}; choose from {list(WORKLOADS)}")
    budget = args.budget if args.budget is not None else (2.0 if device.type == "cuda" else 0.5)
    compile_budget = (
        args.compile_budget if args.compile_budget is not None else (None if device.type == "cuda" else 15.0)
    )
    return runner.Options(
        device=device,
        workloads=names,
        dtypes=[runner.DTYPES[d] for d in _csv(dtypes_text)],
        size=size,
        impls=_csv(args.backend) if args.backend else None,
        reps=args.reps,
        budget_s=budget,
        compile=True if args.compile is None else args.compile,
        compile_budget_s=compile_budget,
        peers=args.peers,
        kernel_timing=args.kernel_timing,
        sweep=args.sweep,
        codecs=[] if args.codecs.strip().lower() == "none" else _csv(args.codecs),
        seed=args.seed,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )


def _earlier(paths: list[str]) -> list[tuple[str, dict]]:
    """(name, results) of each JSON file named, a folder standing for the *.json files in it."""
    from colbert_fast.benchmark import report

    files = [f for p in map(Path, paths) for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    out = []
    for p in files:
        try:
            out.append((str(p), report.load(Path(p))))
        except (OSError, ValueError) as e:
            print(f"--compare: skipping {p}: {e}", file=sys.stderr)
    return out


def run(args) -> int:
    from colbert_fast.benchmark import report, runner

    e2e = [w.upper() for w in _csv(args.workload) if w.upper() in E2E_WORKLOADS]
    if e2e and not args.results:
        from colbert_fast.cli import bench_engines

        rc = bench_engines.run(args, e2e)
        if len(e2e) == len(_csv(args.workload)):
            return rc
    if args.results:
        doc = report.load(Path(args.results))
        report.print_table(doc)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        opts = _options(args)
        out = Path(args.out)
        arg_record = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        arg_record["size"] = opts.size

        def partial(res):  # a run cut short (a time limit on a lent GPU) still leaves its results
            doc = report.document(res, arg_record)
            doc["partial"] = True
            out.mkdir(parents=True, exist_ok=True)
            report.write_json(doc, out / "bench.json")

        t0 = time.perf_counter()
        results = runner.run(opts, on_workload=partial)
        wall = time.perf_counter() - t0
        results.notes.append(f"wall time of the run: {wall:.1f} s")
        doc = report.document(results, arg_record)
        paths = report.write_all(doc, out)
        if args.plots:
            doc["notes"].extend(report.write_plots(doc, out))
            report.write_json(doc, paths[0])
        report.print_table(doc)
        print(f"wrote {', '.join(str(p) for p in paths)} ({wall:.1f} s)")
    if args.compare is not None:
        report.print_compare(doc, _earlier(args.compare))
    wrong = [r for r in doc["rows"] if r["status"] == "wrong" and r["kind"] != "peer"]
    if wrong:  # a colbert_fast backend (or the baseline) disagreeing with the oracle fails the command
        print("FAILED: " + "; ".join(f"{r['workload']} {r['dtype']} {r['impl']}: {r['note']}" for r in wrong))
        return 1
    return 0
