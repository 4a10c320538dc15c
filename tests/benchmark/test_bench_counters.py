"""The benchmark's FLOP and byte counters against hand counts, and the workloads against docs/perf.md."""

from __future__ import annotations

import pytest
import torch

from colbert_fast.benchmark import counters, workloads
from colbert_fast.benchmark.timing import Timing


def test_packed_counts_by_hand():
    # 1 query of 2 tokens, dim 4, fp16; candidates of 3 and 1 tokens; the padded batch is 3 long.
    c = counters.packed_counts(B=1, K=2, lq_valid=2, lq=2, dim=4, real_tokens=3 + 1, pad_len=3, elem=2)
    assert c.useful_flops == 2 * 2 * 4 * 4  # 2 FLOPs x 2 query tokens x dim 4 x 4 real doc tokens = 64
    assert c.padded_flops == 2 * 1 * 2 * 2 * 3 * 4  # every query token x 2 docs x 3 positions = 96
    # doc rows 4*4*2 = 32, query 2*4*2 = 16, per candidate pid 8 + offset/length 16 + score 4 = 28 each
    assert c.min_bytes == 32 + 16 + 2 * 28
    assert c.padding_waste == pytest.approx(1 - 64 / 96)
    assert c.intensity == pytest.approx(64 / 104)


def test_pairs_counts_by_hand():
    # 2 queries of 3 tokens (2 valid) against 2 docs of lengths 5 and 2 padded to 5, dim 8, fp32.
    c = counters.pairs_counts(B=2, N=2, lq_valid=2, lq=3, dim=8, real_tokens=7, pad_len=5, elem=4)
    assert c.useful_flops == 2 * 2 * 2 * 8 * 7  # 448
    assert c.padded_flops == 2 * 2 * 2 * 3 * 5 * 8  # 960
    assert c.min_bytes == 7 * 8 * 4 + 2 * 3 * 8 * 4 + 2 * 8 + 2 * 2 * 4  # 224 + 192 + 16 + 16
    no_len = counters.pairs_counts(
        B=2, N=2, lq_valid=2, lq=3, dim=8, real_tokens=7, pad_len=5, elem=4, has_lengths=False
    )
    assert no_len.min_bytes == c.min_bytes - 16


def test_train_counts_by_hand():
    fwd = counters.pairs_counts(B=2, N=3, lq_valid=4, lq=4, dim=8, real_tokens=30, pad_len=10, elem=2)
    c = counters.train_counts(B=2, N=3, lq_valid=4, lq=4, dim=8, real_tokens=30, pad_len=10, elem=2)
    # backward: each (query, doc, query token) sends one dim-long gradient to Q and one to D.
    assert c.useful_flops == fwd.useful_flops + 4 * 2 * 3 * 4 * 8
    assert c.padded_flops == 3 * fwd.padded_flops
    # + score grads read, Q read + dQ written, D rows read + dD rows written
    assert c.min_bytes == fwd.min_bytes + 2 * 3 * 4 + 2 * (2 * 4 * 8 * 2) + 2 * (30 * 8 * 2)


@pytest.mark.parametrize("name", workloads.WORKLOADS)
def test_tiny_case_counts_match_its_tensors(name):
    case = workloads.build(name, "tiny", torch.float16, "cpu")
    s = case.spec
    c = case.counts()
    if case.mode == "packed":
        lengths = case.docs.lengths[case.pids]
        assert torch.equal(lengths.cpu(), case.lengths_cpu)
        assert case.pad_len == int(case.docs.lengths.max())
        assert case.pids.unique().numel() == case.pids.numel(), "candidates must be distinct docs"
        real = int(lengths.sum())
        assert c.useful_flops == 2 * s.Lq * 128 * real
        assert c.padded_flops == 2 * s.B * s.K * s.Lq * case.pad_len * 128
        assert c.min_bytes == real * 128 * 2 + s.B * s.Lq * 128 * 2 + s.B * s.K * 28
    else:
        real = int(case.d_lengths.sum()) if case.d_lengths is not None else case.D.shape[0] * case.D.shape[1]
        fwd_useful = 2 * s.B * s.Lq * 128 * real
        extra = 4 * s.B * s.K * s.Lq * 128 if case.mode == "train" else 0
        assert c.useful_flops == fwd_useful + extra
        assert c.padded_flops == (3 if case.mode == "train" else 1) * 2 * s.B * s.K * s.Lq * case.D.shape[1] * 128
    assert c.useful_flops <= c.padded_flops


def test_workload_data_follows_perf_md():
    case = workloads.build("X1", "tiny", torch.float32, "cpu")
    assert case.D.shape[-1] == 128
    lengths = case.d_lengths
    assert int(lengths.min()) >= 20 and int(lengths.max()) <= 180
    norms = case.D.reshape(-1, 128).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    again = workloads.build("X1", "tiny", torch.float32, "cpu")
    assert torch.equal(case.D, again.D) and torch.equal(case.Q, again.Q), "fixed seed: same inputs every run"


def test_full_sizes_are_perf_md_and_quick_says_what_is_scaled():
    full = {n: workloads.spec(n, "full") for n in workloads.WORKLOADS}
    assert (full["R1"].B, full["R1"].K, full["R1"].store) == (1, 1_000, 100_000)
    assert (full["R2"].B, full["R2"].K) == (1, 10_000)
    assert (full["R3"].B, full["R3"].K) == (64, 1_000)
    assert (full["X1"].B, full["X1"].K, full["X1"].Ld) == (64, 1_000, None)
    assert (full["X2"].B, full["X2"].K, full["X2"].Ld) == (128, 128, 300)
    assert (full["P1"].B, full["P1"].K, full["P1"].Lq, full["P1"].Ld) == (1, 1_000, 1024, 1024)
    assert (full["T1"].mode, full["T1"].B, full["T1"].K, full["T1"].Ld) == ("train", 128, 128, 300)
    for n in workloads.WORKLOADS:
        assert workloads.scaled_text(n, "full") is None
        assert workloads.scaled_text(n, "quick") is not None  # every quick workload is scaled on CPU
    assert workloads.scaled_text("R3", "quick") == "B 64->16, K 1000->250, store 100000->10000"
    with pytest.raises(ValueError, match="unknown workload"):
        workloads.spec("Z9")


def test_sweep_points_are_r1_shaped():
    assert workloads.sweep_names("tiny") == ["S10", "S30", "S100"]
    s = workloads.spec("S300", "quick")
    assert (s.mode, s.B, s.K, s.Lq, s.store) == ("packed", 1, 300, 32, workloads.spec("R1", "quick").store)
    assert workloads.scaled_text("S300", "full") is None
    with pytest.raises(ValueError, match="K must be in"):
        workloads.spec("S500", "tiny")  # more candidates than the tiny store holds


def test_timing_quantiles():
    t = Timing([5.0, 1.0, 3.0, 2.0, 4.0], warmup_ms=10.0)
    assert t.median_ms == 3.0
    assert t.quantile_ms(0.2) == pytest.approx(1.8)
    assert t.quantile_ms(0.8) == pytest.approx(4.2)
