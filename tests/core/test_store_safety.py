"""Stores are memory-safe by construction (issue 16, items 3 and 10).

Before: PackedDocs accepted lengths whose int64 sum wraps around (also from a crafted file), and
the cpu gather then returned heap memory or crashed; docs.offsets / docs.lengths were the tensors
the kernels read, so changing them after construction did the same; a memory-mapped store
truncated under a searcher killed the process with SIGBUS; loading a FIFO hung; the torch backend
raised on an empty store where cpu and triton returned -inf.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import backend_or_skip

import colbert_fast as cf
from colbert_fast import backends
from colbert_fast.packed import write_store

REPO = Path(__file__).resolve().parents[2]
# Sum 2**64 + 5: wraps to 5 in int64, the number of rows below.
WRAPPING = [2**63 - 1, 2**63 + 1 - 2**20, 5 + 2**20]


@pytest.fixture(params=backends.BACKENDS)
def backend(request, device):
    backend_or_skip(request.param, device)
    return request.param


def _run(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter: a regression that crashes (SIGBUS) or hangs (a FIFO) must
    fail this test, not kill or stall the test run."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_lengths_whose_sum_wraps_around_are_refused():
    with pytest.raises(ValueError, match="offsets do not add up|overflow|too large"):
        cf.PackedDocs(torch.zeros(5, 8), torch.tensor(WRAPPING))
    with pytest.raises(ValueError, match=">= 0"):
        cf.PackedDocs(torch.zeros(5, 8), torch.tensor([6, -1]))


def test_a_crafted_file_with_wrapping_lengths_is_refused(tmp_path):
    path = tmp_path / "crafted.safetensors"
    write_store(path, torch.tensor(WRAPPING), [torch.zeros(5, 8)], 8, torch.float32)  # the header claims 5 rows
    for mmap in (True, False):
        with pytest.raises(ValueError, match="inconsistent"):
            cf.PackedDocs.load(path, mmap=mmap)


def test_changing_offsets_or_lengths_from_outside_changes_nothing(backend, device):
    g = torch.Generator().manual_seed(0)
    docs = cf.PackedDocs.from_list([torch.randn(n, 8, generator=g) for n in (3, 5, 2)]).to(device)
    Q = torch.randn(1, 4, 8, generator=g).to(device)
    pids = torch.tensor([[0, 1, 2]], device=device)
    before = cf.maxsim_packed(Q, docs, pids, backend=backend)
    docs.offsets[1] = 10**12  # were the tensors the kernels read: an out-of-bounds read
    docs.lengths[2] = 10**9
    assert docs.offsets.tolist() == [0, 3, 8, 10] and docs.lengths.tolist() == [3, 5, 2]
    assert torch.equal(cf.maxsim_packed(Q, docs, pids, backend=backend), before)
    D, mask = cf.gather(docs, pids, backend=backend)
    assert D.shape == (1, 3, 5, 8) and mask.sum().item() == 10


def test_the_cpu_gather_op_checks_rows_when_called_directly():
    """torch.ops.colbert_fast.gather trusts no offsets: rows outside embeddings -> IndexError."""
    if backends.unavailable_reason("cpu", torch.device("cpu")) is not None:
        pytest.skip("no cpu extension")
    emb = torch.zeros(5, 8)
    pids = torch.tensor([[0]])
    gather = torch.ops.colbert_fast.gather
    with pytest.raises(IndexError, match="outside embeddings"):
        gather(emb, torch.tensor([2**40, 2**40 + 3]), torch.tensor([3]), pids, 3)
    with pytest.raises(IndexError, match="out of range"):
        gather(emb, torch.tensor([0, 3]), torch.tensor([3]), torch.tensor([[1]]), 3)


def test_an_empty_store_scores_minus_inf_on_every_backend(backend, device):
    docs = cf.PackedDocs(torch.empty(0, 8), torch.empty(0, dtype=torch.int64)).to(device)
    Q = torch.randn(2, 3, 8, device=device)
    pids = torch.full((2, 4), -1, device=device)
    out = cf.maxsim_packed(Q, docs, pids, backend=backend)
    assert out.shape == (2, 4) and torch.isneginf(out).all()
    D, mask = cf.gather(docs, pids, backend=backend)
    assert D.shape == (2, 4, 0, 8) and mask.shape == (2, 4, 0)


def test_a_store_truncated_while_mapped_raises_instead_of_sigbus(tmp_path):
    path = tmp_path / "docs.safetensors"
    cf.PackedDocs.from_list([torch.randn(4000, 64) for _ in range(4)]).save(path)
    done = _run(
        f"""
        import os, torch, colbert_fast as cf
        docs = cf.PackedDocs.load({str(path)!r}, mmap=True)
        os.truncate({str(path)!r}, 4096)
        Q = torch.randn(1, 4, 64)
        for call in (lambda: cf.maxsim_packed(Q, docs, torch.tensor([[3]]), backend="auto"),
                     lambda: cf.gather(docs, torch.tensor([[3]]))):
            try:
                call()
            except ValueError as e:
                assert "shrank" in str(e), e
            else:
                raise SystemExit("no error")
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_loading_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "docs.safetensors"
    os.mkfifo(fifo)
    done = _run(
        f"""
        import colbert_fast as cf
        try:
            cf.PackedDocs.load({str(fifo)!r})
        except ValueError as e:
            assert "FIFO" in str(e), e
            print("ok")
        """,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
