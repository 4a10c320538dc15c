"""Input factories and the tolerance check shared by the conformance tests."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import warnings
from pathlib import Path

import pytest
import torch

from colbert_fast import backends, files, reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def backend_or_skip(name: str, device: torch.device):
    """The backend module, skipping (or failing, when CI requires it) if it cannot run here."""
    from conftest import required_backends

    reason = backends.unavailable_reason(name, device)
    if reason is not None:
        if name in required_backends():
            pytest.fail(f"backend {name!r} is required (COLBERT_FAST_REQUIRE_BACKENDS) but unavailable: {reason}")
        pytest.skip(f"backend {name!r} unavailable on {device}: {reason}")
    return backends.load(name)


def normalized(shape, dtype, device, generator, negative_bias: float = 0.0) -> torch.Tensor:
    """L2-normalized random vectors (ColBERT's embeddings). negative_bias is added to component 0
    before normalizing: vectors with opposite biases have mostly negative similarities."""
    x = torch.randn(shape, generator=generator, dtype=torch.float32)
    if negative_bias:
        x[..., 0] += negative_bias
    x = torch.nn.functional.normalize(x, dim=-1)
    return x.to(device=device, dtype=dtype)


def random_lengths(shape, max_len: int, generator, device) -> torch.Tensor:
    """Lengths in [0, max_len], forcing at least one 0 and one max_len when there is room."""
    lengths = torch.randint(0, max_len + 1, shape, generator=generator)
    flat = lengths.view(-1)
    if flat.numel() >= 2:
        flat[0] = 0
        flat[-1] = max_len
    return lengths.to(device)


def random_mask(shape, generator, device, p: float = 0.7) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) < p).to(device)


def assert_matches_reference(out: torch.Tensor, exact: torch.Tensor, same_dtype: torch.Tensor, dtype, lq: int):
    """The tolerance rule of docs/spec.md (section 7), with a failure message naming the worst element."""
    assert out.dtype == torch.float32, f"scores must be fp32, got {out.dtype}"
    assert out.shape == exact.shape, f"shape {tuple(out.shape)} != reference {tuple(exact.shape)}"
    out = out.detach().cpu()
    exact = exact.cpu()
    same_dtype = same_dtype.cpu()
    # -inf (empty slots) must match exactly; NaN never passes.
    assert not torch.isnan(out).any(), f"NaN in output at {torch.nonzero(torch.isnan(out))[:5].tolist()}"
    inf_mismatch = torch.isinf(out) != torch.isinf(exact)
    assert not inf_mismatch.any(), f"infinite scores differ at {torch.nonzero(inf_mismatch)[:5].tolist()}"
    finite = torch.isfinite(exact)
    if not finite.any():
        return
    tol = reference.tolerance(exact, same_dtype, dtype, lq)
    err = (out - exact).abs().masked_fill(~finite, 0)
    worst = int(err.argmax())
    n_bad = int((err > tol).sum())
    assert n_bad == 0, (
        f"{n_bad}/{err.numel()} scores off by more than {tol:.3g}; worst at flat index {worst}: "
        f"got {out.view(-1)[worst].item():.6f}, reference {exact.view(-1)[worst].item():.6f} "
        f"(err {err.view(-1)[worst].item():.3g})"
    )


def import_peer(module: str, install_hint: str):
    """Import a peer library for parity tests: skip when missing, fail when CI requires peers."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install raising anything at import
        if os.environ.get("COLBERT_FAST_REQUIRE_PEERS") == "1":
            pytest.fail(f"{module} is required (COLBERT_FAST_REQUIRE_PEERS=1) but failed to import: {e!r}")
        pytest.skip(f"{module} not importable ({type(e).__name__}: {e}); {install_hint} to run parity tests")


def fail_at_call(monkeypatch, k: int, label: str = "") -> None:
    """Make the (k+1)-th colbert_fast.files write_fully / fsync call from now raise (ENOSPC for a
    write, EIO for an fsync): a full disk or an I/O error at one exact step of a writer."""
    seen = [0]
    where = f"call {k}" + (f" ({label})" if label else "")

    def failing(real, code):
        def wrapped(*args):
            seen[0] += 1
            if seen[0] == k + 1:
                raise OSError(code, f"injected failure at {where}")
            return real(*args)

        return wrapped

    monkeypatch.setattr(files, "write_fully", failing(files.write_fully, errno.ENOSPC))
    monkeypatch.setattr(files, "fsync", failing(files.fsync, errno.EIO))


def describe_fd(fd: int) -> str:
    """'file <name>' or 'directory <name>' of an open descriptor (for call logs and fault injection)."""
    path = os.readlink(f"/proc/self/fd/{fd}")
    return f"{'directory' if os.path.isdir(path) else 'file'} {Path(path).name}"


def record_write_calls(monkeypatch) -> list[str]:
    """From now until monkeypatch.undo(): every colbert_fast.files write_fully / fsync call is
    appended to the returned list as 'write <what>' / 'fsync <what>' (describe_fd), then performed."""
    calls: list[str] = []
    real_write, real_fsync = files.write_fully, files.fsync

    def write(fd, data):
        calls.append(f"write {describe_fd(fd)}")
        real_write(fd, data)

    def fsync(fd):
        calls.append(f"fsync {describe_fd(fd)}")
        real_fsync(fd)

    monkeypatch.setattr(files, "write_fully", write)
    monkeypatch.setattr(files, "fsync", fsync)
    return calls


READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__len__")


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Every Python-level way of reading a tensor's value raises inside the block (a GPU would wait
    for each); yields the list of reads attempted. Data-dependent C++ ops (nonzero, boolean
    indexing) are not Python reads: tests/retrieval/test_engine_static.py adds fake tensors for those."""
    calls = []

    def forbid(name):
        def read(self, *args, **kwargs):
            calls.append(name)
            raise AssertionError(f"host read of a tensor: Tensor.{name} on shape {tuple(self.shape)}")

        return read

    with monkeypatch.context() as m:
        for name in READS:
            m.setattr(torch.Tensor, name, forbid(name))
        yield calls
