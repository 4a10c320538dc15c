"""Parity with the real PyLate: colbert_fast.compat.colbert_scores / colbert_scores_pairwise /
colbert_kd_scores against pylate.scores, pylate.rank.rerank patched vs unpatched, patch/unpatch.

Skipped when PyLate is not installed, unless COLBERT_FAST_REQUIRE_PEERS=1 (CI): then they fail.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from helpers import DTYPES, import_peer, normalized, random_lengths

from colbert_fast import compat, reference

pytestmark = pytest.mark.peers  # make test-peers runs these in the peers' own venv


def _peer(module: str):
    return import_peer(module, "pip install pylate")


@pytest.fixture(scope="module")
def ps(monkeypatch_module):
    mod = _peer("pylate.scores")
    # unset: "auto", so PyLate runs its PyTorch path on CPU tensors and the patched one runs ours
    monkeypatch_module.delenv("PYLATE_SCORES_BACKEND", raising=False)
    yield mod
    compat.unpatch_pylate()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _check(ours, lib_low, lib_exact, dtype, lq):
    """The tolerance rule of docs/spec.md with PyLate as the oracle: error against PyLate on fp32 (same rounded
    inputs) <= 2x PyLate's own error in the low dtype + floor * Lq; same dtype and shape."""
    assert ours.dtype == lib_low.dtype and ours.shape == lib_low.shape
    tol = reference.tolerance(lib_exact.float(), lib_low.float(), dtype, lq)
    err = (ours.float() - lib_exact.float()).abs().max().item()
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g} against PyLate ({dtype})"


def _masks(g, n_docs, Ld, n_queries, Lq, kind):
    lengths = random_lengths((n_docs,), Ld, g, "cpu")
    d_mask = (torch.arange(Ld) < lengths[:, None]).float()  # PyLate's masks are float 0/1
    q_mask = None
    if kind == "both":
        q_mask = (torch.rand(n_queries, Lq, generator=g) < 0.8).float()
    return (None, None) if kind == "none" else (q_mask, d_mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_queries", [1, 6], ids=["one_query", "many"])
@pytest.mark.parametrize("masks", ["none", "docs", "both"])
@pytest.mark.parametrize("bias", [0.0, 8.0], ids=["mixed", "negative"])
def test_colbert_scores_parity(ps, dtype, n_queries, masks, bias):
    g = torch.Generator().manual_seed(0)
    Lq, N, Ld, dim = 32, 11, 40, 64
    Q = normalized((n_queries, Lq, dim), dtype, "cpu", g, negative_bias=-bias)
    D = normalized((N, Ld, dim), dtype, "cpu", g, negative_bias=bias)
    q_mask, d_mask = _masks(g, N, Ld, n_queries, Lq, masks)
    lib_low = ps.colbert_scores(Q, D, q_mask, d_mask)
    lib_exact = ps.colbert_scores(Q.float(), D.float(), q_mask, d_mask)
    ours = compat.colbert_scores(Q, D, q_mask, d_mask)
    _check(ours, lib_low, lib_exact, dtype, Lq)
    if masks != "none" and bias:  # the zero-from-padding quirk is in play: docs/spec.md scores differ
        strict = compat.colbert_scores(Q, D, q_mask, d_mask, strict=True)
        assert (strict - lib_exact).abs().max().item() > 0.1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [0.0, 8.0], ids=["mixed", "negative"])
def test_colbert_kd_scores_parity(ps, dtype, bias):
    g = torch.Generator().manual_seed(1)
    A, N, Lq, Ld, dim = 4, 5, 32, 30, 64
    Q = normalized((A, Lq, dim), dtype, "cpu", g, negative_bias=-bias)
    D = normalized((A, N, Ld, dim), dtype, "cpu", g, negative_bias=bias)
    d_mask = (torch.arange(Ld) < random_lengths((A, N), Ld, g, "cpu")[..., None]).float()
    q_mask = (torch.rand(A, Lq, generator=g) < 0.8).float()
    lib_low = ps.colbert_kd_scores(Q, D, q_mask, d_mask)
    lib_exact = ps.colbert_kd_scores(Q.float(), D.float(), q_mask, d_mask)
    _check(compat.colbert_kd_scores(Q, D, q_mask, d_mask), lib_low, lib_exact, dtype, Lq)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ragged", [False, True])
def test_colbert_scores_pairwise_parity(ps, dtype, ragged):
    g = torch.Generator().manual_seed(2)
    dim = 64
    if ragged:
        Q = [normalized((n, dim), dtype, "cpu", g, negative_bias=-1.0) for n in (32, 5, 17)]
        D = [normalized((n, dim), dtype, "cpu", g, negative_bias=1.0) for n in (3, 60, 21)]
        up = ([q.float() for q in Q], [d.float() for d in D])
    else:
        Q = normalized((5, 32, dim), dtype, "cpu", g, negative_bias=-1.0)
        D = normalized((5, 40, dim), dtype, "cpu", g, negative_bias=1.0)
        up = (Q.float(), D.float())
    lib_low = ps.colbert_scores_pairwise(Q, D)
    lib_exact = ps.colbert_scores_pairwise(*up)
    _check(compat.colbert_scores_pairwise(Q, D), lib_low, lib_exact, dtype, 32)


def test_rerank_ranks_the_same_when_patched(ps, monkeypatch):
    """pylate.rank.rerank: pads each query's candidates with zero rows and calls colbert_scores."""
    from pylate import rank

    from colbert_fast import ops

    calls = []
    real = ops.maxsim  # what the drop-ins call
    monkeypatch.setattr(ops, "maxsim", lambda *a, **k: calls.append(1) or real(*a, **k))

    g = torch.Generator().manual_seed(3)
    lengths = [random_lengths((200,), 180, g, "cpu").clamp(min=20) for _ in range(2)]
    docs = [[normalized((int(n), 128), torch.float32, "cpu", g) for n in ls] for ls in lengths]
    queries = normalized((2, 32, 128), torch.float32, "cpu", g)
    ids = [[f"d{i}" for i in range(200)] for _ in range(2)]
    before = rank.rerank(ids, queries, docs)
    with compat.patched(colbert=False, pylate=True, require_kernels=False):
        after = rank.rerank(ids, queries, docs)
    assert len(calls) == 2  # one colbert_scores call per query, on colbert_fast
    assert not compat.is_patched("pylate")
    tol = 1e-4 * 32
    for b, a in zip(before, after):
        lib = {r["id"]: r["score"] for r in b}
        order = torch.tensor([lib[r["id"]] for r in a])  # PyLate's scores in our order
        assert (order[1:] - order[:-1]).max().item() <= tol
        assert max(abs(lib[r["id"]] - r["score"]) for r in a) <= tol


def test_patch_and_unpatch_restore_the_originals(ps, monkeypatch):
    import pylate.rank.rank as rank_mod
    import pylate.scores.colbert as defining

    originals = (defining.colbert_scores, defining.colbert_scores_pairwise, defining.colbert_kd_scores)
    # A default argument that captured the original, as pylate.losses.Distillation(score_metric=
    # colbert_kd_scores) does (that module needs sentence-transformers, so a stand-in here).
    holder = types.ModuleType("pylate._compat_test_defaults")

    class Loss:
        def __init__(self, score_metric=originals[2]):
            self.score_metric = score_metric

    Loss.__module__ = holder.__name__
    holder.Loss = Loss
    monkeypatch.setitem(sys.modules, holder.__name__, holder)
    compat.patch_pylate(require_kernels=False)
    compat.patch_pylate()  # idempotent
    try:
        assert compat.is_patched("pylate")
        for mod in (defining, ps, rank_mod):
            assert mod.colbert_scores is not originals[0]
        assert ps.colbert_kd_scores.__wrapped__ is originals[2]
        assert Loss().score_metric is ps.colbert_kd_scores  # the default argument too
        # an explicit PyLate backend still runs PyLate: its flash backend refuses CPU tensors
        Q, D = torch.randn(1, 3, 8), torch.randn(2, 4, 8)
        with pytest.raises(RuntimeError, match="requires CUDA"):
            ps.colbert_scores(Q, D, backend="flash")
        monkeypatch.setenv("PYLATE_SCORES_BACKEND", "flash")
        with pytest.raises(RuntimeError, match="requires CUDA"):
            ps.colbert_scores(Q, D)
        monkeypatch.setenv("PYLATE_SCORES_BACKEND", "auto")
        assert ps.colbert_scores(Q, D).shape == (1, 2)  # ours: "auto" means colbert_fast
    finally:
        compat.unpatch_pylate()
    assert not compat.is_patched("pylate")
    for mod in (defining, ps):
        assert (mod.colbert_scores, mod.colbert_scores_pairwise, mod.colbert_kd_scores) == originals
    assert rank_mod.colbert_scores is originals[0]
    assert Loss().score_metric is originals[2]


def test_patched_context_nests(ps):
    compat.patch_pylate(require_kernels=False)
    try:
        with compat.patched(colbert=False, pylate=True, require_kernels=False):
            assert compat.is_patched("pylate")
        assert compat.is_patched("pylate")  # patched before the block: stays patched
    finally:
        compat.unpatch_pylate()
    with compat.patched(colbert=False, require_kernels=False):
        assert compat.is_patched("pylate")
    assert not compat.is_patched("pylate")


@pytest.mark.parametrize("has_kernels", [False, True])
def test_default_patch_uses_the_library_without_kernels(ps, monkeypatch, has_kernels):
    """require_kernels (default): where only the plain-PyTorch backend runs, PyLate runs its own code."""
    from colbert_fast import ops
    from colbert_fast.compat import patching

    calls = []
    real = ops.maxsim  # what the drop-ins call
    monkeypatch.setattr(ops, "maxsim", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(patching, "_has_kernels", lambda device: has_kernels)
    Q, D = torch.randn(1, 3, 8), torch.randn(2, 4, 8)
    with compat.patched(colbert=False, pylate=True):
        out = ps.colbert_scores(Q, D)
    assert len(calls) == int(has_kernels)
    torch.testing.assert_close(out, compat.colbert_scores(Q, D))


@pytest.mark.parametrize("fn", ["colbert_scores", "colbert_kd_scores"])
@pytest.mark.parametrize("bias", [0.0, 8.0], ids=["mixed", "negative"])
def test_gradients_match_pylate(ps, fn, bias):
    """PyLate's losses backpropagate through these scores: same gradients, floor included (a
    masked token's 0 that wins the max passes no gradient)."""
    g = torch.Generator().manual_seed(4)
    A, N, Lq, Ld, dim = 3, 4, 8, 12, 16
    Q = normalized((A, Lq, dim), torch.float32, "cpu", g, negative_bias=-bias)
    dshape = (N, Ld) if fn == "colbert_scores" else (A, N, Ld)
    D = normalized((*dshape, dim), torch.float32, "cpu", g, negative_bias=bias)
    d_mask = (torch.arange(Ld) < random_lengths(dshape[:-1], Ld, g, "cpu").unsqueeze(-1)).float()
    q_mask = (torch.rand(A, Lq, generator=g) < 0.8).float()
    weights = torch.rand(A, N, generator=g)
    grads = []
    for f in (getattr(ps, fn), getattr(compat, fn)):
        q, d = Q.clone().requires_grad_(), D.clone().requires_grad_()
        (f(q, d, q_mask, d_mask) * weights).sum().backward()
        grads.append((q.grad, d.grad))
    for ours, lib in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, lib, rtol=0, atol=1e-5)


def test_patched_hands_weighted_masks_back_to_pylate(ps):
    """A non-0/1 mask scales PyLate's similarities; the drop-in refuses it, the patch defers to PyLate."""
    g = torch.Generator().manual_seed(5)
    Q, D = normalized((2, 4, 8), torch.float32, "cpu", g), normalized((3, 6, 8), torch.float32, "cpu", g)
    weights = torch.rand(3, 6, generator=g)
    with pytest.raises(ValueError, match="only 0 and 1"):
        compat.colbert_scores(Q, D, None, weights)
    want = ps.colbert_scores(Q, D, None, weights)
    with compat.patched(colbert=False, pylate=True, require_kernels=False):
        got = ps.colbert_scores(Q, D, None, weights)
    assert torch.equal(got, want)
