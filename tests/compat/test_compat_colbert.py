"""Parity with the real colbert-ai: colbert_fast.compat.colbert_score / colbert_score_packed against
colbert.modeling.colbert, the patched library's own scoring paths, and patch/unpatch.

Skipped when colbert-ai is not installed, unless COLBERT_FAST_REQUIRE_PEERS=1 (CI): then they fail.
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
    return import_peer(module, "pip install colbert-ai")


@pytest.fixture(scope="module")
def cm():
    mod = _peer("colbert.modeling.colbert")
    yield mod
    compat.unpatch_colbert()


@pytest.fixture(scope="module")
def cpu_config(cm):
    from colbert.infra.config import ColBERTConfig

    cfg = ColBERTConfig()
    cfg.total_visible_gpus = 0  # colbert-ai's CPU paths (its packed C++ kernel)
    return cfg


@pytest.fixture(scope="module")
def segmented_maxsim(cm):
    """colbert-ai JIT-compiles its CPU kernel on first use (as ColBERT.__init__ does)."""
    cm.ColBERT.try_load_torch_extensions(use_gpu=False)
    return cm.ColBERT.segmented_maxsim


@pytest.fixture
def our_calls(monkeypatch):
    """The names of colbert_fast's ops the drop-ins call, in order: a patched colbert-ai must reach
    them (scores that merely agree could still be colbert-ai's own), an unpatched one never."""
    from colbert_fast import ops

    calls = []
    for name in ("maxsim", "maxsim_packed"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    return calls


def _check(ours, lib_low, lib_exact, dtype, lq):
    """The tolerance rule of docs/spec.md with colbert-ai as the oracle: error against colbert-ai on fp32
    (same rounded inputs) <= 2x colbert-ai's own low-dtype error + floor * Lq. Sentinel-sized
    scores (empty docs) must match colbert-ai's in the same dtype (-inf in fp16 included)."""
    assert ours.dtype == lib_low.dtype and ours.shape == lib_low.shape
    big = lib_exact.abs() > 1e3
    if big.any():
        rtol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
        o, w = ours[big].double(), lib_low[big].double()
        assert torch.equal(torch.isinf(o), torch.isinf(w)), (o, w)
        fin = torch.isfinite(w)
        assert ((o[fin] - w[fin]).abs() <= rtol * w[fin].abs()).all(), (o, w)
    keep = ~big
    if keep.any():
        exact, low, out = lib_exact[keep].float(), lib_low[keep].float(), ours[keep].float()
        tol = reference.tolerance(exact, low, dtype, lq)
        err = (out - exact).abs().max().item()
        assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g} against colbert-ai ({dtype})"


def _padded_case(dtype, n_queries, bias, seed=0, N=13, Ld=40, Lq=32, dim=64):
    g = torch.Generator().manual_seed(seed)
    Q = normalized((n_queries, Lq, dim), dtype, "cpu", g, negative_bias=-bias)
    D = normalized((N, Ld, dim), dtype, "cpu", g, negative_bias=bias)
    lengths = random_lengths((N,), Ld, g, "cpu")
    mask = (torch.arange(Ld) < lengths[:, None]).unsqueeze(-1)  # ColBERT's [N, Ld, 1]
    return Q, D, mask


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n_queries", [1, 13], ids=["one_query", "aligned"])
@pytest.mark.parametrize("bias", [0.0, 8.0], ids=["mixed", "negative"])
def test_colbert_score_parity(cm, cpu_config, dtype, n_queries, bias):
    Q, D, mask = _padded_case(dtype, n_queries, bias)
    # colbert-ai writes the sentinel into its own similarity tensor, never into D: clones anyway.
    lib_low = cm.colbert_score(Q.clone(), D.clone(), mask, cpu_config)
    lib_exact = cm.colbert_score(Q.float(), D.float(), mask, cpu_config)
    ours = compat.colbert_score(Q, D, mask, cpu_config)
    _check(ours, lib_low, lib_exact, dtype, Q.shape[1])


def test_colbert_score_float_mask_and_default_config(cm):
    Q, D, mask = _padded_case(torch.float32, 1, 0.0, seed=1)
    fmask = mask.float().squeeze(-1)  # [N, Ld] float: colbert-ai only views and .bool()s it
    _check(
        compat.colbert_score(Q, D, fmask),
        cm.colbert_score(Q, D, fmask),
        cm.colbert_score(Q, D, fmask),
        torch.float32,
        32,
    )


@pytest.mark.parametrize("bias", [0.0, 8.0], ids=["mixed", "negative"])
@pytest.mark.parametrize("lq", [1, 32])
def test_colbert_score_packed_parity(cm, cpu_config, segmented_maxsim, bias, lq):
    g = torch.Generator().manual_seed(7)
    lengths = random_lengths((50,), 60, g, "cpu")
    D = normalized((int(lengths.sum()), 64), torch.float32, "cpu", g, negative_bias=bias)
    Q = normalized((1, lq, 64), torch.float32, "cpu", g, negative_bias=-bias)
    lib = cm.colbert_score_packed(Q, D, lengths, cpu_config)
    ours = compat.colbert_score_packed(Q, D, lengths, cpu_config)
    _check(ours, lib, lib, torch.float32, lq)
    if bias:  # the clamp is in play: docs/spec.md scores differ
        assert not torch.allclose(compat.colbert_score_packed(Q, D, lengths, cpu_config, strict=True), lib)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_colbert_score_packed_low_precision(cm, cpu_config, segmented_maxsim, dtype):
    """colbert-ai's CPU kernel takes fp32 only; ours takes fp16/bf16 with the same semantics."""
    g = torch.Generator().manual_seed(8)
    lengths = random_lengths((30,), 50, g, "cpu")
    D = normalized((int(lengths.sum()), 64), dtype, "cpu", g, negative_bias=1.0)
    Q = normalized((1, 32, 64), dtype, "cpu", g, negative_bias=-1.0)
    lib_exact = cm.colbert_score_packed(Q.float(), D.float(), lengths, cpu_config)
    ours = compat.colbert_score_packed(Q, D, lengths, cpu_config)
    assert ours.dtype == dtype
    _check(ours, lib_exact.to(dtype), lib_exact, dtype, 32)


# ---- the patched library's own entry points -----------------------------------------------------


def _ranking_agrees(lib_scores, ours_scores, ours_order, tol):
    """Walking our order, colbert-ai's scores never rise by more than the tolerance."""
    s = lib_scores[ours_order]
    assert (s[1:] - s[:-1]).max().item() <= tol
    assert (ours_scores - lib_scores).abs().max().item() <= tol


def test_index_scorer_ranks_the_same_when_patched(cm, cpu_config, segmented_maxsim, monkeypatch, our_calls):
    """IndexScorer.score_pids (colbert-ai's CPU search scoring) with its decompression stubbed out."""
    from colbert.search.index_storage import IndexScorer

    g = torch.Generator().manual_seed(9)
    lengths = random_lengths((300,), 180, g, "cpu").clamp(min=1)
    D = normalized((int(lengths.sum()), 128), torch.float32, "cpu", g)
    Q = normalized((1, 32, 128), torch.float32, "cpu", g)
    # set by its JIT-compiled extension, absent until then: the stub needs raising=False
    monkeypatch.setattr(IndexScorer, "decompress_residuals", staticmethod(lambda *args: D), raising=False)
    scorer = types.SimpleNamespace(
        use_gpu=False,
        doclens=lengths,
        offsets=None,
        codec=types.SimpleNamespace(
            bucket_weights=None,
            reversed_bit_map=None,
            decompression_lookup_table=None,
            centroids=None,
            dim=128,
            nbits=2,
        ),
        embeddings=types.SimpleNamespace(residuals=None, codes=None),
    )
    pids = torch.arange(300)
    before, _ = IndexScorer.score_pids(scorer, cpu_config, Q, pids, None)
    assert our_calls == []
    with compat.patched(colbert=True, pylate=False, require_kernels=False):
        after, _ = IndexScorer.score_pids(scorer, cpu_config, Q, pids, None)
    assert our_calls == ["maxsim_packed"]  # colbert_score_packed, through the patch
    assert not compat.is_patched("colbert")
    _ranking_agrees(before, after, after.argsort(descending=True), 1e-4 * 32)


def test_model_score_ranks_the_same_when_patched(cm, cpu_config, our_calls):
    """ColBERT.score (the training forward's scorer) reaches colbert_score through the module."""
    Q, D, mask = _padded_case(torch.float32, 13, 0.0, seed=3)
    model = types.SimpleNamespace(colbert_config=cpu_config)
    before = cm.ColBERT.score(model, Q, D.clone(), mask)
    assert our_calls == []
    compat.patch_colbert(require_kernels=False)
    try:
        after = cm.ColBERT.score(model, Q, D.clone(), mask)
    finally:
        compat.unpatch_colbert()
    assert our_calls == ["maxsim"]  # colbert_score, through the patch
    _ranking_agrees(before, after, after.argsort(descending=True), 1e-4 * 32)


def test_patch_and_unpatch_restore_the_originals(cm):
    import colbert.search.index_storage as storage

    originals = (cm.colbert_score, cm.colbert_score_packed)
    assert storage.colbert_score is originals[0]
    compat.patch_colbert(require_kernels=False)
    compat.patch_colbert()  # idempotent
    try:
        assert compat.is_patched("colbert")
        for mod in (cm, storage):
            assert mod.colbert_score is not originals[0] and mod.colbert_score_packed is not originals[1]
        assert cm.colbert_score.__wrapped__ is originals[0]
        # a module imported while patched gets the wrapper and gives it back on unpatch
        late = types.ModuleType("colbert._compat_test_late")
        late.colbert_score = cm.colbert_score
        sys.modules[late.__name__] = late
    finally:
        compat.unpatch_colbert()
    try:
        assert not compat.is_patched("colbert")
        for mod in (cm, storage):
            assert (mod.colbert_score, mod.colbert_score_packed) == originals
        assert late.colbert_score is originals[0]
    finally:
        del sys.modules[late.__name__]
    compat.unpatch_colbert()  # a no-op when not patched


def test_patched_keeps_keyword_calls_and_default_config(cm, cpu_config, our_calls):
    Q, D, mask = _padded_case(torch.float32, 1, 0.0, seed=4)
    want = cm.colbert_score(Q, D.clone(), mask)
    assert our_calls == []
    with compat.patched(colbert=True, pylate=False, require_kernels=False):
        got = cm.colbert_score(Q=Q, D_padded=D, D_mask=mask)
    assert our_calls == ["maxsim"]
    _check(got, want, want, torch.float32, 32)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_colbert_gpu_paths_parity(cm, dtype):
    """With GPUs colbert-ai pads packed docs and applies the -9999 sentinel (no clamp)."""
    from colbert.infra.config import ColBERTConfig

    cfg = ColBERTConfig()
    assert cfg.total_visible_gpus > 0
    Q, D, mask = _padded_case(dtype, 1, 2.0, seed=5)
    _check(
        compat.colbert_score(Q, D, mask, cfg),
        cm.colbert_score(Q, D.clone(), mask, cfg),
        cm.colbert_score(Q.float(), D.float(), mask, cfg),
        dtype,
        32,
    )
    lengths = mask.squeeze(-1).sum(1)
    packed = torch.cat([D[i, : lengths[i]] for i in range(len(lengths))])
    _check(
        compat.colbert_score_packed(Q, packed, lengths, cfg),
        cm.colbert_score_packed(Q, packed, lengths, cfg),
        cm.colbert_score_packed(Q.float(), packed.float(), lengths, cfg),
        dtype,
        32,
    )


@pytest.mark.parametrize("has_kernels", [False, True])
def test_default_patch_uses_the_library_without_kernels(cm, cpu_config, monkeypatch, has_kernels, our_calls):
    """require_kernels (default): where only the plain-PyTorch backend runs, colbert-ai runs its own code."""
    from colbert_fast.compat import patching

    monkeypatch.setattr(patching, "_has_kernels", lambda device: has_kernels)
    Q, D, mask = _padded_case(torch.float32, 1, 0.0, seed=6)
    with compat.patched(colbert=True, pylate=False):
        out = cm.colbert_score(Q, D.clone(), mask, cpu_config)
    assert our_calls == (["maxsim"] if has_kernels else [])
    _check(
        out,
        compat.colbert_score(Q, D, mask, cpu_config),
        compat.colbert_score(Q, D, mask, cpu_config),
        torch.float32,
        32,
    )


@pytest.mark.parametrize("n_queries", [1, 13], ids=["one_query", "aligned"])
def test_gradients_match_colbert(cm, cpu_config, n_queries):
    """ColBERT.forward trains through colbert_score: same gradients."""
    Q, D, mask = _padded_case(torch.float32, n_queries, 8.0, seed=10, Lq=8, dim=16)
    weights = torch.rand(D.shape[0], generator=torch.Generator().manual_seed(0))
    grads = []
    for f in (cm.colbert_score, compat.colbert_score):
        q, d = Q.clone().requires_grad_(), D.clone().requires_grad_()
        (f(q, d, mask, cpu_config) * weights).sum().backward()
        grads.append((q.grad, d.grad))
    for ours, lib in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, lib, rtol=0, atol=1e-5)
