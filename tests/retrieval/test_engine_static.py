"""The centroid engine's static-shape search (CentroidEngine(static_shapes=True), the default on CUDA).

Every tensor of a search sized by shapes and settings alone is what lets a GPU run a batch without
waiting for it and capture it in a CUDA graph. On the CPU: the static path returns exactly what
the data-sized path does (same stores, filters, ties and settings), it makes no Python-level host
read, and it runs on fake tensors (torch's FakeTensorMode: no data at all, so any size or value
taken from the data raises). On a GPU (--device cuda): no synchronising call under
torch.cuda.set_sync_debug_mode("error"), and a CUDA-graph capture replays to the same answer.
"""

from __future__ import annotations

import pytest
import torch
from helpers import no_host_reads
from test_engine import clustered_store, exhaustive
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode

from colbert_fast.retrieval.captured import CapturedSearch
from colbert_fast.retrieval.engine import CentroidEngine, build_engine


def both(nbits: int, dim: int, seed: int, **kwargs):
    """(store, data-sized engine, static engine, Q, q_mask) over one clustered store."""
    store, dynamic, Q, q_mask = clustered_store(nbits, dim, seed, **kwargs)
    static = CentroidEngine(store, build_engine(store), static_shapes=True)
    assert not dynamic.static_shapes and static.static_shapes
    return store, dynamic, static, Q, q_mask


def assert_same_search(a, b):
    """The same answer; the static search may carry more empty slots (its width is min(k, N))."""
    (s1, r1, st1), (s2, r2, st2) = a, b
    width = int((r2 >= 0).sum(dim=1).max())
    assert r1.shape[1] >= width and (r2[:, r1.shape[1] :] < 0).all()
    s1, r1, s2, r2 = s1[:, :width], r1[:, :width], s2[:, :width], r2[:, :width]
    assert torch.equal(r1, r2)
    assert torch.equal(s1, s2)
    for field in ("certified", "cells_scored", "kth_score", "bound"):
        assert torch.equal(getattr(st1, field), getattr(st2, field)), field


@pytest.mark.parametrize("nbits,dim,seed", [(1, 64, 0), (2, 96, 1), (4, 128, 2), (2, 64, 5)])
@pytest.mark.parametrize("nprobe", [1, 3, 48])
def test_static_search_returns_what_the_data_sized_search_does(nbits, dim, seed, nprobe):
    store, dynamic, static, Q, q_mask = both(nbits, dim, seed, noise=0.2)
    b1, c1 = dynamic.doc_bounds(Q, q_mask, nprobe)
    b2, c2 = static.doc_bounds(Q, q_mask, nprobe)
    assert torch.equal(b1, b2)
    assert torch.equal(c1.query, c2.query) and torch.equal(c1.doc, c2.doc) and torch.equal(c1.approx, c2.approx)
    for k, ncandidates in ((1, 1), (5, 8), (10, 3), (70, 70)):  # k 70 > the 60 docs: empty slots
        assert_same_search(
            dynamic.search(Q, q_mask, k, nprobe, ncandidates), static.search(Q, q_mask, k, nprobe, ncandidates)
        )
    got = static.search(Q, q_mask, 5, nprobe, 8, exact=True)
    assert_same_search(dynamic.search(Q, q_mask, 5, nprobe, 8, exact=True), got)
    want_s, want_r = exhaustive(store, Q, q_mask, 5)
    assert torch.equal(got[1], want_r) and torch.equal(got[0], want_s)


def test_static_search_with_filters_and_ties():
    store, dynamic, static, Q, q_mask = both(2, 64, 3, noise=0.2)
    g = torch.Generator().manual_seed(4)
    shared = torch.rand(store.num_docs, generator=g) < 0.5
    per_query = torch.rand(Q.shape[0], store.num_docs, generator=g) < 0.3
    per_query[1] = False  # a query with nothing allowed: no rows, certified
    per_query[2, [3, 7, 31]] = True  # the three identical docs: exact ties
    for allowed in (shared, per_query):
        for k, ncandidates in ((3, 4), (5, 60)):
            a = dynamic.search(Q, q_mask, k, 3, ncandidates, allowed=allowed)
            b = static.search(Q, q_mask, k, 3, ncandidates, allowed=allowed)
            assert_same_search(a, b)
    _, rows, stats = static.search(Q, q_mask, 3, 3, 4, allowed=per_query)
    assert (rows[1] < 0).all() and bool(stats.certified[1])


def test_static_survivors_are_the_same_docs_with_ties_broken_by_row():
    store, dynamic, static, Q, q_mask = both(2, 64, 3, noise=0.2)
    found = static.approximate(Q, q_mask, 3)
    approx = found.approx.clone()
    approx[:, 7] = approx[:, 3]  # exact ties on the cut
    approx[:, 31] = approx[:, 3]
    for keep in (1, 2, 5, 1000):
        want = dynamic._survivors(approx, keep)
        got = static._survivors(approx, keep)
        assert got.shape == (Q.shape[0], min(keep, store.num_docs))
        for b in range(Q.shape[0]):
            assert sorted(got[b][got[b] >= 0].tolist()) == want[b][want[b] >= 0].tolist()


def test_the_static_grouping_changes_nothing(monkeypatch):
    from colbert_fast.backends import torch_backend

    store, _, static, Q, q_mask = both(2, 96, 1, noise=0.2)
    together = static.search(Q, q_mask, 4, 3, 6)
    monkeypatch.setattr(torch_backend, "CENTROID_ENTRIES", 1)  # one query per group
    assert_same_search(together, static.search(Q, q_mask, 4, 3, 6))


def test_static_search_reads_nothing_back(monkeypatch):
    store, _, static, Q, q_mask = both(4, 128, 2, noise=0.2)
    allowed = torch.rand(Q.shape[0], store.num_docs, generator=torch.Generator().manual_seed(1)) < 0.8
    want = static.search(Q, q_mask, 5, 3, 8, allowed=allowed)
    with no_host_reads(monkeypatch) as calls:
        got = static.search(Q, q_mask, 5, 3, 8, allowed=allowed)
    assert calls == []
    assert_same_search(want, got)


def test_static_search_runs_on_fake_tensors_and_the_data_sized_one_does_not():
    """Fake tensors carry shapes, no values: every size the static search uses is known beforehand."""
    store, dynamic, static, Q, q_mask = both(2, 64, 0)
    allowed = torch.ones(store.num_docs, dtype=torch.bool)
    with FakeTensorMode(allow_non_fake_inputs=True):
        top, rows, stats = static.search(Q, q_mask, 5, 3, 8, allowed=allowed)
        assert rows.shape == (Q.shape[0], 5) and stats.certified.shape == (Q.shape[0],)
    # The check can fail: the data-sized path, and a data-sized op alone, raise under it.
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(DataDependentOutputException):
        dynamic.search(Q, q_mask, 5, 3, 8)
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(DynamicOutputShapeException):
        torch.nonzero(Q > 0)


def test_a_captured_search_answers_any_batch_up_to_its_size():
    store, _, static, Q, q_mask = both(2, 96, 1, noise=0.2)
    allowed = torch.rand(store.num_docs, generator=torch.Generator().manual_seed(2)) < 0.8
    search = CapturedSearch(
        static, batch=Q.shape[0], query_len=Q.shape[1], k=5, nprobe=3, ncandidates=8, allowed=allowed
    )
    assert search.graph is None  # the CPU: no graph, the same calls
    for b in (Q.shape[0], 3, 1):
        want = static.search(Q[:b], q_mask[:b], 5, 3, 8, allowed=allowed)
        assert_same_search(want, search(Q[:b], q_mask[:b]))
    assert_same_search(static.search(Q, None, 5, 3, 8, allowed=allowed), search(Q))  # q_mask None: all valid
    with pytest.raises(ValueError, match="static_shapes"):
        CapturedSearch(CentroidEngine(store, build_engine(store)), 4, 9, 5, 3, 8)
    with pytest.raises(ValueError, match=r"Q must be \[b <= 8, 9, 96\]"):
        search(torch.zeros(9, 9, 96))
    with pytest.raises(ValueError, match="Q must be"):
        search(torch.zeros(2, 10, 96))
    with pytest.raises(ValueError, match="q_mask must be"):
        search(Q[:2], q_mask[:3])
    with pytest.raises(ValueError, match="batch must be a positive int"):
        CapturedSearch(static, 0, 9, 5, 3, 8)


def on_cpu(result, flip: bool = False, b: int | None = None):
    """A search result moved to the CPU (queries reversed and cut to b when asked)."""
    top, rows, stats = result

    def move(t):
        t = t.cpu()
        return t.flip(0)[:b] if flip else t

    return move(top), move(rows), stats.apply(move)


@pytest.mark.cuda
def test_gpu_search_does_not_sync_and_replays_from_a_cuda_graph(device):
    store, _, _, Q, q_mask = both(2, 128, 6, num_docs=400, noise=0.2)
    gpu_store = store.to(device)
    engine = CentroidEngine(gpu_store, build_engine(store))
    sized = CentroidEngine(gpu_store, build_engine(store), static_shapes=False)
    assert engine.static_shapes and not sized.static_shapes
    Qd, md = Q.to(device), q_mask.to(device)
    want = sized.search(Qd, md, 10, 4, 32)  # the same kernels: the same scores, to the bit
    engine.search(Qd, md, 10, 4, 32)  # warm-up outside the guard (kernels load, autotune)
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = engine.search_on_device(Qd, md, 10, 4, 32)
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    assert_same_search(want, on_cpu(got))
    search = CapturedSearch(engine, batch=Q.shape[0], query_len=Q.shape[1], k=10, nprobe=4, ncandidates=32)
    assert search.graph is not None
    for b in (Q.shape[0], 3):  # new queries into the recorded graph's input, then a replay
        got = search(Qd.flip(0)[:b], md.flip(0)[:b])
        assert_same_search(on_cpu(want, flip=True, b=b), on_cpu(got))
