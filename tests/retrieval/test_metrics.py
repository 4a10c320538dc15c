"""Ranking metrics on hand-computed cases, and the qrels/run file formats."""

from __future__ import annotations

import math

import pytest

from colbert_fast.retrieval.metrics import evaluate, mrr_at, ndcg_at, recall_at
from colbert_fast.retrieval.tsv import load_qrels, load_run, write_run

QRELS = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"d": 2, "e": 1}, "q4": {"x": 0}}
RUN = {"q1": ["z", "a", "y"], "q2": ["b", "z", "c"]}  # q3 missing, q4 has no relevant doc


def test_mrr():
    # q1: first relevant at rank 2 -> 1/2; q2: rank 1 -> 1; q3: not in the run -> 0; q4 not judged.
    assert mrr_at(RUN, QRELS, 10) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    deep = {"q1": [f"n{i}" for i in range(10)] + ["a"]}
    assert mrr_at(deep, {"q1": {"a": 1}}, 10) == 0.0, "rank 11 is outside MRR@10"
    assert mrr_at(deep, {"q1": {"a": 1}}, 11) == pytest.approx(1 / 11)


def test_recall():
    assert recall_at(RUN, QRELS, 1) == pytest.approx((0 + 0.5 + 0) / 3)
    assert recall_at(RUN, QRELS, 2) == pytest.approx((1 + 0.5 + 0) / 3)
    assert recall_at(RUN, QRELS, 3) == pytest.approx((1 + 1 + 0) / 3)


def test_ndcg():
    l3 = math.log2(3)
    q1 = (1 / l3) / 1.0  # a at rank 2
    q2 = (1 + 1 / 2) / (1 + 1 / l3)  # b rank 1, c rank 3 (log2 4 = 2)
    assert ndcg_at(RUN, QRELS, 10) == pytest.approx((q1 + q2 + 0) / 3)
    graded = {"q3": ["e", "d"]}  # grades 1 then 2: dcg 1 + 2/log2 3, ideal 2 + 1/log2 3
    assert ndcg_at(graded, {"q3": QRELS["q3"]}, 10) == pytest.approx((1 + 2 / l3) / (2 + 1 / l3))
    assert ndcg_at({"q3": ["d", "e"]}, {"q3": QRELS["q3"]}, 10) == pytest.approx(1.0)


def test_evaluate_summary():
    out = evaluate(RUN, QRELS, (1, 3))
    assert set(out) == {"MRR@10", "nDCG@10", "Recall@1", "Recall@3", "queries", "queries_missing_from_run"}
    assert out["queries"] == 3 and out["queries_missing_from_run"] == 1
    with pytest.raises(ValueError, match="no relevant"):
        mrr_at(RUN, {"q4": {"x": 0}})


def test_file_formats(tmp_path):
    (tmp_path / "qrels.tsv").write_text("q1\t0\ta\t1\nq2 0 b 1\nq2 0 c 2\n")
    assert load_qrels(tmp_path / "qrels.tsv") == {"q1": {"a": 1}, "q2": {"b": 1, "c": 2}}
    (tmp_path / "beir.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\n")
    assert load_qrels(tmp_path / "beir.tsv") == {"q1": {"a": 1}}
    # MS MARCO runs (3 or 4 columns) and TREC runs (6); ordered by the rank column, not the line order.
    (tmp_path / "run3.tsv").write_text("q1\tb\t2\nq1\ta\t1\nq2\tc\t1\n")
    (tmp_path / "run4.tsv").write_text("q1\tb\t2\t9.5\nq1\ta\t1\t10.0\nq2\tc\t1\t3\n")
    (tmp_path / "run6.txt").write_text("q1 Q0 b 2 9.5 x\nq1 Q0 a 1 10.0 x\nq2 Q0 c 1 3 x\nq1 Q0 a 5 1.0 x\n")
    expected = {"q1": ["a", "b"], "q2": ["c"]}
    for name in ("run3.tsv", "run4.tsv", "run6.txt"):
        assert load_run(tmp_path / name) == expected, name


def test_write_run_round_trip(tmp_path):
    write_run(tmp_path / "run.tsv", [("q1", [("a", 2.5), ("b", 1.0)]), ("q2", [("c", -3.0)])])
    assert (tmp_path / "run.tsv").read_text().splitlines()[0] == "q1\ta\t1\t2.500000"
    assert load_run(tmp_path / "run.tsv") == {"q1": ["a", "b"], "q2": ["c"]}


@pytest.mark.parametrize(
    "loader, content, message",
    [
        (load_qrels, "q1 0 a 1\nq1 0 a\tx\n", "2: not a qrels line"),
        (load_qrels, "q1 0 a 1 7 8\n", "1: not a qrels line"),
        (load_qrels, "\n", "no judgements"),
        (load_run, "q1\ta\t1\nq1\tb\tfirst\n", "2: not a run line"),
        (load_run, "q1 a\n", "1: not a run line"),
    ],
)
def test_bad_files(tmp_path, loader, content, message):
    (tmp_path / "f").write_text(content)
    with pytest.raises(ValueError, match=message):
        loader(tmp_path / "f")


@pytest.mark.parametrize("k", [0, -5, 2.5, True])
def test_a_cutoff_below_one_is_refused(k):
    """Issue 16, item 7: run[:k] with k <= 0 cut from the end (eval --recall -5 printed Recall@-5 = 1.0);
    the library refuses it as the command line does."""
    for metric in (recall_at, mrr_at, ndcg_at):
        with pytest.raises(ValueError, match="cut-off must be an int >= 1"):
            metric(RUN, QRELS, k)
    with pytest.raises(ValueError, match="cut-off"):
        evaluate(RUN, QRELS, (10, k))
