"""`colbert-fast profile`: one workload under torch.profiler, stage by stage.

Each stage is a named range: torch.profiler.record_function everywhere (it shows in the Chrome
trace and the tables) and, on GPU, an NVTX range too (Nsight Systems / Nsight Compute filter on
it). Stages: the colbert_fast call per backend ("colbert_fast.<backend>.maxsim_packed"), and the
plain-PyTorch reference split into "reference.pad", "reference.bmm", "reference.masked max",
"reference.sum". Names use dots, not slashes: ncu's --nvtx-include reads "/" as nesting.
Writes a Chrome trace, prints the kernel table and the exact `ncu` command that profiles
the fused kernels of the chosen backend.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path

import torch

HELP = "profile one workload (torch.profiler + NVTX ranges per stage): Chrome trace, kernel table, ncu command"
NVTX_PREFIX = "colbert_fast"


@contextlib.contextmanager
def stage(name: str, cuda: bool):
    """A record_function range, and an NVTX range when profiling a GPU."""
    with torch.profiler.record_function(name):
        if cuda:
            torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            if cuda:
                torch.cuda.nvtx.range_pop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .workloads import WORKLOADS

    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when a GPU is visible)")
    parser.add_argument("--workload", default="R1", choices=WORKLOADS)
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--backend", default="auto", help="the colbert_fast backend to profile (default: auto)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="scaled-down workload (the CPU default)")
    size.add_argument("--full", action="store_true", help="PERF.md size (the GPU default)")
    size.add_argument("--tiny", action="store_true", help="smoke size")
    parser.add_argument("--reps", type=int, default=3, help="profiled repetitions of each stage")
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="profile only the backend (what the printed ncu command runs)",
    )
    parser.add_argument("--out", default="out/profile", help="directory for the Chrome trace (default: out/profile)")
    parser.add_argument("--no-trace", dest="trace", action="store_false", help="skip the profiler (for ncu/nsys runs)")
    parser.add_argument("--rows", type=int, default=25, help="rows of the kernel table")


def _backend_call(case, backend: str):
    import colbert_fast as cf

    if case.mode == "packed":
        return lambda: cf.maxsim_packed(case.Q, case.docs, case.pids, backend=backend)
    return lambda: cf.maxsim(case.Q, case.D, d_lengths=case.d_lengths, backend=backend)


def range_name(backend: str, mode: str) -> str:
    return f"{NVTX_PREFIX}.{backend}.{'maxsim_packed' if mode == 'packed' else 'maxsim'}"


def ncu_command(args, kernel_names: list[str], mode: str) -> str:
    """The Nsight Compute command that profiles this workload's fused kernels, and nothing else."""
    regex = "|".join(sorted(set(kernel_names))) if kernel_names else "maxsim|gather"
    inner = [
        sys.executable,
        "-m",
        "colbert_fast",
        "profile",
        "--device",
        "cuda",
        "--workload",
        args.workload,
        "--dtype",
        args.dtype_name,
        "--backend",
        args.backend_name,
        f"--{args.size}",
        "--reps",
        "1",
        "--no-reference",
        "--no-trace",
    ]
    # "NAME/" selects kernels launched inside the push/pop range NAME.
    cmd = [
        "ncu",
        "--set",
        "full",
        "--nvtx",
        "--nvtx-include",
        f"{range_name(args.backend_name, mode)}/",
        "--kernel-name",
        f"regex:{regex}",
        "--launch-count",
        "4",
        "--import-source",
        "yes",
        "-o",
        str(Path(args.out) / f"ncu_{args.workload}_{args.backend_name}"),
        *inner,
    ]
    return shlex.join(cmd)


def run(args) -> int:
    from .. import backends
    from . import baselines, runner, workloads

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no GPU")
    args.size = (
        "tiny" if args.tiny else "quick" if args.quick else "full" if args.full else ("full" if cuda else "quick")
    )
    args.dtype_name = args.dtype or ("fp16" if cuda else "fp32")
    if args.dtype_name not in runner.DTYPES:
        raise SystemExit(f"--dtype must be one of {list(runner.DTYPES)}")
    if args.workload == "T1":
        raise SystemExit("profile covers the scoring workloads; for T1 profile X2 (same shape) or use bench")
    args.backend_name = backends.select(args.backend, device).NAME if args.backend == "auto" else args.backend
    case = workloads.build(args.workload, args.size, runner.DTYPES[args.dtype_name], device)
    call = _backend_call(case, args.backend_name)
    ref = baselines.case_fn(case, stage=lambda s: stage(f"reference.{s}", cuda))
    name = range_name(args.backend_name, case.mode)
    print(
        f"{args.workload} {args.dtype_name} on {device} ({args.size}): {case.spec.title}; backend {args.backend_name}",
        file=sys.stderr,
    )

    def body():
        for _ in range(args.reps):
            with stage(name, cuda), torch.no_grad():
                call()
            if args.reference:
                with stage("reference", cuda), torch.no_grad():
                    ref()
        if cuda:
            torch.cuda.synchronize()

    with torch.no_grad():  # warm-up outside the profile: autotuning and compilation are not the kernel
        call()
        if args.reference:
            ref()
    if not args.trace:
        body()
        return 0
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
        body()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"trace_{args.workload}_{args.dtype_name}_{args.backend_name}.json"
    prof.export_chrome_trace(str(trace))
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
    kernels = _fused_kernels(prof, name) if cuda else []
    print(f"Chrome trace: {trace} (open in chrome://tracing or https://ui.perfetto.dev)")
    print("ncu command for the fused kernels" + ("" if cuda else " (run it on a GPU machine)") + ":")
    print("  " + ncu_command(args, kernels, case.mode))
    return 0


def _fused_kernels(prof, rng: str) -> list[str]:
    """Names of the GPU kernels launched inside the backend's range (from the profiler events)."""
    events = prof.events()
    ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name == rng]
    names = set()
    for e in events:
        if (
            getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
            or "cuda" in str(getattr(e, "device_type", "")).lower()
        ):
            continue
        # a CPU-side launch inside the range carries its kernels as children on the GPU side
        if any(s <= e.time_range.start <= t for s, t in ranges):
            for k in getattr(e, "kernels", []) or []:
                names.add(k.name.split("(")[0].split("<")[0].strip())
    return sorted(n for n in names if n)[:8]
