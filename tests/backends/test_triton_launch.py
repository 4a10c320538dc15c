"""Launch hygiene of the Triton launchers: every launch inside a device guard for the tensors'
GPU, lengths/offsets of any strides, one autotuner per shape bucket with a fixed small config for
tiny grids, and a compile check that fails on register spills. Runs under the interpreter on
CPU; the multi-GPU case needs two GPUs."""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import backend_or_skip, normalized

import colbert_fast as cf
from colbert_fast import reference


@pytest.fixture
def kernels(device):
    backend_or_skip("triton", device)
    from colbert_fast.kernels import gather, maxsim, maxsim_bwd

    return maxsim, maxsim_bwd, gather


def _packed(device, n_docs=12, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 9, (n_docs,), generator=g)
    lengths[0] = 8
    docs = cf.PackedDocs(normalized((int(lengths.sum()), dim), torch.float16, device, g), lengths.to(device))
    return docs, g


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a view with stride 2 (every other element of a larger buffer)."""
    big = torch.full((2 * t.numel(),), -7, dtype=t.dtype, device=t.device)
    big[::2] = t
    view = big[::2]
    assert view.stride() == (2,) and torch.equal(view, t)
    return view


def test_lengths_and_offsets_of_any_stride(kernels, device):
    maxsim, _, gather = kernels
    docs, g = _packed(device)
    pids = torch.tensor([[0, 3, -1, 11, 5], [2, 2, 7, -1, 0]], device=device)
    Q = normalized((2, 5, 64), torch.float16, device, g)
    offsets, lengths = _strided(docs.offsets), _strided(docs.lengths)
    got = maxsim.maxsim_packed_fwd(Q, docs.embeddings, offsets, lengths, pids)
    want = maxsim.maxsim_packed_fwd(Q, docs.embeddings, docs.offsets, docs.lengths, pids)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    exact = reference.maxsim_packed(Q, docs.embeddings, docs.offsets, docs.lengths, pids)
    torch.testing.assert_close(got.cpu(), exact.cpu(), atol=2e-2, rtol=0)
    D, mask = gather.gather(docs.embeddings, offsets, lengths, pids, 8)
    D_want, mask_want = gather.gather(docs.embeddings, docs.offsets, docs.lengths, pids, 8)
    assert torch.equal(D, D_want) and torch.equal(mask, mask_want)


def test_device_guard_picks_the_tensors_gpu():
    pytest.importorskip("triton")
    from colbert_fast.kernels.launch import device_guard

    assert isinstance(device_guard(torch.device("cpu")), contextlib.nullcontext)
    guard = device_guard(torch.device("cuda", 1))  # built without entering: no GPU needed
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_every_launch_runs_inside_a_device_guard(kernels, device, monkeypatch):
    maxsim, maxsim_bwd, gather = kernels
    guarded: list = []  # devices of the guards open right now
    launches: list = []  # (kernel name, device of the guard it ran in, or None)

    @contextlib.contextmanager
    def recording_guard(dev):
        guarded.append(dev)
        try:
            yield
        finally:
            guarded.pop()

    def recording_wrap(real_wrap):
        def wrap(kernel):
            launcher = real_wrap(kernel)
            name = getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))

            class Launch:
                def __getitem__(self, grid):
                    run = launcher[grid]

                    def call(*args, **kwargs):
                        launches.append((name, guarded[-1] if guarded else None))
                        return run(*args, **kwargs)

                    return call

            return Launch()

        return wrap

    for module in (maxsim, maxsim_bwd, gather):
        monkeypatch.setattr(module, "device_guard", recording_guard)
        monkeypatch.setattr(module, "wrap", recording_wrap(module.wrap))
    docs, g = _packed(device)
    pids = torch.tensor([[0, 3, -1]], device=device)
    Q = normalized((1, 5, 64), torch.float16, device, g)
    D = normalized((3, 7, 64), torch.float16, device, g)
    maxsim.maxsim_fwd(Q, D)  # all pairs
    maxsim.maxsim_fwd(Q, D.unsqueeze(0))  # per query
    _, argmax = maxsim.maxsim_fwd(Q, D, save_argmax=True)
    maxsim.maxsim_packed_fwd(Q, docs.embeddings, docs.offsets, docs.lengths, pids)
    gather.gather(docs.embeddings, docs.offsets, docs.lengths, pids, 8)
    grad = torch.ones((1, 3), device=device)
    maxsim_bwd.maxsim_bwd(grad, Q, D, argmax)  # dQ and the atomic dD
    maxsim_bwd.maxsim_bwd(grad, Q, D, argmax, deterministic=True)  # dQ and the one-hot dD
    names = [n for n, _ in launches]
    assert names.count("_maxsim_all_pairs_kernel") == 2 and names.count("_maxsim_segmented_kernel") == 2
    for kernel in ("_gather_kernel", "_maxsim_bwd_dd_atomic_kernel", "_maxsim_bwd_dd_onehot_kernel"):
        assert names.count(kernel) == 1, names
    assert names.count("_maxsim_bwd_dq_kernel") == 2
    assert all(dev == torch.device(device) for _, dev in launches), launches


def test_shape_buckets():
    pytest.importorskip("triton")
    from colbert_fast.kernels import settings

    assert settings.shape_bucket("segmented", settings.TINY_WORK - 1, 180) == "tiny"
    r1 = settings.shape_bucket("segmented", 1_000, 0)
    assert r1 != "tiny" and r1 == settings.shape_bucket("segmented", 1_001, 0)
    assert r1 != settings.shape_bucket("segmented", 64_000, 0)  # R3's grid is another bucket
    assert settings.shape_bucket("all_pairs", 1_000, 180) != settings.shape_bucket("all_pairs", 1_000, 1024)
    for arch in (80, 90):
        for kernel in ("all_pairs", "segmented"):
            for bm in (32, 128):
                for elsize in (2, 4):
                    tiny = settings.autotune_configs(kernel, arch, bm, 128, elsize, False, tiny=True)
                    assert len(tiny) == 1
                    # the compile check covers every config a launch can use
                    assert set(tiny) <= set(settings._configs(kernel, arch, bm, 128, elsize, False))


def test_each_bucket_gets_its_own_tuner(kernels, device):
    maxsim, _, _ = kernels
    from colbert_fast.kernels import settings

    docs, g = _packed(device, n_docs=300, dim=64)
    Q = normalized((1, 4, 64), torch.float16, device, g)
    before = set(maxsim._TUNERS)
    small = torch.arange(10, device=device).view(1, 10)
    large = torch.arange(300, device=device).view(1, 300) % docs.num_docs
    for pids in (small, large, small):
        maxsim.maxsim_packed_fwd(Q, docs.embeddings, docs.offsets, docs.lengths, pids)
    arch = settings.device_arch(torch.device(device))
    new = {k[-1] for k in set(maxsim._TUNERS) - before if k[:3] == ("segmented", arch, 32)}
    want = {"tiny", settings.shape_bucket("segmented", 300, 0)}
    assert want <= {k[-1] for k in maxsim._TUNERS if k[:3] == ("segmented", arch, 32)}
    assert new <= want


@pytest.mark.cuda
def test_tensors_on_another_gpu(device):
    backend_or_skip("triton", device)
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs (the current one and the tensors')")
    other = torch.device("cuda", 1)
    docs, g = _packed(other)
    pids = torch.tensor([[0, 3, -1, 11]], device=other)
    Q = normalized((1, 5, 64), torch.float16, other, g)
    with torch.cuda.device(0):
        got = cf.maxsim_packed(Q, docs, pids, backend="triton")
        torch.cuda.synchronize(other)
    want = reference.maxsim_packed(Q, docs.embeddings, docs.offsets, docs.lengths, pids)
    torch.testing.assert_close(got.cpu(), want.cpu(), atol=2e-2, rtol=0)


def test_compile_check_fails_on_spills():
    pytest.importorskip("triton")
    from colbert_fast.kernels import compile_check

    log = (
        "ptxas info    : Compiling entry function '_maxsim_segmented_kernel' for 'sm_90a'\n"
        "ptxas info    : Function properties for _maxsim_segmented_kernel\n"
        "    112 bytes stack frame, 124 bytes spill stores, 112 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 112 bytes cumulative stack size\n"
    )
    ptxas = compile_check.parse_ptxas(log)
    assert ptxas == {"registers": 255, "spill_stores": 124, "spill_loads": 112, "stack": 112}
    record = {"ok": True, "kernel": "segmented", "arch": 90, "mma": True, "wgmma": False, "shared": 0, "ptxas": ptxas}
    assert any("register spills: 124 B stored" in p for p in compile_check.problems(record))
    assert compile_check.problems(record | {"ptxas": ptxas | {"spill_stores": 0, "spill_loads": 0}}) == []
    # No report at all is a failure too: a check that cannot see spills must not pass.
    assert any("no ptxas resource report" in p for p in compile_check.problems(record | {"ptxas": None}))
