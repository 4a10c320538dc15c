"""The device's own ceilings, measured in the same run as the workloads.

copy: dst.copy_(src) of a buffer far larger than any cache; bandwidth counts the bytes read plus
      the bytes written (2 x size), the usual convention for device-copy figures.
matmul: a square GEMM in the workload's dtype (fp32 accumulate), 2*n^3 FLOPs: torch.mm's rate.
compute: the arithmetic ceiling a kernel is judged against. GPU: the matmul rate (cuBLAS runs
      near the tensor cores' peak). CPU: torch.mm is no ceiling (the fused kernels have read
      120-155% of it on the 2-core EPYC), so the compiled extension times a register-only loop
      of vector FMAs on every thread (colbert_fast._C.cpu_peak_gflops, csrc/cpu/peak_cpu.cpp):
      fp32 and fp16 inputs (converted to fp32 in registers) against the FMA peak, bf16 against
      the bf16 dot-product peak where the CPU kernels use vdpbf16ps, else the FMA peak.
These are the roofline's ceilings: a memory-bound MaxSim is judged against `copy`, a
compute-bound one against `compute`; the report shows the fraction of torch.mm's rate too.
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


def cpu_compute_peaks(dtypes: list[torch.dtype], seconds: float = 0.3) -> dict:
    """{'fp32': {'TFLOPs', 'source'}, ...}: the measured CPU ceiling per dtype, {} without the extension."""
    from .. import extension

    ext = extension.extension()
    if ext is None or not hasattr(ext, "cpu_peak_gflops"):
        return {}
    fma_gflops, threads, loop = ext.cpu_peak_gflops("fp32", seconds)
    fma = {"TFLOPs": fma_gflops / 1e3, "source": f"{loop} loop, {threads} threads"}
    out = {}
    for dt in dtypes:
        name = SHORT[dt]
        if dt != torch.bfloat16:
            out[name] = dict(fma)
            continue
        try:
            gflops, threads, loop = ext.cpu_peak_gflops("bf16", seconds)
            out[name] = {"TFLOPs": gflops / 1e3, "source": f"{loop} loop, {threads} threads"}
        except ValueError:  # no bf16 dot products: the kernels convert bf16 to fp32 and FMA
            out[name] = dict(fma)
    return out


def measure_peaks(device: torch.device, dtypes: list[torch.dtype], size: str = "full") -> dict:
    """{'copy_GBps': .., 'matmul_TFLOPs': {'fp16': ..}, 'compute_TFLOPs': {'fp16': ..},
    'compute_source': {'fp16': 'torch.mm' or the CPU loop}, 'detail': {...}}.

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
    out = {
        "copy_GBps": copy["copy_GBps"],
        "matmul_TFLOPs": {},
        "compute_TFLOPs": {},
        "compute_source": {},
        "detail": {"copy": copy},
    }
    for dt in dtypes:
        mm = matmul_rate(device, dt, n32 if dt == torch.float32 else n16, budget)
        out["matmul_TFLOPs"][SHORT[dt]] = mm["matmul_TFLOPs"]
        out["detail"][f"matmul_{SHORT[dt]}"] = mm
    cpu = cpu_compute_peaks(dtypes, 0.1 if tiny else 0.3) if device.type == "cpu" else {}
    for dt in dtypes:
        name = SHORT[dt]
        if name in cpu:
            out["compute_TFLOPs"][name] = cpu[name]["TFLOPs"]
            out["compute_source"][name] = cpu[name]["source"]
        else:
            out["compute_TFLOPs"][name] = out["matmul_TFLOPs"][name]
            out["compute_source"][name] = "torch.mm" + (" (no compiled extension)" if device.type == "cpu" else "")
    return out
