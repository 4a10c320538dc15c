"""Triton backend specifics the conformance suite does not reach: the source-tree import of
colbert_fast.kernels, op registration and torch.compile, the saved argmax, long queries and big
batches (the chunk and group loops), many short packed docs, wide embeddings, availability, and
(on a GPU) that new shapes do not recompile.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_matches_reference, backend_or_skip, normalized, random_lengths, random_mask

import colbert_fast as cf
from colbert_fast import reference


@pytest.fixture
def triton_backend(device):
    return backend_or_skip("triton", device)


def test_the_backend_runs_the_kernels_of_colbert_fast_kernels():
    """The modules the Triton backend launches are this package's kernels/ directory, a regular
    package (one directory, an __init__.py): not a namespace package that could merge another
    kernels/ on sys.path, and not any top-level `kernels` (Hugging Face's distribution)."""
    pytest.importorskip("triton")
    import colbert_fast
    from colbert_fast.backends import triton_backend

    here = Path(colbert_fast.__file__).resolve().parent / "kernels"
    pkg = importlib.import_module("colbert_fast.kernels")
    assert pkg.__file__ is not None and Path(pkg.__file__).resolve() == here / "__init__.py"
    assert [Path(p).resolve() for p in pkg.__path__] == [here]
    used = triton_backend._import_kernels()  # gather, maxsim, maxsim_bwd, settings
    assert [m.__name__ for m in used] == [
        f"colbert_fast.kernels.{n}" for n in ("gather", "maxsim", "maxsim_bwd", "settings")
    ]
    for module in used:
        assert Path(module.__file__).resolve().parent == here, module.__file__
        assert sys.modules[module.__name__] is module
    top = sys.modules.get("kernels")
    assert top is None or Path(getattr(top, "__file__", None) or "/").resolve().parent != here


def test_ops_are_registered(triton_backend):
    if not hasattr(torch.library, "triton_op"):
        pytest.skip("torch without torch.library.triton_op: the kernels run as plain functions")
    for name in ("triton_maxsim_fwd", "triton_maxsim_bwd", "triton_maxsim_packed", "triton_gather"):
        assert hasattr(torch.ops.colbert_fast, name), name


def test_torch_compile_traces_the_ops(triton_backend, device):
    if not hasattr(torch.library, "triton_op"):
        pytest.skip("torch without torch.library.triton_op")
    g = torch.Generator().manual_seed(0)
    Q = normalized((2, 7, 64), torch.float16, device, g)
    D = normalized((3, 9, 64), torch.float16, device, g)
    lengths = torch.tensor([9, 0, 4], device=device)

    def score(q, d):
        return triton_backend.maxsim(q, d, None, None, lengths)

    # aot_eager traces through the ops (fullgraph: no graph break) and runs the traced graph; on
    # CPU the kernels then run under the interpreter, on a GPU compiled.
    compiled = torch.compile(score, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(Q, D), score(Q, D), atol=0, rtol=0)
    Qg = Q.clone().requires_grad_(True)
    compiled(Qg, D).sum().backward()
    Qe = Q.clone().requires_grad_(True)
    score(Qe, D).sum().backward()
    torch.testing.assert_close(Qg.grad, Qe.grad, atol=0, rtol=0)


def test_inductor_compiles_the_ops_fullgraph(triton_backend, device):
    """torch.compile with the default backend (Inductor), no graph break, forward and backward.

    On a GPU, Inductor copies each kernel's source and the globals it uses into a module of its
    own and compiles that (a module-level tl.constexpr(float("-inf")) once broke the load with
    NameError); on CPU the ops are opaque custom ops that Inductor calls as externs, the kernels
    running under the interpreter. tests/backends/test_triton_compile.py rebuilds the GPU modules on CPU."""
    if not hasattr(torch.library, "triton_op"):
        pytest.skip("torch without torch.library.triton_op")
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(10)
    Q = normalized((2, 7, 64), torch.float16, device, g)
    D = normalized((3, 9, 64), torch.float16, device, g)
    lengths = torch.tensor([9, 0, 4], device=device)
    docs = cf.PackedDocs(D.reshape(-1, 64), torch.tensor([9, 9, 9], device=device))
    pids = torch.tensor([[0, 2, -1], [1, 1, 0]], device=device)

    def score(q, d, p):
        pairs = triton_backend.maxsim(q, d, None, None, lengths)
        packed = triton_backend.maxsim_packed(q, docs.embeddings, docs.offsets, docs.lengths, p, None, 9)
        rows, mask = triton_backend.gather(docs.embeddings, docs.offsets, docs.lengths, p, 9)
        return pairs, packed, rows, mask

    compiled = torch.compile(score, fullgraph=True)
    for got, want in zip(compiled(Q, D, pids), score(Q, D, pids)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)

    def pairs(q, d):  # the op with a backward (the packed op and gather have none)
        return triton_backend.maxsim(q, d, None, None, lengths)

    Qg, Qe = Q.clone().requires_grad_(True), Q.clone().requires_grad_(True)
    torch.compile(pairs, fullgraph=True)(Qg, D).sum().backward()
    pairs(Qe, D).sum().backward()
    torch.testing.assert_close(Qg.grad, Qe.grad, atol=0, rtol=0)


def test_saved_argmax_is_the_first_winning_token(triton_backend, device):
    from colbert_fast.kernels.maxsim import maxsim_fwd

    g = torch.Generator().manual_seed(1)
    Q = normalized((2, 5, 64), torch.float32, device, g)
    D = normalized((3, 70, 64), torch.float32, device, g)
    D[1, 40] = D[1, 3]  # an exact tie: the first index must win, as in torch.argmax
    d_mask = random_mask((3, 70), g, device, p=0.6)
    d_mask[2] = False
    q_mask = torch.ones(2, 5, dtype=torch.bool, device=device)
    q_mask[0, 4] = False
    _, argmax = maxsim_fwd(Q, D, q_mask, d_mask, None, save_argmax=True)
    sims = torch.einsum("bqd,ntd->bnqt", Q.float(), D.float()).masked_fill(~d_mask[None, :, None, :], float("-inf"))
    want = sims.argmax(-1).to(torch.int32)
    want[:, 2] = -1  # empty doc
    want[0, :, 4] = -1  # masked query token
    assert torch.equal(argmax.cpu(), want.cpu())


@pytest.mark.parametrize("mode", ["all_pairs", "per_query"])
@pytest.mark.parametrize("lq", [33, 130])
def test_long_queries_loop_over_query_chunks(triton_backend, device, mode, lq):
    g = torch.Generator().manual_seed(2)
    B, N, ld = 2, 3, 45
    Q = normalized((B, lq, 64), torch.float16, device, g, negative_bias=1.0)
    D = normalized((N, ld, 64) if mode == "all_pairs" else (B, N, ld, 64), torch.float16, device, g, negative_bias=-1.5)
    d_lengths = random_lengths(D.shape[:-2], ld, g, device)
    q_mask = random_mask((B, lq), g, device)
    out = cf.maxsim(Q, D, q_mask, d_lengths=d_lengths, backend="triton")
    exact = reference.maxsim(Q, D, q_mask, d_lengths=d_lengths)
    low = reference.maxsim(Q, D, q_mask, d_lengths=d_lengths, upcast=False)
    assert_matches_reference(out, exact, low, torch.float16, lq)


@pytest.mark.parametrize("lq", [1, 7, 32])
def test_all_pairs_many_queries_in_several_groups(triton_backend, device, lq):
    # B * Lq > 128: queries are stacked G = 128 // Lq per program, over several programs, with
    # a partial last group.
    g = torch.Generator().manual_seed(3)
    B = 150 // lq + 3
    Q = normalized((B, lq, 96), torch.bfloat16, device, g, negative_bias=1.0)
    D = normalized((5, 21, 96), torch.bfloat16, device, g, negative_bias=-1.5)
    d_mask = random_mask((5, 21), g, device)
    out = cf.maxsim(Q, D, d_mask=d_mask, backend="triton")
    exact = reference.maxsim(Q, D, d_mask=d_mask)
    assert_matches_reference(out, exact, reference.maxsim(Q, D, d_mask=d_mask, upcast=False), torch.bfloat16, lq)


def test_packed_many_short_docs_share_tiles(triton_backend, device):
    # Lengths 0..3: dozens of docs fall into one row tile; K not a multiple of the docs per program.
    g = torch.Generator().manual_seed(4)
    lengths = torch.randint(0, 4, (50,), generator=g)
    emb = normalized((int(lengths.sum()), 128), torch.float16, device, g, negative_bias=-1.0)
    docs = cf.PackedDocs(emb, lengths.to(device))
    pids = torch.randint(-1, 50, (3, 37), generator=g).to(device)
    Q = normalized((3, 32, 128), torch.float16, device, g)
    out = cf.maxsim_packed(Q, docs, pids, backend="triton")
    args = (Q, docs.embeddings, docs.offsets, docs.lengths, pids)
    assert_matches_reference(out, reference.maxsim_packed(*args), reference.maxsim_packed(*args, upcast=False),
                             torch.float16, 32)  # fmt: skip


def test_wide_embeddings_fall_back_but_stay_correct(triton_backend, device):
    g = torch.Generator().manual_seed(5)
    Q = normalized((2, 4, 160), torch.float32, device, g)
    D = normalized((3, 6, 160), torch.float32, device, g)
    out = cf.maxsim(Q, D, backend="triton")
    torch.testing.assert_close(out, reference.maxsim(Q, D), atol=1e-4, rtol=1e-4)
    docs = cf.PackedDocs(D.reshape(-1, 160), torch.tensor([6, 6, 6], device=device))
    D_g, mask = cf.gather(docs, torch.tensor([2, -1], device=device), backend="triton")  # gather: any dim
    assert torch.equal(D_g[0], D[2]) and not mask[1].any() and (D_g[1] == 0).all()


def test_availability_reasons(monkeypatch):
    pytest.importorskip("triton")
    from colbert_fast.backends import triton_backend as tb

    assert tb.unavailable_reason(torch.device("meta")) is not None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = tb.unavailable_reason(torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET" in reason


@pytest.mark.cuda
def test_new_shapes_do_not_recompile(triton_backend, device):
    from colbert_fast.kernels import maxsim as kernels

    g = torch.Generator().manual_seed(6)

    def run(B, N, ld, lq=32):
        Q = normalized((B, lq, 128), torch.float16, device, g)
        D = normalized((N, ld, 128), torch.float16, device, g)
        lengths = torch.randint(0, ld + 1, (N,), generator=g).to(device)
        cf.maxsim(Q, D, d_lengths=lengths, backend="triton")
        torch.cuda.synchronize()

    def compiled_count():
        fn = kernels._maxsim_all_pairs_kernel
        return sum(len(cache[0]) for cache in fn.device_caches.values())

    run(4, 10, 33)  # B * Lq = 128: the 128-row tile
    before = compiled_count()
    for B, N, ld in ((5, 7, 17), (8, 1000, 300), (7, 3, 1), (6, 999, 129)):
        run(B, N, ld)
    assert compiled_count() == before, "a new batch/corpus/doc-length shape triggered a recompile"


@pytest.mark.parametrize("seed", range(8))
def test_random_shapes_strides_and_masks(triton_backend, device, seed):
    # Random B, N, Lq, Ld, dim (odd ones included), strided views of Q and D, every masking kind,
    # both modes and the packed path, each against the reference.
    g = torch.Generator().manual_seed(100 + seed)

    def r(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    dtype = (torch.float32, torch.float16, torch.bfloat16)[seed % 3]
    B, N, lq, ld, dim = r(1, 5), r(1, 6), r(1, 40), r(0, 70), (2, 17, 64, 96, 100, 128)[r(0, 5)]
    Q = normalized((B + 1, lq + 2, dim), dtype, device, g, negative_bias=1.0)[1:, 2:]  # strided view
    per_query = seed % 2 == 1
    d_full = (B, N, ld + 3, dim) if per_query else (N + 2, ld + 3, dim)
    D = normalized(d_full, dtype, device, g, negative_bias=-1.5)
    D = D[..., 3:, :] if per_query else D[::2, 3:]  # strided docs and tokens
    q_mask = random_mask(Q.shape[:2], g, device) if seed % 4 < 2 else None
    kind = seed % 3
    d_mask = random_mask(D.shape[:-1], g, device) if kind == 1 else None
    d_lengths = random_lengths(D.shape[:-2], D.shape[-2], g, device) if kind == 2 else None
    out = cf.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, backend="triton")
    exact = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths)
    low = reference.maxsim(Q, D, q_mask, d_mask, d_lengths=d_lengths, upcast=False)
    assert_matches_reference(out, exact, low, dtype, Q.shape[1])

    lengths = torch.randint(0, 30, (r(1, 20),), generator=g)
    docs = cf.PackedDocs(normalized((int(lengths.sum()), dim), dtype, device, g), lengths.to(device))
    pids = torch.randint(-1, docs.num_docs, (Q.shape[0], r(1, 11)), generator=g).to(device)
    out = cf.maxsim_packed(Q, docs, pids, q_mask, backend="triton")
    args = (Q, docs.embeddings, docs.offsets, docs.lengths, pids, q_mask)
    exact = reference.maxsim_packed(*args)
    assert_matches_reference(out, exact, reference.maxsim_packed(*args, upcast=False), dtype, Q.shape[1])
