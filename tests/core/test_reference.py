"""The oracle itself, checked on cases small enough to compute by hand."""

from __future__ import annotations

import pytest
import torch

from colbert_fast import reference

Q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # [1, 3, 2]
D = torch.tensor(
    [
        [[0.5, -1.0], [2.0, 0.25], [0.0, 0.0]],  # doc 0
        [[-1.0, -2.0], [-3.0, -0.5], [9.0, 9.0]],  # doc 1, last token is padding
    ]
)  # [2, 3, 2]


def test_all_pairs_by_hand():
    lengths = torch.tensor([3, 2])
    out = reference.maxsim(Q, D, d_lengths=lengths)
    # doc 0: token sims  q0: (0.5, 2, 0) -> 2;  q1: (-1, .25, 0) -> .25;  q2: (-.5, 2.25, 0) -> 2.25
    # doc 1: (padding excluded) q0: (-1, -3) -> -1;  q1: (-2, -.5) -> -.5;  q2: (-3, -3.5) -> -3
    assert out.tolist() == [[4.5, -4.5]]


def test_q_mask_and_empty_doc():
    q_mask = torch.tensor([[True, False, True]])
    out = reference.maxsim(Q, D, q_mask, d_lengths=torch.tensor([3, 0]))
    assert out.tolist() == [[4.25, 0.0]]


def test_per_query_mode_and_mask():
    d_mask = torch.tensor([[[False, True, False], [True, True, False]]])
    out = reference.maxsim(Q, D[None], d_mask=d_mask)
    assert out.tolist() == [[2.0 + 0.25 + 2.25, -4.5]]


@pytest.mark.parametrize(
    "dtype, small, rounded",
    [
        # fp16 keeps 10 mantissa bits: near 1 its ulp is 1/1024, and 1 + 3/4096 (3/4 of an ulp
        # above 1, so no tie) rounds up to 1 + 1/1024.
        (torch.float16, 3 / 4096, 1 + 1 / 1024),
        # bf16 keeps 7: ulp 1/128 near 1, and 1 + 3/256 (1.5 ulp) rounds to the even 1 + 2/128.
        (torch.bfloat16, 3 / 256, 1 + 2 / 128),
    ],
    ids=["fp16", "bf16"],
)
def test_same_dtype_mode_rounds_in_low_precision(dtype, small, rounded):
    """The similarity 1 + small is exact in fp32 (both inputs are exact in the low dtype) but not
    representable in the low dtype: the oracle keeps it, the same-dtype mode rounds it."""
    q = torch.tensor([[[1.0, 1.0]]])
    d = torch.tensor([[[1.0, small]]], dtype=dtype)
    assert d[0, 0, 1].item() == small  # the input itself is exact in the low dtype
    exact = reference.maxsim(q, d)
    low = reference.maxsim(q, d, upcast=False)
    assert exact.dtype == low.dtype == torch.float32
    assert exact.item() == 1 + small
    assert low.item() == rounded != exact.item()


def test_packed_and_gather():
    emb = torch.cat([D[0], D[1, :2]])
    offsets = torch.tensor([0, 3, 5])
    lengths = torch.tensor([3, 2])
    pids = torch.tensor([[1, -1, 0]])
    padded, mask = reference.gather(emb, offsets, lengths, pids)
    assert padded.shape == (1, 3, 3, 2) and mask.tolist() == [[[True, True, False], [False] * 3, [True] * 3]]
    out = reference.maxsim_packed(Q, emb, offsets, lengths, pids)
    assert out.tolist() == [[-4.5, float("-inf"), 4.5]]


def test_tolerance_rule():
    exact = torch.tensor([1.0, float("-inf")])
    low = torch.tensor([1.01, float("-inf")])
    assert reference.tolerance(exact, low, torch.float16, lq=32) == pytest.approx(2 * 0.01 + 1e-2 * 32, rel=1e-4)
    assert reference.tolerance(exact, exact, torch.float32, lq=1) == pytest.approx(1e-4)


def test_floor_by_hand():
    # doc 1 (length 2): per-token maxima -1, -0.5, -3; floor -0.75 lifts tokens 0 and 2 to it.
    floor = torch.tensor([float("-inf"), -0.75])
    out = reference.maxsim(Q, D, d_lengths=torch.tensor([3, 2]), floor=floor)
    assert out.tolist() == [[4.5, -0.75 - 0.5 - 0.75]]
    # an empty doc with a floor: every counting query token contributes the floor
    q_mask = torch.tensor([[True, False, True]])
    out = reference.maxsim(Q, D, q_mask, d_lengths=torch.tensor([0, 0]), floor=torch.tensor([float("-inf"), -2.0]))
    assert out.tolist() == [[0.0, -4.0]]
    # a floor above every similarity wins everywhere; packed slots get theirs per slot, pid -1 stays -inf
    emb = torch.cat([D[0], D[1, :2]])
    pids = torch.tensor([[1, -1, 0]])
    out = reference.maxsim_packed(Q, emb, torch.tensor([0, 3, 5]), torch.tensor([3, 2]), pids, floor=10.0)
    assert out.tolist() == [[30.0, float("-inf"), 30.0]]
