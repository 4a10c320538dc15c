"""Filtered search (#19): a set of allowed docs restricts the candidates before scoring, excluded
docs are never read, and the answer equals the exhaustive top k over the allowed subset.

The truth is independent of the filtering code: the unfiltered exhaustive ranking of every doc
(k = num_docs), anchored once to colbert_fast.reference over the decoded store, with the docs not
allowed struck out afterwards."""

from __future__ import annotations

import pytest
import torch

import colbert_fast as cf
from colbert_fast import reference
from colbert_fast.retrieval.build import IndexConfig, build_index_from_embeddings
from colbert_fast.retrieval.engine import CentroidEngine
from colbert_fast.retrieval.search import Searcher
from colbert_fast.testing import clustered_collection

NUM_DOCS = 200
SUBSETS = ("one", "tenth", "half", "all", "empty")


@pytest.fixture(scope="module")
def e1(tmp_path_factory):
    """E1 at 200 docs, residual 2-bit, no faiss IVF; queries with one shorter than the rest."""
    docs, Q, _ = clustered_collection(NUM_DOCS, num_queries=4, seed=11)
    path = tmp_path_factory.mktemp("e1") / "index"
    build_index_from_embeddings(docs, path, IndexConfig(store="residual", store_nbits=2, ivf=False))
    q_mask = torch.ones(Q.shape[:2], dtype=torch.bool)
    q_mask[2, 12:] = False
    searcher = Searcher(path, device="cpu", load_ivf=False)
    full = searcher.search(Q, q_mask=q_mask, k=NUM_DOCS, mode="exhaustive")  # every doc, ranked, unfiltered
    return searcher, Q, q_mask, full


def pick(subset: str, pids: list[str], seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pids), generator=g).tolist()
    count = {"one": 1, "tenth": len(pids) // 10, "half": len(pids) // 2, "all": len(pids), "empty": 0}[subset]
    return [pids[i] for i in order[:count]]


def ks_for(allowed: list[str]) -> list[int]:
    return [1, 10, len(allowed) + 3]  # the last asks for more than there is


def truth_for(full, allowed: list[str], k: int):
    """The exhaustive top k over the allowed docs: the unfiltered full ranking, others struck out."""
    keep = set(allowed)
    return [[(p, s) for p, s in ranking if p in keep][:k] for ranking in full]


def same(found, truth, lq: int) -> None:
    assert [p for p, _ in found] == [p for p, _ in truth]
    torch.testing.assert_close(
        torch.tensor([s for _, s in found], dtype=torch.float64),
        torch.tensor([s for _, s in truth], dtype=torch.float64),
        atol=1e-4 * lq,
        rtol=0,
    )


@pytest.fixture
def scored_rows(monkeypatch):
    """Every doc row handed to cf.maxsim_packed (the only way a doc's codes are read for scoring)."""
    seen: list[torch.Tensor] = []
    real = cf.maxsim_packed

    def recording(Q, docs, rows, *args, **kwargs):
        seen.append(rows.detach().cpu().reshape(-1))
        return real(Q, docs, rows, *args, **kwargs)

    monkeypatch.setattr(cf, "maxsim_packed", recording)
    return seen


def rows_read(seen: list[torch.Tensor]) -> set[int]:
    return {r for t in seen for r in t.tolist() if r >= 0}


def test_the_truth_agrees_with_the_reference(e1):
    """The unfiltered exhaustive ranking the other tests filter is reference MaxSim over the decoded store."""
    searcher, Q, q_mask, full = e1
    decoded = searcher.index.docs.decode()
    everything = torch.arange(NUM_DOCS).expand(Q.shape[0], -1)
    ref = reference.maxsim_packed(Q, decoded.embeddings, decoded.offsets, decoded.lengths, everything, q_mask)
    # The project's tolerance rule for compressed stores (kernels may round operands to fp16).
    low = reference.maxsim_packed(Q.half(), decoded.embeddings.half(), decoded.offsets, decoded.lengths, everything,
                                  q_mask, upcast=False)  # fmt: skip
    tol = reference.tolerance(ref, low, torch.float16, Q.shape[1])
    row_of = {p: i for i, p in enumerate(searcher.index.pids)}
    for b, ranking in enumerate(full):
        assert len(ranking) == NUM_DOCS
        rows = torch.tensor([row_of[p] for p, _ in ranking])
        torch.testing.assert_close(torch.tensor([s for _, s in ranking]), ref[b, rows], atol=tol, rtol=0)


@pytest.mark.parametrize("subset", SUBSETS)
def test_exhaustive_filtered_equals_the_allowed_top_k(e1, subset, scored_rows):
    searcher, Q, q_mask, full = e1
    allowed = pick(subset, searcher.index.pids, seed=1)
    for k in ks_for(allowed):
        scored_rows.clear()
        found = searcher.search(Q, q_mask=q_mask, k=k, mode="exhaustive", allowed=allowed)
        for f, t in zip(found, truth_for(full, allowed, k)):
            same(f, t, Q.shape[1])
            assert f.certified
            assert f.cells_scored == pytest.approx(len(allowed) / NUM_DOCS)
        assert rows_read(scored_rows) == set(searcher.index.rows_of(allowed))  # all of them, no other


@pytest.mark.parametrize("subset", SUBSETS)
def test_exact_centroid_filtered_equals_the_allowed_top_k(e1, subset, scored_rows):
    searcher, Q, q_mask, full = e1
    allowed = pick(subset, searcher.index.pids, seed=2)
    rows = set(searcher.index.rows_of(allowed))
    for k in ks_for(allowed):
        scored_rows.clear()
        found = searcher.search(
            Q, q_mask=q_mask, k=k, mode="centroid", nprobe=2, ncandidates=k, exact=True, allowed=allowed
        )
        for f, t in zip(found, truth_for(full, allowed, k)):
            same(f, t, Q.shape[1])
            assert f.certified
            assert 0 <= f.cells_scored <= len(allowed) / NUM_DOCS + 1e-6
        assert rows_read(scored_rows) <= rows


@pytest.mark.parametrize("subset", SUBSETS)
def test_certified_centroid_filtered_answers_equal_the_allowed_top_k(e1, subset, scored_rows):
    searcher, Q, q_mask, full = e1
    allowed = pick(subset, searcher.index.pids, seed=3)
    for k in ks_for(allowed):
        certified = 0
        for nprobe, ncandidates in ((1, 5), (4, 32), (16, 64), (64, NUM_DOCS)):
            scored_rows.clear()
            found = searcher.search(Q, q_mask=q_mask, k=k, mode="centroid", nprobe=nprobe, ncandidates=ncandidates,
                                    allowed=allowed)  # fmt: skip
            for f, t in zip(found, truth_for(full, allowed, k)):
                assert all(p in set(allowed) for p, _ in f)
                if f.certified:
                    certified += 1
                    same(f, t, Q.shape[1])
            assert rows_read(scored_rows) <= set(searcher.index.rows_of(allowed))
        assert certified > 0  # (64, all docs): every allowed doc scored at least


def test_a_bool_mask_and_the_pids_agree(e1):
    searcher, Q, q_mask, _ = e1
    allowed = pick("half", searcher.index.pids, seed=4)
    mask = torch.zeros(NUM_DOCS, dtype=torch.bool)
    mask[searcher.index.rows_of(allowed)] = True
    for mode in ("exhaustive", "centroid"):
        by_pids = searcher.search(Q, q_mask=q_mask, k=7, mode=mode, allowed=allowed)
        by_mask = searcher.search(Q, q_mask=q_mask, k=7, mode=mode, allowed=mask)
        assert by_pids == by_mask


def test_engine_per_query_masks_equal_one_mask_at_a_time(e1, scored_rows):
    """CentroidEngine takes [B, N] masks too: each query sees only its own allowed docs."""
    searcher, Q, q_mask, _ = e1
    engine = CentroidEngine(searcher.docs, searcher.index.engine)
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(Q.shape[0], NUM_DOCS, generator=g) < torch.tensor([0.05, 0.3, 0.6, 1.0])[:, None]
    top, rows, stats = engine.search(Q, q_mask, 6, 2, 6, exact=True, allowed=masks)
    for b in range(Q.shape[0]):
        scored_rows.clear()
        t1, r1, s1 = engine.search(Q[b : b + 1], q_mask[b : b + 1], 6, 2, 6, exact=True, allowed=masks[b])
        assert rows[b, : r1.shape[1]].tolist() == r1[0].tolist()
        torch.testing.assert_close(top[b, : t1.shape[1]], t1[0])
        assert bool(masks[b, r1[r1 >= 0]].all())
        assert rows_read(scored_rows) <= set(masks[b].nonzero().squeeze(1).tolist())
    assert bool(stats.certified.all())


def test_engine_filtered_bounds_and_candidates(e1):
    """Docs not allowed are no candidates and have bound -inf; allowed docs keep their unfiltered bounds."""
    searcher, Q, q_mask, _ = e1
    engine = CentroidEngine(searcher.docs, searcher.index.engine)
    mask = torch.rand(NUM_DOCS, generator=torch.Generator().manual_seed(6)) < 0.4
    bounds, cand = engine.doc_bounds(Q, q_mask, 4, allowed=mask)
    plain, plain_cand = engine.doc_bounds(Q, q_mask, 4)
    assert bool(mask[cand.doc].all())
    assert bool(torch.isneginf(bounds[:, ~mask]).all())
    torch.testing.assert_close(bounds[:, mask], plain[:, mask])
    assert cand.doc.numel() == int(mask[plain_cand.doc].sum())  # exactly the allowed ones of the unfiltered
    direct = engine.candidates(Q, q_mask, 4, allowed=mask)  # a [N] mask straight to candidates
    assert torch.equal(direct.doc, cand.doc) and torch.equal(direct.query, cand.query)


def test_an_empty_set_reads_nothing(e1, scored_rows):
    searcher, Q, q_mask, _ = e1
    for mode in ("exhaustive", "centroid"):
        found = searcher.search(Q, q_mask=q_mask, k=3, mode=mode, allowed=torch.zeros(NUM_DOCS, dtype=torch.bool))
        assert found == [[]] * Q.shape[0]
        assert all(f.certified and f.cells_scored == 0.0 for f in found)
    assert rows_read(scored_rows) == set()


def test_bad_allowed(e1):
    searcher, Q, q_mask, _ = e1
    pids = searcher.index.pids
    with pytest.raises(KeyError, match="no-such-pid"):
        searcher.search(Q, k=3, mode="exhaustive", allowed=[pids[0], "no-such-pid"])
    with pytest.raises(ValueError, match="bool"):
        searcher.search(Q, k=3, mode="exhaustive", allowed=torch.ones(NUM_DOCS, dtype=torch.int64))
    with pytest.raises(ValueError, match=str(NUM_DOCS)):
        searcher.search(Q, k=3, mode="centroid", allowed=torch.ones(NUM_DOCS + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        searcher.search(Q, k=3, mode="exhaustive", allowed=torch.ones(2, NUM_DOCS, dtype=torch.bool))
    with pytest.raises(TypeError, match="iterable"):
        searcher.search(Q, k=3, mode="exhaustive", allowed=42)
    with pytest.raises(TypeError, match="single pid"):
        searcher.search(Q, k=3, mode="exhaustive", allowed=pids[0])
    engine = CentroidEngine(searcher.docs, searcher.index.engine)
    with pytest.raises(TypeError, match="bool tensor"):
        engine.search(Q, q_mask, 3, 2, 3, allowed=[True] * NUM_DOCS)
    with pytest.raises(ValueError, match=r"\[4, 200\]"):
        engine.search(Q, q_mask, 3, 2, 3, allowed=torch.ones(3, NUM_DOCS, dtype=torch.bool))


# ---- paper modes: faiss candidates ---------------------------------------------------------------


@pytest.fixture(scope="module")
def with_ivf(tmp_path_factory):
    """A small residual index with the faiss IVF (paper modes), and its unfiltered full ranking."""
    pytest.importorskip("faiss")
    docs, Q, _ = clustered_collection(120, num_queries=3, seed=13)
    path = tmp_path_factory.mktemp("ivf") / "index"
    build_index_from_embeddings(docs, path, IndexConfig(store="residual", store_nbits=2, ivf=True))
    q_mask = torch.ones(Q.shape[:2], dtype=torch.bool)
    searcher = Searcher(path, device="cpu", score_all_if_covered=False)
    full = searcher.search(Q, q_mask=q_mask, k=120, mode="exhaustive")
    return path, Q, q_mask, full


@pytest.mark.parametrize("subset", ("one", "tenth", "half"))
def test_paper_mode_drops_disallowed_candidates(with_ivf, subset, scored_rows):
    """With a budget that reaches every token, faiss's candidates are every doc: the filtered answer
    is the allowed top k, and only allowed docs were scored."""
    path, Q, q_mask, full = with_ivf
    searcher = Searcher(path, device="cpu", score_all_if_covered=False)
    allowed = pick(subset, searcher.index.pids, seed=7)
    partitions = searcher.index.manifest["ivf"]["partitions"]
    tokens = searcher.index.docs.num_tokens
    for k in ks_for(allowed):
        scored_rows.clear()
        found = searcher.search(Q, q_mask=q_mask, k=k, mode="paper", nprobe=partitions, neighbors_per_token=tokens,
                                allowed=allowed)  # fmt: skip
        for f, t in zip(found, truth_for(full, allowed, k)):
            same(f, t, Q.shape[1])
        assert scored_rows and rows_read(scored_rows) <= set(searcher.index.rows_of(allowed))


def test_fast_mode_returns_only_allowed_docs_with_exact_scores(with_ivf, scored_rows):
    path, Q, q_mask, full = with_ivf
    searcher = Searcher(path, device="cpu", score_all_if_covered=False)
    allowed = pick("half", searcher.index.pids, seed=8)
    found = searcher.search(Q, q_mask=q_mask, k=10, mode="fast", allowed=allowed)
    for f, ranking in zip(found, full):
        exact = dict(ranking)
        assert all(p in set(allowed) for p, _ in f)
        for p, s in f:
            assert s == pytest.approx(exact[p], abs=1e-4 * Q.shape[1])
    assert rows_read(scored_rows) <= set(searcher.index.rows_of(allowed))


def test_a_budget_covering_the_allowed_docs_scores_only_them(with_ivf, scored_rows):
    """The score-everything shortcut: certified, the allowed top k, faiss never opened."""
    path, Q, q_mask, full = with_ivf
    searcher = Searcher(path, device="cpu")
    allowed = pick("tenth", searcher.index.pids, seed=9)
    found = searcher.search(Q, q_mask=q_mask, k=5, mode="fast", allowed=allowed)  # 32 tokens x 2 >= 12 allowed
    assert searcher._ivf is None
    for f, t in zip(found, truth_for(full, allowed, 5)):
        same(f, t, Q.shape[1])
        assert f.certified and f.cells_scored == pytest.approx(len(allowed) / 120)
    assert rows_read(scored_rows) == set(searcher.index.rows_of(allowed))
