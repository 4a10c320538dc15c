"""The CUDA kernels compile for sm_80 and sm_90a without a GPU: no register spills, small stack
frames, tensor-core instructions where they belong; and the host unit test of their index/tile
arithmetic (csrc/cuda/test/tile_math_test.cpp) passes. Runs in CI; needs nvcc (skipped without)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNEL_SOURCES = sorted(p.name for p in CUDA_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90a")
# Bytes of local-memory stack a kernel may use (0 today; a little slack for future helpers).
MAX_STACK_BYTES = 64
# Tensor-core kernels: (kernel name fragment, PTX instruction that must appear in its body).
TC_KERNELS = (
    ("maxsim_tc_kernelILb0E", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"),
    ("maxsim_tc_kernelILb1E", "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
    ("maxsim_tc_shared_kernelILb0E", "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"),
    ("maxsim_tc_shared_kernelILb1E", "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
)


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = Path(home) / "bin" / "nvcc"
    return str(path) if path.exists() else shutil.which("nvcc")


needs_nvcc = pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (set CUDA_HOME)")

# The flags setup.py gives nvcc (plus the arch), so the resource report is the one that ships.
NVCC_FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "-lineinfo", "-DWITH_CUDA", "--expt-relaxed-constexpr"]


@cache
def _compile(source: str, arch: str, out_dir: str) -> tuple[str, str]:
    """(ptxas -v report, PTX text) of one source for one arch."""
    src = CUDA_DIR / source
    cubin = Path(out_dir) / f"{source}.{arch}.cubin"
    res = subprocess.run(
        [_nvcc(), *NVCC_FLAGS, f"-arch={arch}", "-Xptxas", "-v", "-cubin", "-o", str(cubin), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, f"nvcc failed on {source} for {arch}:\n{res.stderr[-4000:]}"
    ptx = Path(out_dir) / f"{source}.{arch}.ptx"
    res2 = subprocess.run(
        [_nvcc(), *NVCC_FLAGS, f"-arch={arch}", "-ptx", "-o", str(ptx), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res2.returncode == 0, f"nvcc -ptx failed on {source} for {arch}:\n{res2.stderr[-4000:]}"
    return res.stderr + res.stdout, ptx.read_text()


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("nvcc"))


def parse_ptxas(report: str) -> dict[str, dict[str, int]]:
    """{kernel: {registers, spill_stores, spill_loads, stack, smem}} from `ptxas -v` output."""
    kernels: dict[str, dict[str, int]] = {}
    current = None
    for line in report.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?", line)
        if m:
            current = kernels.setdefault(
                m.group(1), {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0}
            )
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"] = max(current["stack"], int(m.group(1)))
            current["spill_stores"] = max(current["spill_stores"], int(m.group(2)))
            current["spill_loads"] = max(current["spill_loads"], int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            current["smem"] = int(m.group(1))
    return kernels


def test_parse_ptxas_reads_spills():
    report = (
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'\n"
        "ptxas info    : Function properties for _Z1kv\n"
        "    40 bytes stack frame, 36 bytes spill stores, 32 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 0 barriers, 40 bytes cumulative stack size, 544 bytes cmem[0]\n"
    )
    assert parse_ptxas(report) == {
        "_Z1kv": {"registers": 255, "spill_stores": 36, "spill_loads": 32, "stack": 40, "smem": 0}
    }


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", KERNEL_SOURCES)
def test_cuda_kernels_compile_without_spills(source, arch, build_dir):
    report, _ = _compile(source, arch, build_dir)
    kernels = parse_ptxas(report)
    assert kernels, f"no kernels in the ptxas report of {source}:\n{report}"
    table = "\n".join(f"  {name}: {info}" for name, info in sorted(kernels.items()))
    print(f"{source} {arch}:\n{table}")
    bad = {n: k for n, k in kernels.items() if k["spill_stores"] > 0 or k["stack"] > MAX_STACK_BYTES}
    assert not bad, f"register spills or large stack frames in {source} ({arch}):\n{table}"


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_maxsim_kernels_use_tensor_cores(arch, build_dir):
    _, ptx = _compile("maxsim_cuda.cu", arch, build_dir)
    # Split the PTX into entry bodies and check each tensor-core kernel holds its mma + async copies.
    bodies = re.split(r"\n\s*\.visible \.entry |\n\s*\.entry ", ptx)
    for name_part, instruction in TC_KERNELS:
        entries = [b for b in bodies if b.split("(", 1)[0].find(name_part) >= 0]
        assert len(entries) == 3, f"expected 3 k-buckets of {name_part} in the PTX, found {len(entries)}"
        for body in entries:
            assert instruction in body, f"{name_part}: no {instruction} in its PTX"
            assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in body
            assert "cp.async.cg.shared.global" in body and "cp.async.wait_group" in body
    fma = [b for b in bodies if "maxsim_fma_kernel" in b.split("(", 1)[0]]
    assert len(fma) == 3 and not any("mma.sync" in b for b in fma)


def test_host_tile_math(tmp_path):
    """Index/tile arithmetic of the kernels, including a lane-by-lane emulation of one warp."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path / "tile_math_test"
    src = CUDA_DIR / "test" / "tile_math_test.cpp"
    res = subprocess.run(
        [cxx, "-std=c++17", "-O1", "-Wall", "-Werror", "-o", str(exe), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all tile math tests passed" in run.stdout
