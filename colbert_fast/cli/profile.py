"""`colbert-fast profile`: one workload under torch.profiler, stage by stage.

Writes a Chrome trace, prints the kernel table and the exact `ncu` command that profiles the
fused kernels of the chosen backend. The measuring is colbert_fast/benchmark/profiling.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .arguments import positive_int

HELP = "profile one workload (torch.profiler + NVTX ranges per stage): Chrome trace, kernel table, ncu command"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from colbert_fast.benchmark.workloads import WORKLOADS

    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when a GPU is visible)")
    parser.add_argument("--workload", default="R1", choices=WORKLOADS)
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--backend", default="auto", help="the colbert_fast backend to profile (default: auto)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="scaled-down workload (the CPU default)")
    size.add_argument("--full", action="store_true", help="docs/perf.md size (the GPU default)")
    size.add_argument("--tiny", action="store_true", help="smoke size")
    parser.add_argument("--reps", type=positive_int, default=3, help="profiled repetitions of each stage")
    parser.add_argument(
        "--no-baseline",
        "--no-reference",  # its name before the padded PyTorch row was called the baseline
        dest="baseline",
        action="store_false",
        help="profile only the backend, not the padded PyTorch baseline (what the printed ncu command runs)",
    )
    parser.add_argument("--out", default="out/profile", help="directory for the Chrome trace (default: out/profile)")
    parser.add_argument("--no-trace", dest="trace", action="store_false", help="skip the profiler (for ncu/nsys runs)")
    parser.add_argument("--rows", type=positive_int, default=25, help="rows of the kernel table")


def run(args) -> int:
    import colbert_fast as cf
    from colbert_fast.benchmark import baselines, profiling, runner, workloads

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no GPU")
    size = "tiny" if args.tiny else "quick" if args.quick else "full" if args.full else ("full" if cuda else "quick")
    dtype = args.dtype or ("fp16" if cuda else "fp32")
    if dtype not in runner.DTYPES:
        raise SystemExit(f"--dtype must be one of {list(runner.DTYPES)}")
    if args.workload == "T1":
        raise SystemExit("profile covers the scoring workloads; for T1 profile X2 (same shape) or use bench")
    backend = cf.selected_backend(device) if args.backend == "auto" else args.backend
    case = workloads.build(args.workload, size, runner.DTYPES[dtype], device)
    call = profiling.backend_call(case, backend)
    baseline = None
    if args.baseline:
        baseline = baselines.case_fn(case, stage=lambda s: profiling.stage(f"baseline.{s}", cuda))
    name = profiling.range_name(backend, case.mode)
    print(f"{args.workload} {dtype} on {device} ({size}): {case.spec.title}; backend {backend}", file=sys.stderr)
    prof = profiling.profile(call, baseline, name, args.reps, cuda, args.trace)
    if prof is None:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"trace_{args.workload}_{dtype}_{backend}.json"
    prof.export_chrome_trace(str(trace))
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
    kernels = profiling.fused_kernels(prof, name) if cuda else []
    print(f"Chrome trace: {trace} (open in chrome://tracing or https://ui.perfetto.dev)")
    print("ncu command for the fused kernels" + ("" if cuda else " (run it on a GPU machine)") + ":")
    print("  " + profiling.ncu_command(args.workload, dtype, backend, size, args.out, kernels, case.mode))
    return 0
