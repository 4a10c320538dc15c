"""The centroid engine inside the index and the Searcher: built and recorded with a residual store,
loaded by Index.load, searched with mode="centroid" by embeddings (no encoder, no faiss), and an
index built with IndexConfig(ivf=False) that holds no second copy of the tokens."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from colbert_fast.retrieval.build import IndexConfig, build_index_from_embeddings
from colbert_fast.retrieval.index import CorruptIndexError, Index
from colbert_fast.retrieval.search import Ranking, Searcher
from colbert_fast.testing import clustered_collection

NO_IVF = IndexConfig(store="residual", store_nbits=2, ivf=False)


@pytest.fixture(scope="module")
def e1(tmp_path_factory):
    """E1 at 300 docs, residual 2-bit, no faiss IVF (built without importing faiss)."""
    docs, Q, _ = clustered_collection(300, num_queries=6, seed=5)
    path = tmp_path_factory.mktemp("e1") / "index"
    build_index_from_embeddings(docs, path, NO_IVF)
    q_mask = torch.ones(Q.shape[:2], dtype=torch.bool)
    q_mask[1, 20:] = False  # a shorter query
    return path, Q, q_mask


def same_ranking(a: Ranking, b: Ranking, lq: int) -> None:
    assert [p for p, _ in a] == [p for p, _ in b]
    torch.testing.assert_close(torch.tensor([s for _, s in a]), torch.tensor([s for _, s in b]), atol=1e-4 * lq, rtol=0)


def test_residual_index_records_the_engine_and_no_ivf(e1):
    path, _, _ = e1
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"docs", "ids", "engine"}
    assert manifest["ivf"] is None and not any(path.glob("ivf-*"))
    index = Index.load(path)
    assert index.engine is not None and not index.has_ivf
    assert index.engine["doc_stats"].shape == (index.num_docs, 3)


@pytest.mark.parametrize("k", [1, 10, 50])
def test_exact_centroid_search_equals_exhaustive(e1, k):
    path, Q, q_mask = e1
    searcher = Searcher(path, device="cpu")
    truth = searcher.search(Q, q_mask=q_mask, k=k, mode="exhaustive")
    found = searcher.search(Q, q_mask=q_mask, k=k, mode="centroid", nprobe=2, ncandidates=k, exact=True)
    for f, t in zip(found, truth):
        same_ranking(f, t, Q.shape[1])
        assert f.certified and t.certified and t.cells_scored == 1.0
        assert 0 < f.cells_scored <= 1


def test_certified_centroid_results_equal_exhaustive(e1):
    path, Q, q_mask = e1
    searcher = Searcher(path, device="cpu", load_ivf=False)
    truth = searcher.search(Q, q_mask=q_mask, k=5, mode="exhaustive")
    certified = 0
    for nprobe, ncandidates in ((1, 5), (4, 32), (64, 300)):
        found = searcher.search(Q, q_mask=q_mask, k=5, mode="centroid", nprobe=nprobe, ncandidates=ncandidates)
        for f, t in zip(found, truth):
            assert 0 <= f.cells_scored <= 1
            if f.certified:
                certified += 1
                same_ranking(f, t, Q.shape[1])
    assert certified > 0  # (64, 300): every doc scored, certified by exhaustion at least


def test_centroid_search_in_a_fresh_process_loads_no_faiss_and_no_encoder(e1, tmp_path):
    path, Q, q_mask = e1
    torch.save((Q, q_mask), tmp_path / "q.pt")
    code = (
        "import sys, torch\n"
        "from colbert_fast.retrieval.search import Searcher\n"
        f"Q, m = torch.load({str(tmp_path / 'q.pt')!r})\n"
        f"r = Searcher({str(path)!r}, device='cpu').search(Q, q_mask=m, k=5, mode='centroid', nprobe=4,"
        " ncandidates=20, exact=False)\n"
        "assert len(r) == Q.shape[0] and all(len(x) == 5 for x in r)\n"
        "print(sorted(m for m in ('transformers', 'faiss') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_paper_modes_need_the_ivf(e1):
    path, Q, q_mask = e1
    searcher = Searcher(path, device="cpu", score_all_if_covered=False)  # else 300 docs are all scored
    for mode in ("paper", "accurate", "fast"):
        with pytest.raises(ValueError, match=r"without the faiss IVF.*IndexConfig\(ivf=True\)"):
            searcher.search(Q, q_mask=q_mask, k=3, mode=mode)


def test_centroid_mode_needs_a_residual_store(tmp_path):
    pytest.importorskip("faiss")
    docs, Q, _ = clustered_collection(120, num_queries=2, seed=1)
    path = tmp_path / "fp16"
    build_index_from_embeddings(docs, path, IndexConfig(codec="flat", store="fp16"))
    with pytest.raises(ValueError, match="residual"):
        Searcher(path, device="cpu").search(Q, k=3, mode="centroid")


def test_residual_index_with_ivf_serves_every_mode(tmp_path):
    """The default build keeps the faiss IVF; with a residual store it also gets the engine, and the
    paper mode is the accurate mode's budget."""
    pytest.importorskip("faiss")
    docs, Q, _ = clustered_collection(200, num_queries=3, seed=2)
    path = tmp_path / "both"
    build_index_from_embeddings(docs, path, IndexConfig(codec="flat", store="residual", ivf=True))
    searcher = Searcher(path, device="cpu", score_all_if_covered=False)
    assert searcher.index.has_ivf and searcher.index.engine is not None
    paper = searcher.search(Q, k=5, mode="paper")
    assert paper == searcher.search(Q, k=5, mode="accurate")
    assert all(not r.certified and 0 < r.cells_scored <= 1 for r in paper)
    exact = searcher.search(Q, k=5, mode="centroid", exact=True)
    for f, t in zip(exact, searcher.search(Q, k=5, mode="exhaustive")):
        same_ranking(f, t, Q.shape[1])


def test_bad_arguments(e1):
    path, Q, q_mask = e1
    searcher = Searcher(path, device="cpu")
    with pytest.raises(ValueError, match="ncandidates"):
        searcher.search(Q, k=3, mode="exhaustive", ncandidates=5)
    assert searcher.search(Q, k=3, mode="exhaustive", exact=True) == searcher.search(Q, k=3, mode="exhaustive")
    with pytest.raises(ValueError, match="exact"):
        Searcher(path, device="cpu", score_all_if_covered=False).search(Q, k=3, mode="paper", exact=True)
    with pytest.raises(ValueError, match="neighbors_per_token"):
        searcher.search(Q, k=3, mode="centroid", neighbors_per_token=5)
    for name in ("nprobe", "ncandidates"):
        with pytest.raises(ValueError, match=name):
            searcher.search(Q, k=3, mode="centroid", **{name: 0})
    assert IndexConfig(ivf=False).store == "residual"  # the default store serves the engine


def test_tampered_engine_file_is_caught(e1, tmp_path):
    import shutil

    path, _, _ = e1
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    engine = next(copy.glob("engine-*.safetensors"))
    raw = bytearray(engine.read_bytes())
    raw[-1] ^= 0xFF
    engine.write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexError, match="sha256"):
        Index.load(copy)


def test_candidates_covering_the_collection_score_every_doc(e1, monkeypatch):
    """When ncandidates reaches the (allowed) docs, the Searcher scores them all instead of running
    the engine: exact and certified. With score_all_if_covered=False the engine runs."""
    path, Q, q_mask = e1
    searcher = Searcher(path, device="cpu")
    truth = searcher.search(Q, q_mask=q_mask, k=10, mode="exhaustive")
    calls = []
    real = searcher.engine.search
    monkeypatch.setattr(searcher.engine, "search", lambda *a, **kw: calls.append(a[2:5]) or real(*a, **kw))
    covered = searcher.search(Q, q_mask=q_mask, k=10, mode="centroid", ncandidates=300)
    assert calls == []
    for f, t in zip(covered, truth):
        same_ranking(f, t, Q.shape[1])
        assert f.certified and f.cells_scored == 1.0
    # A filter of 43 docs under a budget of 64: those 43 are scored, nothing else is read.
    allowed = torch.zeros(300, dtype=torch.bool)
    allowed[::7] = True
    searcher.reset_timings()
    filtered = searcher.search(Q, q_mask=q_mask, k=5, mode="centroid", ncandidates=64, allowed=allowed)
    assert calls == [] and searcher.docs_scored == Q.shape[0] * 43
    want = searcher.search(Q, q_mask=q_mask, k=5, mode="exhaustive", allowed=allowed)
    for f, t in zip(filtered, want):
        same_ranking(f, t, Q.shape[1])
        assert f.certified and f.cells_scored == pytest.approx(43 / 300)
    # One candidate short of the collection: 299 docs' tokens are most of what the engine would
    # score, so the work rule scores the collection whole; with that rule off, the engine runs.
    searcher.search(Q, q_mask=q_mask, k=10, mode="centroid", ncandidates=299)
    assert calls == []
    from colbert_fast.retrieval import search as search_module

    monkeypatch.setattr(search_module, "SCORE_ALL_ENGINE_WORK", 0.0)
    searcher.search(Q, q_mask=q_mask, k=10, mode="centroid", ncandidates=299)
    assert len(calls) == 1 and calls[0][0] == 10 and calls[0][2] == 299
    off = Searcher(path, device="cpu", score_all_if_covered=False)
    off_real = off.engine.search
    monkeypatch.setattr(off.engine, "search", lambda *a, **kw: calls.append(a[2:5]) or off_real(*a, **kw))
    off.search(Q, q_mask=q_mask, k=10, mode="centroid", ncandidates=300)
    assert len(calls) == 2 and calls[1][2] == 300


def test_a_selective_filter_is_scored_whole_when_that_is_cheaper(e1, monkeypatch):
    """A filter whose docs hold at most SCORE_ALL_ENGINE_WORK times the engine's work (in doc tokens)
    is scored whole (exact, certified) even when ncandidates is smaller; a wider one goes through
    the engine."""
    from colbert_fast.retrieval import search as search_module

    path, Q, q_mask = e1
    searcher = Searcher(path, device="cpu")
    engine, docs = searcher.engine, searcher.index.docs
    calls = []
    real = engine.search
    monkeypatch.setattr(engine, "search", lambda *a, **kw: calls.append(a[2:5]) or real(*a, **kw))
    nprobe, ncandidates = 64, 10
    mean_doc = docs.num_tokens / docs.num_docs
    work = (
        ncandidates * mean_doc
        + engine.num_centroids
        + Q.shape[1]
        * min(nprobe, engine.num_centroids)
        * (docs.num_tokens / engine.num_centroids)
        / search_module.ENTRIES_PER_SCORED_TOKEN
    )
    assert searcher.engine_work(Q.shape[1], nprobe, ncandidates) == pytest.approx(work)
    narrow, wide = torch.zeros(300, dtype=torch.bool), torch.zeros(300, dtype=torch.bool)
    narrow[:20], wide[::2] = True, True
    share = {name: int(docs.lengths[m].sum()) / work for name, m in (("narrow", narrow), ("wide", wide))}
    limit = search_module.SCORE_ALL_ENGINE_WORK
    assert share["narrow"] <= limit < share["wide"], share  # the two filters fall on both sides
    found = searcher.search(Q, q_mask=q_mask, k=5, mode="centroid", nprobe=nprobe, ncandidates=ncandidates,
                            allowed=narrow)  # fmt: skip
    assert calls == []
    for f, t in zip(found, searcher.search(Q, q_mask=q_mask, k=5, mode="exhaustive", allowed=narrow)):
        same_ranking(f, t, Q.shape[1])
        assert f.certified
    searcher.search(Q, q_mask=q_mask, k=5, mode="centroid", nprobe=nprobe, ncandidates=ncandidates, allowed=wide)
    assert calls == [(5, nprobe, ncandidates)]
    monkeypatch.setattr(search_module, "SCORE_ALL_ENGINE_WORK", 0.0)  # the rule off: the engine runs
    searcher.search(Q, q_mask=q_mask, k=5, mode="centroid", nprobe=nprobe, ncandidates=ncandidates, allowed=narrow)
    assert len(calls) == 2
