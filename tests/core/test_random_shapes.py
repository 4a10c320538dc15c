"""Hypothesis: random shapes, lengths and masks, every available backend against the reference."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_matches_reference, backend_or_skip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import colbert_fast as cf
from colbert_fast import backends, reference

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def maxsim_case(draw):
    B = draw(st.integers(1, 3))
    N = draw(st.integers(0, 4))
    Lq = draw(st.integers(1, 40))
    Ld = draw(st.integers(0, 70))
    dim = draw(st.sampled_from([8, 64, 96, 128]))
    dtype = draw(st.sampled_from(DTYPES))
    per_query = draw(st.booleans())
    masking = draw(st.sampled_from(["none", "lengths", "mask"]))
    use_q_mask = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return B, N, Lq, Ld, dim, dtype, per_query, masking, use_q_mask, seed


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_random_maxsim(name, device):
    backend_or_skip(name, device)

    @SETTINGS
    @given(maxsim_case())
    def check(case):
        B, N, Lq, Ld, dim, dtype, per_query, masking, use_q_mask, seed = case
        g = torch.Generator().manual_seed(seed)
        d_shape = (B, N, Ld, dim) if per_query else (N, Ld, dim)
        Q = torch.randn(B, Lq, dim, generator=g).to(device=device, dtype=dtype)
        D = torch.randn(d_shape, generator=g).to(device=device, dtype=dtype)
        q_mask = (torch.rand(B, Lq, generator=g) < 0.8).to(device) if use_q_mask else None
        d_mask = d_lengths = None
        if masking == "lengths":
            d_lengths = torch.randint(0, Ld + 1, d_shape[:-2], generator=g).to(device)
        elif masking == "mask":
            d_mask = (torch.rand(d_shape[:-1], generator=g) < 0.6).to(device)
        out = cf.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, backend=name)
        exact = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths)
        low = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, upcast=False)
        assert_matches_reference(out, exact, low, dtype, Lq)

    check()


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_random_packed(name, device):
    backend_or_skip(name, device)

    @SETTINGS
    @given(
        st.lists(st.integers(0, 60), min_size=1, max_size=12),
        st.integers(1, 3),
        st.integers(0, 8),
        st.integers(1, 33),
        st.sampled_from(DTYPES),
        st.integers(0, 2**31 - 1),
    )
    def check(lengths, B, K, Lq, dtype, seed):
        g = torch.Generator().manual_seed(seed)
        dim = 64
        emb = torch.randn(sum(lengths), dim, generator=g).to(device=device, dtype=dtype)
        docs = cf.PackedDocs(emb, torch.tensor(lengths, device=device))
        pids = torch.randint(-1, len(lengths), (B, K), generator=g).to(device)
        Q = torch.randn(B, Lq, dim, generator=g).to(device=device, dtype=dtype)
        out = cf.maxsim_packed(Q, docs, pids, backend=name)
        args = (Q, docs.embeddings, docs.offsets, docs.lengths, pids)
        assert_matches_reference(
            out, reference.maxsim_packed(*args), reference.maxsim_packed(*args, upcast=False), dtype, Lq
        )

    check()
