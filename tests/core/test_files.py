"""files.atomic_path, the one atomic-write helper: files and directories, replaced whole or not at all."""

from __future__ import annotations

import pytest

from colbert_fast.files import atomic_path, sha256, write_bytes_atomic


def test_a_file_is_replaced_whole(tmp_path):
    target = tmp_path / "f.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"], "no temp file is left behind"


def test_a_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("2")
        raise RuntimeError("crash after one file")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a": "1", "b": "1"}
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "c").write_text("3")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"c": "3"}, "no file of the old directory survives"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_sha256_of_a_file(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    assert sha256(tmp_path / "x") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
