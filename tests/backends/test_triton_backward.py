"""Backward of the Triton MaxSim against autograd through colbert_fast.reference.

On --device cpu the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1);
on --device cuda the same tests run on the GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers import backend_or_skip, normalized, random_lengths, random_mask

import colbert_fast as cf
from colbert_fast import reference

# Gradients land in the input dtype: compare within a few ulps of it (magnitudes are O(1)).
GRAD_TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture
def triton_backend(device):
    backend_or_skip("triton", device)
    return "triton"


@contextlib.contextmanager
def deterministic_algorithms(on: bool):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def _inputs(mode, dtype, masking, device, seed=0, B=3, N=4, lq=7, ld=19, dim=96):
    g = torch.Generator().manual_seed(seed)
    Q = normalized((B, lq, dim), dtype, device, g, negative_bias=1.0)
    d_shape = (N, ld, dim) if mode == "all_pairs" else (B, N, ld, dim)
    D = normalized(d_shape, dtype, device, g, negative_bias=-1.5)
    q_mask = d_mask = d_lengths = None
    if masking == "lengths":
        d_lengths = random_lengths(d_shape[:-2], ld, g, device)  # includes an empty doc
    elif masking == "mask":
        d_mask = random_mask(d_shape[:-1], g, device, p=0.5)
    elif masking == "q_mask":
        q_mask = random_mask((B, lq), g, device)
    grad = torch.randn((B, N), generator=g).to(device)  # mixed signs: scaling must be per score
    return Q, D, q_mask, d_mask, d_lengths, grad


def _grads(fn, Q, D, grad):
    Q = Q.detach().clone().requires_grad_(True)
    D = D.detach().clone().requires_grad_(True)
    scores = fn(Q, D)
    scores.backward(grad)
    return scores.detach(), Q.grad, D.grad


def _assert_grad_close(got, want, dtype, name):
    assert got.dtype == dtype, f"{name} has dtype {got.dtype}, expected {dtype}"
    assert got.shape == want.shape, f"{name} shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want.float()).abs()
    tol = GRAD_TOL[dtype] * (1 + want.float().abs())
    bad = err > tol
    assert not bad.any(), (
        f"{name}: {int(bad.sum())}/{err.numel()} elements off; worst {err.max().item():.3g} at "
        f"{torch.nonzero(bad)[0].tolist()}"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("masking", ["none", "lengths", "mask", "q_mask"])
@pytest.mark.parametrize("mode", ["all_pairs", "per_query"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_backward_matches_reference_autograd(triton_backend, device, mode, dtype, masking, deterministic):
    Q, D, q_mask, d_mask, d_lengths, grad = _inputs(mode, dtype, masking, device)
    with deterministic_algorithms(deterministic):
        out, dQ, dD = _grads(lambda q, d: cf.maxsim(q, d, q_mask, d_mask, d_lengths=d_lengths, backend="triton"),
                             Q, D, grad)  # fmt: skip
    # The oracle: fp32 autograd through the reference on the same (dtype-rounded) values.
    ref_out, ref_dQ, ref_dD = _grads(lambda q, d: reference.maxsim(q, d, q_mask, d_mask, d_lengths=d_lengths),
                                     Q.float(), D.float(), grad)  # fmt: skip
    torch.testing.assert_close(out, ref_out, atol=GRAD_TOL[dtype] * Q.shape[1], rtol=0)
    _assert_grad_close(dQ, ref_dQ, dtype, "dQ")
    _assert_grad_close(dD, ref_dD, dtype, "dD")


@pytest.mark.parametrize("mode", ["all_pairs", "per_query"])
def test_deterministic_backward_is_bitwise_repeatable(triton_backend, device, mode):
    # Many queries pick the same doc token, so dD rows get many contributions (where atomics
    # would reorder additions).
    Q, D, _, _, _, grad = _inputs(mode, torch.float16, "none", device, seed=3, B=8, N=3, lq=32, ld=5, dim=64)
    with deterministic_algorithms(True):
        runs = [_grads(lambda q, d: cf.maxsim(q, d, backend="triton"), Q, D, grad) for _ in range(3)]
    for _, dQ, dD in runs[1:]:
        assert torch.equal(dQ, runs[0][1]) and torch.equal(dD, runs[0][2])
    with deterministic_algorithms(False):
        _, dQ_fast, dD_fast = _grads(lambda q, d: cf.maxsim(q, d, backend="triton"), Q, D, grad)
    assert torch.equal(dQ_fast, runs[0][1]), "dQ has no atomics: both variants must agree exactly"
    _assert_grad_close(dD_fast, runs[0][2], torch.float16, "dD (atomic vs deterministic)")


def test_backward_zero_where_nothing_won(triton_backend, device):
    # Empty docs, masked doc tokens and masked query tokens get exactly zero gradient.
    Q, D, _, _, _, grad = _inputs("all_pairs", torch.float32, "none", device, seed=5)
    d_lengths = torch.tensor([0, 19, 4, 1], device=device)
    q_mask = torch.ones(Q.shape[:2], dtype=torch.bool, device=device)
    q_mask[1, 2:] = False
    _, dQ, dD = _grads(lambda q, d: cf.maxsim(q, d, q_mask, d_lengths=d_lengths, backend="triton"), Q, D, grad)
    assert (dD[0] == 0).all() and (dD[2, 4:] == 0).all() and (dD[3, 1:] == 0).all()
    assert (dQ[1, 2:] == 0).all()
    assert (dQ[0] != 0).any() and (dD[1] != 0).any()


def test_backward_through_mixed_dtypes_reaches_fp32_query(triton_backend, device):
    # Q fp32 is converted to D's fp16 in the op: its gradient comes back in fp32.
    Q, D, _, _, _, grad = _inputs("all_pairs", torch.float16, "lengths", device, seed=7)
    Q32 = Q.float().requires_grad_(True)
    cf.maxsim(Q32, D, backend="triton").backward(grad)
    assert Q32.grad is not None and Q32.grad.dtype == torch.float32 and (Q32.grad != 0).any()


def test_only_requested_grads_are_computed(triton_backend, device):
    Q, D, _, _, _, grad = _inputs("per_query", torch.float32, "none", device, seed=8)
    Qg = Q.clone().requires_grad_(True)
    cf.maxsim(Qg, D, backend="triton").backward(grad)
    assert Qg.grad is not None and D.grad is None


def test_saved_memory_is_o_b_n_lq(triton_backend, device):
    """Autograd keeps Q, D and an int32 argmax [B, N, Lq], never anything of size B*N*Lq*Ld."""
    B, N, lq, ld, dim = 3, 5, 7, 40, 64
    Q, D, _, _, _, _ = _inputs("all_pairs", torch.float16, "none", device, B=B, N=N, lq=lq, ld=ld, dim=dim)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    Q.requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cf.maxsim(Q, D, backend="triton")
    extra = [s for s in saved if s[0] not in ((B, lq, dim), (N, ld, dim))]
    assert extra == [((B, N, lq), torch.int32)], f"unexpected saved tensors: {saved}"


@pytest.mark.parametrize("mode", ["all_pairs", "per_query"])
def test_dq_split_over_docs_matches_one_pass(triton_backend, device, mode):
    # On a GPU with few queries dQ splits the docs over several programs; the interpreter never
    # chooses to, so force it here: 7 docs in 3 splits (a short last split) and in 7.
    from colbert_fast.kernels.maxsim import maxsim_fwd
    from colbert_fast.kernels.maxsim_bwd import maxsim_bwd

    Q, D, _, _, d_lengths, grad = _inputs(mode, torch.float32, "lengths", device, seed=9, N=7)
    _, argmax = maxsim_fwd(Q, D, None, None, d_lengths, save_argmax=True)
    one, _ = maxsim_bwd(grad, Q, D, argmax, need_dd=False, dq_splits=1)
    for splits in (3, 7):
        split, _ = maxsim_bwd(grad, Q, D, argmax, need_dd=False, dq_splits=splits)
        torch.testing.assert_close(split, one, atol=1e-6, rtol=1e-6)
    assert (one != 0).any()
