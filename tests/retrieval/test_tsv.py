"""One strict reader for collections, queries and qrels (issue 16, item 9).

Before: a stray \\r inside a passage made a phantom passage (text mode splits at a lone \\r), a
UTF-8 BOM became part of the first pid, extra columns were dropped, a first pid "id" was skipped as
a header, and duplicate qids (and judgements) were merged.
"""

from __future__ import annotations

import codecs
import os

import pytest

from colbert_fast.retrieval.tsv import load_qrels, load_run, read_collection, read_queries


def _file(tmp_path, data: bytes, name="f.tsv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_crlf_and_a_bom_are_read(tmp_path):
    bom = codecs.BOM_UTF8
    coll = _file(tmp_path, bom + b"d1\tthe cat\r\nd2\tthe dog\tDogs\r\n\r\n")
    assert read_collection(coll) == (["d1", "d2"], ["the cat", "Dogs | the dog"])
    queries = _file(tmp_path, bom + b"q1\twhat cat\r\nq2\twhich dog\r\n", "q.tsv")
    assert read_queries(queries) == (["q1", "q2"], ["what cat", "which dog"])
    qrels = _file(tmp_path, bom + b"q1 0 d1 1\r\nq2\t0\td2\t2\r\n", "qrels.tsv")
    assert load_qrels(qrels) == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    run = _file(tmp_path, bom + b"q1\td1\t1\t0.5\r\n", "run.tsv")
    assert load_run(run) == {"q1": ["d1"]}


@pytest.mark.parametrize(
    "reader, data, message",
    [
        # a stray \r inside a passage: one record, never two
        (read_collection, b"d1\tthe cat\rsat\nd2\tthe dog\n", r"f.tsv:1: a carriage return"),
        (read_queries, b"q1\tok\nq2\twhat\rcat\n", r"f.tsv:2: a carriage return"),
        (load_qrels, b"q1 0 d1 1\nq2 0\rd2 1\n", r"f.tsv:2: a carriage return"),
        (read_collection, b"d1\tthe cat\r\r\n", r"f.tsv:1: a carriage return"),
        # wrong column counts
        (read_collection, b"d1\tthe cat\tCats\textra\n", r"f.tsv:1: expected 'pid<TAB>text'.*4 columns"),
        (read_collection, b"d1\tok\nd2 no tab\n", r"f.tsv:2: expected 'pid<TAB>text'.*no tab"),
        (read_queries, b"q1\twhat\textra\n", r"f.tsv:1: expected 'qid<TAB>query text', found 3 columns"),
        (load_qrels, b"q1 0 d1 1 7\n", r"f.tsv:1: not a qrels line"),
        # duplicate ids
        (read_collection, b"d1\ta\nd2\tb\nd1\tc\n", r"f.tsv:3: duplicate pid 'd1' \(first on line 1\)"),
        (read_queries, b"q1\ta\nq1\tb\n", r"f.tsv:2: duplicate qid 'q1' \(first on line 1\)"),
        (load_qrels, b"q1 0 d1 1\nq1 0 d1 2\n", r"f.tsv:2: qid 'q1' judges pid 'd1' again \(first on line 1\)"),
        # ids that cannot round-trip through whitespace-separated run files
        (read_collection, b" d1\ta\n", r"f.tsv:1: pid ' d1' holds whitespace"),
        (read_queries, b"q 1\ta\n", r"f.tsv:1: qid 'q 1' holds whitespace"),
        (read_collection, b"\ta\n", r"f.tsv:1: empty pid"),
        # not UTF-8
        (read_queries, b"q1\t\xff\xfe\n", r"f.tsv:1: not UTF-8"),
    ],
)
def test_what_cannot_be_read_unambiguously_is_an_error_naming_the_line(tmp_path, reader, data, message):
    with pytest.raises(ValueError, match=message):
        reader(_file(tmp_path, data))


def test_a_first_pid_named_id_is_a_passage_not_a_header(tmp_path):
    coll = _file(tmp_path, b"id\tan actual passage\nd2\tanother\n")
    assert read_collection(coll) == (["id", "d2"], ["an actual passage", "another"])
    # only an exact known header line is skipped
    coll = _file(tmp_path, b"id\ttext\ttitle\nd1\tthe cat\tCats\n")
    assert read_collection(coll) == (["d1"], ["Cats | the cat"])
    queries = _file(tmp_path, b"qid\ttext\n", "q.tsv")
    assert read_queries(queries) == (["qid"], ["text"]), "queries files have no header"
    qrels = _file(tmp_path, b"query-id\tcorpus-id\tscore\nq1\td1\t1\n", "qrels.tsv")
    assert load_qrels(qrels) == {"q1": {"d1": 1}}
    with pytest.raises(ValueError, match="f.tsv:1: not a qrels line"):
        load_qrels(_file(tmp_path, b"qid pid grade\nq1 d1 1\n"))


def test_the_bom_is_not_part_of_the_first_id(tmp_path):
    pids, _ = read_collection(_file(tmp_path, codecs.BOM_UTF8 + b"7\tseven\n"))
    assert pids == ["7"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "queries.tsv"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        read_queries(fifo)
