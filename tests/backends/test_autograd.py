"""Training through maxsim: gradients of every backend that supports backward match autograd
through the reference."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_or_skip

import colbert_fast as cf
from colbert_fast import backends, reference


@pytest.mark.parametrize("name", backends.BACKENDS)
@pytest.mark.parametrize("mode", ["all_pairs", "per_query"])
def test_gradients_match_reference(name, device, mode):
    module = backend_or_skip(name, device)
    if not module.SUPPORTS_BACKWARD:
        pytest.skip(f"backend {name!r} has no backward")
    g = torch.Generator().manual_seed(0)
    B, N, Lq, Ld, dim = 2, 3, 5, 9, 16
    Q = torch.randn(B, Lq, dim, generator=g).to(device)
    D = torch.randn((N, Ld, dim) if mode == "all_pairs" else (B, N, Ld, dim), generator=g).to(device)
    lengths = torch.randint(0, Ld + 1, D.shape[:-2], generator=g).to(device)
    q_mask = (torch.rand(B, Lq, generator=g) < 0.8).to(device)
    weights = torch.randn(B, N, generator=g).to(device)

    def grads(fn):
        q, d = Q.clone().requires_grad_(), D.clone().requires_grad_()
        (fn(q, d) * weights).sum().backward()
        return q.grad, d.grad

    got = grads(lambda q, d: cf.maxsim(q, d, q_mask, d_lengths=lengths, backend=name))
    want = grads(lambda q, d: reference.maxsim(q, d, q_mask, d_lengths=lengths))
    for a, b, what in zip(got, want, ("dQ", "dD")):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, what=what: f"{what}: {m}")


def test_forced_backend_without_backward_refuses_grad(device):
    for name in backends.BACKENDS:
        if backends.unavailable_reason(name, device) is None and not backends.load(name).SUPPORTS_BACKWARD:
            Q = torch.randn(1, 3, 8, device=device, requires_grad=True)
            with pytest.raises(RuntimeError, match="has no backward"):
                cf.maxsim(Q, torch.randn(2, 4, 8, device=device), backend=name)
            return
    pytest.skip("every available backend supports backward")


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_gradients_with_floor(name, device):
    """Where the floor wins, no doc token gets that query token's gradient (the floor is a constant)."""
    module = backend_or_skip(name, device)
    if not module.SUPPORTS_BACKWARD:
        pytest.skip(f"backend {name!r} has no backward")
    g = torch.Generator().manual_seed(1)
    Q = torch.randn(2, 5, 16, generator=g).to(device)
    D = torch.randn(4, 9, 16, generator=g).to(device)
    lengths = torch.tensor([9, 0, 3, 6], device=device)
    floor = torch.tensor([0.5, -1.0, float("-inf"), 2.0], device=device)  # ties are improbable with these

    def grads(fn):
        q, d = Q.clone().requires_grad_(), D.clone().requires_grad_()
        fn(q, d).sum().backward()
        return q.grad, d.grad

    got = grads(lambda q, d: cf.maxsim(q, d, d_lengths=lengths, floor=floor, backend=name))
    want = grads(lambda q, d: reference.maxsim(q, d, d_lengths=lengths, floor=floor))
    for a, b, what in zip(got, want, ("dQ", "dD")):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, what=what: f"{what}: {m}")
    plain = grads(lambda q, d: reference.maxsim(q, d, d_lengths=lengths))
    assert not torch.allclose(plain[1], want[1]), "the floor must win for some tokens (else this tests nothing)"
    assert want[1][0].abs().sum() > 0, "... and not for all of them"
