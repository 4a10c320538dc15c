"""The device's own ceilings, measured in the same run as the workloads.

copy: dst.copy_(src) of a buffer far larger than any cache; bandwidth counts the bytes read plus
      the bytes written (2 x size), the usual convention for device-copy figures.
matmul: a square GEMM in the workload's dtype (fp32 accumulate), 2*n^3 FLOPs.
These are the roofline's ceilings: a memory-bound MaxSim is judged against `copy`, a
compute-bound one against `matmul`.
"""

from __future__ import annotations

import torch

from .timing import measure

SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def copy_bandwidth(device: torch.device, nbytes: int | None = None) -> dict:
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, reps=20, budget_s=1.0)
    gbps = 2 * nbytes / (t.median_ms * 1e-3) / 1e9
    return {"copy_GBps": gbps, "copy_bytes": nbytes, "copy_ms": t.median_ms}


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int | None = None) -> dict:
    device = torch.device(device)
    if n is None:
        # CPU half-precision GEMMs without native support are slow: keep those small.
        n = 8192 if device.type == "cuda" else (2048 if dtype == torch.float32 else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), generator=gen, device=device).to(dtype)
    b = torch.randn((n, n), generator=gen, device=device).to(dtype)
    t = measure(lambda: a @ b, device, reps=20, budget_s=1.5)
    tflops = 2 * n**3 / (t.median_ms * 1e-3) / 1e12
    return {"matmul_TFLOPs": tflops, "matmul_n": n, "matmul_ms": t.median_ms}


def measure_peaks(device: torch.device, dtypes: list[torch.dtype], quick: bool = False) -> dict:
    """{'copy_GBps': .., 'matmul': {dtype_name: TFLOP/s}, 'detail': {...}}."""
    device = torch.device(device)
    copy = copy_bandwidth(device, (128 << 20) if (quick and device.type == "cpu") else None)
    out = {"copy_GBps": copy["copy_GBps"], "matmul_TFLOPs": {}, "detail": {"copy": copy}}
    for dt in dtypes:
        name = SHORT[dt]
        mm = matmul_rate(device, dt)
        out["matmul_TFLOPs"][name] = mm["matmul_TFLOPs"]
        out["detail"][f"matmul_{name}"] = mm
    return out
