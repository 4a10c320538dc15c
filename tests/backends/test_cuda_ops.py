"""The CUDA ops (csrc/cuda): glue checks and backend gating on any machine; kernel results against
the reference on a GPU (@pytest.mark.cuda, run with `pytest --device cuda`).

The conformance suite covers the contract for every backend; the GPU cases here aim at the
kernels' own machinery: tensor-core vs FMA dispatch (dims, alignment, dtype), independent-warp vs
shared-doc tensor-core kernels (one vs several query slots per doc), chunk and pass boundaries
(Ld around 16, Lq around 32, ColPali-long queries with partial sums), packed docs clipped to
max_len, strided views, determinism.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_matches_reference, normalized

import colbert_fast as cf
from colbert_fast import backends, extension, reference


def _cuda_kernels_built() -> bool:
    return extension.has_kernel("maxsim", "CUDA") and extension.has_kernel("maxsim_packed", "CUDA")


needs_cuda_build = pytest.mark.skipif(not _cuda_kernels_built(), reason="extension built without CUDA kernels")


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0]


def _call_cuda_kernel(op, *args):
    """Runs the op's CUDA kernel directly (bypassing device dispatch), so its checks run on CPU tensors."""
    keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    return getattr(torch.ops.colbert_fast, op).default.redispatch(keyset, *args)


# ---------------------------------------------------------------------------------------------
# Any machine


def test_cuda_backend_says_why_it_is_unavailable():
    reason = backends.unavailable_reason("cuda", torch.device("cpu"))
    assert reason == "it runs on CUDA tensors only, got cpu tensors"
    if not torch.cuda.is_available():
        reason = backends.unavailable_reason("cuda", torch.device("cuda"))
        assert reason is not None
        if _cuda_kernels_built():
            assert reason == "torch sees no CUDA GPU"
        with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable"):
            cf.maxsim(torch.randn(1, 2, 8), torch.randn(3, 4, 8), backend="cuda")


def test_cuda_backend_reports_a_build_without_cuda(monkeypatch):
    monkeypatch.setattr(extension, "build_info", lambda: {"built": True, "with_cuda": False})
    monkeypatch.setattr(extension, "missing_reason", lambda: None)
    from colbert_fast.backends import cuda_backend

    assert "built without CUDA kernels" in cuda_backend.unavailable_reason(torch.device("cuda"))


@needs_cuda_build
@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 8).half(), None, None, None), "Q must have the docs' dtype"),
        (lambda: (torch.randn(2, 3, 8), torch.randn(5, 8), None, None, None), r"D must be \[N, Ld, dim\]"),
        (lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 7), None, None, None), "dim mismatch"),
        (lambda: (torch.randn(2, 0, 8), torch.randn(4, 5, 8), None, None, None), "Lq >= 1"),
        (lambda: (torch.randn(2, 3, 8).int(), torch.randn(4, 5, 8).int(), None, None, None), "unsupported dtype"),
        (lambda: (torch.randn(2, 3, 8), torch.randn(3, 4, 5, 8), None, None, None), "must have B = 2"),
        (
            lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 8), torch.ones(2, 4, dtype=torch.bool), None, None),
            r"q_mask must have shape \[2, 3\] \(Q's \[B, Lq\]\)",
        ),
        (lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 8), None, torch.ones(4, 5), None), "d_mask must be bool"),
        (
            lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 8), None, torch.ones(4, 6, dtype=torch.bool), None),
            r"d_mask must have shape \[4, 5\] \(D's shape without dim\)",
        ),
        (
            lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 8), None, None, torch.ones(4, dtype=torch.int32)),
            "d_lengths must be int64",
        ),
        (
            lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 8), None, None, torch.ones(5, dtype=torch.long)),
            r"d_lengths must have shape \[4\] \(D's shape without \(Ld, dim\)\)",
        ),
        (
            lambda: (
                torch.randn(2, 3, 8),
                torch.randn(4, 5, 8),
                None,
                torch.ones(4, 5, dtype=torch.bool),
                torch.ones(4, dtype=torch.long),
            ),
            "give d_mask or d_lengths, not both",
        ),
        (
            lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 16)[..., ::2], None, None, None),
            "D's last dim must have stride 1",
        ),
        (
            lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 8), None, None, None, torch.zeros(5)),
            r"floor must have shape \[4\] \(one value per doc\)",
        ),
        (
            lambda: (torch.randn(2, 3, 8), torch.randn(4, 5, 8), None, None, None, torch.zeros(4).double()),
            "floor must be float32",
        ),
    ],
)
def test_maxsim_glue_checks_match_the_cpu_glue(make_args, message):
    """One checker (csrc/torch/maxsim_checks.cpp): the CUDA kernel raises what the CPU kernel raises."""
    args = make_args()
    with pytest.raises((RuntimeError, TypeError), match=message) as cuda_err:
        _call_cuda_kernel("maxsim", *args)
    with pytest.raises((RuntimeError, TypeError)) as cpu_err:
        torch.ops.colbert_fast.maxsim(*args)
    assert cuda_err.type is cpu_err.type and _first_line(cuda_err.value) == _first_line(cpu_err.value)


def _packed_args(**over):
    args = dict(
        Q=torch.randn(2, 3, 8),
        emb=torch.randn(10, 8),
        offsets=torch.tensor([0, 4, 10]),
        lengths=torch.tensor([4, 6]),
        pids=torch.tensor([[0, -1], [1, 1]]),
        q_mask=None,
        max_len=6,
        floor=None,
    )
    args.update(over)
    return tuple(args.values())


@needs_cuda_build
@pytest.mark.parametrize(
    "over,message",
    [
        (dict(emb=torch.randn(10, 8, 1)), r"embeddings must be \[T, dim\]"),
        (dict(emb=torch.randn(8, 10).t()), "embeddings must be contiguous"),
        (dict(emb=torch.randn(10, 8).half()), "Q must have the docs' dtype"),
        (dict(pids=torch.tensor([[0, -1], [1, 1]], dtype=torch.int32)), "pids must be int64"),
        (dict(offsets=torch.tensor([0, 4])), r"offsets must be \[N \+ 1\] and lengths \[N\]"),
        (dict(pids=torch.tensor([0, 1])), r"pids must be \[B, K\] with B = 2"),
        (dict(max_len=-1), "max_len must be >= 0"),
        (dict(q_mask=torch.ones(2, 3)), "q_mask must be bool"),
        (dict(floor=torch.zeros(2)), r"floor must have shape \[2, 2\]"),
    ],
)
def test_maxsim_packed_glue_checks_match_the_cpu_glue(over, message):
    args = _packed_args(**over)
    with pytest.raises((RuntimeError, TypeError), match=message) as cuda_err:
        _call_cuda_kernel("maxsim_packed", *args)
    with pytest.raises((RuntimeError, TypeError)) as cpu_err:
        torch.ops.colbert_fast.maxsim_packed(*args)
    assert cuda_err.type is cpu_err.type and _first_line(cuda_err.value) == _first_line(cpu_err.value)


@needs_cuda_build
def test_device_checks_come_after_the_shared_checks():
    """Valid CPU tensors get as far as the CUDA glue's own device check."""
    with pytest.raises(RuntimeError, match="Q must be a CUDA tensor"):
        _call_cuda_kernel("maxsim", torch.randn(2, 3, 8), torch.randn(4, 5, 8), None, None, None)
    with pytest.raises(RuntimeError, match="Q must be a CUDA tensor"):
        _call_cuda_kernel("maxsim_packed", *_packed_args())


@needs_cuda_build
def test_fake_kernels_give_shapes():
    """Meta tensors go through the fake kernels (what torch.compile traces with)."""
    Q = torch.empty(3, 32, 128, device="meta", dtype=torch.float16)
    out = torch.ops.colbert_fast.maxsim(
        Q, torch.empty(7, 50, 128, device="meta", dtype=torch.float16), None, None, None
    )
    assert out.shape == (3, 7) and out.dtype == torch.float32
    out = torch.ops.colbert_fast.maxsim(
        Q, torch.empty(3, 5, 50, 128, device="meta", dtype=torch.float16), None, None, None
    )
    assert out.shape == (3, 5) and out.dtype == torch.float32
    emb = torch.empty(100, 128, device="meta", dtype=torch.float16)
    idx = torch.empty(4, device="meta", dtype=torch.long)
    pids = torch.empty(3, 9, device="meta", dtype=torch.long)
    out = torch.ops.colbert_fast.maxsim_packed(Q, emb, idx, idx[:3], pids, None, 40)
    assert out.shape == (3, 9) and out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# GPU


def _check(Q, D, q_mask=None, d_mask=None, d_lengths=None):
    out = cf.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, backend="cuda")
    exact = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths)
    low = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, upcast=False)
    assert_matches_reference(out, exact, low, D.dtype, Q.shape[1])
    return out


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# dims: tensor-core buckets (<= 64, <= 128, <= 256; multiples of 8 that are not of 16), and FMA
# fallbacks (not a multiple of 8, above 256).
TC_DIMS = (8, 24, 64, 96, 128, 136, 256)
FMA_DIMS = (1, 5, 100, 264)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("dim", TC_DIMS + FMA_DIMS)
@pytest.mark.parametrize("mode", ("all_pairs", "per_query"))
def test_dims_and_modes(device, dtype, dim, mode):
    g = _gen(dim)
    B, N, Lq, Ld = 3, 5, 33, 37
    Q = normalized((B, Lq, dim), dtype, device, g, negative_bias=1.0)
    shape = (N, Ld, dim) if mode == "all_pairs" else (B, N, Ld, dim)
    D = normalized(shape, dtype, device, g, negative_bias=-1.5)
    lengths = torch.randint(0, Ld + 1, shape[:-2], generator=g).to(device)
    lengths.view(-1)[0] = 0
    _check(Q, D)
    _check(Q, D, d_lengths=lengths)
    _check(Q, D, d_mask=(torch.rand(shape[:-1], generator=g) < 0.6).to(device))
    _check(Q, D, q_mask=(torch.rand((B, Lq), generator=g) < 0.6).to(device), d_lengths=lengths)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("lq", (1, 15, 16, 17, 31, 32, 33, 64, 65, 300, 1030))
@pytest.mark.parametrize("ld", (0, 1, 15, 16, 17, 31, 32, 33, 48, 49, 64, 65, 513))
def test_chunk_and_pass_boundaries(device, dtype, lq, ld):
    g = _gen(lq * 1000 + ld)
    Q = normalized((2, lq, 128), dtype, device, g, negative_bias=1.0)
    D = normalized((3, ld, 128), dtype, device, g, negative_bias=-1.5)
    _check(Q, D)  # all-pairs, two queries: the shared-doc kernel
    _check(Q[:1], D)  # one query, Lq <= 32: independent warps; longer: the shared-doc kernel over passes
    _check(Q, D[None].expand(2, 3, ld, 128), d_lengths=torch.tensor([[ld, 0, ld // 2]] * 2, device=device))


@pytest.mark.cuda
def test_colpali_shape(device):
    g = _gen(7)
    Q = normalized((2, 1024, 128), torch.bfloat16, device, g)
    D = normalized((6, 1024, 128), torch.bfloat16, device, g)
    lengths = torch.tensor([1024, 1, 0, 700, 1023, 17], device=device)
    _check(Q, D, d_lengths=lengths)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("dim", (64, 96, 128, 100))
@pytest.mark.parametrize("lq", (1, 32, 40))
def test_packed(device, dtype, dim, lq):
    g = _gen(dim + lq)
    lengths = torch.randint(0, 200, (50,), generator=g)
    lengths[0], lengths[1] = 0, 1
    emb = normalized((int(lengths.sum()), dim), dtype, device, g, negative_bias=-1.0)
    docs = cf.PackedDocs(emb, lengths.to(device))
    B, K = 3, 40
    pids = torch.randint(-1, 50, (B, K), generator=g)
    pids[0, :3] = torch.tensor([-1, 0, 1])
    pids = pids.to(device)
    Q = normalized((B, lq, dim), dtype, device, g, negative_bias=1.0)
    q_mask = (torch.rand((B, lq), generator=g) < 0.7).to(device)
    for qm in (None, q_mask):
        out = cf.maxsim_packed(Q, docs, pids, qm, backend="cuda")
        args = (Q, docs.embeddings, docs.offsets, docs.lengths, pids, qm)
        exact = reference.maxsim_packed(*args)
        assert_matches_reference(out, exact, reference.maxsim_packed(*args, upcast=False), dtype, lq)
        assert torch.isneginf(out[0, 0]) and out[0, 1] == 0


@pytest.mark.cuda
def test_packed_max_len_clips_like_gather(device):
    g = _gen(11)
    lengths = torch.tensor([5, 40, 17])
    emb = normalized((62, 64), torch.float16, device, g)
    offsets = torch.tensor([0, 5, 45, 62], device=device)
    pids = torch.tensor([[0, 1, 2, -1]], device=device)
    Q = normalized((1, 32, 64), torch.float16, device, g)
    out = torch.ops.colbert_fast.maxsim_packed(Q, emb, offsets, lengths.to(device), pids, None, 16)
    D, mask = torch.ops.colbert_fast.gather(emb, offsets, lengths.to(device), pids, 16)
    ref = reference.maxsim(Q, D[0], None, mask[0])
    ref[0, 3] = float("-inf")
    torch.testing.assert_close(out, ref, atol=1e-2 * 32, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=lambda d: str(d)[6:])
def test_views_and_unaligned_storage(device, dtype):
    g = _gen(12)
    base_q = normalized((4, 40, 128), dtype, device, g)
    base_d = normalized((8, 70, 128), dtype, device, g, negative_bias=-1.0)
    _check(base_q[::2, 3:], base_d[::2, 5:])  # strided, still 16-byte aligned rows: tensor cores
    _check(base_q, base_d[:, :, None].expand(8, 70, 2, 128)[:, :, 1])  # row stride 256 elements
    # storage offset of one element: rows not 16-byte aligned -> FMA kernel, same answer
    flat = torch.empty(8 * 70 * 128 + 1, dtype=dtype, device=device)
    unaligned = flat[1:].view(8, 70, 128)
    unaligned.copy_(base_d)
    out_u = _check(base_q, unaligned)
    torch.testing.assert_close(out_u, cf.maxsim(base_q, base_d, backend="cuda"), atol=1e-2 * 40, rtol=0)
    # a Q with an odd row stride (A fragments are loaded element-wise)
    wide_q = normalized((4, 40, 129), dtype, device, g)[..., :128]
    _check(wide_q, base_d)


@pytest.mark.cuda
def test_deterministic_and_stream_ordered(device):
    g = _gen(13)
    Q = normalized((16, 300, 128), torch.float16, device, g)
    D = normalized((64, 180, 128), torch.float16, device, g)
    a = cf.maxsim(Q, D, backend="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        b = cf.maxsim(Q, D, backend="cuda")
    s.synchronize()
    assert torch.equal(a, b), "same inputs must give bit-identical scores"


@pytest.mark.cuda
def test_large_offsets_packed(device):
    """A store past 2^31 elements (int64 offsets): ~4.3 GB of fp16; skipped when memory is short."""
    free, _ = torch.cuda.mem_get_info()
    rows, dim = (1 << 31) // 128 + 1000, 128
    if free < rows * dim * 2 * 1.2:
        pytest.skip("not enough GPU memory for a > 2^31-element store")
    emb = torch.zeros(rows, dim, dtype=torch.float16, device=device)
    emb[-50:] = 0.01
    lengths = torch.tensor([rows - 50, 50], device=device)
    docs = cf.PackedDocs(emb, lengths)
    Q = torch.ones(1, 32, dim, dtype=torch.float16, device=device)
    out = cf.maxsim_packed(Q, docs, torch.tensor([[1]], device=device), backend="cuda")
    assert out.item() == pytest.approx(32 * 128 * 0.01, rel=1e-2)
