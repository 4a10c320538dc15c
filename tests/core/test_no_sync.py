"""No host sync on the scoring hot path: input validation must not read tensors back to the host.

On a GPU every such read (.item(), .tolist(), bool(t), int(t)) waits for the device; at R1's
size that wait costs several times the kernel. The CPU test forbids every Python-level read
while the public ops validate and score R1-shaped inputs (the validation code is the same on
every device: colbert_fast/validation.py `_require`); the GPU test runs the same calls under
torch.cuda.set_sync_debug_mode("error"), which raises on any synchronising CUDA call.
"""

from __future__ import annotations

import pytest
import torch
from helpers import backend_or_skip, no_host_reads, normalized

import colbert_fast as cf
from colbert_fast import validation


def _r1_inputs(device, store=2_000, k=1_000, seed=0):
    """1 query of 32 tokens x k candidates of a packed store (R1's shape, smaller store)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(20, 181, (store,), generator=g)
    emb = normalized((int(lengths.sum()), 128), torch.float16, device, g)
    docs = cf.PackedDocs(emb, lengths.to(device))
    pids = torch.randperm(store, generator=g)[:k].view(1, k).to(device)
    pids[0, 3] = -1  # an empty slot is valid input
    Q = normalized((1, 32, 128), torch.float16, device, g)
    return Q, docs, pids


def test_the_guard_catches_every_kind_of_read(monkeypatch):
    # The test below can fail: each read the old validation used is caught.
    t = torch.tensor([3, 1])
    with no_host_reads(monkeypatch) as calls:
        for read in (lambda: t.tolist(), lambda: t.max().item(), lambda: int(t.max()), lambda: bool(t.min() < 2)):
            with pytest.raises(AssertionError, match="host read of a tensor"):
                read()
    assert calls == ["tolist", "item", "__int__", "__bool__"]


def test_validation_reads_nothing_back_on_cpu(monkeypatch):
    Q, docs, pids = _r1_inputs("cpu")
    D = normalized((6, 40, 128), torch.float16, "cpu", torch.Generator().manual_seed(1))
    d_lengths = torch.tensor([40, 0, 3, 17, 40, 1])
    floor = torch.tensor([0.0, float("-inf"), -1.0, 0.5, 0.0, 0.0])
    with no_host_reads(monkeypatch) as calls:
        validation.check_packed(Q, docs, pids, None)
        validation.check_packed(Q, docs, pids[0], None, floor=0.0)  # [K] pids, a float floor
        validation.check_maxsim(Q, D, None, None, d_lengths, floor)
    assert calls == []


def test_public_ops_read_nothing_back_on_cpu(monkeypatch):
    # The whole call: validation, backend selection and the compiled CPU kernel's glue.
    backend_or_skip("cpu", torch.device("cpu"))
    Q, docs, pids = _r1_inputs("cpu")
    want = cf.maxsim_packed(Q, docs, pids, backend="cpu")
    D = normalized((6, 40, 128), torch.float16, "cpu", torch.Generator().manual_seed(1))
    d_lengths = torch.tensor([40, 0, 3, 17, 40, 1])
    with no_host_reads(monkeypatch) as calls:
        got = cf.maxsim_packed(Q, docs, pids, backend="cpu")
        cf.maxsim(Q, D, d_lengths=d_lengths, backend="cpu")
    assert calls == []
    assert torch.equal(got, want)


def test_bad_values_still_raise_spec_errors_without_reads(monkeypatch):
    # The failure path may read (to name the value); the check itself still happens with reads off.
    Q, docs, pids = _r1_inputs("cpu", store=50, k=10)
    bad = pids.clone()
    bad[0, 5] = 50
    with pytest.raises(IndexError, match=r"pid 50 out of range: docs has 50 docs"):
        cf.maxsim_packed(Q, docs, bad, backend="torch")
    with no_host_reads(monkeypatch) as calls, pytest.raises(AssertionError, match="host read"):
        validation.check_pids(bad, docs, 1)
    # The bad pid was found with reads forbidden; only then did the message ask for the value.
    assert calls == ["__int__"]


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_r1_shaped_calls_do_not_sync_on_gpu(device, backend):
    backend_or_skip(backend, device)
    Q, docs, pids = _r1_inputs(device, store=20_000)
    g = torch.Generator().manual_seed(2)
    D = normalized((64, 180, 128), torch.float16, device, g)
    d_lengths = torch.randint(20, 181, (64,), generator=g).to(device)
    # Warm-up outside the guard: the first call compiles and autotunes (which synchronises).
    want = cf.maxsim_packed(Q, docs, pids, backend=backend)
    want_pairs = cf.maxsim(Q, D, d_lengths=d_lengths, backend=backend)
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = cf.maxsim_packed(Q, docs, pids, backend=backend)
        got_pairs = cf.maxsim(Q, D, d_lengths=d_lengths, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(got_pairs, want_pairs, atol=0, rtol=0)
