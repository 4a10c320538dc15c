"""Device gating for the whole suite.

--device cpu (default) runs every backend on CPU tensors; Triton kernels then run under the
interpreter, so TRITON_INTERPRET=1 is set here, before any kernel module is imported.
--device cuda runs the same suite on the GPU. No torch.cuda calls happen at import time.

COLBERT_FAST_REQUIRE_BACKENDS=cpu,triton (CI sets it) turns "backend unavailable" from a skip
into a failure, so a broken build cannot pass by skipping its tests.
"""

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"], help="device to test on")


def pytest_configure(config):
    if config.getoption("--device") == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--device") == "cuda":
        return
    skip = pytest.mark.skip(reason="needs --device cuda")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(request):
    import torch

    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("--device cuda given but torch sees no GPU")
    return torch.device(name)


def required_backends() -> set:
    return {b for b in os.environ.get("COLBERT_FAST_REQUIRE_BACKENDS", "").split(",") if b}
