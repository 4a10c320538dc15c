"""Every number and output path the command line takes is checked by argparse (exit 2, the argument
named) before any work (issue 16, items 5 and 7). The tests parse only (what `main` does first): a
regression fails at once instead of running a search or a benchmark.

Before: search --batch-size -1, rerank --k 0 / -1 and eval --recall -5 ran and exited 0 with empty
output (eval printed Recall@-5 = 1.0); --output replaced whatever was at the path, so a FIFO, a
device node or a symbolic link became a regular file.
"""

from __future__ import annotations

import os
import stat

import pytest

from colbert_fast.cli import build_parser
from colbert_fast.files import NotRegularFileError
from colbert_fast.retrieval.tsv import write_run

SEARCH = ["search", "--index", "idx", "--queries", "q.tsv", "--output", "run.tsv"]
RERANK = ["rerank", "--index", "idx", "--queries", "q.tsv", "--output", "run.tsv", "--run", "bm25.tsv"]
SHARDED_SEARCH = ["sharded", "search", "--index", "idx", "--queries", "q.tsv", "--output", "run.tsv"]
SHARDED_INDEX = ["sharded", "index", "--index", "idx", "--collection", "c.tsv"]
INDEX = ["index", "--index", "idx", "--collection", "c.tsv"]
EVAL = ["eval", "--qrels", "qrels.tsv", "--run", "run.tsv"]

BAD_NUMBERS = [
    (SEARCH + ["--batch-size", "-1"], "--batch-size"),
    (SEARCH + ["--batch-size", "0"], "--batch-size"),
    (SEARCH + ["--k", "0"], "--k"),
    (SEARCH + ["--k", "-1"], "--k"),
    (SEARCH + ["--k", "ten"], "--k"),
    (SEARCH + ["--nprobe", "0"], "--nprobe"),
    (SEARCH + ["--neighbors-per-token", "-3"], "--neighbors-per-token"),
    (RERANK + ["--k", "0"], "--k"),
    (RERANK + ["--k", "-1"], "--k"),
    (RERANK + ["--batch-size", "0"], "--batch-size"),
    (EVAL + ["--recall", "-5"], "--recall"),
    (EVAL + ["--recall", "10", "0"], "--recall"),
    (INDEX + ["--batch-size", "0"], "--batch-size"),
    (INDEX + ["--chunk-size", "0"], "--chunk-size"),
    (INDEX + ["--partitions", "-2"], "--partitions"),
    (INDEX + ["--nprobe", "0"], "--nprobe"),
    (INDEX + ["--doc-maxlen", "0"], "--doc-maxlen"),
    (SHARDED_SEARCH + ["--k", "0"], "--k"),
    (SHARDED_SEARCH + ["--batch-size", "-1"], "--batch-size"),
    (SHARDED_SEARCH + ["--repeat", "0"], "--repeat"),
    (SHARDED_SEARCH + ["--timeout", "0"], "--timeout"),
    (SHARDED_SEARCH + ["--timeout", "nan"], "--timeout"),
    (SHARDED_SEARCH + ["--timeout", "-5"], "--timeout"),
    (SHARDED_INDEX + ["--shards", "0", "-1"], "--shards"),
    (SHARDED_INDEX + ["--num-shards", "0"], "--num-shards"),
    (SHARDED_INDEX + ["--build-timeout", "inf"], "--build-timeout"),
    (["bench", "--reps", "0"], "--reps"),
    (["bench", "--budget", "-1"], "--budget"),
    (["bench", "--compile-budget", "0"], "--compile-budget"),
    (["bench", "--threads", "0"], "--threads"),
    (["profile", "--reps", "0"], "--reps"),
    (["profile", "--rows", "-1"], "--rows"),
    (["experiment", "--k", "0"], "--k"),
    (["experiment", "--max-docs", "0"], "--max-docs"),
    (["experiment", "--threads", "-1"], "--threads"),
]


@pytest.mark.parametrize(("argv", "name"), BAD_NUMBERS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_number_that_makes_no_sense_is_an_argparse_error(argv, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {name}" in err and "must be" in err, err


@pytest.mark.parametrize(
    "argv",
    [
        SEARCH + ["--k", "1", "--batch-size", "1", "--nprobe", "1", "--neighbors-per-token", "1"],
        RERANK + ["--k", "1"],
        EVAL + ["--recall", "1", "1000"],
        SHARDED_SEARCH + ["--timeout", "0.5", "--repeat", "1"],
        SHARDED_INDEX + ["--shards", "0", "3"],
    ],
    ids=lambda v: " ".join(v[:2]),
)
def test_the_smallest_sensible_numbers_are_accepted(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_parser().parse_args(argv)  # no SystemExit


def _fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("command", [SEARCH, RERANK, SHARDED_SEARCH], ids=lambda v: " ".join(v[:2]))
@pytest.mark.parametrize("kind", ["fifo", "device", "dangling link", "directory"])
def test_output_onto_a_special_file_is_refused_before_any_work(command, kind, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if kind == "fifo":
        target = _fifo(tmp_path)
    elif kind == "device":
        target = "/dev/null"
        assert stat.S_ISCHR(os.stat(target).st_mode)
    elif kind == "dangling link":
        target = tmp_path / "link"
        target.symlink_to(tmp_path / "missing")
    else:
        target = tmp_path / "dir"
        target.mkdir()
    argv = list(command)
    argv[argv.index("--output") + 1] = str(target)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --output" in err and "refusing to write" in err, err
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_write_run_refuses_a_fifo_created_after_the_check(tmp_path):
    """The check at parse time is repeated where the file is written (the path may change)."""
    target = _fifo(tmp_path)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        write_run(target, [("q1", [("p1", 1.0)])])
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"], "no temporary file left"


def test_write_run_through_a_symlink_keeps_the_link_and_is_atomic(tmp_path):
    real = tmp_path / "real.tsv"
    real.write_text("old\n")
    link = tmp_path / "run.tsv"
    link.symlink_to(real)
    write_run(link, [("q1", [("p1", 2.0), ("p2", 1.0)])])
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "q1\tp1\t1\t2.000000\nq1\tp2\t2\t1.000000\n"

    def failing():
        yield "q2", [("p3", 1.0)]
        raise RuntimeError("the search failed half way")

    with pytest.raises(RuntimeError, match="half way"):
        write_run(link, failing())
    assert real.read_text().startswith("q1\tp1"), "a failed write leaves the old file whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real.tsv", "run.tsv"]
