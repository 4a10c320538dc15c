"""The CUDA ops for compressed stores (csrc/cuda/codes_*): glue checks and backend gating on any
machine with a CUDA build; kernel results on a GPU (@pytest.mark.cuda, run with `pytest --device cuda`).

tests/core/test_compressed.py is the contract every backend meets (its `cuda` rows run on a GPU); the
GPU cases here aim at the kernels' own machinery: the tensor-core vs FMA split (dims up to 128 vs
above), 16-row chunk and 32-row pass boundaries, the centroid ring, load widths for unaligned stores
and strided queries, max_len clipping, determinism, and the in-kernel guards that stand in for the
CPU glue's data-dependent checks (NaN instead of an out-of-bounds read).
"""

from __future__ import annotations

import pytest
import torch
from helpers import normalized

import colbert_fast as cf
from colbert_fast import extension, reference
from colbert_fast.backends import cuda_backend
from colbert_fast.compressed import CompressedDocs

CODECS = [("residual", 1), ("residual", 2), ("residual", 4), ("int8", 8)]
SCORE_ARGS = ("Q", "codes", "scales", "centroid_ids", "centroids", "bucket_weights", "offsets", "lengths", "pids",
              "q_mask", "max_len", "nbits", "floor")  # fmt: skip
GATHER_ARGS = ("codes", "scales", "centroid_ids", "centroids", "bucket_weights", "offsets", "lengths", "pids",
               "max_len", "nbits", "dtype")  # fmt: skip


def _codes_kernels_built() -> bool:
    return extension.has_kernel("maxsim_packed_codes", "CUDA") and extension.has_kernel("gather_codes", "CUDA")


needs_cuda_build = pytest.mark.skipif(not _codes_kernels_built(), reason="extension built without CUDA codes kernels")


def _call_cuda_kernel(op, *args):
    """Runs the op's CUDA kernel directly (bypassing device dispatch), so its checks run on CPU tensors."""
    keyset = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    return getattr(torch.ops.colbert_fast, op).default.redispatch(keyset, *args)


def _store(codec="residual", nbits=2, dim=16, lengths=(3, 5), device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = [normalized((n, dim), torch.float32, "cpu", g) for n in lengths]
    return CompressedDocs.from_list(docs, codec, nbits, num_centroids=4, seed=seed).to(device)


def _view_args(store) -> dict:
    v = store.codes_view()
    return dict(codes=v.codes, scales=v.scales, centroid_ids=v.centroid_ids, centroids=v.centroids,
                bucket_weights=v.bucket_weights, offsets=v.offsets, lengths=v.lengths, nbits=v.nbits)  # fmt: skip


def _score_args(codec=("residual", 2), **over):
    """The op's arguments for a small store of `codec`; `over` replaces some (a callable gets the rest)."""
    args = dict(Q=torch.randn(2, 3, 16), **_view_args(_store(*codec)), pids=torch.tensor([[0, -1], [1, 1]]),
                q_mask=None, max_len=5, floor=None)  # fmt: skip
    for k, f in over.items():
        args[k] = f(args) if callable(f) else f
    return tuple(args[k] for k in SCORE_ARGS)


def _gather_args(codec=("residual", 2), **over):
    args = dict(**_view_args(_store(*codec)), pids=torch.tensor([0, -1, 1]), max_len=5, dtype=torch.float16)
    for k, f in over.items():
        args[k] = f(args) if callable(f) else f
    return tuple(args[k] for k in GATHER_ARGS)


def _gather(view, pids, max_len, dtype):
    return torch.ops.colbert_fast.gather_codes(
        view.codes, view.scales, view.centroid_ids, view.centroids, view.bucket_weights, view.offsets, view.lengths,
        pids, max_len, view.nbits, dtype,
    )  # fmt: skip


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0]


# ---------------------------------------------------------------------------------------------
# Any machine with a CUDA build: the glue's checks, compared with the CPU glue's


SCORE_CASES = [
    (dict(nbits=3), "nbits must be 1, 2, 4"),
    (dict(codes=lambda a: torch.cat([a["codes"], a["codes"]], 1)[:, ::2]), r"codes must be a contiguous \[T, bytes\]"),
    (dict(scales=lambda a: a["scales"].float()), "scales must be contiguous float16"),
    (dict(codes=lambda a: a["codes"].view(torch.int8)), "residual codes must be uint8"),
    (dict(centroids=lambda a: a["centroids"].double()), r"centroids must be contiguous float32 \[C >= 1, dim\]"),
    (dict(codes=lambda a: a["codes"][:, :-1].contiguous()), r"codes must be \[T, 4\] for dim 16 at 2 bits"),
    (dict(centroid_ids=lambda a: a["centroid_ids"].long()), "centroid_ids must be contiguous int32"),
    (dict(bucket_weights=lambda a: a["bucket_weights"][:3]), r"bucket_weights must be contiguous float32 \[4\]"),
    (dict(centroids=None), "the residual codec needs centroid_ids, centroids and bucket_weights"),
    (dict(Q=lambda a: a["Q"].half()), "Q must be float32 for a compressed store"),
    (dict(Q=torch.randn(2, 3, 8)), "dim mismatch"),
    (dict(Q=torch.randn(3, 16)), r"Q must be \[B, Lq, dim\]"),
    (dict(Q=torch.randn(2, 0, 16)), "Lq >= 1"),
    (dict(Q=torch.randn(2, 3, 32)[..., ::2]), "contiguous last dim"),
    (dict(pids=torch.tensor([[0, -1], [1, 1]], dtype=torch.int32)), "offsets, lengths and pids must be int64"),
    (dict(offsets=lambda a: a["offsets"][:-1]), r"offsets must be \[N \+ 1\] and lengths \[N\]"),
    (dict(pids=torch.tensor([[0, 1]])), r"pids must be \[B, K\] with B = 2"),
    (dict(max_len=-1), "max_len must be >= 0"),
    (dict(q_mask=torch.ones(2, 3)), "q_mask must be bool"),
    (dict(q_mask=torch.ones(2, 4, dtype=torch.bool)), "q_mask must have shape"),
    (dict(floor=torch.zeros(2, 2).double()), "floor must be float32"),
    (dict(floor=torch.zeros(2)), r"floor must have shape \[2, 2\] \(one value per doc\)"),
]


@needs_cuda_build
@pytest.mark.parametrize("over,message", SCORE_CASES)
def test_maxsim_packed_codes_glue_checks_match_the_cpu_glue(over, message):
    args = _score_args(**over)
    with pytest.raises((RuntimeError, TypeError), match=message) as cuda_err:
        _call_cuda_kernel("maxsim_packed_codes", *args)
    with pytest.raises((RuntimeError, TypeError)) as cpu_err:
        torch.ops.colbert_fast.maxsim_packed_codes(*args)
    assert cuda_err.type is cpu_err.type, f"CUDA glue raises {cuda_err.type}, CPU glue {cpu_err.type}"
    assert _first_line(cuda_err.value) == _first_line(cpu_err.value)


@needs_cuda_build
def test_int8_glue_checks():
    store_args = _view_args(_store("int8", 8))
    extra = _view_args(_store("residual", 2))
    for op, args in (("maxsim_packed_codes", _score_args(("int8", 8), centroids=extra["centroids"])),
                     ("gather_codes", _gather_args(("int8", 8), centroids=extra["centroids"]))):  # fmt: skip
        with pytest.raises(RuntimeError, match="the int8 codec takes no centroids or buckets"):
            _call_cuda_kernel(op, *args)
    with pytest.raises(TypeError, match="int8 codes must be int8"):
        _call_cuda_kernel("gather_codes", *_gather_args(("int8", 8), codes=store_args["codes"].view(torch.uint8)))


GATHER_CASES = [
    (dict(nbits=5), "nbits must be 1, 2, 4"),
    (dict(scales=lambda a: a["scales"][:-1]), r"scales must be contiguous float16 \[T\]"),
    (dict(lengths=lambda a: a["lengths"].int()), "offsets, lengths and pids must be int64"),
    (dict(max_len=-2), "max_len must be >= 0"),
    (dict(dtype=torch.int8), "dtype must be float32, float16 or bfloat16"),
]


@needs_cuda_build
@pytest.mark.parametrize("over,message", GATHER_CASES)
def test_gather_codes_glue_checks_match_the_cpu_glue(over, message):
    args = _gather_args(**over)
    with pytest.raises((RuntimeError, TypeError), match=message) as cuda_err:
        _call_cuda_kernel("gather_codes", *args)
    with pytest.raises((RuntimeError, TypeError)) as cpu_err:
        torch.ops.colbert_fast.gather_codes(*args)
    assert cuda_err.type is cpu_err.type and _first_line(cuda_err.value) == _first_line(cpu_err.value)


@needs_cuda_build
def test_device_checks_come_last_and_no_value_is_read_on_the_host():
    """Valid CPU tensors get as far as the device check. So do a pid past the store and a centroid id
    past the table, which the CPU glue rejects by reading them: the CUDA glue never reads device
    values (no sync); its kernels guard those reads and write NaN (GPU tests below)."""
    with pytest.raises(RuntimeError, match="Q must be a CUDA tensor"):
        _call_cuda_kernel("maxsim_packed_codes", *_score_args())
    with pytest.raises(RuntimeError, match="codes must be a CUDA tensor"):
        _call_cuda_kernel("gather_codes", *_gather_args())
    bad_pids = dict(pids=torch.tensor([[7, -1], [1, 1]]))
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.colbert_fast.maxsim_packed_codes(*_score_args(**bad_pids))
    with pytest.raises(RuntimeError, match="Q must be a CUDA tensor"):
        _call_cuda_kernel("maxsim_packed_codes", *_score_args(**bad_pids))
    bad_ids = dict(centroid_ids=lambda a: a["centroid_ids"] + 100)
    with pytest.raises(IndexError, match="centroid id"):
        torch.ops.colbert_fast.gather_codes(*_gather_args(**bad_ids))
    with pytest.raises(RuntimeError, match="codes must be a CUDA tensor"):
        _call_cuda_kernel("gather_codes", *_gather_args(**bad_ids))


@needs_cuda_build
def test_supports_codes_when_the_cuda_backend_is_usable(monkeypatch):
    dev = torch.device("cuda")
    monkeypatch.setattr(cuda_backend, "unavailable_reason", lambda device: None)
    assert cuda_backend.supports_codes(dev)
    real = extension.has_kernel
    monkeypatch.setattr(extension, "has_kernel", lambda op, key: op != "gather_codes" and real(op, key))
    assert not cuda_backend.supports_codes(dev)


def test_supports_codes_is_false_without_a_usable_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert not cuda_backend.supports_codes(torch.device("cuda"))
    assert not cuda_backend.supports_codes(torch.device("cpu"))


@needs_cuda_build
def test_fake_kernels_give_shapes():
    store = _store("residual", 2, dim=16).codes_view()
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in _view_args(_store()).items()}
    Q = torch.empty(3, 32, 16, device="meta")
    pids = torch.empty(3, 9, device="meta", dtype=torch.long)
    out = torch.ops.colbert_fast.maxsim_packed_codes(Q, *(meta[k] for k in SCORE_ARGS[1:8]), pids, None, 40, 2)
    assert out.shape == (3, 9) and out.dtype == torch.float32
    D, mask = torch.ops.colbert_fast.gather_codes(*(meta[k] for k in GATHER_ARGS[:7]), pids, 40, 2, torch.bfloat16)
    assert D.shape == (3, 9, 40, store.dim) and D.dtype == torch.bfloat16 and mask.shape == (3, 9, 40)


# ---------------------------------------------------------------------------------------------
# GPU


def _oracle(Q, store, pids, q_mask=None, floor=None, max_len=None):
    """Reference decode + reference MaxSim (fp32) and the tolerance rule's bound (fp16 low dtype)."""
    dec = store.decode()
    lengths = dec.lengths if max_len is None else dec.lengths.clamp(max=max_len)
    args = (dec.embeddings, dec.offsets, lengths, pids, q_mask)
    exact = reference.maxsim_packed(Q, *args, floor=floor)
    low = reference.maxsim_packed(Q.half(), dec.embeddings.half(), *args[1:], floor=floor, upcast=False)
    return exact, reference.tolerance(exact, low, torch.float16, Q.shape[1])


def _assert_close(out, exact, tol):
    out, exact = out.cpu(), exact.cpu()
    assert out.dtype == torch.float32 and out.shape == exact.shape
    assert not torch.isnan(out).any(), f"NaN at {torch.nonzero(torch.isnan(out))[:5].tolist()}"
    assert torch.equal(torch.isinf(out), torch.isinf(exact)), "infinite scores differ"
    err = (out - exact).abs().masked_fill(~torch.isfinite(exact), 0)
    assert err.max().item() <= tol, f"max error {err.max().item():.3g} > tolerance {tol:.3g}"


def _score(Q, store, pids, q_mask=None, max_len=None, floor=None):
    v = store.codes_view()
    return torch.ops.colbert_fast.maxsim_packed_codes(
        Q, v.codes, v.scales, v.centroid_ids, v.centroids, v.bucket_weights, v.offsets, v.lengths, pids, q_mask,
        store.max_length if max_len is None else max_len, v.nbits, floor,
    )  # fmt: skip


# Doc lengths around the 16-row chunk (and the two-stage centroid ring: 3+ chunks).
CHUNK_LENGTHS = [0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 180]


@pytest.mark.cuda
@pytest.mark.parametrize("codec_nbits", CODECS, ids=lambda c: f"{c[0]}{c[1]}")
@pytest.mark.parametrize("dim", (5, 8, 16, 64, 96, 100, 127, 128, 136, 200))
@pytest.mark.parametrize("lq", (1, 31, 32, 33, 150))
def test_dims_chunks_and_passes(device, codec_nbits, dim, lq):
    store = _store(*codec_nbits, dim=dim, lengths=CHUNK_LENGTHS, device=device, seed=dim + lq)
    g = torch.Generator().manual_seed(dim * lq)
    B, K = 3, 14
    Q = normalized((B, lq, dim), torch.float32, device, g)
    pids = torch.randint(-1, len(CHUNK_LENGTHS), (B, K), generator=g)
    pids[0, : len(CHUNK_LENGTHS)] = torch.arange(len(CHUNK_LENGTHS))
    pids = pids.to(device)
    q_mask = (torch.rand(B, lq, generator=g) < 0.7).to(device)
    floor = torch.where(torch.rand(B, K, generator=g) < 0.5, -0.1, float("-inf")).to(device)
    for qm, fl in ((None, None), (q_mask, floor)):
        _assert_close(_score(Q, store, pids, qm, floor=fl), *_oracle(Q, store, pids, qm, fl))


@pytest.mark.cuda
@pytest.mark.parametrize("codec_nbits", CODECS, ids=lambda c: f"{c[0]}{c[1]}")
def test_max_len_clips_like_the_gather(device, codec_nbits):
    """A direct op call with max_len below a doc's length scores its first max_len rows, as the
    gather (and the CUDA maxsim_packed) clip. (The CPU packed ops read every row; the Python API
    always passes the store's max_length, so the two agree there.)"""
    store = _store(*codec_nbits, dim=128, lengths=[5, 40, 17, 0], device=device)
    g = torch.Generator().manual_seed(1)
    Q = normalized((2, 32, 128), torch.float32, device, g)
    pids = torch.tensor([[0, 1, 2, -1], [3, 2, 1, 0]], device=device)
    _assert_close(_score(Q, store, pids, max_len=16), *_oracle(Q, store, pids, max_len=16))


@pytest.mark.cuda
@pytest.mark.parametrize("codec_nbits", CODECS, ids=lambda c: f"{c[0]}{c[1]}")
@pytest.mark.parametrize("dim", (5, 13, 96, 100, 128, 136))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32), ids=str)
def test_gather_is_bit_identical_to_the_cpu_op(device, codec_nbits, dim, dtype):
    store = _store(*codec_nbits, dim=dim, lengths=[3, 0, 17, 8, 40], device=device)
    cpu_store = store.to("cpu")
    for pids in (torch.tensor([[2, -1, 0], [1, 3, 3]]), torch.tensor([4, 2, -1]), torch.tensor([[[4], [0]]])):
        for max_len in (0, 10, 40):
            D, mask = _gather(store.codes_view(), pids.to(device), max_len, dtype)
            Dc, mc = _gather(cpu_store.codes_view(), pids, max_len, dtype)
            assert D.dtype == dtype and D.shape == Dc.shape and torch.equal(mask.cpu(), mc)
            assert torch.equal(D.cpu(), Dc), f"max_len {max_len}, pids {pids.tolist()}"
    D, mask = cf.gather(store, torch.tensor([[2, -1, 0]], device=device), dtype=dtype, backend="cuda")
    dec = store.decode()
    Dr, mr = reference.gather(dec.embeddings, dec.offsets, dec.lengths, torch.tensor([[2, -1, 0]], device=device))
    assert torch.equal(D.cpu(), Dr.to(dtype).cpu()) and torch.equal(mask.cpu(), mr.cpu())


def _shifted(t: torch.Tensor, elems: int) -> torch.Tensor:
    """A contiguous copy of t whose storage starts `elems` elements into its buffer (unaligned)."""
    buf = torch.empty(t.numel() + elems, dtype=t.dtype, device=t.device)
    out = buf[elems:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.cuda
@pytest.mark.parametrize("codec_nbits", CODECS, ids=lambda c: f"{c[0]}{c[1]}")
def test_unaligned_stores_and_strided_queries_give_identical_scores(device, codec_nbits):
    """Narrower loads (byte-wise codes, 4-byte centroid copies, scalar Q loads) read the same values."""
    store = _store(*codec_nbits, dim=128, lengths=[40, 17, 33, 1], device=device)
    g = torch.Generator().manual_seed(5)
    Q = normalized((2, 32, 128), torch.float32, device, g)
    pids = torch.tensor([[0, 1, 2, 3], [3, 2, 1, -1]], device=device)
    want = _score(Q, store, pids)
    v = store.codes_view()
    moved = v._replace(codes=_shifted(v.codes, 1))
    if v.centroids is not None:
        moved = moved._replace(centroids=_shifted(v.centroids, 1))
    got = torch.ops.colbert_fast.maxsim_packed_codes(
        Q, moved.codes, moved.scales, moved.centroid_ids, moved.centroids, moved.bucket_weights, moved.offsets,
        moved.lengths, pids, None, store.max_length, moved.nbits, None,
    )  # fmt: skip
    assert torch.equal(got, want)
    wide = torch.zeros(2, 32, 129, device=device)
    wide[..., :128] = Q
    assert torch.equal(_score(wide[..., :128], store, pids), want)  # row stride 129: element loads


@pytest.mark.cuda
@pytest.mark.parametrize("codec_nbits", CODECS, ids=lambda c: f"{c[0]}{c[1]}")
def test_invalid_inputs_give_nan_not_a_fault(device, codec_nbits):
    """What the CPU glue rejects by reading values (and the Python API and the store rule out) gives
    NaN on the GPU, and the device stays usable: nothing was read out of bounds."""
    store = _store(*codec_nbits, dim=64, lengths=[20, 5, 9], device=device)
    Q = normalized((1, 8, 64), torch.float32, device, torch.Generator().manual_seed(2))
    pids = torch.tensor([[0, 3, -5, 1, -1, 2]], device=device)  # 3 and -5: no such doc
    out = _score(Q, store, pids).cpu()
    assert torch.isnan(out[0, 1]) and torch.isnan(out[0, 2]) and torch.isneginf(out[0, 4])
    assert torch.isfinite(out[0, [0, 3, 5]]).all()
    v = store.codes_view()
    lengths = v.lengths.clone()
    lengths[2] = 1000  # doc 2's rows run past the store
    bad = torch.ops.colbert_fast.maxsim_packed_codes(
        Q, v.codes, v.scales, v.centroid_ids, v.centroids, v.bucket_weights, v.offsets, lengths,
        torch.tensor([[2, 0]], device=device), None, 1000, v.nbits, None,
    ).cpu()  # fmt: skip
    assert torch.isnan(bad[0, 0]) and torch.isfinite(bad[0, 1])
    if v.centroid_ids is not None:
        ids = v.centroid_ids.clone()
        ids[21] = v.centroids.shape[0] + 7  # a row of doc 1
        scores = torch.ops.colbert_fast.maxsim_packed_codes(
            Q, v.codes, v.scales, ids, v.centroids, v.bucket_weights, v.offsets, v.lengths,
            torch.tensor([[1, 0]], device=device), None, store.max_length, v.nbits, None,
        ).cpu()  # fmt: skip
        assert torch.isnan(scores[0, 0]) and torch.isfinite(scores[0, 1])
        D, mask = _gather(v._replace(centroid_ids=ids), torch.tensor([1, 0], device=device), 20, torch.float32)
        assert torch.isnan(D[0, 1]).all() and torch.isfinite(D[0, 0]).all() and torch.isfinite(D[1]).all()
    torch.cuda.synchronize(device)


@pytest.mark.cuda
def test_r1_and_many_queries_are_deterministic(device):
    g = torch.Generator().manual_seed(13)
    lengths = torch.randint(20, 181, (3000,), generator=g).tolist()
    store = _store("residual", 2, dim=128, lengths=lengths, device=device, seed=13)
    Q = normalized((1, 32, 128), torch.float32, device, g)
    pids = torch.randperm(3000, generator=g)[:1000].view(1, -1).to(device)
    out = cf.maxsim_packed(Q, store, pids, backend="cuda")
    _assert_close(out, *_oracle(Q, store, pids))
    Q16 = normalized((16, 32, 128), torch.float32, device, g)
    pids16 = torch.randint(0, 3000, (16, 1000), generator=g).to(device)
    a = cf.maxsim_packed(Q16, store, pids16, backend="cuda")
    s = torch.cuda.Stream(device)
    with torch.cuda.stream(s):
        b = cf.maxsim_packed(Q16, store, pids16, backend="cuda")
    s.synchronize()
    assert torch.equal(a, b), "same inputs must give bit-identical scores"
    cpu = cf.maxsim_packed(Q16.cpu(), store.to("cpu"), pids16.cpu(), backend="cpu")
    torch.testing.assert_close(a.cpu(), cpu, atol=1e-2 * 32, rtol=0)
