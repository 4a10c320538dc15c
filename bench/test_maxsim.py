"""One pytest-benchmark case per (workload, row): the padded PyTorch baseline and every colbert_fast
backend, the same callables `colbert-fast bench` times. Each is checked against the fp32 oracle
before it is timed; the cache is flushed before every round (outside the timed region)."""

from __future__ import annotations

import os

import pytest
import torch

from colbert_fast import backends
from colbert_fast.benchmark import runner, workloads
from colbert_fast.benchmark.timing import CacheFlusher

ROWS = (runner.BASELINE, *backends.BACKENDS)
_cases: dict = {}


def _case(setup, name):
    key = (name, setup["size"], setup["dtype"], str(setup["device"]))
    if key not in _cases:
        _cases.clear()  # one workload's tensors in memory at a time
        case = workloads.build(name, setup["size"], runner.DTYPES[setup["dtype"]], setup["device"])
        _cases[key] = (case, runner.oracle(case), CacheFlusher(setup["device"]))
    return _cases[key]


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("name", workloads.WORKLOADS)
def test_maxsim(benchmark, bench_setup, name, row):
    device = bench_setup["device"]
    if row != runner.BASELINE:
        reason = backends.unavailable_reason(row, device)
        if reason is None and row == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            reason = "TRITON_INTERPRET=1: the interpreter is a correctness tool, not a benchmark"
        if reason is not None:
            pytest.skip(f"backend {row!r} unavailable on {device}: {reason}")
    case, (exact, low, subset), flush = _case(bench_setup, name)
    if row == runner.BASELINE:
        fn = runner._baseline_make(compiled=False)(case)
    else:
        try:
            fn = runner._backend_fn(row, case)
        except runner.peers.Unsupported as e:
            pytest.skip(str(e))
    grad = torch.enable_grad if case.mode == "train" else torch.no_grad
    with grad():
        ok, _, _, msg = runner.check(fn(), exact, low, subset, case)
    assert ok, f"{name} {row}: {msg}"

    def call():
        with grad():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    counts = case.counts()
    benchmark.extra_info.update(
        workload=name,
        dtype=bench_setup["dtype"],
        size=bench_setup["size"],
        useful_flops=counts.useful_flops,
        min_bytes=counts.min_bytes,
    )
    rounds = 3 if bench_setup["size"] != "tiny" else 5
    benchmark.pedantic(call, setup=flush, rounds=rounds, warmup_rounds=1, iterations=1)
