"""CPU kernel specifics the conformance suite does not reach: tile and block edges, odd dims (the
bf16 pair tail), masks with holes, exact conversions, thread-count independence, the ISA switch,
direct op calls with bad arguments, and tracing through the fake registrations.

Every kernel test runs on each SIMD path this CPU has (COLBERT_FAST_CPU_ISA forced per test).
"""

from __future__ import annotations

import pytest
import torch
from helpers import DTYPES, assert_matches_reference, backend_or_skip, normalized, random_lengths, random_mask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import colbert_fast as cf
from colbert_fast import extension, reference

ISAS = ("avx512_bf16", "avx512", "avx2", "scalar")


@pytest.fixture(autouse=True)
def _cpu_backend(device):
    if device.type != "cpu":
        pytest.skip("CPU kernels")
    backend_or_skip("cpu", device)


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", request.param)
    try:
        active = extension.extension().cpu_isa()
    except RuntimeError:
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    assert active == request.param
    return request.param


def _check(Q, D, q_mask=None, d_mask=None, d_lengths=None):
    out = cf.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, backend="cpu")
    exact = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths)
    low = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, upcast=False)
    assert_matches_reference(out, exact, low, D.dtype, Q.shape[1])
    return out


# Lq around the query block sizes (8/16 lanes on AVX2, 16/32 on AVX-512) and beyond one block;
# Ld around the tile heights (4, 6, 12 rows); dims that are odd or not a multiple of 16.
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("lq", [1, 8, 9, 16, 17, 32, 33, 70])
def test_query_block_edges(isa, dtype, lq):
    g = torch.Generator().manual_seed(lq)
    Q = normalized((2, lq, 40), dtype, "cpu", g, negative_bias=1.0)
    D = normalized((3, 29, 40), dtype, "cpu", g, negative_bias=-1.5)
    _check(Q, D, q_mask=random_mask((2, lq), g, "cpu"), d_lengths=torch.tensor([29, 13, 1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("dim", [1, 2, 3, 15, 17, 33, 130])
def test_odd_dims(isa, dtype, dim):
    g = torch.Generator().manual_seed(dim)
    Q = normalized((2, 5, dim), dtype, "cpu", g, negative_bias=1.0)
    D = normalized((2, 3, 26, dim), dtype, "cpu", g, negative_bias=-1.5)
    _check(Q, D, d_lengths=random_lengths((2, 3), 26, g, "cpu"))


@pytest.mark.parametrize("ld", [3, 4, 5, 6, 7, 11, 12, 13, 24, 25, 37])
def test_tile_edges(isa, ld):
    g = torch.Generator().manual_seed(ld)
    for dtype in DTYPES:
        Q = normalized((1, 32, 64), dtype, "cpu", g, negative_bias=1.0)
        D = normalized((2, ld, 64), dtype, "cpu", g, negative_bias=-1.5)
        _check(Q, D)
        _check(Q, D, d_lengths=torch.tensor([ld, ld - 1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_masks_with_holes_and_runs(isa, dtype):
    g = torch.Generator().manual_seed(7)
    Q = normalized((3, 7, 64), dtype, "cpu", g, negative_bias=1.0)
    D = normalized((5, 30, 64), dtype, "cpu", g, negative_bias=-1.5)
    mask = torch.zeros(5, 30, dtype=torch.bool)
    mask[0, 4:19] = True  # one run not at the start: read in place
    mask[1, ::3] = True  # holes: compacted
    mask[2, 29] = True  # only the last row
    mask[3] = random_mask((30,), g, "cpu", p=0.5)
    out = _check(Q, D, d_mask=mask)
    assert (out[:, 4] == 0).all()  # no valid token
    # per-query layout with the same masks
    _check(Q, D.expand(3, 5, 30, 64), d_mask=mask.expand(3, 5, 30))


def test_fp16_values_convert_exactly(isa):
    # Every finite fp16 value (subnormals included) as a doc's only non-zero component, picked by
    # a one-hot query: the score is the value itself, exactly, on every path.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    values = bits.view(torch.float16)
    values = values[torch.isfinite(values)]
    D = torch.zeros(values.numel(), 1, 3, dtype=torch.float16)
    D[:, 0, 1] = values
    Q = torch.tensor([[[0.0, 1.0, 0.0]]], dtype=torch.float16)
    out = cf.maxsim(Q, D, backend="cpu")
    assert torch.equal(out[0], values.float())


def test_bf16_values_convert_exactly(isa):
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    values = bits.view(torch.bfloat16)
    values = values[torch.isfinite(values)]
    D = torch.zeros(values.numel(), 1, 3, dtype=torch.bfloat16)
    D[:, 0, 1] = values
    Q = torch.tensor([[[0.0, 1.0, 0.0]]], dtype=torch.bfloat16)
    out = cf.maxsim(Q, D, backend="cpu")
    # vdpbf16ps may flush bf16 subnormals to zero (the instruction's defined behaviour)
    tiny = values.float().abs() < torch.finfo(torch.bfloat16).tiny
    assert torch.equal(out[0][~tiny], values.float()[~tiny])
    assert (out[0][tiny].abs() <= torch.finfo(torch.bfloat16).tiny).all()


def test_many_queries_few_docs_all_pairs(isa):
    # more queries than one group (32), and too few docs for the threads: groups get split
    g = torch.Generator().manual_seed(8)
    Q = normalized((70, 9, 64), torch.bfloat16, "cpu", g, negative_bias=1.0)
    D = normalized((2, 50, 64), torch.bfloat16, "cpu", g, negative_bias=-1.5)
    _check(Q, D, q_mask=random_mask((70, 9), g, "cpu"), d_lengths=torch.tensor([50, 17]))


def test_results_do_not_depend_on_thread_count(isa):
    g = torch.Generator().manual_seed(9)
    Q = normalized((4, 32, 128), torch.float32, "cpu", g)
    D = normalized((40, 60, 128), torch.float32, "cpu", g)
    lengths = random_lengths((40,), 60, g, "cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cf.maxsim(Q, D, d_lengths=lengths, backend="cpu")
        torch.set_num_threads(max(2, before))
        many = cf.maxsim(Q, D, d_lengths=lengths, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


def test_packed_matches_padded(isa):
    g = torch.Generator().manual_seed(10)
    lengths = random_lengths((30,), 50, g, "cpu")
    emb = normalized((int(lengths.sum()), 96), torch.float16, "cpu", g, negative_bias=-1.0)
    docs = cf.PackedDocs(emb, lengths)
    pids = torch.randint(-1, 30, (3, 12), generator=g)
    Q = normalized((3, 32, 96), torch.float16, "cpu", g, negative_bias=1.0)
    packed = cf.maxsim_packed(Q, docs, pids, backend="cpu")
    D, mask = cf.gather(docs, pids, backend="cpu")
    padded = cf.maxsim(Q, D, d_mask=mask, backend="cpu")
    assert torch.equal(packed.isneginf(), pids < 0)
    assert torch.equal(packed[pids >= 0], padded[pids >= 0])


# ---- the ISA switch ------------------------------------------------------------------------------


def test_cpu_isa_reports_the_forced_path(monkeypatch):
    monkeypatch.delenv("COLBERT_FAST_CPU_ISA", raising=False)
    best = extension.extension().cpu_isa()
    assert best in ISAS
    assert extension.build_info()["cpu_isa"] == best
    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", "scalar")
    assert extension.extension().cpu_isa() == "scalar"
    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", "AUTO")
    assert extension.extension().cpu_isa() == best


def test_unknown_isa_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="COLBERT_FAST_CPU_ISA must be auto"):
        cf.maxsim(torch.randn(1, 2, 8), torch.randn(3, 4, 8), backend="cpu")


# ---- direct op calls: the C++ checks ---------------------------------------------------------------


def _packed_args():
    emb = torch.randn(10, 8)
    offsets = torch.tensor([0, 4, 10])
    lengths = torch.tensor([4, 6])
    return emb, offsets, lengths


def test_op_rejects_out_of_bounds_packed_reads():
    emb, offsets, lengths = _packed_args()
    Q = torch.randn(1, 3, 8)
    op = torch.ops.colbert_fast.maxsim_packed
    with pytest.raises(IndexError, match="pid 2 out of range"):
        op(Q, emb, offsets, lengths, torch.tensor([[0, 2]]), None, 6)
    with pytest.raises(IndexError, match="pid -2"):
        op(Q, emb, offsets, lengths, torch.tensor([[-2]]), None, 6)
    with pytest.raises(IndexError, match="lies outside embeddings"):
        op(Q, emb, torch.tensor([0, 4, 12]), torch.tensor([4, 8]), torch.tensor([[1]]), None, 8)
    with pytest.raises(TypeError, match="int64"):
        op(Q, emb, offsets, lengths, torch.tensor([[0]], dtype=torch.int32), None, 6)
    with pytest.raises(TypeError, match="dtype"):
        op(Q.half(), emb, offsets, lengths, torch.tensor([[0]]), None, 6)


def test_op_rejects_bad_maxsim_arguments():
    op = torch.ops.colbert_fast.maxsim
    Q, D = torch.randn(2, 3, 8), torch.randn(4, 5, 8)
    with pytest.raises(RuntimeError, match=r"d_lengths must be in \[0, Ld = 5\]"):
        op(Q, D, None, None, torch.tensor([1, 6, 0, 0]))
    with pytest.raises(RuntimeError, match="not both"):
        op(Q, D, None, torch.ones(4, 5, dtype=torch.bool), torch.tensor([1, 1, 1, 1]))
    with pytest.raises(RuntimeError, match="contiguous last dim"):
        op(Q, torch.randn(4, 5, 16)[..., ::2], None, None, None)
    with pytest.raises(RuntimeError, match="d_mask must have shape"):
        op(Q, D, None, torch.ones(4, 4, dtype=torch.bool), None)
    with pytest.raises(RuntimeError, match="dim mismatch"):
        op(Q, torch.randn(4, 5, 9), None, None, None)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        op(Q.double(), D.double(), None, None, None)


# ---- tracing -------------------------------------------------------------------------------------


def test_ops_trace_with_fake_tensors():
    emb, offsets, lengths = _packed_args()
    Q, D = torch.randn(2, 3, 8), torch.randn(4, 5, 8)
    d_lengths = torch.tensor([5, 0, 2, 3])
    pids = torch.tensor([[0, -1, 1], [1, 1, 0]])
    torch.library.opcheck(torch.ops.colbert_fast.maxsim.default, (Q, D, None, None, d_lengths))
    torch.library.opcheck(torch.ops.colbert_fast.maxsim.default, (Q, D.expand(2, 4, 5, 8), None, None, None))
    torch.library.opcheck(torch.ops.colbert_fast.maxsim_packed.default, (Q, emb, offsets, lengths, pids, None, 6))
    torch.library.opcheck(torch.ops.colbert_fast.gather.default, (emb, offsets, lengths, pids, 6))

    def f(Q, D, d_lengths):
        return torch.ops.colbert_fast.maxsim(Q, D, None, None, d_lengths).softmax(-1)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(Q, D, d_lengths), f(Q, D, d_lengths))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=lambda d: str(d)[6:])
def test_large_gather_matches_torch_backend(dtype):
    # > 4 MB of output: the path that asks for huge pages first
    g = torch.Generator().manual_seed(11)
    lengths = random_lengths((3000,), 200, g, "cpu")
    docs = cf.PackedDocs(normalized((int(lengths.sum()), 64), dtype, "cpu", g), lengths)
    pids = torch.randint(-1, 3000, (2, 300), generator=g)
    D, mask = cf.gather(docs, pids, backend="cpu")
    D_ref, mask_ref = cf.gather(docs, pids, backend="torch")
    assert D.numel() * D.element_size() > 4 << 20
    assert torch.equal(mask, mask_ref) and torch.equal(D, D_ref)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(
        st.integers(1, 4),  # B
        st.integers(1, 40),  # Lq
        st.integers(0, 4),  # N or K
        st.integers(0, 30),  # Ld
        st.integers(1, 70),  # dim
    ),
    mode=st.sampled_from(["all_pairs", "per_query"]),
    dtype=st.sampled_from(DTYPES),
    masking=st.sampled_from(["none", "lengths", "mask"]),
    q_masked=st.booleans(),
    strided=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes(isa, shape, mode, dtype, masking, q_masked, strided, seed):
    B, lq, n, ld, dim = shape
    g = torch.Generator().manual_seed(seed)
    Q = normalized((B, lq, dim), dtype, "cpu", g, negative_bias=1.0)
    d_shape = (n, ld, dim) if mode == "all_pairs" else (B, n, ld, dim)
    D = normalized(d_shape, dtype, "cpu", g, negative_bias=-1.5)
    if strided:  # every other token of a longer doc: strided rows, never copied
        D = torch.cat([D, D], dim=-2)[..., ::2, :]
    d_lengths = random_lengths(d_shape[:-2], ld, g, "cpu") if masking == "lengths" else None
    d_mask = random_mask(d_shape[:-1], g, "cpu") if masking == "mask" else None
    q_mask = random_mask((B, lq), g, "cpu") if q_masked else None
    _check(Q, D, q_mask, d_mask, d_lengths)
