"""Conformance suite: every backend against colbert_fast/reference.py with the tolerance rule of docs/spec.md.

A new backend joins by being listed in colbert_fast.backends.BACKENDS; the `backend` fixture
runs each test once per backend (skipped where unavailable, failed where CI requires it).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import DTYPES, assert_matches_reference, backend_or_skip, normalized, random_lengths, random_mask

import colbert_fast as cf
from colbert_fast import backends, reference

LQS = (1, 7, 32)
LDS = (0, 1, 17, 180, 513)
DIMS = (64, 96, 128)
MASKINGS = ("none", "lengths", "mask", "q_mask+lengths")
MODES = ("all_pairs", "per_query")

# The full Lq x Ld x masking x mode x dtype grid; dim rotates through DIMS so each appears with
# every other axis without multiplying the grid by three.
GRID = [(*case, DIMS[i % len(DIMS)]) for i, case in enumerate(itertools.product(MODES, DTYPES, LQS, LDS, MASKINGS))]


def _grid_id(case):
    mode, dtype, lq, ld, masking, dim = case
    return f"{mode}-{str(dtype)[6:]}-Lq{lq}-Ld{ld}-{masking}-d{dim}"


@pytest.fixture(params=backends.BACKENDS)
def backend(request, device):
    backend_or_skip(request.param, device)
    return request.param


def _make_maxsim_inputs(mode, dtype, lq, ld, masking, dim, device, seed=0, B=2, N=3):
    g = torch.Generator().manual_seed(seed)
    # Queries lean towards e0 and docs away from it: most similarities are negative, so a
    # padding 0 winning the max would show.
    Q = normalized((B, lq, dim), dtype, device, g, negative_bias=1.0)
    d_shape = (N, ld, dim) if mode == "all_pairs" else (B, N, ld, dim)
    D = normalized(d_shape, dtype, device, g, negative_bias=-1.5)
    q_mask = d_mask = d_lengths = None
    if masking in ("lengths", "q_mask+lengths"):
        d_lengths = random_lengths(d_shape[:-2], ld, g, device)
    if masking == "mask":
        d_mask = random_mask(d_shape[:-1], g, device)
    if masking == "q_mask+lengths":
        q_mask = random_mask((B, lq), g, device)
        q_mask[0, 0] = True
    return Q, D, q_mask, d_mask, d_lengths


def _check_maxsim(backend, Q, D, q_mask=None, d_mask=None, d_lengths=None):
    out = cf.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, backend=backend)
    exact = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths)
    low = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, upcast=False)
    assert_matches_reference(out, exact, low, D.dtype, Q.shape[1])
    return out, exact


@pytest.mark.parametrize("case", GRID, ids=_grid_id)
def test_maxsim_grid(backend, device, case):
    Q, D, q_mask, d_mask, d_lengths = _make_maxsim_inputs(*case, device)
    _check_maxsim(backend, Q, D, q_mask, d_mask, d_lengths)


def _make_packed(dtype, dim, device, seed=0, num_docs=9, max_len=40):
    g = torch.Generator().manual_seed(seed)
    lengths = random_lengths((num_docs,), max_len, g, "cpu")
    emb = normalized((int(lengths.sum()), dim), dtype, device, g, negative_bias=-1.0)
    return cf.PackedDocs(emb, lengths.to(device)), g


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("lq,dim", [(1, 64), (7, 96), (32, 128)])
@pytest.mark.parametrize("with_q_mask", [False, True])
def test_maxsim_packed(backend, device, dtype, lq, dim, with_q_mask):
    docs, g = _make_packed(dtype, dim, device)
    B, K = 3, 6
    pids = torch.randint(0, docs.num_docs, (B, K), generator=g)
    pids[0, 1] = -1  # empty slot
    pids[1, :] = 0  # doc 0 has length 0: scores 0
    pids[2, 0] = docs.num_docs - 1
    pids = pids.to(device)
    Q = normalized((B, lq, dim), dtype, device, g)
    q_mask = random_mask((B, lq), g, device) if with_q_mask else None
    out = cf.maxsim_packed(Q, docs, pids, q_mask, backend=backend)
    args = (Q, docs.embeddings, docs.offsets, docs.lengths, pids, q_mask)
    exact = reference.maxsim_packed(*args)
    assert_matches_reference(out, exact, reference.maxsim_packed(*args, upcast=False), dtype, lq)
    assert torch.isneginf(out[0, 1]) and (out[1] == 0).all()


def test_maxsim_packed_single_query_1d_pids(backend, device):
    docs, g = _make_packed(torch.float32, 64, device)
    Q = normalized((1, 5, 64), torch.float32, device, g)
    pids = torch.tensor([3, -1, 1], device=device)
    out = cf.maxsim_packed(Q, docs, pids, backend=backend)
    ref = reference.maxsim_packed(Q, docs.embeddings, docs.offsets, docs.lengths, pids)
    assert out.shape == (1, 3)
    assert_matches_reference(out, ref, ref, torch.float32, 5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("pid_shape", [(5,), (2, 4)])
def test_gather(backend, device, dtype, pid_shape):
    docs, g = _make_packed(dtype, 96, device)
    pids = torch.randint(-1, docs.num_docs, pid_shape, generator=g).to(device)
    D, mask = cf.gather(docs, pids, backend=backend)
    D_ref, mask_ref = reference.gather(docs.embeddings, docs.offsets, docs.lengths, pids)
    assert D.dtype == dtype and mask.dtype == torch.bool
    assert D.shape == D_ref.shape and mask.shape == mask_ref.shape
    assert torch.equal(mask.cpu(), mask_ref.cpu())
    assert torch.equal(D.cpu(), D_ref.cpu()), "gather must copy rows bit-exactly and zero the padding"


def test_gather_all_empty(backend, device):
    docs, _ = _make_packed(torch.float16, 64, device)
    D, mask = cf.gather(docs, torch.tensor([-1, -1], device=device), backend=backend)
    assert D.shape == (2, 0, 64) and mask.shape == (2, 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_negative_similarity_doc_gets_true_score(backend, device, dtype):
    # Every doc token scores below 0 with every query token: padding (0) must never win the max.
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], device=device, dtype=dtype)
    d = torch.tensor([[[-0.5, -0.25], [-0.75, -0.5], [0.0, 0.0]]], device=device, dtype=dtype)
    d_lengths = torch.tensor([2], device=device)
    out = cf.maxsim(q, d, d_lengths=d_lengths, backend=backend)
    # query token 0: max(-0.5, -0.75) = -0.5; token 1: max(-0.25, -0.5) = -0.25
    assert out.item() == pytest.approx(-0.75, abs=1e-3)
    d_mask = torch.tensor([[True, True, False]], device=device)
    assert cf.maxsim(q, d, d_mask=d_mask, backend=backend).item() == pytest.approx(-0.75, abs=1e-3)
    # the same doc in a per-query batch and from a packed store
    assert cf.maxsim(q, d[None], d_lengths=d_lengths[None], backend=backend).item() == pytest.approx(-0.75, abs=1e-3)
    docs = cf.PackedDocs(d[0, :2], torch.tensor([2], device=device))
    packed = cf.maxsim_packed(q, docs, torch.tensor([0], device=device), backend=backend)
    assert packed.item() == pytest.approx(-0.75, abs=1e-3)


def test_empty_docs_and_masked_queries_score_zero(backend, device):
    g = torch.Generator().manual_seed(1)
    Q = normalized((2, 4, 64), torch.float32, device, g, negative_bias=20.0)
    D = normalized((3, 6, 64), torch.float32, device, g, negative_bias=-20.0)
    out = cf.maxsim(Q, D, d_lengths=torch.tensor([0, 6, 0], device=device), backend=backend)
    assert (out[:, 0] == 0).all() and (out[:, 2] == 0).all() and (out[:, 1] < 0).all()
    all_masked = torch.zeros(3, 6, dtype=torch.bool, device=device)
    assert (cf.maxsim(Q, D, d_mask=all_masked, backend=backend) == 0).all()
    q_mask = torch.zeros(2, 4, dtype=torch.bool, device=device)
    assert (cf.maxsim(Q, D, q_mask, backend=backend) == 0).all()
    # Ld == 0 entirely
    empty = torch.empty(3, 0, 64, device=device)
    assert (cf.maxsim(Q, empty, backend=backend) == 0).all()
    # N == 0 / K == 0
    assert cf.maxsim(Q, torch.empty(0, 6, 64, device=device), backend=backend).shape == (2, 0)
    assert cf.maxsim(Q, torch.empty(2, 0, 6, 64, device=device), backend=backend).shape == (2, 0)


def test_non_contiguous_inputs(backend, device):
    g = torch.Generator().manual_seed(2)
    base_q = normalized((3, 9, 64), torch.float16, device, g)
    base_d = normalized((6, 20, 64), torch.float16, device, g, negative_bias=-1.0)
    Q = base_q[::2, 1:]  # strided batch and tokens
    D = base_d.transpose(0, 1)[:17].transpose(0, 1)[::2]  # strided docs and tokens
    d_lengths = torch.tensor([17, 0, 5], device=device)
    _check_maxsim(backend, Q, D, d_lengths=d_lengths)
    # strided last dim: copied, still right
    D_strided = torch.cat([base_d, base_d], dim=-1)[..., ::2]
    _check_maxsim(backend, base_q, D_strided)
    # per-query mode from a strided view
    D4 = base_d.view(3, 2, 20, 64)[:, :, 3:]
    _check_maxsim(backend, base_q, D4)


@pytest.mark.parametrize(
    "q_dtype,d_dtype", [(torch.float32, torch.float16), (torch.float32, torch.bfloat16), (torch.float16, torch.float32)]
)
def test_mixed_dtypes_convert_q_to_d(backend, device, q_dtype, d_dtype):
    g = torch.Generator().manual_seed(3)
    Q = normalized((2, 7, 96), q_dtype, device, g)
    D = normalized((4, 13, 96), d_dtype, device, g)
    out, _ = _check_maxsim(backend, Q, D)
    same = cf.maxsim(Q.to(d_dtype), D, backend=backend)
    assert torch.equal(out, same), "Q must be converted to D's dtype"


def test_all_pairs_equals_per_query(backend, device):
    g = torch.Generator().manual_seed(4)
    Q = normalized((3, 7, 64), torch.float32, device, g)
    D = normalized((5, 11, 64), torch.float32, device, g)
    lengths = torch.tensor([11, 3, 0, 7, 1], device=device)
    a = cf.maxsim(Q, D, d_lengths=lengths, backend=backend)
    b = cf.maxsim(Q, D.expand(3, 5, 11, 64), d_lengths=lengths.expand(3, 5), backend=backend)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- the per-doc floor (how colbert_fast.compat reproduces other libraries' padding rules) ----

FLOOR_CHOICES = (float("-inf"), 0.0, 0.2, -0.3, -9999.0)


def _floors(shape, g, device):
    """Per-doc floors drawn from FLOOR_CHOICES: none; 0 and 0.2, which win for many tokens of these
    negative-leaning docs; -0.3, among the similarities; ColBERT's sentinel (wins on empty docs)."""
    choices = torch.tensor(FLOOR_CHOICES)
    return choices[torch.randint(0, len(FLOOR_CHOICES), shape, generator=g)].to(device)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("masking", MASKINGS)
@pytest.mark.parametrize("lq,ld,dim", [(7, 17, 64), (32, 180, 128), (1, 0, 96)])
def test_floor(backend, device, mode, dtype, masking, lq, ld, dim):
    Q, D, q_mask, d_mask, d_lengths = _make_maxsim_inputs(mode, dtype, lq, ld, masking, dim, device, seed=7, N=5)
    floor = _floors(D.shape[:-2], torch.Generator().manual_seed(8), device)
    out = cf.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, floor=floor, backend=backend)
    args = (Q, D, q_mask, d_mask)
    exact = reference.maxsim(*args, d_lengths=d_lengths, floor=floor)
    low = reference.maxsim(*args, d_lengths=d_lengths, floor=floor, upcast=False)
    assert_matches_reference(out, exact, low, dtype, lq)
    # The floor did change scores (so this test can fail): without it they differ somewhere.
    plain = reference.maxsim(*args, d_lengths=d_lengths)
    assert not torch.allclose(plain.cpu(), exact.cpu())


def test_floor_semantics_by_hand(backend, device):
    # Similarities of the one query token with doc 0's tokens: -0.5, -0.25; doc 1 has no valid token.
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], device=device)
    d = torch.tensor([[[-0.5, -0.25], [-0.75, -0.5]], [[9.0, 9.0], [9.0, 9.0]]], device=device)
    lengths = torch.tensor([2, 0], device=device)
    # token maxima -0.5, -0.25: floor 0 lifts both to 0, -0.3 lifts one; the empty doc gets Lq * floor
    for floor, want in ((0.0, [0.0, 0.0]), (-0.3, [-0.55, -0.6]), (float("-inf"), [-0.75, 0.0])):
        out = cf.maxsim(q, d, d_lengths=lengths, floor=floor, backend=backend)
        assert out.cpu().tolist()[0] == pytest.approx(want, abs=1e-6), f"floor {floor}"
    per_doc = cf.maxsim(
        q, d, d_lengths=lengths, floor=torch.tensor([float("-inf"), -2.0], device=device), backend=backend
    )
    assert per_doc.cpu().tolist()[0] == pytest.approx([-0.75, -4.0])
    # a masked query token contributes nothing, floor or not
    q_mask = torch.tensor([[True, False]], device=device)
    assert cf.maxsim(q, d, q_mask, d_lengths=lengths, floor=0.0, backend=backend).cpu().tolist()[0] == [0.0, 0.0]
    assert cf.maxsim(q, d, q_mask, d_lengths=lengths, floor=-1.0, backend=backend).cpu().tolist()[0] == [-0.5, -1.0]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("lq,dim", [(1, 64), (32, 128)])
def test_floor_packed(backend, device, dtype, lq, dim):
    docs, g = _make_packed(dtype, dim, device, seed=3)
    B, K = 3, 7
    pids = torch.randint(-1, docs.num_docs, (B, K), generator=g)
    pids[0, :2] = torch.tensor([-1, 0])  # an empty slot and the length-0 doc
    pids = pids.to(device)
    Q = normalized((B, lq, dim), dtype, device, g, negative_bias=1.0)
    q_mask = random_mask((B, lq), g, device)
    floor = _floors((B, K), g, device)
    floor[0, :2] = -1.5  # the empty slot stays -inf whatever its floor; the empty doc scores n_q * -1.5
    out = cf.maxsim_packed(Q, docs, pids, q_mask, floor=floor, backend=backend)
    args = (Q, docs.embeddings, docs.offsets, docs.lengths, pids, q_mask)
    exact = reference.maxsim_packed(*args, floor=floor)
    assert_matches_reference(out, exact, reference.maxsim_packed(*args, floor=floor, upcast=False), dtype, lq)
    assert torch.isneginf(out[0, 0]) and out[0, 1].item() == pytest.approx(-1.5 * int(q_mask[0].sum()))
    # A floor broadcast from a float equals the same floor given per slot.
    same = cf.maxsim_packed(Q, docs, pids, q_mask, floor=torch.zeros(B, K, device=device), backend=backend)
    torch.testing.assert_close(cf.maxsim_packed(Q, docs, pids, q_mask, floor=0.0, backend=backend), same)


def test_prefix_mask_equals_lengths(backend, device):
    g = torch.Generator().manual_seed(5)
    Q = normalized((2, 32, 128), torch.float16, device, g)
    D = normalized((4, 33, 128), torch.float16, device, g, negative_bias=-1.0)
    lengths = torch.tensor([33, 0, 1, 20], device=device)
    mask = torch.arange(33, device=device) < lengths[:, None]
    a = cf.maxsim(Q, D, d_lengths=lengths, backend=backend)
    b = cf.maxsim(Q, D, d_mask=mask, backend=backend)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
