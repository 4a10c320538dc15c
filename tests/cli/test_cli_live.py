"""`colbert-fast index add|update|delete|compact|stats` (issue 19) on a small live index: each prints
what it did, changes exactly what colbert_fast.retrieval.live would, and a bad input is one line
`colbert-fast index ACTION: error: ...` with exit 1 (no traceback) and the index unchanged; an option
that does not apply, or a missing one, is an argparse error (exit 2). The plain build keeps its
arguments."""

from __future__ import annotations

import json

import pytest
import torch

from colbert_fast import PackedDocs
from colbert_fast.cli import build_parser, main
from colbert_fast.files import WriterLock
from colbert_fast.retrieval.index import Index
from colbert_fast.retrieval.live import LiveIndex, index_stats
from colbert_fast.testing import clustered_collection, tiny_encoder, write_collection

N = 60


@pytest.fixture(scope="module")
def docs():
    P, Q, _ = clustered_collection(N + 20, num_queries=4, seed=3)
    return P, Q


def subset(P: PackedDocs, rows) -> PackedDocs:
    return PackedDocs.from_list([P.doc(int(r)) for r in rows])


@pytest.fixture
def live(tmp_path, docs):
    P, _ = docs
    path = tmp_path / "live"
    LiveIndex.create(path, subset(P, range(N)), [f"d{i}" for i in range(N)])
    return path


@pytest.fixture
def new_docs(tmp_path, docs):
    """A PackedDocs file of the 20 docs not in the index and their ids file."""
    P, _ = docs
    emb, ids = tmp_path / "new.safetensors", tmp_path / "new_ids.txt"
    subset(P, range(N, N + 20)).save(emb)
    ids.write_text("".join(f"n{i}\n" for i in range(20)))
    return emb, ids


def run_ok(argv, capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def run_error(argv, capsys) -> str:
    """A failed change: exit 1 and one line on stderr."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"colbert-fast index {argv[1]}: error: "), err
    return err


def argparse_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def pids(path) -> list[str]:
    return list(Index.load(path, load_ivf=False).pids)


# ---- add / update / delete / compact / stats ----------------------------------------------------


def test_add_embeddings_then_delete_compact_and_stats(live, new_docs, docs, capsys):
    emb, ids = new_docs
    out = run_ok(["index", "add", "--index", str(live), "--embeddings", str(emb), "--ids", str(ids), "--quiet"], capsys)
    assert f"added 20 docs in {live}: generation 1" in out
    assert pids(live) == [f"d{i}" for i in range(N)] + [f"n{i}" for i in range(20)]
    assert index_stats(live)["segments"] == 2

    out = run_ok(["index", "delete", "--index", str(live), "--id", "d3", "--id", "n5"], capsys)
    assert f"deleted 2 docs from {live}: generation 2" in out
    assert "d3" not in pids(live) and "n5" not in pids(live)

    out = run_ok(["index", "stats", "--index", str(live)], capsys)
    assert "live docs" in out and "78" in out and "deleted docs" in out
    stats = json.loads(run_ok(["index", "stats", "--index", str(live), "--json"], capsys))
    assert stats == index_stats(live)
    assert (stats["docs"], stats["deleted_docs"], stats["segments"], stats["generation"]) == (78, 2, 2, 2)

    out = run_ok(["index", "compact", "--index", str(live), "--quiet"], capsys)
    assert f"compacted {live}: generation 3" in out
    stats = index_stats(live)
    assert (stats["docs"], stats["deleted_docs"], stats["segments"]) == (78, 0, 1)
    out = run_ok(["index", "compact", "--index", str(live)], capsys)
    assert "nothing to do" in out and index_stats(live)["generation"] == 3

    # the docs the CLI added score as LiveIndex.add's would: search the added one
    P, _ = docs
    top = LiveIndex(live, device="cpu").search([P.doc(N + 7).float()], k=1, mode="exhaustive")[0]
    assert top[0][0] == "n7"


def test_update_replaces_existing_ids(live, docs, tmp_path, capsys):
    P, _ = docs
    emb, ids = tmp_path / "upd.safetensors", tmp_path / "upd.txt"
    subset(P, [N, N + 1]).save(emb)
    ids.write_text("d0\nd1\n")
    out = run_ok(["index", "update", "--index", str(live), "--embeddings", str(emb), "--ids", str(ids)], capsys)
    assert f"updated 2 docs in {live}: generation 1" in out
    index = Index.load(live, load_ivf=False)
    assert sorted(index.pids) == sorted(f"d{i}" for i in range(N))
    top = LiveIndex(live, device="cpu").search([P.doc(N).float()], k=1, mode="exhaustive")[0]
    assert top[0][0] == "d0"


def test_delete_ids_file_and_missing(live, tmp_path, capsys):
    gone = tmp_path / "gone.txt"
    gone.write_text("d1\n\nd2\r\nnope\n")
    err = run_error(["index", "delete", "--index", str(live), "--ids", str(gone)], capsys)
    assert "not in the index" in err and "nope" in err and "--missing ignore" in err
    assert index_stats(live)["generation"] == 0  # nothing deleted
    out = run_ok(["index", "delete", "--index", str(live), "--ids", str(gone), "--missing", "ignore"], capsys)
    assert "deleted 2 docs" in out and "1 ids not in the index skipped" in out
    assert index_stats(live)["docs"] == N - 2
    out = run_ok(["index", "delete", "--index", str(live), "--id", "nope", "--missing", "ignore"], capsys)
    assert "deleted nothing" in out and index_stats(live)["generation"] == 1


def test_auto_compaction_and_no_auto_compact(live, capsys):
    many = [f"--id=d{i}" for i in range(15)]  # 25% of the stored docs: over MAX_DELETED
    out = run_ok(["index", "delete", "--index", str(live), "--no-auto-compact", *many[:14]], capsys)
    assert "compacted" not in out and index_stats(live)["deleted_docs"] == 14
    out = run_ok(["index", "delete", "--index", str(live), many[14]], capsys)
    assert "then compacted" in out
    stats = index_stats(live)
    assert (stats["docs"], stats["deleted_docs"], stats["segments"]) == (N - 15, 0, 1)


# ---- errors: one line, exit 1, index unchanged ---------------------------------------------------


def test_bad_inputs_are_one_line_errors(live, new_docs, tmp_path, capsys):
    emb, ids = new_docs
    base = ["--index", str(live)]
    # an id already in the index
    taken = tmp_path / "taken.txt"
    taken.write_text("".join(f"d{i}\n" for i in range(20)))
    assert "already in the index" in run_error(
        ["index", "add", *base, "--embeddings", str(emb), "--ids", str(taken)], capsys
    )
    # update of an unknown id
    err = run_error(["index", "update", *base, "--embeddings", str(emb), "--ids", str(ids)], capsys)
    assert "not in the index" in err and "add them instead" in err and "missing" not in err
    # ids and docs do not match in number
    short = tmp_path / "short.txt"
    short.write_text("x1\nx2\n")
    assert "2 ids" in run_error(["index", "add", *base, "--embeddings", str(emb), "--ids", str(short)], capsys)
    # an embeddings file that is not one
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    assert str(junk) in run_error(["index", "add", *base, "--embeddings", str(junk), "--ids", str(ids)], capsys)
    # the wrong dim
    wrong = tmp_path / "wrong.safetensors"
    PackedDocs.from_list([torch.randn(5, 64) for _ in range(20)]).save(wrong)
    assert "dim" in run_error(["index", "add", *base, "--embeddings", str(wrong), "--ids", str(ids)], capsys)
    # texts for an index built from embeddings, which records no model
    tsv = tmp_path / "c.tsv"
    write_collection(tsv, 3, start=1000)
    assert "names no checkpoint" in run_error(["index", "add", *base, "--collection", str(tsv)], capsys)
    # no index there
    for action in ("stats", "compact", "delete"):
        argv = ["index", action, "--index", str(tmp_path / "none")] + (["--id", "d1"] if action == "delete" else [])
        assert "no index at" in run_error(argv, capsys)
    assert index_stats(live)["generation"] == 0


def test_another_writer_is_a_one_line_error(live, capsys):
    with WriterLock(live):
        err = run_error(["index", "delete", "--index", str(live), "--id", "d1"], capsys)
    assert "writ" in err.lower() or "lock" in err.lower(), err
    assert index_stats(live)["generation"] == 0


def test_an_index_with_ivf_is_not_live(tmp_path, docs, new_docs, capsys):
    from colbert_fast.retrieval.build import IndexConfig, build_index_from_embeddings

    P, _ = docs
    path = tmp_path / "ivf"
    build_index_from_embeddings(subset(P, range(N)), path, IndexConfig(codec="flat", partitions=4, ivf=True))
    emb, ids = new_docs
    err = run_error(["index", "add", "--index", str(path), "--embeddings", str(emb), "--ids", str(ids)], capsys)
    assert "IVF" in err
    assert "yes" in run_ok(["index", "stats", "--index", str(path)], capsys)


# ---- argument checks: argparse errors (exit 2) ----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["index", "--index", "i"], "--collection"),
        (["index", "add", "--index", "i"], "either --collection"),
        (["index", "add", "--index", "i", "--collection", "c", "--embeddings", "e", "--ids", "f"], "either"),
        (["index", "add", "--index", "i", "--embeddings", "e"], "--embeddings needs --ids"),
        (["index", "add", "--index", "i", "--collection", "c", "--ids", "f"], "--ids goes with --embeddings"),
        (["index", "add", "--index", "i", "--embeddings", "e", "--ids", "f", "--device", "cpu"], "encode --collection"),
        (["index", "delete", "--index", "i"], "--ids FILE or --id"),
        (["index", "delete", "--index", "i", "--id", "x", "--json"], "--json: does not apply to `index delete`"),
        (["index", "stats", "--index", "i", "--quiet"], "--quiet: does not apply"),
        (["index", "compact", "--index", "i", "--no-ivf"], "--no-ivf: does not apply"),
        (["index", "add", "--index", "i", "--collection", "c", "--store", "fp16"], "--store: does not apply"),
        (["index", "--index", "i", "--collection", "c", "--embeddings", "e"], "--embeddings: does not apply"),
        (["index", "--index", "i", "--collection", "c", "--missing", "ignore"], "--missing: does not apply"),
        (["index", "stats"], "--index"),
        (["index", "grow", "--index", "i"], "invalid choice"),
    ],
)
def test_options_that_do_not_apply_or_are_missing(argv, says, capsys):
    err = argparse_error(argv, capsys)
    assert says in err, err
    assert "usage: colbert-fast index" in err


def test_the_build_keeps_its_arguments():
    args = build_parser().parse_args(["index", "--collection", "c.tsv", "--index", "idx", "--no-ivf"])
    assert (args.action, args.collection, args.index, args.ivf) == ("build", "c.tsv", "idx", False)
    args = build_parser().parse_args(["index", "build", "--collection", "c.tsv", "--index", "idx"])
    assert args.action == "build" and args.ivf is None  # None: IndexConfig picks by the store


def test_help_lists_the_actions_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["index", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("add", "update", "delete", "compact", "stats", "colbert-fast index add --index", "--missing"):
        assert word in out


# ---- texts: build with a checkpoint, then add/update texts encoded with the recorded model ---------


def test_build_then_add_and_update_texts(tmp_path, capsys):
    enc = tiny_encoder(tmp_path / "tiny")
    enc.save(tmp_path / "model")
    first, more = tmp_path / "first.tsv", tmp_path / "more.tsv"
    write_collection(first, 30, seed=1)
    texts = write_collection(more, 5, seed=2, start=100)
    path = tmp_path / "idx"
    ckpt = ["--checkpoint", str(tmp_path / "model")]
    run_ok(["index", "--collection", str(first), "--index", str(path), *ckpt, "--no-ivf", "--quiet", "--device", "cpu"],
           capsys)  # fmt: skip
    out = run_ok(
        ["index", "add", "--index", str(path), "--collection", str(more), "--quiet", "--device", "cpu"], capsys
    )
    assert "added 5 docs" in out
    index = Index.load(path, load_ivf=False)
    assert index.pids[-5:] == [str(100 + i) for i in range(5)]

    # the added docs are the texts encoded by the recorded model: each text finds its own doc
    searcher = LiveIndex(path, device="cpu")
    with torch.inference_mode():
        emb = enc.encode_docs(texts)
    for i, e in enumerate(emb):
        assert searcher.search([e.float()], k=1, mode="exhaustive")[0][0][0] == str(100 + i)

    # update: same pids, new texts
    changed = tmp_path / "changed.tsv"
    write_collection(changed, 2, seed=9, start=100)
    out = run_ok(["index", "update", "--index", str(path), "--collection", str(changed), "--quiet", "--device", "cpu"],
                 capsys)  # fmt: skip
    assert "updated 2 docs" in out
    assert sorted(Index.load(path, load_ivf=False).pids) == sorted(
        [str(i) for i in range(30)] + [str(100 + i) for i in range(5)]
    )
    # a model whose doc-side settings differ is refused
    other = tiny_encoder(tmp_path / "other", doc_maxlen=50)
    other.save(tmp_path / "other_model")
    err = run_error(["index", "add", "--index", str(path), "--collection", str(more), "--checkpoint",
                     str(tmp_path / "other_model"), "--quiet", "--device", "cpu"], capsys)  # fmt: skip
    assert "doc_maxlen" in err
