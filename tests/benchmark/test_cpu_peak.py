"""The CPU's measured arithmetic ceiling (csrc/cpu/peak_cpu.cpp, colbert_fast._C.cpu_peak_gflops):
the loop follows the ISA the kernels use, bf16 dot products only where they exist, and the
benchmark's %peak is taken against it on CPU (torch.mm is no ceiling there)."""

from __future__ import annotations

import pytest
import torch

from colbert_fast import extension
from colbert_fast.benchmark import peaks

pytestmark = pytest.mark.skipif(extension.extension() is None, reason="colbert_fast._C is not built")


def _peak(kind: str):
    return extension.extension().cpu_peak_gflops(kind, 0.05)


def test_fp32_fma_peak_on_the_kernels_isa(monkeypatch):
    isa = extension.extension().cpu_isa()
    gflops, threads, loop = _peak("fp32")
    assert gflops > 0 and threads == torch.get_num_threads()
    want = {"avx512_bf16": "avx512 vfmadd", "avx512": "avx512 vfmadd", "avx2": "avx2 vfmadd", "scalar": "scalar"}
    assert loop == want[isa]
    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", "scalar")  # the same switch as the kernels
    scalar_gflops, _, scalar_loop = _peak("fp32")
    assert scalar_loop == "scalar" and scalar_gflops > 0


def test_bf16_dot_peak_only_with_bf16_dot_products(monkeypatch):
    isa = extension.extension().cpu_isa()
    if isa == "avx512_bf16":
        gflops, _, loop = _peak("bf16")
        assert gflops > 0 and loop == "avx512_bf16 vdpbf16ps"
    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", "scalar")
    with pytest.raises(ValueError, match="no bf16 dot products"):
        _peak("bf16")
    with pytest.raises(ValueError, match="peak kind must be 'fp32' or 'bf16'"):
        _peak("fp64")


def test_benchmark_ceilings_on_cpu(monkeypatch):
    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", "scalar")  # bf16 falls back to the FMA loop
    p = peaks.measure_peaks(torch.device("cpu"), [torch.float32, torch.bfloat16], "tiny")
    assert p["compute_source"] == {"fp32": p["compute_source"]["fp32"], "bf16": p["compute_source"]["fp32"]}
    assert p["compute_source"]["fp32"].startswith("scalar loop")
    assert p["compute_TFLOPs"]["fp32"] > 0 and p["matmul_TFLOPs"]["fp32"] > 0
    monkeypatch.delenv("COLBERT_FAST_CPU_ISA")
    if extension.extension().cpu_isa() == "avx512_bf16":
        p = peaks.measure_peaks(torch.device("cpu"), [torch.bfloat16], "tiny")
        assert p["compute_source"]["bf16"].startswith("avx512_bf16 vdpbf16ps loop")
