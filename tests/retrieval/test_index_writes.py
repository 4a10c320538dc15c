"""Index writes that survive races, full disks and kill -9 (issue 16, items 1, 2 and 10).

Faults are injected where a real one strikes: colbert_fast.files.write_fully (every byte of every
index file goes through it) and colbert_fast.files.fsync (every fsync, of files and directories).
A second writer is a thread or another process. kill -9 is real: a forked child builds and
SIGKILLs itself at the chosen call.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from helpers import fail_at_call, record_write_calls

pytest.importorskip("transformers")
pytest.importorskip("faiss")

from colbert_fast import files  # noqa: E402
from colbert_fast.files import LockHeldError, VerificationError, WriterLock  # noqa: E402
from colbert_fast.retrieval.build import IndexConfig, build_index, build_index_from_embeddings  # noqa: E402
from colbert_fast.retrieval.index import CorruptIndexError, Index  # noqa: E402
from colbert_fast.testing import tiny_encoder, write_collection  # noqa: E402

CFG = IndexConfig(chunk_size=8, batch_size=8, ivf=True)  # every kind of file: residual codes, the engine's, faiss


def same_store(a, b) -> bool:
    """The two indexes hold the same token store (codes and centroids, or fp16 vectors)."""
    if hasattr(a.docs, "codes"):
        return torch.equal(a.docs.codes, b.docs.codes) and torch.equal(a.docs.centroid_ids, b.docs.centroid_ids)
    return torch.equal(a.docs.embeddings, b.docs.embeddings)


N_OLD, N_NEW = 12, 20


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, an old collection with its index (the generation that must survive), and a new collection."""
    root = tmp_path_factory.mktemp("writes")
    enc = tiny_encoder(root / "tiny")
    enc.save(root / "model")
    write_collection(root / "old.tsv", N_OLD, seed=31)
    write_collection(root / "new.tsv", N_NEW, seed=32, start=100)
    build_index(root / "old.tsv", root / "old", enc, CFG, progress=False)
    return root, enc


def fresh_old(world, tmp_path) -> tuple[Path, dict]:
    """A copy of the old index and what must hold of it after any failed write: its files' bytes."""
    root, _ = world
    shutil.copytree(root / "old", tmp_path / "idx")
    return tmp_path / "idx", {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}


def assert_old_index_intact(index_dir: Path, old_files: dict) -> None:
    index = Index.load(index_dir)  # sizes and every sha256 checked
    assert index.pids == [str(i) for i in range(N_OLD)]
    for name, data in old_files.items():
        assert (index_dir / name).read_bytes() == data, f"{name} of the committed generation changed"


def path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def worker_env() -> dict:
    root = str(Path(__file__).resolve().parents[2])  # the repository: colbert_fast importable
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


# ---- one writer per index ------------------------------------------------------------------------------


def test_second_writer_is_refused_while_the_first_commits(world, tmp_path, monkeypatch):
    """Item 1: two builds of one index. The first is held inside its commit (a slow directory fsync);
    the second gets a clear LockHeldError naming the holder and touches nothing; the first finishes
    with a complete index (before the lock the loser crashed, or its cleanup deleted the winner's files)."""
    root, enc = world
    index_dir, _ = fresh_old(world, tmp_path)
    in_commit, release = threading.Event(), threading.Event()
    real_fsync = files.fsync

    def slow_fsync(fd):
        if os.path.isdir(path_of(fd)) and threading.current_thread().name == "first":
            in_commit.set()
            release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(files, "fsync", slow_fsync)
    result = {}

    def first():
        try:
            result["index"] = build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
        except BaseException as e:  # pragma: no cover - reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=first, name="first")
    t.start()
    assert in_commit.wait(60), result
    before = sorted(p.name for p in index_dir.iterdir())
    with pytest.raises(LockHeldError, match=rf"being written by another process \(pid {os.getpid()} on "):
        build_index(root / "old.tsv", index_dir, enc, CFG, progress=False)
    with pytest.raises(LockHeldError):
        build_index_from_embeddings([torch.randn(3, 8)], index_dir)
    assert sorted(p.name for p in index_dir.iterdir()) == before, "the refused writer touched nothing"
    release.set()
    t.join(60)
    assert "error" not in result, result
    index = Index.load(index_dir)
    assert index.pids == [str(100 + i) for i in range(N_NEW)]
    assert sorted(p.name for p in index_dir.iterdir()) == sorted(
        ["manifest.json", *(info["name"] for info in index.manifest["files"].values())]
    ), "no lock file and no leftover after the build"


HOLD_LOCK = """
import sys, time
from colbert_fast.files import WriterLock
WriterLock(sys.argv[1], "index").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_lock_held_by_another_process_then_taken_over_after_kill_9(world, tmp_path):
    """Item 1: another process holds the lock: a build is refused naming that process; once it is
    killed (kill -9 cannot release anything) its lock is stale, detected and taken over."""
    root, enc = world
    index_dir, old_files = fresh_old(world, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(index_dir)], stdout=subprocess.PIPE, env=worker_env()
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(LockHeldError, match=rf"pid {holder.pid} on .*since .*Only one writer at a time") as e:
            build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
        assert e.value.holder["pid"] == holder.pid
        assert_old_index_intact(index_dir, old_files)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    lock = WriterLock(index_dir, "index").acquire()
    assert lock.stale is not None and lock.stale["pid"] == holder.pid, "the dead holder's details are reported"
    lock.release()
    assert not (index_dir / WriterLock.NAME).exists()
    assert build_index(root / "new.tsv", index_dir, enc, CFG, progress=False).pids[0] == "100"


def test_lock_file_race_never_lets_two_writers_in(tmp_path):
    """The lock file is removed on release: a writer that locked the removed inode retries on the new one."""
    held = []
    errors = []

    def worker():
        for _ in range(50):
            try:
                with WriterLock(tmp_path, "index"):
                    held.append(1)
                    assert len(held) == 1, "two writers at once"
                    time.sleep(0.0005)
                    held.pop()
            except LockHeldError:
                pass
            except BaseException as e:
                errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ---- failed writes never commit ---------------------------------------------------------------------------


def test_disk_full_on_faiss_last_page_never_commits(world, tmp_path, monkeypatch):
    """Item 2: the disk fills while the faiss index's last bytes are written. faiss's own writer
    only printed "close error"; now the write raises, nothing is committed, the old generation
    stays whole and this build's files are removed (before: the truncated file was committed and
    the old index deleted)."""
    root, enc = world
    index_dir, old_files = fresh_old(world, tmp_path)
    real_write = files.write_fully
    state = {"ivf": False}

    def full_disk(fd, data):
        if Path(path_of(fd)).name.startswith("ivf-"):
            state["ivf"] = True
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(files, "write_fully", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
    assert state["ivf"]
    monkeypatch.undo()
    assert_old_index_intact(index_dir, old_files)
    leftovers = {p.name for p in index_dir.iterdir()} - set(old_files)
    assert all(name.startswith("partial-") for name in leftovers), leftovers


def test_lost_bytes_are_caught_by_the_read_back(world, tmp_path, monkeypatch):
    """A write that reports success but leaves fewer bytes on disk (the faiss "close error" case:
    a truncated file with a size and sha256 recorded as if whole) fails its read-back check."""
    root, enc = world
    index_dir, old_files = fresh_old(world, tmp_path)
    real_write = files.write_fully

    def lossy(fd, data):
        if Path(path_of(fd)).name.startswith("ivf-"):
            data = memoryview(data)[: max(0, len(data) - 100)]  # the last page never reaches the disk
        real_write(fd, data)

    monkeypatch.setattr(files, "write_fully", lossy)
    with pytest.raises(VerificationError, match=r"ivf-.*read back .* the file was not committed"):
        build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
    monkeypatch.undo()
    assert_old_index_intact(index_dir, old_files)


def count_calls(world, tmp_path, monkeypatch) -> list[str]:
    """The write_fully / fsync calls of one build of the new collection over the old index, in order."""
    root, enc = world
    index_dir, _ = fresh_old(world, tmp_path / "count")
    calls = record_write_calls(monkeypatch)
    build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
    monkeypatch.undo()
    return calls


def test_a_failure_at_every_write_and_fsync_keeps_the_old_index(world, tmp_path, monkeypatch):
    """Every write and fsync of a build, in turn, fails (ENOSPC, EIO): the build raises, the old
    generation stays loadable and byte-identical, and a rerun then succeeds."""
    root, enc = world
    calls = count_calls(world, tmp_path, monkeypatch)
    for kind in ("write file chunk-", "write file docs-", "write file ivf-", "write file ids-", "write file manifest"):
        assert any(c.startswith(kind) for c in calls), (kind, calls)
    for k, call in enumerate(calls):
        index_dir, old_files = fresh_old(world, tmp_path / f"k{k}")
        fail_at_call(monkeypatch, k, call)
        try:
            build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
            failed = False
        except OSError as e:
            assert "injected failure" in str(e)
            failed = True
        monkeypatch.undo()
        if call.startswith("fsync directory"):
            # a directory fsync is best effort (not every filesystem allows one): the build goes on
            assert not failed and Index.load(index_dir).pids[0] == "100", call
            continue
        assert failed, f"a failure at call {k} ({call}) went unnoticed"
        assert_old_index_intact(index_dir, old_files)
    index = build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
    assert index.pids[0] == "100"


KILL_WORKER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)  # no OpenMP pool before fork: the children may use their own
from colbert_fast import files
from colbert_fast.retrieval.build import IndexConfig, build_index
from colbert_fast.retrieval.encoder import ColBERT

model, collection, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
enc = ColBERT.load(model)
cfg = IndexConfig(chunk_size=8, batch_size=8, ivf=True)
for index_dir, k in jobs:
    pid = os.fork()
    if pid == 0:
        n = [0]
        real_write, real_fsync = files.write_fully, files.fsync
        def maybe_die(real):
            def wrapped(*args):
                n[0] += 1
                if n[0] == k + 1:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args)
            return wrapped
        files.write_fully, files.fsync = maybe_die(real_write), maybe_die(real_fsync)
        build_index(collection, index_dir, enc, cfg, progress=False)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(json.dumps([index_dir, k, os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL]), flush=True)
"""


@pytest.mark.slow
def test_kill_9_at_every_write_and_fsync_keeps_the_old_index_and_the_rerun_resumes(world, tmp_path, monkeypatch):
    """kill -9 at every write and fsync of a build (a forked child SIGKILLs itself at call k): the
    index then holds the old generation, or the new one once the manifest was renamed; never a
    mix, a broken manifest or a lost index. The rerun takes over the dead writer's lock, removes
    its leftovers and resumes to the same index a clean build gives."""
    root, enc = world
    calls = count_calls(world, tmp_path, monkeypatch)
    jobs = []
    olds = {}
    for k in range(len(calls)):
        index_dir, old_files = fresh_old(world, tmp_path / f"k{k}")
        jobs.append([str(index_dir), k])
        olds[k] = old_files
    out = subprocess.run(
        [sys.executable, "-c", KILL_WORKER, str(root / "model"), str(root / "new.tsv"), json.dumps(jobs)],
        capture_output=True, text=True, env=worker_env(), timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(results) == len(calls) and all(killed for _, _, killed in results), out.stdout
    clean = build_index(root / "new.tsv", tmp_path / "clean", enc, CFG, progress=False)
    new_seen = False
    for index_dir, k, _ in results:
        index_dir = Path(index_dir)
        survivor = Index.load(index_dir)  # always loadable, every checksum right
        if survivor.pids[0] == "0":
            assert not new_seen, f"kill at call {k} ({calls[k]}): old generation after a new one was committed"
            assert_old_index_intact(index_dir, olds[k])
        else:
            new_seen = True
            assert survivor.pids == clean.pids and same_store(survivor, clean)
        rerun = build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
        assert rerun.pids == clean.pids and same_store(rerun, clean)
        names = sorted(p.name for p in index_dir.iterdir())
        assert names == sorted(["manifest.json", *(i["name"] for i in rerun.manifest["files"].values())]), (k, names)
    assert new_seen, "the last calls come after the commit: some kill leaves the new generation"


# ---- leftovers and free space -------------------------------------------------------------------------


def test_leftovers_are_removed_before_a_build_on_a_nearly_full_disk(world, tmp_path, monkeypatch):
    """Item 10: a failed build's leftovers (data files no manifest names, temp files, a temp
    manifest, a half-written chunk) would leave too little space for the retry; they are removed
    first, and the space check then passes. With too little space even then, the build fails
    before writing anything, naming what it needs."""
    root, enc = world
    index_dir, old_files = fresh_old(world, tmp_path)
    big = 300 << 20
    leftovers = ["docs-0123456789ab.safetensors", "ivf-0123456789ab.faiss.tmp4242", "manifest.json.tmp77"]
    for name in leftovers:
        with open(index_dir / name, "wb") as f:
            f.truncate(big)  # sparse: large by st_size, nothing on the real disk
    (index_dir / "partial-deadbeef").mkdir()
    (index_dir / "partial-deadbeef" / "chunk-000000.safetensors.tmp99").write_bytes(b"half")
    (index_dir / "notes.txt").write_text("not ours: never removed")
    quota = 3 * big  # the leftovers alone nearly fill it

    def disk_usage(path):
        used = sum(p.stat().st_size for p in Path(index_dir).rglob("*") if p.is_file())
        return types.SimpleNamespace(total=quota, used=used, free=max(0, quota - used))

    monkeypatch.setattr(files.shutil, "disk_usage", disk_usage)
    index = build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
    assert index.pids[0] == "100"
    names = {p.name for p in index_dir.iterdir()}
    assert not names & set(leftovers) and "partial-deadbeef" not in names and "notes.txt" in names
    quota = 1 << 20  # now really too small
    with pytest.raises(OSError, match="not enough free space in .* for the"):
        build_index_from_embeddings([torch.randn(30, 8)], tmp_path / "small")
    assert not (tmp_path / "small" / "manifest.json").exists()


# ---- reading defensively ------------------------------------------------------------------------------------


def _no_hang(fn, seconds=20.0):
    """fn() in a thread: the test fails (instead of hanging forever) when it does not return."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hung (a FIFO opened for reading waits for a writer forever)"
    return out


@pytest.mark.parametrize("which", ["manifest", "docs", "ids", "ivf"])
def test_a_fifo_in_the_index_is_refused_not_waited_on(world, tmp_path, which):
    """Item 10: loading hung forever on a FIFO."""
    index_dir, _ = fresh_old(world, tmp_path)
    m = json.loads((index_dir / "manifest.json").read_text())
    target = index_dir / ("manifest.json" if which == "manifest" else m["files"][which]["name"])
    target.unlink()
    os.mkfifo(target)
    out = _no_hang(lambda: Index.load(index_dir))
    assert isinstance(out.get("error"), CorruptIndexError), out
    assert "not a regular file" in str(out["error"]) or "FIFO" in str(out["error"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(files=[]), "'files' and 'stats' must be objects"),
        (lambda m: m.update(stats="x"), "'files' and 'stats' must be objects"),
        (lambda m: m["files"].pop("ids"), "files.ids needs a name"),
        (lambda m: m["files"]["docs"].update(name=7), "files.docs needs a name"),
        (lambda m: m["files"]["docs"].update(bytes="12"), "files.docs needs a name, bytes"),
        (lambda m: m["files"]["ivf"].pop("sha256"), "files.ivf needs"),
        (lambda m: m["files"].update(docs=None), "files.docs needs"),
        (lambda m: m["stats"].update(num_docs=None), "stats.num_docs must be an int"),
        (lambda m: m["stats"].pop("dim"), "stats.dim must be an int"),
        (lambda m: m["files"]["docs"].update(name=".."), "not a plain name"),
    ],
)
def test_malformed_manifests_raise_corrupt_index_error(world, tmp_path, edit, message):
    """Item 10: malformed manifests raised raw KeyError / TypeError."""
    index_dir, _ = fresh_old(world, tmp_path)
    m = json.loads((index_dir / "manifest.json").read_text())
    edit(m)
    (index_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptIndexError, match=message):
        Index.load(index_dir)


@pytest.mark.parametrize(
    "ids, message",
    [
        ({"0": 1}, "not a list of pid strings"),
        ([[str(i)] for i in range(N_OLD)], "not a list of pid strings"),
        ([i for i in range(N_OLD)], "not a list of pid strings"),
        ([str(i) for i in range(N_OLD + 1)], "disagree on #docs"),
    ],
)
def test_an_ids_file_of_the_wrong_shape_is_rejected(world, tmp_path, ids, message):
    """Item 10: an ids file of the wrong shape was accepted (its sha256 matching a tampered manifest)."""
    index_dir, _ = fresh_old(world, tmp_path)
    m = json.loads((index_dir / "manifest.json").read_text())
    f = index_dir / m["files"]["ids"]["name"]
    f.write_text(json.dumps(ids))
    m["files"]["ids"].update(bytes=f.stat().st_size, sha256=files.sha256(f))
    (index_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptIndexError, match=message):
        Index.load(index_dir)


def test_duplicate_pids_in_an_index_are_refused_on_lookup(world, tmp_path):
    index_dir, _ = fresh_old(world, tmp_path)
    m = json.loads((index_dir / "manifest.json").read_text())
    f = index_dir / m["files"]["ids"]["name"]
    f.write_text(json.dumps(["a"] * N_OLD))
    m["files"]["ids"].update(bytes=f.stat().st_size, sha256=files.sha256(f))
    (index_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptIndexError, match="lists some pid twice"):
        Index.load(index_dir).rows_of(["a"])


def test_a_reader_during_a_commit_gets_one_whole_generation(world, tmp_path, monkeypatch):
    """A reader that read the old manifest while a writer committed and removed the old files
    reads the new generation instead of failing on a missing file."""
    root, enc = world
    index_dir, _ = fresh_old(world, tmp_path)
    real_load = Index._load.__func__
    state = {"done": False}

    def load_then_commit(cls, *args):
        if not state["done"]:  # the first attempt: a writer commits between manifest and files
            state["done"] = True
            build_index(root / "new.tsv", index_dir, enc, CFG, progress=False)
        return real_load(cls, *args)

    monkeypatch.setattr(Index, "_load", classmethod(load_then_commit))
    assert Index.load(index_dir).pids[0] == "100"
