"""A call that needs a gradient runs a backend with autograd for that op, or raises; never a result
silently detached (issue 16, item 6).

Before: maxsim_packed and gather looked only at Q.requires_grad and at whether a backend had a
backward for maxsim, so with backend "auto" on CPU a PackedDocs whose embeddings require grad went
to the cpu kernels: the scores came back detached, with only a warning, and training a doc encoder
through them silently learned nothing.
"""

from __future__ import annotations

import pytest
import torch
from helpers import backend_or_skip

import colbert_fast as cf
from colbert_fast import backends, reference

CHOICES = ("auto", *backends.BACKENDS)


def _world(device):
    g = torch.Generator().manual_seed(3)
    Q = torch.randn(2, 4, 8, generator=g).to(device)
    emb = torch.randn(9, 8, generator=g).to(device)
    lengths = torch.tensor([4, 0, 3, 2], device=device)
    pids = torch.tensor([[0, 2, -1], [3, 0, 1]], device=device)
    q_mask = torch.tensor([[True, True, True, False], [True, False, True, True]], device=device)
    return Q, emb, lengths, pids, q_mask


def _reference_grads(Q, emb, lengths, pids, q_mask, weights):
    q, e = Q.clone().requires_grad_(), emb.clone().requires_grad_()
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    out = reference.maxsim_packed(q, e, offsets, lengths, pids, q_mask)
    (out.masked_fill(torch.isinf(out), 0) * weights).sum().backward()
    return q.grad, e.grad


def _call_or_refusal(fn, backend):
    """fn()'s result, or None when a forced backend refused for want of a backward."""
    if backend == "auto":
        return fn()  # auto must find a backend with a backward, never refuse
    try:
        return fn()
    except RuntimeError as e:
        assert "has no backward" in str(e), e
        return None


@pytest.mark.parametrize("backend", CHOICES)
@pytest.mark.parametrize("which", ["store", "query", "both"])
def test_maxsim_packed_keeps_the_gradient_or_raises(backend, which, device):
    if backend != "auto":
        backend_or_skip(backend, device)
    Q, emb, lengths, pids, q_mask = _world(device)
    weights = torch.randn(pids.shape, generator=torch.Generator().manual_seed(4)).to(device)
    q = Q.clone().requires_grad_(which in ("query", "both"))
    e = emb.clone().requires_grad_(which in ("store", "both"))
    docs = cf.PackedDocs(e, lengths)
    out = _call_or_refusal(lambda: cf.maxsim_packed(q, docs, pids, q_mask, backend=backend), backend)
    if out is None:
        return
    assert out.requires_grad, f"backend {backend!r} returned a detached result"
    (out.masked_fill(torch.isinf(out), 0) * weights).sum().backward()
    want_q, want_e = _reference_grads(Q, emb, lengths, pids, q_mask, weights)
    if q.requires_grad:
        torch.testing.assert_close(q.grad, want_q, atol=1e-4, rtol=1e-4)
    if e.requires_grad:
        torch.testing.assert_close(e.grad, want_e, atol=1e-4, rtol=1e-4)
        assert e.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", CHOICES)
def test_gather_keeps_the_gradient_or_raises(backend, device):
    if backend != "auto":
        backend_or_skip(backend, device)
    _, emb, lengths, pids, _ = _world(device)
    e = emb.clone().requires_grad_()
    out = _call_or_refusal(lambda: cf.gather(cf.PackedDocs(e, lengths), pids, backend=backend), backend)
    if out is None:
        return
    D, mask = out
    assert D.requires_grad, f"backend {backend!r} returned a detached gather"
    D.sum().backward()
    # each row's gradient counts the slots that selected its doc (pid 0 twice, pid 1 is empty)
    want = torch.tensor([2.0] * 4 + [1.0] * 3 + [1.0] * 2, device=device)
    torch.testing.assert_close(e.grad, want[:, None].expand_as(emb))


@pytest.mark.parametrize("backend", CHOICES)
def test_maxsim_keeps_the_gradient_or_raises(backend, device):
    if backend != "auto":
        backend_or_skip(backend, device)
    Q, emb, *_ = _world(device)
    D = emb[:8].reshape(2, 4, 8).clone().requires_grad_()
    out = _call_or_refusal(lambda: cf.maxsim(Q, D, backend=backend), backend)
    if out is not None:
        assert out.requires_grad
        out.sum().backward()
        D_ref = D.detach().clone().requires_grad_()
        reference.maxsim(Q, D_ref).sum().backward()
        torch.testing.assert_close(D.grad, D_ref.grad, atol=1e-4, rtol=1e-4)


def test_a_forced_backend_without_a_packed_backward_raises_and_no_grad_lifts_it(device):
    """cpu (and triton, which has a backward for maxsim only) refuse a packed call that needs
    grad; under torch.no_grad() the same call runs."""
    Q, emb, lengths, pids, q_mask = _world(device)
    docs = cf.PackedDocs(emb.clone().requires_grad_(), lengths)
    refused = 0
    for name in backends.BACKENDS:
        if backends.unavailable_reason(name, device) is not None:
            continue
        if backends.has_backward(backends.load(name), "maxsim_packed"):
            continue
        with pytest.raises(RuntimeError, match=f"backend '{name}' has no backward for maxsim_packed"):
            cf.maxsim_packed(Q, docs, pids, q_mask, backend=name)
        with torch.no_grad():
            out = cf.maxsim_packed(Q, docs, pids, q_mask, backend=name)
        assert not out.requires_grad
        refused += 1
    if refused == 0:
        pytest.skip("every available backend has a packed backward")
