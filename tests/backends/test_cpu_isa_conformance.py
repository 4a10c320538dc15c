"""The whole conformance suite again for backend "cpu", once per forced SIMD path.

The default run (tests/core/test_conformance.py) uses the best path this CPU has; here
COLBERT_FAST_CPU_ISA forces each of the others, so the AVX-512 (fp32 FMA, without bf16 dot
products), AVX2 and portable scalar kernels are all checked on one machine. A path the CPU lacks
is skipped (failed when CI requires the cpu backend).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from helpers import backend_or_skip

from colbert_fast import extension

ISAS = ("avx512", "avx2", "scalar")


def _conformance_module():
    """tests/core/test_conformance.py, under the name pytest gives it (one module object, whichever
    of the two files is collected first)."""
    name = "test_conformance"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "core" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


test_conformance = _conformance_module()

# Re-collect every conformance test in this module, where the fixtures below replace `backend`.
for _name in dir(test_conformance):
    if _name.startswith("test_"):
        globals()[_name] = getattr(test_conformance, _name)


def isa_supported(isa: str, monkeypatch) -> bool:
    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", isa)
    try:
        return extension.extension().cpu_isa() == isa
    except RuntimeError:
        return False


@pytest.fixture(params=ISAS)
def cpu_isa(request, monkeypatch, device):
    if device.type != "cpu":
        pytest.skip("SIMD paths are for CPU tensors")
    backend_or_skip("cpu", device)
    if not isa_supported(request.param, monkeypatch):
        from conftest import required_backends

        if "cpu" in required_backends() and request.param != "avx512":
            pytest.fail(f"COLBERT_FAST_CPU_ISA={request.param} is not supported here")
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    return request.param


@pytest.fixture
def backend(cpu_isa):
    return "cpu"
