"""colbert_fast.compat without the peer libraries: the floored rule against an independent fp32
oracle, each library quirk on a hand-checked example, strict mode, bad inputs."""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_matches_reference, normalized, random_mask

import colbert_fast as cf
from colbert_fast import compat, reference


def floored_oracle(Q, D, q_mask, d_mask, floor):
    """The floored rule written out on the full similarity tensor, fp32."""
    Q, D = Q.to(D.dtype).float(), D.float()
    if D.dim() == 3:
        sims = torch.einsum("bqd,ntd->bnqt", Q, D)
        valid, fl = d_mask[None, :, None, :], floor[None, :, None]
    else:
        sims = torch.einsum("bqd,bktd->bkqt", Q, D)
        valid, fl = d_mask[:, :, None, :], floor[:, :, None]
    best = sims.masked_fill(~valid, float("-inf")).amax(-1)
    best = torch.maximum(best, fl.expand_as(best))
    best = torch.where(torch.isneginf(best), torch.zeros_like(best), best)
    if q_mask is not None:
        best = best * q_mask[:, None, :]
    return best.sum(-1)


def _floors(shape, g):
    choices = torch.tensor([float("-inf"), 0.0, -0.3, -9999.0])
    return choices[torch.randint(0, 4, shape, generator=g)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["all_pairs", "per_query"])
@pytest.mark.parametrize("bias", [0.0, -3.0], ids=["mixed", "negative"])
@pytest.mark.parametrize("mask_kind", ["holes", "prefix"])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_floored_matches_oracle(dtype, layout, bias, mask_kind, strided):
    g = torch.Generator().manual_seed(11)
    B, Lq, N, Ld, dim = 3, 7, 9, 17, 32
    Q = normalized((B, Lq, dim), dtype, "cpu", g, negative_bias=-bias)
    dshape = (N, Ld) if layout == "all_pairs" else (B, N, Ld)
    D = normalized((*dshape, dim), dtype, "cpu", g, negative_bias=bias)
    if strided:  # a view with a gap between docs: samples cannot be read through a flat view
        D = (
            torch.cat([D, D], dim=-3)[..., ::2, :, :]
            if layout == "all_pairs"
            else D.transpose(0, 1).contiguous().transpose(0, 1)
        )
        assert not D.is_contiguous()
    if mask_kind == "holes":
        d_mask = random_mask(dshape, g, "cpu", p=0.6)
    else:
        d_mask = torch.arange(Ld) < torch.randint(0, Ld + 1, dshape[:-1], generator=g).unsqueeze(-1)
    d_mask[..., 0, :] = False  # an empty doc
    d_mask[..., 1, :] = True  # a full doc
    q_mask = random_mask((B, Lq), g, "cpu", p=0.8)
    floor = _floors(dshape[:-1], g)
    out = cf.maxsim(Q, D, q_mask, d_mask, floor=floor)  # what the drop-ins call
    exact = floored_oracle(Q, D, q_mask, d_mask, floor)
    finite = exact.abs() < 1e3
    assert torch.equal(out[~finite], exact[~finite])  # empty docs with a -9999 floor: n_q * floor exactly
    tol = reference.TOLERANCE_FLOOR[torch.float32] * Lq  # both compute in fp32 on the same rounded values
    assert (out[finite] - exact[finite]).abs().max().item() <= tol


@pytest.mark.parametrize("bias", [0.0, -3.0], ids=["mixed", "negative"])
def test_floored_packed_matches_oracle(bias):
    g = torch.Generator().manual_seed(5)
    Lq, dim = 6, 24
    lengths = torch.tensor([0, 1, 4, 30, 9, 2, 17])
    docs = cf.PackedDocs(normalized((int(lengths.sum()), dim), torch.float32, "cpu", g, negative_bias=bias), lengths)
    Q = normalized((1, Lq, dim), torch.float32, "cpu", g, negative_bias=-bias)
    pids = torch.tensor([[3, -1, 0, 1, 2, 4, 5, 6, 2]])
    floor = _floors((pids.shape[1],), g)
    floor[0] = 0.0
    out = cf.maxsim_packed(Q, docs, pids, floor=floor)  # what colbert_score_packed calls
    D, d_mask = cf.gather(docs, pids[0].clamp(min=0))
    exact = floored_oracle(Q, D.unsqueeze(0), None, d_mask.unsqueeze(0), floor.unsqueeze(0))
    exact[0, 1] = float("-inf")  # pid -1
    assert torch.isneginf(out[0, 1])
    keep = torch.isfinite(exact)
    assert (out[keep] - exact[keep]).abs().max().item() <= 1e-4 * Lq


@pytest.mark.parametrize("layout", ["all_pairs", "per_query"])
def test_floor_is_one_kernel_call(layout):
    """The drop-ins hand the floor to the kernel: their scores are the public op's, bit for bit,
    on data where the floor wins for most pairs (there is no second, exact pass to fall back on)."""
    g = torch.Generator().manual_seed(2)
    B, Lq, N, Ld, dim = 2, 5, 7, 9, 16
    Q = normalized((B, Lq, dim), torch.float32, "cpu", g, negative_bias=-8.0)
    dshape = (N, Ld) if layout == "all_pairs" else (B, N, Ld)
    D = normalized((*dshape, dim), torch.float32, "cpu", g, negative_bias=8.0)  # similarities < 0
    d_mask = random_mask(dshape, g, "cpu", p=0.6)
    floor = torch.where(d_mask.all(-1), float("-inf"), 0.0)  # PyLate's rule: 0 for docs with padding
    out = (
        compat.colbert_scores(Q, D, None, d_mask)
        if layout == "all_pairs"
        else compat.colbert_kd_scores(Q, D, None, d_mask)
    )
    assert torch.equal(out, cf.maxsim(Q, D, None, d_mask, floor=floor))
    exact = floored_oracle(Q, D, None, d_mask, floor)
    assert (exact == 0).float().mean() > 0.5  # the floor wins for most pairs
    assert (out - exact).abs().max().item() <= 1e-4 * Lq


# ---- each quirk on a hand-checked example -----------------------------------------------------


def _two_token_doc():
    """Query [1, 0]; doc tokens [0.2, x] and [-0.5, x]: similarities 0.2 and -0.5."""
    Q = torch.tensor([[[1.0, 0.0]]])
    D = torch.tensor([[[0.2, 0.9], [-0.5, 0.1]]])
    return Q, D


def test_pylate_masked_token_takes_part_as_zero():
    Q, D = _two_token_doc()
    mask = torch.tensor([[0.0, 1.0]])
    assert compat.colbert_scores(Q, D, None, mask).item() == pytest.approx(0.0)  # max(-0.5, 0)
    assert compat.colbert_scores(Q, D, None, mask, strict=True).item() == pytest.approx(-0.5)
    assert compat.colbert_scores(Q, D, None, torch.ones(1, 2)).item() == pytest.approx(0.2)
    assert compat.colbert_kd_scores(Q, D[None], None, mask[None]).item() == pytest.approx(0.0)


def test_colbert_sentinel_for_an_empty_doc():
    Q = torch.randn(1, 4, 2)
    D = torch.randn(2, 3, 2)
    mask = torch.tensor([[False] * 3, [True] * 3]).unsqueeze(-1)
    cfg = type("Cfg", (), {"total_visible_gpus": 0, "interaction": "colbert"})()
    assert compat.colbert_score(Q, D, mask, cfg)[0].item() == -9999.0 * 4
    assert compat.colbert_score(Q, D, mask, cfg, strict=True)[0].item() == 0.0
    half = compat.colbert_score(Q.half(), D.half(), mask, cfg)
    assert half.dtype == torch.float16
    assert half[0].item() == -10000.0 * 4  # fp16 stores the sentinel as -10000


def test_colbert_packed_cpu_clamps_every_maximum_at_zero():
    Q, D = _two_token_doc()
    cfg = type("Cfg", (), {"total_visible_gpus": 0, "interaction": "colbert"})()
    packed = torch.cat([D[0, 1:], D[0]])  # doc 0: [-0.5] only; doc 1: both tokens
    lengths = torch.tensor([1, 2, 0])
    out = compat.colbert_score_packed(Q, packed, lengths, cfg)
    assert out.tolist() == pytest.approx([0.0, 0.2, 0.0])
    strict = compat.colbert_score_packed(Q, packed, lengths, cfg, strict=True)
    assert strict.tolist() == pytest.approx([-0.5, 0.2, 0.0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strict_is_the_public_op(dtype):
    g = torch.Generator().manual_seed(3)
    Q = normalized((2, 5, 16), dtype, "cpu", g)
    D = normalized((4, 9, 16), dtype, "cpu", g, negative_bias=-2.0)
    mask = random_mask((4, 9), g, "cpu")
    out = compat.colbert_scores(Q, D, None, mask, strict=True)
    assert out.dtype == torch.float32
    assert torch.equal(out, cf.maxsim(Q, D, None, mask))
    exact = reference.maxsim(Q, D, None, mask)
    assert_matches_reference(out, exact, reference.maxsim(Q, D, None, mask, upcast=False), dtype, 5)


def test_pairwise_ragged_lists_are_masked_not_padded():
    g = torch.Generator().manual_seed(4)
    qs = [normalized((n, 8), torch.float32, "cpu", g) for n in (3, 5)]
    ds = [normalized((n, 8), torch.float32, "cpu", g, negative_bias=-3.0) for n in (2, 6, 4)]  # zip: 2 pairs
    out = compat.colbert_scores_pairwise(qs, ds)
    want = torch.stack([(q @ d.T).amax(-1).sum() for q, d in zip(qs, ds)])
    assert out.shape == (2,)
    torch.testing.assert_close(out, want)


def test_output_dtype_follows_pylate_promotion():
    Q = torch.randn(1, 3, 4, dtype=torch.float16)
    D = torch.randn(2, 5, 4, dtype=torch.float16)
    assert compat.colbert_scores(Q, D).dtype == torch.float16
    assert compat.colbert_scores(Q, D, None, torch.ones(2, 5)).dtype == torch.float32  # fp16 * fp32 mask
    assert compat.colbert_scores(Q, D, None, torch.ones(2, 5, dtype=torch.bool)).dtype == torch.float16


def test_bad_inputs_get_clear_errors():
    Q, D = torch.randn(1, 3, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="only 0 and 1"):
        compat.colbert_scores(Q, D, None, torch.full((2, 5), 0.5))
    with pytest.raises(ValueError, match="documents_mask must have shape"):
        compat.colbert_scores(Q, D, None, torch.ones(2, 4))
    with pytest.raises(ValueError, match="PyLate's own"):
        compat.colbert_scores(Q, D, backend="flash")
    with pytest.raises(ValueError, match="Q.size\\(0\\) must be 1"):
        compat.colbert_score(torch.randn(3, 3, 4), D, torch.ones(2, 5))
    with pytest.raises(ValueError, match="D_mask must have"):
        compat.colbert_score(Q, D, torch.ones(2, 4))
    with pytest.raises(ValueError, match="offsets do not add up"):
        compat.colbert_score_packed(Q, torch.randn(7, 4), torch.tensor([3, 3]), None)
    with pytest.raises(ValueError, match="dim mismatch"):
        compat.colbert_scores(Q, torch.randn(2, 5, 8))
