"""The default search settings must find the exact top k: recall@10 and recall@100 against
exhaustive MaxSim >= 0.99 on a small synthetic clustered collection (E1's generator), indexed
from its embeddings with the default IndexConfig (residual 2-bit, no IVF: the centroid engine)
and with the paper's faiss IVF (mode "accurate"). At this size the paper path's default budget
covers the collection, so it scores every doc, and the engine scores 256 of 600 docs at k = 10;
the budgets themselves are measured on larger collections (Cranfield, E1 at 10k and 30k docs) by
bench/search_defaults.py and bench/engine_quality.py."""

from __future__ import annotations

import pytest
import torch

from colbert_fast.retrieval.build import IndexConfig, build_index_from_embeddings
from colbert_fast.retrieval.search import Searcher, centroid_budget
from colbert_fast.testing import clustered_collection

RECALL_FLOOR = 0.99


@pytest.fixture(scope="module", params=["default", "with faiss IVF"])
def e1(request, tmp_path_factory):
    if request.param != "default":
        pytest.importorskip("faiss")
    docs, Q, targets = clustered_collection(600, num_queries=24, seed=3)
    config = IndexConfig() if request.param == "default" else IndexConfig(ivf=True)
    index = build_index_from_embeddings(docs, tmp_path_factory.mktemp("e1") / "index", config)
    return index, Q, targets


def _recall(found, truth) -> float:
    return sum(len({p for p, _ in f} & {p for p, _ in t}) / len(t) for f, t in zip(found, truth)) / len(truth)


@pytest.mark.parametrize("k", [10, 100])
def test_default_settings_meet_the_recall_floor(e1, k):
    index, Q, _ = e1
    searcher = Searcher(index, device="cpu")
    assert searcher.mode == ("accurate" if index.has_ivf else "centroid")
    truth = searcher.search(Q, k=k, mode="exhaustive")
    assert all(len(t) == k for t in truth)
    recall = _recall(searcher.search(Q, k=k), truth)
    assert recall >= RECALL_FLOOR, f"default search recall@{k} = {recall:.4f} < {RECALL_FLOOR}"


def test_the_centroid_budget_holds_up_to_10k_docs_and_grows_past_them():
    # Cranfield (1,400 docs, 4,096 centroids) and E1 10k (8,192): the budget the floor was measured at.
    assert centroid_budget(10, 1_400, 4_096) == (64, 256)
    assert centroid_budget(100, 10_000, 8_192) == (64, 1_000)
    # E1 100k (32,768 centroids): the share of centroids probed at 10k, sqrt(10) x the candidates.
    assert centroid_budget(10, 100_000, 32_768) == (256, 810)
    assert centroid_budget(100, 100_000, 32_768) == (256, 3_163)
    # Never more probes than centroids, never fewer candidates than k.
    assert centroid_budget(10, 50, 16) == (16, 256)
    assert centroid_budget(5_000, 20_000, 8_192)[1] == 70_711
    sizes = [(10_000, 8_192), (30_000, 16_384), (100_000, 32_768), (1_000_000, 131_072)]
    nprobes, cands = zip(*(centroid_budget(10, n, c) for n, c in sizes))
    assert list(nprobes) == sorted(nprobes) and list(cands) == sorted(cands) and cands[-1] > cands[0]


def test_the_searcher_hands_the_engine_its_default_budget(tmp_path, monkeypatch):
    docs, Q, _ = clustered_collection(400, num_queries=2, seed=5)  # more docs than the 256 candidates
    index = build_index_from_embeddings(docs, tmp_path / "index", IndexConfig())
    # (400 docs hold less than SCORE_ALL_ENGINE_WORK times the engine's work: the default searcher
    # would score them all, so the rule is off here.)
    searcher = Searcher(index, device="cpu", score_all_if_covered=False)
    assert searcher.mode == "centroid"
    engine = searcher.engine
    seen = []
    real = engine.search

    def spy(Q, q_mask, k, nprobe, ncandidates, **kw):
        seen.append((k, nprobe, ncandidates))
        return real(Q, q_mask, k, nprobe, ncandidates, **kw)

    monkeypatch.setattr(engine, "search", spy)
    searcher.search(Q, k=20)
    searcher.search(Q, k=20, nprobe=3, ncandidates=40)
    assert seen == [(20, *centroid_budget(20, index.num_docs, engine.num_centroids)), (20, 3, 40)]


def test_each_query_finds_the_doc_it_was_drawn_from(e1):
    """A sanity check of the generator: the target doc is every query's exact top 1."""
    index, Q, targets = e1
    top1 = Searcher(index, device="cpu").search(Q, k=1, mode="exhaustive")
    assert [int(r[0][0]) for r in top1] == targets.tolist()


def test_collection_is_deterministic_and_well_formed():
    a, Qa, ta = clustered_collection(50, num_queries=4, seed=1)
    b, Qb, tb = clustered_collection(50, num_queries=4, seed=1)
    assert torch.equal(a.embeddings, b.embeddings) and torch.equal(Qa, Qb) and torch.equal(ta, tb)
    assert a.dtype == torch.float16 and a.dim == 128 and Qa.shape == (4, 32, 128)
    assert int(a.lengths.min()) >= 20 and int(a.lengths.max()) <= 180
    norms = a.embeddings.float().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=2e-3)
    c, _, _ = clustered_collection(50, num_queries=4, seed=2)
    assert not torch.equal(a.lengths, c.lengths) or not torch.equal(a.embeddings, c.embeddings)
