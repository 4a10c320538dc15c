"""The non-finite rule of docs/spec.md section 10, on every backend and in the oracle (issue 16, item 4).

Masked tokens are ignored whatever they hold (NaN, +inf, -inf): the score equals the one with that
token zeroed. A NaN or infinite similarity between a valid query token and a valid doc token (a
NaN or an infinity in either token) makes that doc's score NaN; other docs keep their scores;
docs with no valid token and empty slots keep theirs (0 or the floor, and -inf).

Before: the torch backend and the oracle returned NaN for every doc when a masked query token held
NaN (NaN * 0), and the backends disagreed on unmasked ones (cpu and triton finite, torch NaN).
"""

from __future__ import annotations

import pytest
import torch
from helpers import backend_or_skip, normalized

import colbert_fast as cf
from colbert_fast import backends, extension, reference

BAD = (float("nan"), float("inf"), float("-inf"))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# "cpu" runs the best SIMD path this CPU has; each of the others is forced too (its own NaN
# handling: maxps operand order, the x - x marker), skipped where the CPU lacks it.
CPU_PATHS = ("cpu:avx512", "cpu:avx2", "cpu:scalar")


@pytest.fixture(params=(*backends.BACKENDS, *CPU_PATHS))
def backend(request, device, monkeypatch):
    name, _, isa = request.param.partition(":")
    backend_or_skip(name, device)
    if isa:
        monkeypatch.setenv("COLBERT_FAST_CPU_ISA", isa)  # read at call time
        try:
            forced = extension.extension().cpu_isa() == isa
        except RuntimeError:
            forced = False
        if not forced:
            pytest.skip(f"this CPU cannot run the {isa} kernels")
    return name


def _tol(dtype) -> float:
    return {torch.float32: 1e-3, torch.float16: 0.3, torch.bfloat16: 1.0}[dtype]


def assert_same(out: torch.Tensor, want: torch.Tensor, dtype) -> None:
    """NaN exactly where `want` has NaN, -inf exactly where it has -inf, the rest close."""
    out, want = out.detach().cpu(), want.detach().cpu()
    assert torch.equal(torch.isnan(out), torch.isnan(want)), f"NaN pattern {torch.isnan(out)} != {torch.isnan(want)}"
    assert torch.equal(torch.isneginf(out), torch.isneginf(want))
    finite = torch.isfinite(want)
    assert torch.isfinite(out[finite]).all()
    torch.testing.assert_close(out[finite], want[finite], atol=_tol(dtype), rtol=0)


def inputs(device, dtype, seed=0, B=2, N=4, Lq=5, Ld=6, dim=32):
    g = torch.Generator().manual_seed(seed)
    Q = normalized((B, Lq, dim), dtype, device, g)
    D = normalized((N, Ld, dim), dtype, device, g)
    q_mask = torch.ones(B, Lq, dtype=torch.bool, device=device)
    q_mask[:, -1] = False
    d_lengths = torch.tensor([Ld, Ld - 2, 0, 3][:N], device=device)
    return Q, D, q_mask, d_lengths


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("value", BAD, ids=("nan", "inf", "-inf"))
def test_masked_tokens_are_ignored_whatever_they_hold(backend, device, dtype, value):
    Q, D, q_mask, d_lengths = inputs(device, dtype)
    clean = cf.maxsim(Q, D, q_mask, d_lengths=d_lengths, backend=backend)
    assert torch.isfinite(clean).all()
    Qb, Db = Q.clone(), D.clone()
    Qb[0, -1, 3] = value  # masked query token
    Qb[1, -1, :] = value
    Db[1, -1, 0] = value  # past doc 1's length
    Db[2, :, 5] = value  # doc 2 has no valid token
    d_mask = torch.arange(D.shape[1], device=device) < d_lengths[:, None]
    for out in (
        cf.maxsim(Qb, Db, q_mask, d_lengths=d_lengths, backend=backend),
        cf.maxsim(Qb, Db, q_mask, d_mask, backend=backend),
        reference.maxsim(Qb, Db, q_mask, d_lengths=d_lengths),
    ):
        assert_same(out, clean, dtype)
    # per query ([B, K, Ld, dim]) and packed: the same rule
    docs = cf.PackedDocs.from_list([Db[i, : int(d_lengths[i])] for i in range(D.shape[0])])
    pids = torch.tensor([[0, 1, 2, -1], [3, 2, 1, 0]], device=device)
    packed = cf.maxsim_packed(Qb, docs, pids, q_mask, backend=backend)
    want = reference.maxsim_packed(Q, docs.embeddings, docs.offsets, docs.lengths, pids, q_mask)
    assert_same(packed, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("value", BAD, ids=("nan", "inf", "-inf"))
def test_a_non_finite_valid_token_makes_its_docs_nan(backend, device, dtype, value):
    Q, D, q_mask, d_lengths = inputs(device, dtype)
    # a valid doc token: only doc 0 turns NaN (doc 2 is empty: 0; the others keep their scores)
    Db = D.clone()
    Db[0, 1, 7] = value
    want = reference.maxsim(Q, D, q_mask, d_lengths=d_lengths)
    want[:, 0] = float("nan")
    assert_same(reference.maxsim(Q, Db, q_mask, d_lengths=d_lengths), want, dtype)
    assert_same(cf.maxsim(Q, Db, q_mask, d_lengths=d_lengths, backend=backend), want, dtype)
    # with a floor: max(floor, NaN) is NaN too; the empty doc scores its floor per counting token
    floor = torch.full((D.shape[0],), -0.25, device=device)
    want_f = reference.maxsim(Q, D, q_mask, d_lengths=d_lengths, floor=floor)
    want_f[:, 0] = float("nan")
    assert_same(cf.maxsim(Q, Db, q_mask, d_lengths=d_lengths, floor=floor, backend=backend), want_f, dtype)
    # a valid query token: every doc of that query with a valid token is NaN; the other query is untouched
    Qb = Q.clone()
    Qb[1, 0, 2] = value
    want_q = reference.maxsim(Q, D, q_mask, d_lengths=d_lengths)
    want_q[1, [0, 1, 3]] = float("nan")
    assert_same(reference.maxsim(Qb, D, q_mask, d_lengths=d_lengths), want_q, dtype)
    assert_same(cf.maxsim(Qb, D, q_mask, d_lengths=d_lengths, backend=backend), want_q, dtype)
    # per-query layout [B, K, Ld, dim]
    D4 = Db[None].expand(2, -1, -1, -1)
    l4 = d_lengths[None].expand(2, -1)
    assert_same(cf.maxsim(Q, D4, q_mask, d_lengths=l4, backend=backend), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("value", BAD, ids=("nan", "inf", "-inf"))
def test_packed_store_with_a_non_finite_row(backend, device, dtype, value):
    Q, D, q_mask, d_lengths = inputs(device, dtype)
    Db = D.clone()
    Db[3, 2, 0] = value
    docs = cf.PackedDocs.from_list([Db[i, : int(d_lengths[i])] for i in range(D.shape[0])])
    pids = torch.tensor([[3, 0, -1, 2], [1, 3, 3, 0]], device=device)
    want = reference.maxsim_packed(Q, docs.embeddings, docs.offsets, docs.lengths, pids, q_mask)
    assert torch.isnan(want[0, 0]) and torch.isnan(want[1, 1:3]).all() and torch.isneginf(want[0, 2])
    assert torch.isfinite(want[:, 3]).all() and want[0, 3] == 0, "the empty doc still scores 0"
    assert_same(cf.maxsim_packed(Q, docs, pids, q_mask, backend=backend), want, dtype)
    # a NaN in a valid query token: every non-empty slot of that query
    Qb = Q.clone()
    Qb[0, 1, 1] = value
    want_q = reference.maxsim_packed(Qb, docs.embeddings, docs.offsets, docs.lengths, pids, q_mask)
    assert torch.isnan(want_q[0, [0, 1]]).all() and torch.isneginf(want_q[0, 2]) and want_q[0, 3] == 0
    assert_same(cf.maxsim_packed(Qb, docs, pids, q_mask, backend=backend), want_q, dtype)


@pytest.mark.parametrize("value", BAD, ids=("nan", "inf", "-inf"))
def test_compressed_store_with_a_non_finite_query(backend, device, value):
    """A compressed store's decoded vectors are finite (checked at encoding): only the query can
    carry a NaN; a masked one is ignored, a valid one makes its slots NaN."""
    if not getattr(backends.load(backend), "supports_codes", lambda d: False)(device):
        pytest.skip(f"{backend} has no compressed-store kernels")
    Q, D, q_mask, d_lengths = inputs(device, torch.float32)
    store = cf.CompressedDocs.from_list([D[i, : int(d_lengths[i])].cpu() for i in range(4)], "int8").to(device)
    pids = torch.tensor([[0, 2, -1], [1, 3, 0]], device=device)
    clean = cf.maxsim_packed(Q, store, pids, q_mask, backend=backend)
    Qb = Q.clone()
    Qb[:, -1, 0] = value  # masked
    assert_same(cf.maxsim_packed(Qb, store, pids, q_mask, backend=backend), clean, torch.float16)
    Qb[1, 0, 0] = value  # valid
    want = clean.clone()
    want[1] = float("nan")  # pids 1, 3 and 0 all have valid tokens
    assert_same(cf.maxsim_packed(Qb, store, pids, q_mask, backend=backend), want, torch.float16)


def test_the_oracle_states_the_rule_on_similarities():
    """reference.maxsim: NaN exactly when a valid pair's similarity is not finite; masked -> ignored."""
    Q = torch.tensor([[[1.0, 0.0], [float("nan"), 0.0]]])
    D = torch.tensor([[[0.5, 0.0], [0.25, 0.0]]])
    assert reference.maxsim(Q, D, torch.tensor([[True, False]])).item() == 0.5
    assert reference.maxsim(Q, D).isnan().item()
    # every similarity -inf (a -inf query component): NaN, no longer 0 or -inf depending on backend
    Qi = torch.tensor([[[float("-inf"), 0.0]]])
    assert reference.maxsim(Qi, D).isnan().item()
