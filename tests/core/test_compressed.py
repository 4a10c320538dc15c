"""Compressed stores (colbert_fast.compressed): codecs, the store type, files, and every backend's
compressed-domain scoring and gather against the oracle (decode with colbert_fast.reference, then
reference MaxSim), under the tolerance rule, on odd shapes, masks, empty docs, pid -1, negative
similarities and floors."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_or_skip, normalized

import colbert_fast as cf
from colbert_fast import backends, compressed, reference
from colbert_fast.compressed import CompressedDocs, kmeans

CODECS = [("residual", 1), ("residual", 2), ("residual", 4), ("int8", 8)]
BACKENDS = ["torch", "cpu", "triton", "cuda"]


def _ids(codec_nbits):
    return f"{codec_nbits[0]}{codec_nbits[1]}"


def make_store(codec, nbits, dim, lengths, device, seed=0, negative=False, num_centroids=32):
    g = torch.Generator().manual_seed(seed)
    rows = normalized((sum(lengths), dim), torch.float32, "cpu", g, negative_bias=-30.0 if negative else 0.0)
    docs = cf.PackedDocs(rows, torch.tensor(lengths))
    store = CompressedDocs.from_packed(docs, codec, nbits, num_centroids=num_centroids, seed=seed)
    return store.to(device)


def codes_backend_or_skip(name, device):
    module = backend_or_skip(name, device)
    if not getattr(module, "supports_codes", lambda d: False)(device):
        pytest.skip(f"backend {name!r} has no compressed-store kernels on {device}")
    return module


def oracle(Q, store, pids, q_mask=None, floor=None):
    """Reference decode + reference MaxSim, and the tolerance rule's bound (fp16 as the low dtype)."""
    dec = store.decode()
    exact = reference.maxsim_packed(Q, dec.embeddings, dec.offsets, dec.lengths, pids, q_mask, floor=floor)
    low = reference.maxsim_packed(
        Q.half(), dec.embeddings.half(), dec.offsets, dec.lengths, pids, q_mask, floor=floor, upcast=False
    )
    return exact, reference.tolerance(exact, low, torch.float16, Q.shape[1])


def assert_close_to_oracle(out, exact, tol):
    assert out.dtype == torch.float32 and out.shape == exact.shape
    out, exact = out.cpu(), exact.cpu()
    assert not torch.isnan(out).any()
    assert torch.equal(torch.isinf(out), torch.isinf(exact)), "infinite scores differ"
    finite = torch.isfinite(exact)
    err = (out - exact).abs().masked_fill(~finite, 0)
    assert err.max().item() <= tol, f"max error {err.max().item():.3g} > tolerance {tol:.3g}"


# ---- conformance: every codec x backend ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codec_nbits", CODECS, ids=_ids)
@pytest.mark.parametrize(
    "dim,lq,lengths",
    [
        (128, 32, [0, 1, 17, 180, 40, 3, 0, 99]),
        (96, 7, [5, 0, 33, 12]),
        (64, 1, [1, 2, 3, 64]),
        (384, 9, [13, 0, 20]),
        (100, 5, [9, 4, 0, 30]),  # a dim that does not fill the last code byte
    ],
)
def test_maxsim_packed_matches_the_decoded_oracle(backend, codec_nbits, dim, lq, lengths, device):
    codes_backend_or_skip(backend, device)
    codec, nbits = codec_nbits
    store = make_store(codec, nbits, dim, lengths, device, seed=dim + lq)
    g = torch.Generator().manual_seed(lq)
    B, K = 3, 6
    Q = normalized((B, lq, dim), torch.float32, device, g)
    pids = torch.randint(-1, len(lengths), (B, K), generator=g).to(device)
    pids[0, 0] = -1  # an empty slot
    if 0 in lengths:
        pids[1, 0] = lengths.index(0)  # an empty doc
    q_mask = (torch.rand(B, lq, generator=g) < 0.7).to(device)
    q_mask[:, 0] = True
    for mask in (None, q_mask):
        out = cf.maxsim_packed(Q, store, pids, mask, backend=backend)
        assert_close_to_oracle(out, *oracle(Q, store, pids, mask))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codec_nbits", CODECS, ids=_ids)
def test_negative_similarities_and_floors(backend, codec_nbits, device):
    """Docs pointing away from the queries: every similarity is negative, so a 0 from padding or
    decoding would win the max; floors (scalar and per slot) raise each token's max."""
    codes_backend_or_skip(backend, device)
    codec, nbits = codec_nbits
    lengths = [4, 0, 19, 1, 31]
    store = make_store(codec, nbits, 128, lengths, device, seed=5, negative=True)
    g = torch.Generator().manual_seed(9)
    Q = normalized((2, 11, 128), torch.float32, device, g, negative_bias=30.0)
    pids = torch.tensor([[0, 1, 2, -1, 4], [4, 3, 2, 1, 0]], device=device)
    exact, tol = oracle(Q, store, pids)
    assert (exact[torch.isfinite(exact) & (exact != 0)] < 0).all(), "the test needs negative scores"
    assert_close_to_oracle(cf.maxsim_packed(Q, store, pids, backend=backend), exact, tol)
    per_slot = torch.tensor([[-0.5, 0.25, float("-inf"), 0.0, -2.0], [0.1, -0.1, -0.3, -9.0, 0.0]], device=device)
    for floor in (0.0, -0.2, per_slot):
        out = cf.maxsim_packed(Q, store, pids, floor=floor, backend=backend)
        assert_close_to_oracle(out, *oracle(Q, store, pids, floor=floor))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codec_nbits", CODECS, ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gather_decodes_like_the_oracle(backend, codec_nbits, dtype, device):
    codes_backend_or_skip(backend, device)
    codec, nbits = codec_nbits
    lengths = [3, 0, 17, 8]
    store = make_store(codec, nbits, 96, lengths, device, seed=2)
    pids = torch.tensor([[2, -1, 0], [1, 3, 3]], device=device)
    D, mask = cf.gather(store, pids, dtype=dtype, backend=backend)
    dec = store.decode()
    Dr, mr = reference.gather(dec.embeddings, dec.offsets, dec.lengths, pids)
    assert D.dtype == dtype and torch.equal(mask.cpu(), mr.cpu())
    torch.testing.assert_close(D.float().cpu(), Dr.to(dtype).float().cpu(), atol=0, rtol=0)
    D1, m1 = cf.gather(store, pids[0], dtype=dtype, backend=backend)
    assert torch.equal(D1, D[0]) and torch.equal(m1, mask[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_candidates_and_a_long_query(backend, device):
    """A query longer than one kernel block and more candidates than one chunk."""
    codes_backend_or_skip(backend, device)
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 60, (300,), generator=g).tolist()
    store = make_store("residual", 2, 128, lengths, device, seed=3, num_centroids=64)
    Q = normalized((2, 150, 128), torch.float32, device, g)
    pids = torch.randint(-1, 300, (2, 257), generator=g).to(device)
    assert_close_to_oracle(cf.maxsim_packed(Q, store, pids, backend=backend), *oracle(Q, store, pids))


def test_auto_picks_a_backend_with_codes_kernels_and_autograd(device):
    store = make_store("residual", 2, 64, [5, 9, 0], device)
    Q = normalized((1, 4, 64), torch.float32, device, torch.Generator().manual_seed(1)).requires_grad_(True)
    pids = torch.tensor([[0, 1, 2]], device=device)
    out = cf.maxsim_packed(Q, store, pids)  # needs grad: a backend with autograd
    out[torch.isfinite(out)].sum().backward()
    dec = store.decode().embeddings
    Qr = Q.detach().clone().requires_grad_(True)
    ref = reference.maxsim_packed(Qr, dec, store.offsets, store.lengths, pids)
    ref[torch.isfinite(ref)].sum().backward()
    torch.testing.assert_close(Q.grad, Qr.grad, atol=1e-5, rtol=0)


def test_a_forced_backend_without_codes_kernels_says_so(monkeypatch):
    store = make_store("int8", 8, 16, [2, 3], "cpu")
    monkeypatch.setattr(backends.load("torch"), "supports_codes", lambda device: False)
    with pytest.raises(RuntimeError, match="backend 'torch' has no compressed-store kernels"):
        cf.maxsim_packed(torch.randn(1, 2, 16), store, torch.tensor([[0, 1]]), backend="torch")


# ---- codecs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codec_nbits,want", [(("residual", 1), 22), (("residual", 2), 38), (("residual", 4), 70), (("int8", 8), 130)]
)
def test_bytes_per_token_at_dim_128(codec_nbits, want):
    store = make_store(*codec_nbits, 128, [10, 20], "cpu")
    assert store.bytes_per_token == want


@pytest.mark.parametrize(
    "codec_nbits,max_err",
    [(("residual", 1), 0.65), (("residual", 2), 0.45), (("residual", 4), 0.2), (("int8", 8), 0.02)],
)
def test_decoded_vectors_are_close_and_keep_the_norm(codec_nbits, max_err):
    g = torch.Generator().manual_seed(0)
    x = normalized((4000, 128), torch.float32, "cpu", g) * 1.5
    docs = cf.PackedDocs(x, [1000, 3000])
    store = CompressedDocs.from_packed(docs, *codec_nbits, num_centroids=64)
    dec = store.decode().embeddings
    err = ((dec - x).norm(dim=1) / x.norm(dim=1)).mean().item()
    assert err < max_err, f"mean relative error {err:.3f}"
    if codec_nbits[0] == "residual":  # the scale restores each vector's norm (to fp16 precision)
        torch.testing.assert_close(dec.norm(dim=1), x.norm(dim=1), atol=2e-3, rtol=2e-3)


def test_more_bits_decode_closer():
    g = torch.Generator().manual_seed(1)
    x = normalized((3000, 64), torch.float32, "cpu", g)
    docs = cf.PackedDocs(x, [3000])
    errs = [
        (CompressedDocs.from_packed(docs, "residual", b, num_centroids=32).decode().embeddings - x).norm(dim=1).mean()
        for b in (1, 2, 4)
    ]
    assert errs[0] > errs[1] > errs[2]


def test_a_codebook_encodes_new_docs_the_same_way():
    g = torch.Generator().manual_seed(4)
    x = normalized((500, 64), torch.float32, "cpu", g)
    first = CompressedDocs.from_packed(cf.PackedDocs(x, [200, 300]), "residual", 2, num_centroids=16)
    again = CompressedDocs.from_packed(cf.PackedDocs(x[200:], [300]), "residual", 2, codebook=first.codebook)
    assert torch.equal(again.codes, first.codes[200:]) and torch.equal(again.centroid_ids, first.centroid_ids[200:])
    assert torch.equal(again.scales, first.scales[200:])
    same_seed = CompressedDocs.from_packed(cf.PackedDocs(x, [200, 300]), "residual", 2, num_centroids=16)
    assert torch.equal(same_seed.codes, first.codes), "training is deterministic for a seed"


@pytest.mark.parametrize("fast", [False, True])
def test_kmeans_uses_every_centroid(fast):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 8, generator=g) + 10 * i for i in range(4)])
    c = kmeans(x, 4, iterations=10, fast=fast)
    owner = torch.cdist(x, c).argmin(dim=1)
    assert sorted(torch.bincount(owner, minlength=4).tolist()) == [50, 50, 50, 50]


def test_kmeans_from_bf16_products_fits_as_well_as_fp32():
    """fast=True (bf16 products in the training passes, the default where they are native) may send a
    point to a centroid within bf16 rounding of its nearest: the fit must stay as good. 64 clusters
    of unit vectors with noise, as token embeddings are: mean distance to the nearest centroid
    within 1% of fp32 training's."""
    g = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(64, 96, generator=g), dim=1)
    x = centres[torch.randint(0, 64, (4000,), generator=g)] + 0.15 * torch.randn(4000, 96, generator=g)
    x = torch.nn.functional.normalize(x, dim=1)
    fit = {fast: torch.cdist(x, kmeans(x, 64, fast=fast)).min(dim=1).values.mean() for fast in (False, True)}
    assert float(fit[True]) <= 1.01 * float(fit[False])
    assert isinstance(compressed._bf16_is_fast(torch.device("cpu")), bool)
    with pytest.raises(ValueError, match="k-means needs"):
        kmeans(x[:3], 4)


def test_residual_bits_layout_is_little_endian_in_each_byte():
    buckets = torch.tensor([[1, 2, 3, 0, 2]])  # 2 bits: dims 0-3 -> byte 0, dim 4 -> byte 1
    codes = torch.tensor([[1 | 2 << 2 | 3 << 4 | 0 << 6, 2]], dtype=torch.uint8)
    assert torch.equal(reference.unpack_bits(codes, 2, 5), buckets)


# ---- the store ------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec_nbits", CODECS, ids=_ids)
def test_save_load_roundtrip(codec_nbits, tmp_path):
    store = make_store(*codec_nbits, 96, [3, 0, 17, 8], "cpu")
    path = tmp_path / "store.safetensors"
    store.save(path)
    for mmap in (True, False):
        back = CompressedDocs.load(path, mmap=mmap)
        assert (back.codec, back.nbits, back.dim, back.num_docs) == (store.codec, store.nbits, 96, 4)
        assert torch.equal(back.decode().embeddings, store.decode().embeddings)
        assert torch.equal(back.offsets, store.offsets)
    safetensors = pytest.importorskip("safetensors.torch")
    assert set(safetensors.load_file(str(path))) >= {"codes", "scales", "lengths"}  # a valid safetensors file


def test_a_trained_codebook_is_saved_as_fp16_and_loads_back_exactly(tmp_path):
    """Trained centroids are fp16 values: the file holds them in fp16 (half the codebook's bytes),
    loading gives the same fp32 centroids and codes; a given codebook fp16 cannot hold stays fp32."""
    safetensors = pytest.importorskip("safetensors.torch")
    store = make_store("residual", 2, 96, [40, 0, 17, 30], "cpu")
    assert torch.equal(store.centroids.half().float(), store.centroids)
    store.save(tmp_path / "trained.safetensors")
    assert safetensors.load_file(str(tmp_path / "trained.safetensors"))["centroids"].dtype == torch.float16
    back = CompressedDocs.load(tmp_path / "trained.safetensors")
    assert back.centroids.dtype == torch.float32 and torch.equal(back.centroids, store.centroids)
    assert torch.equal(back.decode().embeddings, store.decode().embeddings)
    odd = store.codebook
    odd = type(odd)(odd.centroids + 1e-5, odd.bucket_cutoffs, odd.bucket_weights, odd.nbits)  # not fp16 values
    again = CompressedDocs.from_packed(store.decode(), "residual", 2, codebook=odd)
    again.save(tmp_path / "given.safetensors")
    assert safetensors.load_file(str(tmp_path / "given.safetensors"))["centroids"].dtype == torch.float32
    assert torch.equal(CompressedDocs.load(tmp_path / "given.safetensors").centroids, odd.centroids)
    size = (tmp_path / "trained.safetensors").stat().st_size, (tmp_path / "given.safetensors").stat().st_size
    # the same store but for the codebook's dtype (and a few bytes of header and alignment)
    assert 0 <= size[1] - size[0] - store.centroids.numel() * 2 <= 64


def test_files_that_are_not_whole_or_not_ours(tmp_path):
    store = make_store("residual", 2, 64, [5, 6], "cpu")
    path = tmp_path / "s.safetensors"
    store.save(path)
    data = path.read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) - 7])
    with pytest.raises(ValueError, match="truncated"):
        CompressedDocs.load(tmp_path / "cut")
    cf.PackedDocs.from_list([torch.randn(3, 8)]).save(tmp_path / "packed")
    with pytest.raises(ValueError, match="not a colbert_fast CompressedDocs file"):
        CompressedDocs.load(tmp_path / "packed")
    with pytest.raises(ValueError, match="not a colbert_fast PackedDocs file"):
        cf.PackedDocs.load(path)
    # A centroid id pointing past the codebook, written by hand.
    bad = CompressedDocs.__new__(CompressedDocs)
    bad.__dict__.update(store.__dict__)
    bad._centroid_ids = store.centroid_ids.clone()
    bad._centroid_ids[3] = store.centroids.shape[0]
    bad.save(tmp_path / "bad")
    with pytest.raises(ValueError, match="out of range"):
        CompressedDocs.load(tmp_path / "bad")
    (tmp_path / "garbage").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ValueError, match="corrupt header"):
        CompressedDocs.load(tmp_path / "garbage")


def test_bad_inputs():
    store = make_store("residual", 2, 64, [5, 6], "cpu")
    t = store._tensors()
    with pytest.raises(ValueError, match="codec must be one of"):
        CompressedDocs("pq", 2, store.lengths, **t)
    with pytest.raises(ValueError, match="nbits must be one of"):
        CompressedDocs("residual", 3, store.lengths, **t)
    with pytest.raises(TypeError, match="residual codes"):
        CompressedDocs("residual", 2, store.lengths, **{**t, "codes": t["codes"][:, :-1]})
    with pytest.raises(TypeError, match="centroid_ids must be torch.int32"):
        CompressedDocs("residual", 2, store.lengths, **{**t, "centroid_ids": t["centroid_ids"].long()})
    with pytest.raises(IndexError, match="out of range"):
        CompressedDocs("residual", 2, store.lengths, **{**t, "centroid_ids": t["centroid_ids"] - 1})
    with pytest.raises(TypeError, match="scales must be torch.float16"):
        CompressedDocs("residual", 2, store.lengths, **{**t, "scales": t["scales"].float()})
    with pytest.raises(ValueError, match="scales must be finite"):
        CompressedDocs("residual", 2, store.lengths, **{**t, "scales": t["scales"].clone().fill_(float("inf"))})
    with pytest.raises(ValueError, match="offsets do not add up"):
        CompressedDocs("residual", 2, [5, 5], **t)
    with pytest.raises(ValueError, match="offsets do not add up"):  # an int64 sum that wraps around
        CompressedDocs("residual", 2, torch.tensor([2**62, 2**62, 2**62, 2**62 + 11]), **t)
    with pytest.raises(ValueError, match=">= 0"):
        CompressedDocs("residual", 2, [-1, 12], **t)
    with pytest.raises(ValueError, match="takes no centroids"):
        CompressedDocs("int8", 8, store.lengths, torch.zeros(11, 64, dtype=torch.int8), t["scales"], t["centroid_ids"])
    with pytest.raises(ValueError, match="NaN or inf"):
        CompressedDocs.from_list([torch.full((3, 8), float("nan"))], "int8", 8)
    with pytest.raises(TypeError, match="PackedDocs or CompressedDocs"):
        cf.maxsim_packed(torch.randn(1, 2, 64), t["codes"], torch.tensor([[0]]))
    with pytest.raises(ValueError, match="dim mismatch"):
        cf.maxsim_packed(torch.randn(1, 2, 32), store, torch.tensor([[0]]))
    with pytest.raises(IndexError, match="out of range"):
        cf.maxsim_packed(torch.randn(1, 2, 64), store, torch.tensor([[2]]))
    with pytest.raises(TypeError, match="dtype must be"):
        cf.gather(store, torch.tensor([0]), dtype=torch.int8)


def test_shapes_and_repr():
    store = make_store("int8", 8, 32, [2, 0, 5], "cpu")
    assert (store.num_docs, store.num_tokens, store.dim, store.max_length, len(store)) == (3, 7, 32, 5, 3)
    assert store.doc(2).shape == (5, 32) and store.doc(1).shape == (0, 32)
    assert "int8" in repr(store) and store.codebook is None


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
@pytest.mark.parametrize("codec_nbits", CODECS, ids=_ids)
def test_every_cpu_simd_path(isa, codec_nbits, monkeypatch, device):
    """The default run uses the best SIMD path this CPU has; each other path decodes and scores the
    same (gather bit-identical, scores within the tolerance rule)."""
    if device.type != "cpu":
        pytest.skip("SIMD paths are for CPU tensors")
    codes_backend_or_skip("cpu", device)
    from colbert_fast import extension

    monkeypatch.setenv("COLBERT_FAST_CPU_ISA", isa)
    try:
        assert extension.extension().cpu_isa() == isa
    except RuntimeError:
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    store = make_store(*codec_nbits, 100, [0, 7, 31, 16, 1], device, seed=11)  # dim 100: SIMD tails
    g = torch.Generator().manual_seed(12)
    Q = normalized((2, 19, 100), torch.float32, device, g)
    pids = torch.tensor([[4, 3, 2, 1, 0, -1], [2, 2, 0, 3, -1, 1]])
    assert_close_to_oracle(cf.maxsim_packed(Q, store, pids, backend="cpu"), *oracle(Q, store, pids))
    dec = store.decode()
    Dr, _ = reference.gather(dec.embeddings, dec.offsets, dec.lengths, pids)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        D, _ = cf.gather(store, pids, dtype=dtype, backend="cpu")
        assert torch.equal(D, Dr.to(dtype))


def test_progress_reports_each_kmeans_pass_and_the_tokens_encoded(monkeypatch):
    monkeypatch.setattr(compressed, "_ENCODE_ROWS", 128)  # several encoding steps
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(500, 16, generator=g), dim=1)
    seen = []
    store = CompressedDocs.from_packed(
        cf.PackedDocs(x, [200, 0, 300]), "residual", 2, num_centroids=8, progress=lambda *a: seen.append(a)
    )
    kmeans_steps = [(d, t) for s, d, t in seen if s == "k-means"]
    encoding = [(d, t) for s, d, t in seen if s == "encoding"]
    assert kmeans_steps == [(i, 8) for i in range(9)]  # before each of the 8 passes, then done
    assert encoding == [(128, 500), (256, 500), (384, 500), (500, 500)]
    assert [s for s, _, _ in seen] == ["k-means"] * 9 + ["encoding"] * 4  # training, then encoding
    quiet = CompressedDocs.from_packed(cf.PackedDocs(x, [200, 0, 300]), "residual", 2, num_centroids=8)
    assert torch.equal(quiet.codes, store.codes)  # reporting changes nothing


def test_nearest_centroid_in_tiles_is_the_nearest_and_ties_keep_the_lowest(monkeypatch):
    monkeypatch.setattr(compressed, "_ROW_TILE", 5)
    monkeypatch.setattr(compressed, "_CENTROID_TILE", 3)  # 4 tiles of centroids, the last short
    g = torch.Generator().manual_seed(0)
    centroids = torch.randn(11, 8, generator=g)
    centroids[9] = centroids[2]  # a duplicate in a later tile: the lower index must win
    x = torch.cat([torch.randn(40, 8, generator=g), centroids[2:3] + 1e-3])
    assign, dist = compressed._nearest(x, centroids)
    want = torch.cdist(x.double(), centroids.double()).argmin(dim=1)
    assert torch.equal(assign, want) and int(assign[-1]) == 2
    torch.testing.assert_close(dist, ((x - centroids[want]) ** 2).sum(dim=1), atol=1e-4, rtol=1e-4)
    low, _ = compressed._nearest(x, centroids, x.bfloat16())  # bf16 scores: nearest to rounding
    gap = ((x - centroids[low]) ** 2).sum(dim=1) - ((x - centroids[want]) ** 2).sum(dim=1)
    assert float(gap.max()) <= 0.05 * float(((x - centroids[want]) ** 2).sum(dim=1).max())
