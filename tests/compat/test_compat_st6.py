"""Parity with sentence-transformers 6's multi-vector scoring: colbert_fast.compat.st_maxsim /
st_maxsim_pairwise / st_mean_maxsim / st_mean_maxsim_pairwise against sentence_transformers.util's
maxsim family, patch_sentence_transformers / unpatch, hand-back of calls only ST6 can serve, and
ST6's own callers (SimilarityFunction, multi_vector_encoder.scoring) patched vs unpatched.

sentence-transformers 6 is in the main venv (the cranfield extra), so these run there; skipped
without it (PyLate's venv pins 5.3, which has no multi-vector scoring). No model is loaded.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from helpers import DTYPES, normalized

from colbert_fast import compat, reference
from colbert_fast.compat import patching
from colbert_fast.compat import sentence_transformers as st_compat

st = pytest.importorskip("sentence_transformers", minversion="6")

import sentence_transformers.multi_vector_encoder as mve  # noqa: E402
import sentence_transformers.multi_vector_encoder.scoring as scoring_pkg  # noqa: E402
import sentence_transformers.multi_vector_encoder.scoring.colbert as scoring_colbert  # noqa: E402
import sentence_transformers.util as st_util  # noqa: E402
from sentence_transformers.util import similarity as S  # noqa: E402

NAMES = ("maxsim", "maxsim_pairwise", "mean_maxsim", "mean_maxsim_pairwise")
MARK = "__colbert_fast_original__"


def _original(name: str):
    f = getattr(S, name)
    return getattr(f, MARK, f)


ORIGINALS = {n: _original(n) for n in NAMES}
# (module, attribute) -> name of the ST6 function that module holds by name
BINDINGS = [(S, n) for n in NAMES] + [(st_util, n) for n in NAMES]
BINDINGS += [(mve, "maxsim"), (mve, "maxsim_pairwise")]
BINDINGS += [(scoring_colbert, "maxsim"), (scoring_colbert, "maxsim_pairwise")]


@pytest.fixture(autouse=True)
def _unpatched():
    compat.unpatch_sentence_transformers()
    yield
    compat.unpatch_sentence_transformers()


@pytest.fixture
def our_calls(monkeypatch):
    """Counts the kernel calls the drop-ins make."""
    calls = []

    def spy(real):
        def counted(*args, **kwargs):
            calls.append(real.__name__)
            return real(*args, **kwargs)

        return counted

    for name in ("maxsim", "maxsim_packed"):  # padded inputs; ragged document lists
        monkeypatch.setattr(st_compat.ops, name, spy(getattr(st_compat.ops, name)))
    return calls


def _check(ours, lib_low, lib_exact, dtype, lq):
    """docs/spec.md's tolerance rule with ST6 as the oracle (ST6 computes similarities and maxima in
    the input dtype and sums in fp32: the rule's same-dtype computation); fp32 out, same shape and device."""
    assert ours.dtype == torch.float32 and lib_low.dtype == torch.float32
    assert ours.shape == lib_low.shape and ours.device == lib_low.device
    assert torch.isfinite(ours).all()
    tol = reference.tolerance(lib_exact, lib_low, dtype, lq)
    err = (ours - lib_exact).abs().max().item() if ours.numel() else 0.0
    assert err <= tol, f"max error {err:.3g} > tolerance {tol:.3g} against ST6 ({dtype})"
    # -1e9 (empty docs, possibly divided by the query length) exactly where ST6 puts it
    assert torch.equal(ours <= -1e8, lib_low <= -1e8)


def _inputs(g, dtype, A, Lq, B, Ld, dim, masks, pairwise, bias):
    Q = normalized((A, Lq, dim), dtype, "cpu", g, negative_bias=-bias)
    D = normalized((B, Ld, dim), dtype, "cpu", g, negative_bias=bias)
    a_mask = b_mask = None
    if masks == "zero_rows":  # no masks: ST6 reads all-zero rows as padding
        D[0] = 0  # an empty doc
        D[1:, Ld // 2 + 1 :] = 0
        Q[-1, Lq - 2 :] = 0
    else:
        b_mask = torch.rand(B, Ld, generator=g) < 0.6
        b_mask[0] = False  # an empty doc
        b_mask[-1] = True
        if masks == "both":
            a_mask = (torch.rand(A, Lq, generator=g) < 0.7).float()  # float 0/1: a mask, not weights
            a_mask[0] = 0  # a fully masked query row
    if pairwise:
        D, b_mask = D[:A], None if b_mask is None else b_mask[:A]
    return Q, D, a_mask, b_mask


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("masks", ["zero_rows", "docs", "both"])
@pytest.mark.parametrize("length_normalize", [None, False, True], ids=["default", "sum", "mean"])
@pytest.mark.parametrize("bias", [0.0, 8.0], ids=["mixed", "negative"])
def test_parity(dtype, name, masks, length_normalize, bias):
    pairwise = name.endswith("pairwise")
    g = torch.Generator().manual_seed(7)
    A, Lq, B, Ld, dim = (7, 13, 7, 21, 24) if pairwise else (5, 13, 9, 21, 24)
    Q, D, a_mask, b_mask = _inputs(g, dtype, A, Lq, B, Ld, dim, masks, pairwise, bias)
    kw = {} if length_normalize is None else {"length_normalize": length_normalize}
    lib = ORIGINALS[name]
    lib_low = lib(Q, D, a_mask, b_mask, **kw)
    lib_exact = lib(Q.float(), D.float(), a_mask, b_mask, **kw)
    ours = getattr(compat, "st_" + name)(Q, D, a_mask, b_mask, **kw)
    _check(ours, lib_low, lib_exact, dtype, Lq)
    if bias and masks != "zero_rows":  # masked tokens excluded, never a 0 in the max: scores are negative
        rows = ours[1:] if masks == "both" else ours  # query 0 is fully masked: it scores 0
        assert (rows[rows > -1e8] < -0.5).all()


def _fp32(x):
    if isinstance(x, list):
        return [_fp32(i) for i in x]
    return x.float() if isinstance(x, torch.Tensor) else x.astype(np.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_ragged_lists_numpy_and_single_inputs(dtype, name):
    pairwise = name.endswith("pairwise")
    g = torch.Generator().manual_seed(1)
    q_lens, d_lens = [3, 0, 9, 5], [4, 11, 0, 7]
    if not pairwise:
        d_lens += [1, 2]
    ql = [normalized((n, 16), dtype, "cpu", g) for n in q_lens]
    dl = [normalized((n, 16), dtype, "cpu", g, negative_bias=4.0) for n in d_lens]
    ours_fn, lib = getattr(compat, "st_" + name), ORIGINALS[name]
    cases = [
        (ql, dl, {}),  # ragged documents without a mask: scored packed
        (ql, dl, {"a_mask": [torch.ones(n) for n in q_lens]}),  # a list of per-item masks
        (ql, dl, {"b_mask": [torch.rand(n, generator=g) < 0.5 for n in d_lens]}),  # padded
        (ql[2], dl[3], {}),  # one [L, H] each: a batch of one
        (ql[2], dl[3], {"a_mask": torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 1.0]), "b_mask": torch.arange(7) < 4}),
    ]
    if dtype != torch.bfloat16:  # numpy has no bf16
        cases.append(([q.numpy() for q in ql], [d.numpy() for d in dl], {}))  # lists of arrays
        if not pairwise:
            cases.append((np.stack([q.numpy() for q in ql[2:3]]), torch.stack(dl[1:2]), {}))  # numpy queries
    for a, b, kw in cases:
        for length_normalize in (False, True):
            low = lib(a, b, length_normalize=length_normalize, **kw)
            exact = lib(_fp32(a), _fp32(b), length_normalize=length_normalize, **kw)
            ours = ours_fn(a, b, length_normalize=length_normalize, **kw)
            _check(ours, low, exact, dtype, 11)


def test_empty_inputs_and_errors():
    Q, D = torch.randn(2, 3, 8), torch.randn(4, 5, 8)
    for name in NAMES:
        ours, lib = getattr(compat, "st_" + name), ORIGINALS[name]
        assert torch.equal(ours(Q[:0], D[:0]), lib(Q[:0], D[:0]))
    assert compat.st_maxsim(Q, D[:0]).shape == (2, 0)
    assert compat.st_maxsim([], D).shape == (0, 4)
    with pytest.raises(ValueError, match="same number of items"):
        compat.st_maxsim_pairwise(Q, D)
    with pytest.raises(ValueError, match="covers 4 tokens"):
        compat.st_maxsim(Q, D, b_mask=torch.ones(4, 4))
    with pytest.raises(TypeError, match="b_mask"):
        compat.st_maxsim(Q, D, b_mask="all")


def test_zero_width_inputs():
    Q, D = torch.randn(2, 3, 8), torch.randn(4, 5, 8)
    for a, b in ((Q, D[:, :0]), (Q[:, :0], D)):
        for name in ("maxsim", "mean_maxsim"):
            expected = ORIGINALS[name](a, b)
            assert torch.equal(getattr(compat, "st_" + name)(a, b), expected)


def test_device_argument_and_result_device():
    g = torch.Generator().manual_seed(2)
    Q, D = normalized((3, 5, 8), torch.float32, "cpu", g), normalized((4, 6, 8), torch.float32, "cpu", g)
    for name in NAMES:
        b = D[:3] if name.endswith("pairwise") else D
        ours = getattr(compat, "st_" + name)(Q, b, device="cpu", chunk_elements=10)
        expected = ORIGINALS[name](Q, b, device="cpu", chunk_elements=10)  # tiny chunks: one pair each
        _check(ours, expected, expected, torch.float32, 5)


def test_strict_scores_empty_docs_zero():
    Q, D = torch.randn(2, 3, 8), torch.randn(3, 5, 8)
    b_mask = torch.ones(3, 5, dtype=torch.bool)
    b_mask[1] = False
    ours = compat.st_maxsim(Q, D, b_mask=b_mask)
    strict = compat.st_maxsim(Q, D, b_mask=b_mask, strict=True)
    assert (ours[:, 1] == -1e9).all() and (strict[:, 1] == 0).all()
    assert torch.equal(ours[:, [0, 2]], strict[:, [0, 2]])


@pytest.mark.parametrize("ragged", [False, True], ids=["padded", "ragged_packed"])
@pytest.mark.parametrize("name", ["maxsim", "maxsim_pairwise"])
def test_gradients_match(name, ragged):
    """ST6's losses train through these: same gradients for queries and documents."""
    g = torch.Generator().manual_seed(3)
    n_docs = 3 if name.endswith("pairwise") else 4
    Q0, D0 = normalized((3, 5, 8), torch.float32, "cpu", g), normalized((n_docs, 6, 8), torch.float32, "cpu", g)
    b_mask = torch.rand(n_docs, 6, generator=g) < 0.7
    grads = []
    for fn in (ORIGINALS[name], getattr(compat, "st_" + name)):
        Q, D = Q0.clone().requires_grad_(), D0.clone().requires_grad_()
        if ragged:
            scores = fn(Q, [D[i, : 2 + i] for i in range(n_docs)])
        else:
            scores = fn(Q, D, b_mask=b_mask)
        (scores * torch.arange(1.0, scores.shape[-1] + 1)).sum().backward()
        grads.append((Q.grad, D.grad))
    for ours, lib in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, lib, rtol=1e-5, atol=1e-5)


# ---- calls only ST6 can serve ----


def _hand_back_cases(g):
    Q, D = torch.randn(3, 4, 8, generator=g), torch.randn(5, 6, 8, generator=g)
    weights = torch.rand(3, 4, generator=g)  # query-token weights, not a mask
    return [
        ("maxsim", (Q, D), {"a_mask": weights}),
        ("mean_maxsim", (Q, D), {"a_mask": weights}),
        ("maxsim_pairwise", (Q, D[:3]), {"a_mask": weights, "length_normalize": True}),
        ("mean_maxsim_pairwise", (Q, D[:3]), {"a_mask": weights}),
        ("maxsim", (Q.double(), D.double()), {}),  # float64
        ("maxsim", ([D[0, :2], D[1]], [D[2, :3], D[3]]), {"b_mask": torch.ones(2, 6)}),  # padding marked valid
        ("mean_maxsim", (Q, D), {"a_mask": torch.tensor([1.0, 0, 1, 1])}),  # ST6 raises (a 0-d count)
    ]


def test_drop_ins_refuse_what_they_cannot_reproduce():
    for name, args, kw in _hand_back_cases(torch.Generator().manual_seed(4)):
        with pytest.raises(compat.UnsupportedCallError):
            getattr(compat, "st_" + name)(*args, **kw)


def test_patched_hands_back_exactly(our_calls):
    compat.patch_sentence_transformers(require_kernels=False)
    for name, args, kw in _hand_back_cases(torch.Generator().manual_seed(4)):
        try:
            expected = ORIGINALS[name](*args, **kw)
        except Exception as e:  # ST6's own error, raised by the patched call too
            with pytest.raises(type(e)):
                getattr(st_util, name)(*args, **kw)
            continue
        got = getattr(st_util, name)(*args, **kw)
        assert torch.equal(got, expected), name
    assert not our_calls
    # weights that happen to be 0/1 are a mask: ours
    Q, D = torch.randn(3, 4, 8), torch.randn(5, 6, 8)
    st_util.maxsim(Q, D, a_mask=torch.tensor([[1.0, 0, 1, 1]] * 3))
    assert len(our_calls) == 1


# ---- patching ----


def test_patch_and_unpatch_restore_every_binding(our_calls):
    for module, name in BINDINGS:
        assert getattr(module, name) is ORIGINALS[name], (module.__name__, name)
    assert not compat.is_patched("sentence_transformers")
    Q, D = torch.randn(2, 3, 8), torch.randn(4, 5, 8)
    args = {n: (Q, D[:2] if n.endswith("pairwise") else D) for n in NAMES}
    expected = {n: ORIGINALS[n](*args[n]) for n in NAMES}  # unpatched (mean_maxsim calls the global maxsim)
    compat.patch_sentence_transformers(require_kernels=False)
    wrappers = {n: getattr(S, n) for n in NAMES}
    compat.patch_sentence_transformers()  # idempotent
    assert compat.is_patched("sentence_transformers")
    for module, name in BINDINGS:
        f = getattr(module, name)
        assert f is wrappers[name] and f is not ORIGINALS[name], (module.__name__, name)
        assert f.__wrapped__ is ORIGINALS[name] and getattr(f, MARK) is ORIGINALS[name]
    left = [  # no loaded ST6 module still holds an original
        (mod_name, attr)
        for mod_name, mod in list(sys.modules.items())
        if mod_name.startswith("sentence_transformers") and mod is not None
        for attr, value in vars(mod).items()
        if any(value is f for f in ORIGINALS.values())
    ]
    assert not left
    for name in NAMES:
        _check(getattr(S, name)(*args[name]), expected[name], expected[name], torch.float32, 3)
    assert len(our_calls) == len(NAMES)
    compat.unpatch_sentence_transformers()
    compat.unpatch_sentence_transformers()  # a no-op
    assert not compat.is_patched("sentence_transformers")
    for module, name in BINDINGS:
        assert getattr(module, name) is ORIGINALS[name], (module.__name__, name)


def test_patched_context(our_calls):
    with compat.patched(colbert=False, pylate=False, sentence_transformers=True, require_kernels=False):
        assert compat.is_patched("sentence_transformers")
        assert mve.maxsim is not ORIGINALS["maxsim"]
    assert not compat.is_patched("sentence_transformers")
    compat.patch_sentence_transformers(require_kernels=False)
    with compat.patched(colbert=False, pylate=False, require_kernels=False):
        pass
    assert compat.is_patched("sentence_transformers")  # patched before the block: stays patched


@pytest.mark.parametrize("has_kernels", [False, True])
def test_default_patch_uses_st6_without_kernels(monkeypatch, our_calls, has_kernels):
    monkeypatch.setattr(patching, "_has_kernels", lambda device: has_kernels)
    compat.patch_sentence_transformers()
    st_util.maxsim(torch.randn(2, 3, 8), torch.randn(4, 5, 8))
    assert len(our_calls) == int(has_kernels)


@pytest.mark.parametrize("fn_name", ["maxsim", "meanmaxsim"])
def test_similarity_function_dispatch_patched(our_calls, fn_name):
    g = torch.Generator().manual_seed(5)
    Q, D = normalized((3, 7, 16), torch.float32, "cpu", g), normalized((6, 11, 16), torch.float32, "cpu", g)
    D[2] = 0
    expected = S.SimilarityFunction.to_similarity_fn(fn_name)(Q, D)
    expected_pairs = S.SimilarityFunction.to_similarity_pairwise_fn(fn_name)(Q, D[:3])
    assert not our_calls
    compat.patch_sentence_transformers(require_kernels=False)
    fn = S.SimilarityFunction.to_similarity_fn(fn_name)
    pair_fn = S.SimilarityFunction.to_similarity_pairwise_fn(fn_name)
    assert fn is getattr(S, "maxsim" if fn_name == "maxsim" else "mean_maxsim") and hasattr(fn, MARK)
    _check(fn(Q, D), expected, expected, torch.float32, 7)
    _check(pair_fn(Q, D[:3]), expected_pairs, expected_pairs, torch.float32, 7)
    assert len(our_calls) == 2


@pytest.mark.parametrize("fn_name", ["colbert_scores", "mean_colbert_scores", "colbert_kd_scores"])
def test_multi_vector_scoring_functions_patched(our_calls, fn_name):
    """ST6's multi-vector losses score with these; they pass maxsim / maxsim_pairwise by name."""
    g = torch.Generator().manual_seed(6)
    A, N, Lq, Ld, dim = 4, 3, 9, 13, 16
    Q = normalized((A, Lq, dim), torch.float32, "cpu", g)
    D = normalized((A, N, Ld, dim), torch.float32, "cpu", g)
    q_mask = (torch.rand(A, Lq, generator=g) < 0.8).float()
    d_mask = torch.rand(A, N, Ld, generator=g) < 0.6
    d_mask[0, 1] = False
    fn = getattr(scoring_pkg, fn_name)
    expected = fn(Q, D, q_mask, d_mask)
    assert not our_calls
    compat.patch_sentence_transformers(require_kernels=False)
    got = fn(Q, D, q_mask, d_mask)
    _check(got, expected, expected, torch.float32, Lq)
    assert len(our_calls) == N


def test_sentence_transformers_without_multi_vector_scoring(monkeypatch):
    """sentence-transformers 5 (PyLate's pin) has util.similarity but no maxsim: ImportError from
    patch_sentence_transformers, and patched() leaves it alone unless asked for."""
    for name in NAMES:
        monkeypatch.delattr(S, name)
    with pytest.raises(ImportError, match="sentence-transformers>=6"):
        compat.patch_sentence_transformers()
    assert not compat.is_patched("sentence_transformers")
    compat.unpatch_sentence_transformers()  # a no-op
    with compat.patched(colbert=False, pylate=False):
        assert not compat.is_patched("sentence_transformers")
    with pytest.raises(ImportError), compat.patched(colbert=False, pylate=False, sentence_transformers=True):
        pass


def _model_shell():
    """A MultiVectorEncoder with no modules and no weights: its similarity / similarity_pairwise
    methods are ST6's real code (no model is loaded or downloaded)."""
    model = object.__new__(mve.MultiVectorEncoder)
    torch.nn.Module.__init__(model)
    model._similarity_fn_name = None
    return model


@pytest.mark.parametrize("fn_name", ["maxsim", "meanmaxsim"])
def test_model_similarity_patched(our_calls, fn_name):
    g = torch.Generator().manual_seed(8)
    queries = [normalized((n, 16), torch.float32, "cpu", g) for n in (5, 9, 2)]
    docs = [normalized((n, 16), torch.float32, "cpu", g) for n in (12, 0, 7)]
    plain = _model_shell()
    plain.similarity_fn_name = fn_name
    expected, expected_pairs = plain.similarity(queries, docs), plain.similarity_pairwise(queries, docs)
    assert not our_calls
    compat.patch_sentence_transformers(require_kernels=False)
    model = _model_shell()  # created after the patch: resolves its similarity to the wrapper
    model.similarity_fn_name = fn_name
    _check(model.similarity(queries, docs), expected, expected, torch.float32, 9)
    _check(model.similarity_pairwise(queries, docs), expected_pairs, expected_pairs, torch.float32, 9)
    assert our_calls == ["maxsim_packed"] * 2
    assert expected[0, 1] == -1e9 / (5 if fn_name == "meanmaxsim" else 1)  # the empty doc


@pytest.mark.parametrize("name", NAMES)
def test_one_mask_for_the_batch(name):
    """A 1D mask beside a 3D batch applies to every item (ST6 expands it)."""
    g = torch.Generator().manual_seed(9)
    Q, D = normalized((2, 3, 8), torch.float32, "cpu", g), normalized((4, 5, 8), torch.float32, "cpu", g)
    b = D[:2] if name.endswith("pairwise") else D
    cases = [{"b_mask": torch.tensor([1, 1, 1, 0, 0.0])}, {"b_mask": torch.zeros(5)}]
    if name == "maxsim_pairwise":  # ST6's maxsim / mean_maxsim divide by a 0-d count here and raise
        cases.append({"a_mask": torch.tensor([1, 0, 1.0]), "length_normalize": True})
    for kw in cases:
        expected = ORIGINALS[name](Q, b, **kw)
        _check(getattr(compat, "st_" + name)(Q, b, **kw), expected, expected, torch.float32, 3)


def test_signatures_and_constant_match_st6():
    import inspect

    for name in NAMES:
        theirs = list(inspect.signature(ORIGINALS[name]).parameters.values())
        ours = list(inspect.signature(getattr(compat, "st_" + name)).parameters.values())
        assert [(p.name, p.default, p.kind) for p in ours[: len(theirs)]] == [
            (p.name, p.default, p.kind) for p in theirs
        ], name
        assert [(p.name, p.kind) for p in ours[len(theirs) :]] == [
            ("backend", inspect.Parameter.KEYWORD_ONLY),
            ("strict", inspect.Parameter.KEYWORD_ONLY),
        ]
    assert st_compat.EMPTY_DOCUMENT_SCORE == S._EMPTY_DOCUMENT_SCORE
