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


def copy_bandwidth(device: torch.device, nbytes: int, budget_s: float = 1.0) -> dict:
    device = torch.device(device)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, reps=20, budget_s=budget_s)
    gbps = 2 * nbytes / (t.median_ms * 1e-3) / 1e9
    return {"copy_GBps": gbps, "copy_bytes": nbytes, "copy_ms": t.median_ms}


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, budget_s: float = 1.5) -> dict:
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), generator=gen, device=device).to(dtype)
    b = torch.randn((n, n), generator=gen, device=device).to(dtype)
    t = measure(lambda: a @ b, device, reps=20, budget_s=budget_s)
    tflops = 2 * n**3 / (t.median_ms * 1e-3) / 1e12
    return {"matmul_TFLOPs": tflops, "matmul_n": n, "matmul_ms": t.median_ms}


def measure_peaks(device: torch.device, dtypes: list[torch.dtype], size: str = "full") -> dict:
    """{'copy_GBps': .., 'matmul_TFLOPs': {'fp16': ..}, 'detail': {...}}.

    Sizes: GPU 1 GiB copy, 8192^3 GEMM; CPU 256 MiB (128 MiB quick) copy, 2048^3 fp32 GEMM (1024^3
    in half precision: CPUs without native fp16/bf16 GEMMs are slow at it); tiny runs use small
    buffers and short budgets (their fractions of peak are then only indicative).
    """
    device = torch.device(device)
    tiny = size == "tiny"
    if device.type == "cuda":
        nbytes, n32, n16 = (64 << 20, 2048, 2048) if tiny else (1 << 30, 8192, 8192)
    else:
        nbytes = {"tiny": 32 << 20, "quick": 128 << 20}.get(size, 256 << 20)
        n32, n16 = (512, 256) if tiny else (2048, 1024)
    budget = 0.2 if tiny else 1.0
    copy = copy_bandwidth(device, nbytes, budget)
    out = {"copy_GBps": copy["copy_GBps"], "matmul_TFLOPs": {}, "detail": {"copy": copy}}
    for dt in dtypes:
        mm = matmul_rate(device, dt, n32 if dt == torch.float32 else n16, budget)
        out["matmul_TFLOPs"][SHORT[dt]] = mm["matmul_TFLOPs"]
        out["detail"][f"matmul_{SHORT[dt]}"] = mm
    return out
