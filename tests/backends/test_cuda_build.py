"""The CUDA kernels compile for sm_80 and sm_90a without a GPU: no register spills, small stack
frames, tensor-core instructions where they belong, exact (non-ftz) decode arithmetic in the
compressed-store kernels; and the host unit tests of their index/tile arithmetic
(csrc/cuda/test/tile_math_test.cpp, csrc/cuda/test/codes_test.cpp) pass. Runs in CI; needs nvcc
(skipped without) for the compile tests and a host C++ compiler for the host tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import torch

from colbert_fast import reference

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


def _entries(ptx: str) -> list[tuple[str, str]]:
    """(entry name, body) of every kernel in a PTX file."""
    bodies = re.split(r"\n\s*\.visible \.entry |\n\s*\.entry ", ptx)[1:]
    return [(b.split("(", 1)[0], b) for b in bodies]


# codes_tc_kernel<NBITS, KS>: one per codec width and k-step bucket.
CODES_TC = [f"codes_tc_kernelILi{nbits}ELi{ks}EE" for nbits in (1, 2, 4, 8) for ks in (4, 8)]
# gather_codes_kernel<out dtype>: maxsim::DType 0 fp32, 1 fp16, 2 bf16, and the rounding it must use.
CODES_GATHER = {"gather_codes_kernelILi0EE": None, "gather_codes_kernelILi1EE": "cvt.rn.f16.f32",
                "gather_codes_kernelILi2EE": "cvt.rn.bf16.f32"}  # fmt: skip
FTZ_ARITHMETIC = re.compile(r"\b(?:add|sub|mul|fma)(?:\.rn)?\.ftz\.f32\b")


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_codes_kernels_use_tensor_cores_and_exact_decode(arch, build_dir):
    _, ptx = _compile("codes_cuda.cu", arch, build_dir)
    entries = _entries(ptx)
    for fragment in CODES_TC:
        bodies = [b for name, b in entries if fragment in name]
        assert len(bodies) == 1, f"expected one {fragment} in the PTX, found {len(bodies)}"
        body = bodies[0]
        assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in body, f"{fragment}: no mma.sync"
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in body
        assert "cvt.rn.f16x2.f32" in body, f"{fragment}: Q is not rounded to fp16 to nearest"
        if "ILi8E" not in fragment:  # residual: centroid rows by cp.async, centroid + weight unfused
            assert "cp.async.cg.shared.global" in body and "cp.async.wait_group" in body
            assert "add.rn.f32" in body
    # The gather must reproduce the reference's fp32 values bit for bit: --use_fast_math turns plain
    # float arithmetic into .ftz (subnormals flushed), so no ftz add/mul/fma may appear in it.
    for fragment, rounding in CODES_GATHER.items():
        bodies = [b for name, b in entries if fragment in name]
        assert len(bodies) == 1, f"expected one {fragment} in the PTX"
        body = bodies[0]
        assert "add.rn.f32" in body and "mul.rn.f32" in body
        assert not FTZ_ARITHMETIC.search(body), f"{fragment}: {FTZ_ARITHMETIC.search(body).group(0)} in the decode"
        assert "mma.sync" not in body
        if rounding is not None:
            assert rounding in body
    fma = [b for name, b in entries if "codes_fma_kernel" in name]
    assert len(fma) == 1 and "mma.sync" not in fma[0]


def _host_binary(tmp_path, source: str, name: str) -> Path:
    """Builds a host test with g++ (AddressSanitizer + UBSan where the toolchain has them)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    exe = tmp_path / name
    base = [cxx, "-std=c++17", "-O1", "-Wall", "-Werror", "-o", str(exe), str(CUDA_DIR / "test" / source)]
    res = subprocess.run(base[:1] + ["-fsanitize=address,undefined"] + base[1:], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    if res.returncode != 0:  # no sanitizer runtime: build plain
        res = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return exe


def _float_bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def _conversion_values() -> torch.Tensor:
    """fp32 values whose fp16/bf16 rounding is worth checking: boundaries, ties, subnormals, random."""
    special = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.996, 65520.0, 65536.0, 1e30, -1e30, 2.0**-14, 2.0**-24,
               2.0**-25, 3 * 2.0**-26, 2.0**-25 * 1.0000001, 5.9604645e-8, 6.097555e-5, 1e-45, 1.1754944e-38,
               float("inf"), float("-inf"), 3.4028235e38, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8,
               1 + 3 * 2.0**-8, 1 + 2.0**-8 + 2.0**-20]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    mant = torch.randint(0, 1 << 23, (20000,), generator=g, dtype=torch.int64)
    exp = torch.randint(90, 160, (20000,), generator=g, dtype=torch.int64)  # fp16 subnormals to overflow
    sign = torch.randint(0, 2, (20000,), generator=g, dtype=torch.int64)
    rand = ((sign << 31) | (exp << 23) | mant).to(torch.int32).view(torch.float32)
    return torch.cat([torch.tensor(special, dtype=torch.float32), rand])


def _decode_cases() -> list[dict]:
    """Small stores with edge values, decoded by colbert_fast.reference (the definition)."""
    g = torch.Generator().manual_seed(1)
    cases = []
    for nbits in (1, 2, 4, 8):
        for dim in (1, 5, 8, 13, 64, 100, 128):
            T, C = 37, 7
            scales = (torch.rand(T, generator=g) * 2 + 0.1).half()
            scales[:6] = torch.tensor([0.0, 6e-8, 3e-5, 60000.0, 1.0, 0.5]).half()  # zero, fp16 subnormals, huge
            if nbits == 8:
                codes = torch.randint(-128, 128, (T, dim), generator=g, dtype=torch.int8)
                codes[0, 0], codes[1, 0] = -128, 127
                dec = reference.decode_int8(codes, scales)
                cases.append(dict(nbits=8, dim=dim, T=T, C=0, codes=codes.view(torch.uint8), scales=scales, dec=dec))
                continue
            width = (dim * nbits + 7) // 8
            codes = torch.randint(0, 256, (T, width), generator=g, dtype=torch.int64).to(torch.uint8)
            ids = torch.randint(0, C, (T,), generator=g, dtype=torch.int32)
            centroids = torch.randn(C, dim, generator=g) * 0.2
            centroids.view(-1)[:4] = torch.tensor([1e-40, -0.0, 1e35, -3e-39])  # subnormals; 1e35 * 60000 = inf
            ids[:6] = 0  # rows with the special scales read the special centroid
            weights = torch.randn(1 << nbits, generator=g) * 0.05
            weights[0] = 1e-41
            dec = reference.decode_residual(ids, codes, scales, centroids, weights, nbits)
            cases.append(dict(nbits=nbits, dim=dim, T=T, C=C, codes=codes, scales=scales, ids=ids,
                              centroids=centroids, weights=weights, dec=dec))  # fmt: skip
    return cases


def write_reference_file(path: Path) -> None:
    """The binary file codes_test.cpp reads (test_against_torch); little-endian, torch's results."""
    out = [b"CFCT"]

    def i64(v):
        out.append(int(v).to_bytes(8, "little", signed=True))

    def raw(t: torch.Tensor):
        out.append(t.contiguous().numpy().tobytes())

    halves = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    i64(halves.numel())
    raw(halves)
    conv = _conversion_values()
    i64(conv.numel())
    raw(_float_bits(conv))
    raw(conv.to(torch.float16).view(torch.int16))
    raw(conv.to(torch.bfloat16).view(torch.int16))
    cases = _decode_cases()
    i64(len(cases))
    for c in cases:
        for key in ("nbits", "dim", "T", "C"):
            i64(c[key])
        raw(c["codes"])
        raw(c["scales"].view(torch.int16))
        if c["nbits"] != 8:
            raw(c["ids"])
            raw(c["centroids"])
            raw(c["weights"])
        raw(c["dec"])
        raw(c["dec"].to(torch.float16).view(torch.int16))
        raw(c["dec"].to(torch.bfloat16).view(torch.int16))
    path.write_bytes(b"".join(out))


def test_reference_file_has_the_edge_cases():
    """The decode cases reach what they are there for: subnormal, infinite and fp16-overflowing values."""
    dec = torch.cat([c["dec"].flatten() for c in _decode_cases()])
    finite = dec[torch.isfinite(dec)]
    assert torch.isinf(dec).any(), "no decoded value overflows fp32"
    assert ((finite != 0) & (finite.abs() < 1.1754944e-38)).any(), "no fp32 subnormal decoded value"
    assert torch.isinf(finite.to(torch.float16)).any(), "no value overflows fp16"
    sub16 = (finite.abs() < 6.1e-5) & (finite != 0)
    assert sub16.any(), "no value in fp16's subnormal range"


def test_host_codes_math(tmp_path):
    """Decode helpers bit-identical to the reference (torch), gather and scoring kernels emulated."""
    exe = _host_binary(tmp_path, "codes_test.cpp", "codes_test")
    ref = tmp_path / "codes_reference.bin"
    write_reference_file(ref)
    run = subprocess.run([str(exe), str(ref)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    assert "all codes tests passed" in run.stdout and "against torch:" in run.stdout, run.stdout
    print(run.stdout)
