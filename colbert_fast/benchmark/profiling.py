"""Profiling one workload: named ranges per stage, the torch.profiler run, the ncu command.

Each stage is a named range: torch.profiler.record_function everywhere (it shows in the Chrome
trace and the tables) and, on GPU, an NVTX range too (Nsight Systems / Nsight Compute filter on
it). Stages: the colbert_fast call per backend ("colbert_fast.<backend>.maxsim_packed"), and the
padded plain-PyTorch baseline split into "baseline.pad", "baseline.bmm", "baseline.masked max",
"baseline.sum". Names use dots, not slashes: ncu's --nvtx-include reads "/" as nesting.
The command (argument parsing, printing) is colbert_fast/cli/profile.py.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch

import colbert_fast as cf

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


def backend_call(case, backend: str) -> Callable[[], torch.Tensor]:
    """The public colbert_fast call of a workload case, on one backend."""
    if case.mode == "packed":
        return lambda: cf.maxsim_packed(case.Q, case.docs, case.pids, backend=backend)
    return lambda: cf.maxsim(case.Q, case.D, d_lengths=case.d_lengths, backend=backend)


def range_name(backend: str, mode: str) -> str:
    return f"{NVTX_PREFIX}.{backend}.{'maxsim_packed' if mode == 'packed' else 'maxsim'}"


def ncu_command(
    workload: str, dtype: str, backend: str, size: str, out: str, kernel_names: list[str], mode: str
) -> str:
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
        workload,
        "--dtype",
        dtype,
        "--backend",
        backend,
        f"--{size}",
        "--reps",
        "1",
        "--no-baseline",
        "--no-trace",
    ]
    # "NAME/" selects kernels launched inside the push/pop range NAME.
    cmd = [
        "ncu",
        "--set",
        "full",
        "--nvtx",
        "--nvtx-include",
        f"{range_name(backend, mode)}/",
        "--kernel-name",
        f"regex:{regex}",
        "--launch-count",
        "4",
        "--import-source",
        "yes",
        "-o",
        str(Path(out) / f"ncu_{workload}_{backend}"),
        *inner,
    ]
    return shlex.join(cmd)


def profile(call, baseline, name: str, reps: int, cuda: bool, trace: bool):
    """Warm up, then run `call` (inside range `name`) and `baseline` (if any) `reps` times.

    Returns the torch.profiler.profile object, or None when trace is False (the calls still run,
    for an outside profiler such as ncu or nsys).
    """

    def body():
        for _ in range(reps):
            with stage(name, cuda), torch.no_grad():
                call()
            if baseline is not None:
                with stage("baseline", cuda), torch.no_grad():
                    baseline()
        if cuda:
            torch.cuda.synchronize()

    with torch.no_grad():  # warm-up outside the profile: autotuning and compilation are not the kernel
        call()
        if baseline is not None:
            baseline()
    if not trace:
        body()
        return None
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
        body()
    return prof


def fused_kernels(prof, rng: str) -> list[str]:
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
