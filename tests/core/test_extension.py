"""The compiled extension: it builds, imports and registers its ops; the package works without it
and says exactly what is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import required_backends

import colbert_fast as cf
from colbert_fast import backends, extension
from colbert_fast.backends import compiled_ops


def test_extension_loaded_or_required():
    info = extension.build_info()
    if not info["built"]:
        if required_backends():
            pytest.fail(f"the extension must be built here (COLBERT_FAST_REQUIRE_BACKENDS set): {info['reason']}")
        pytest.skip(info["reason"])
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert extension.has_op("gather")


def test_cpu_kernels_run_threads_where_torch_does():
    """ATen's parallel_for is an inline OpenMP region when torch uses OpenMP: an extension compiled
    without -fopenmp runs every CPU kernel on one thread, silently (it happened once)."""
    info = extension.build_info()
    if not info["built"]:
        pytest.skip(info["reason"])
    if not torch.backends.openmp.is_available():
        pytest.skip("this torch does not use OpenMP")
    assert info["with_openmp"], "colbert_fast._C was compiled without -fopenmp: its CPU kernels run on one thread"


def test_gather_op_checks_its_inputs():
    if not extension.has_op("gather"):
        pytest.skip("extension not built")
    emb = torch.randn(4, 8)
    offsets = torch.tensor([0, 4])
    lengths = torch.tensor([4])
    with pytest.raises(RuntimeError, match="offsets, lengths and pids must be int64"):
        torch.ops.colbert_fast.gather(emb, offsets, lengths, torch.tensor([0], dtype=torch.int32), 4)
    with pytest.raises(RuntimeError, match=r"offsets must be \[N \+ 1\]"):
        torch.ops.colbert_fast.gather(emb, lengths, lengths, torch.tensor([0]), 4)
    with pytest.raises(RuntimeError, match="max_len must be >= 0"):
        torch.ops.colbert_fast.gather(emb, offsets, lengths, torch.tensor([0]), -1)


def test_missing_extension_is_explained(monkeypatch):
    monkeypatch.setattr(extension, "_load", lambda: (None, "colbert_fast._C is not built (test)"))
    reason = backends.unavailable_reason("cpu", torch.device("cpu"))
    assert reason == "colbert_fast._C is not built (test)"
    # auto falls back to the torch backend and still gives the right answer
    Q, D = torch.randn(1, 3, 8), torch.randn(2, 4, 8)
    torch.testing.assert_close(cf.maxsim(Q, D), cf.maxsim(Q, D, backend="torch"))
    expected = r"backend 'cpu' is unavailable for cpu tensors: colbert_fast._C is not built"
    with pytest.raises(RuntimeError, match=expected):
        cf.maxsim(Q, D, backend="cpu")


def test_package_imports_without_extension(tmp_path):
    # A fresh interpreter where importing _C fails: the package still imports and scores.
    code = (
        "import sys\n"
        "sys.modules['colbert_fast._C'] = None  # makes `from . import _C` raise ImportError\n"
        "import torch, colbert_fast as cf\n"
        "from colbert_fast import extension\n"
        "assert extension.extension() is None, extension.build_info()\n"
        "assert 'not built' in extension.missing_reason()\n"
        "print(cf.maxsim(torch.ones(1, 2, 4), torch.ones(3, 5, 4)).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[[8.0, 8.0, 8.0]]"


def test_env_command_runs():
    out = subprocess.run(
        [sys.executable, "-m", "colbert_fast", "env", "--json"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert '"torch"' in out.stdout and '"backends_cpu"' in out.stdout


def _ops_with_fakes() -> None:
    """Skip without the extension; else make sure the ops' fake kernels are registered, as the
    cpu/cuda backends do before their first call (compiled_ops.missing_reason)."""
    if compiled_ops.missing_reason() is not None or not extension.has_op("gather"):
        pytest.skip("extension not built")


def test_gather_op_passes_opcheck():
    """Schema, fake kernel and dispatch agree (what torch.compile relies on)."""
    _ops_with_fakes()
    opcheck = getattr(torch.library, "opcheck", None)
    if opcheck is None:
        pytest.skip("torch.library.opcheck needs torch >= 2.4")
    docs = cf.PackedDocs(torch.randn(10, 8), torch.tensor([3, 0, 7]))
    args = (docs.embeddings, docs.offsets, docs.lengths, torch.tensor([[2, -1], [0, 1]]), 7)
    opcheck(torch.ops.colbert_fast.gather.default, args)


def test_gather_compiles_with_torch_compile():
    _ops_with_fakes()
    docs = cf.PackedDocs(torch.randn(10, 8), torch.tensor([3, 0, 7]))
    pids = torch.tensor([[2, -1, 0]])

    def f(emb, offsets, lengths, pids):
        D, mask = torch.ops.colbert_fast.gather(emb, offsets, lengths, pids, 7)
        return D.sum(-1) * mask

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    args = (docs.embeddings, docs.offsets, docs.lengths, pids)
    torch.testing.assert_close(compiled(*args), f(*args))
