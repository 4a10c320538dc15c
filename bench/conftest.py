"""pytest-benchmark suite over the same workloads and rows as `colbert-fast bench`.

    pytest bench/ --benchmark-only                              quick sizes on CPU, full on GPU
    pytest bench/ --benchmark-only --bench-size tiny            seconds
    pytest bench/ --benchmark-only --benchmark-autosave         then later:
    pytest bench/ --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%

Options are prefixed --bench- so they never clash with tests/conftest.py's --device.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("colbert_fast bench")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when a GPU is visible)")
    group.addoption(
        "--bench-size",
        default=None,
        choices=["tiny", "quick", "full"],
        help="workload size (default: quick on CPU, full on GPU)",
    )
    group.addoption(
        "--bench-dtype",
        default=None,
        choices=["fp32", "fp16", "bf16"],
        help="dtype (default: fp16 on GPU, fp32 on CPU)",
    )


@pytest.fixture(scope="session")
def bench_setup(request):
    import torch

    name = request.config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("--bench-device cuda given but torch sees no GPU")
    size = request.config.getoption("--bench-size") or ("full" if device.type == "cuda" else "quick")
    dtype = request.config.getoption("--bench-dtype") or ("fp16" if device.type == "cuda" else "fp32")
    return {"device": device, "size": size, "dtype": dtype}
