"""The live index under kill -9, concurrent readers, a second writer and bad input (#19, "Done when").

Every change of a live index (add, delete, update, compact) is one generation committed through
IndexWriter. Here each is killed (a real SIGKILL, in a forked child) at every write and fsync it
makes, or sees that write or fsync fail; a reader process searches while a writer changes the
index; a second writer meets the first one's lock; and bad input is refused. The truth each
time is the same index changed without interference: its pids and its exhaustive top k (ids
and scores).

Run as a script, this file is the worker processes: `kill` (the forked writers that kill
themselves) and `read` (the concurrent reader).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from colbert_fast import PackedDocs, files
from colbert_fast.compressed import ResidualCodec
from colbert_fast.files import LockHeldError, WriterLock
from colbert_fast.retrieval.build import IndexConfig, build_index_from_embeddings
from colbert_fast.retrieval.index import MANIFEST, Index
from colbert_fast.retrieval.live import (
    LiveIndex,
    add_documents,
    compact_index,
    delete_documents,
    update_documents,
)
from colbert_fast.testing import clustered_collection

N_DOCS, DIM, SEED, K = 110, 32, 19, 20


def collection() -> tuple[list[torch.Tensor], torch.Tensor]:
    """The docs (fp32 [L_i, DIM] each) and queries ([6, 32, DIM]): the same in every process."""
    P, Q, _ = clustered_collection(N_DOCS, num_queries=6, dim=DIM, seed=SEED)
    return [P.doc(i).float() for i in range(P.num_docs)], Q


def ids(start: int, stop: int) -> list[str]:
    return [f"d{i}" for i in range(start, stop)]


# An operation: (kind, ids, rows of the collection to add under those ids).
OPS = {
    "add": ("add", ids(70, 80), list(range(70, 80))),
    "delete": ("delete", ["d5", "d60", "d61"], None),
    "update": ("update", ["d7", "d62"], [100, 101]),
    "compact": ("compact", None, None),
}


def apply(index_dir, op, docs) -> dict:
    """Run one operation (no automatic compaction: one operation, one generation)."""
    kind, pids, rows = op
    if kind == "add":
        return add_documents(index_dir, pids, [docs[r] for r in rows], auto_compact=False)
    if kind == "delete":
        return delete_documents(index_dir, pids, auto_compact=False)
    if kind == "update":
        return update_documents(index_dir, pids, [docs[r] for r in rows], auto_compact=False)
    if kind == "compact":
        return compact_index(index_dir)
    raise ValueError(kind)


def make_base(index_dir: Path, docs) -> None:
    """Generation 2: two segments (d0..d49, d50..d69) with tombstones (d3, d55). 64 centroids
    (the default would be 1,024 for these 4,000 tokens): every write encodes quickly."""
    codebook = ResidualCodec.train(torch.cat(docs[:50]), nbits=2, num_centroids=64)
    LiveIndex.create(index_dir, docs[:50], ids(0, 50), codebook=codebook)
    add_documents(index_dir, ids(50, 70), docs[50:70], auto_compact=False)
    delete_documents(index_dir, ["d3", "d55"], auto_compact=False)


def results(rankings) -> list:
    return [[[pid, float(score)] for pid, score in r] for r in rankings]


def state(index_dir: Path, Q: torch.Tensor) -> dict:
    """What a generation is: its number, its pids and its exhaustive top K, as a fresh LiveIndex
    sees them (its Index.load verifies every file's size and sha256 first)."""
    live = LiveIndex(index_dir)
    found = results(live.search(Q, k=K, mode="exhaustive"))
    index = live.searcher.index
    assert index._verify, "loaded with every checksum verified"
    return {"generation": live.generation, "pids": index.pids, "results": found}


def listing(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.iterdir())


def manifest_and_its_files(index_dir: Path) -> list[str]:
    manifest = json.loads((index_dir / MANIFEST).read_bytes())
    return sorted([MANIFEST, *(info["name"] for info in manifest["files"].values())])


def worker_env() -> dict:
    root = str(Path(__file__).resolve().parents[2])  # the repository: colbert_fast importable
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def run_worker(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], env=worker_env(), **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors, many calls: a thread pool costs more than it gives (and much more on a busy
    machine), as in the worker processes (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The collection, the base index (generation 2) and, per operation, the state it leads to."""
    root = tmp_path_factory.mktemp("live_crash")
    docs, Q = collection()
    make_base(root / "base", docs)
    before = state(root / "base", Q)
    assert before["generation"] == 2 and len(before["pids"]) == 68
    after = {}
    for name, op in OPS.items():
        shutil.copytree(root / "base", root / f"ref-{name}")
        apply(root / f"ref-{name}", op, docs)
        after[name] = state(root / f"ref-{name}", Q)
        assert after[name]["generation"] == 3
        assert after[name] != before or name == "compact"
    assert after["compact"]["pids"] == before["pids"] and after["compact"]["results"] == before["results"]
    return {"root": root, "docs": docs, "Q": Q, "before": before, "after": after}


def fresh_base(world, where: Path) -> Path:
    shutil.copytree(world["root"] / "base", where)
    return where


# ---- 1. kill -9 at every step -----------------------------------------------------------------------


def count_calls(world, index_dir: Path, op, monkeypatch) -> list[str]:
    """The write_fully / fsync calls of one operation, in order."""
    from helpers import record_write_calls  # here: the reader and killer subprocesses import this module

    calls = record_write_calls(monkeypatch)
    try:
        apply(index_dir, op, world["docs"])
    finally:
        monkeypatch.undo()
    return calls


def die_at_call(k: int) -> None:
    """SIGKILL this process at its (k+1)-th write_fully / fsync call from now."""
    n = [0]

    def maybe_die(real):
        def wrapped(*args):
            n[0] += 1
            if n[0] == k + 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args)

        return wrapped

    files.write_fully, files.fsync = maybe_die(files.write_fully), maybe_die(files.fsync)


def kill_worker(jobs_file: str) -> None:
    """For each job [index_dir, op name, k]: a forked child runs the operation and SIGKILLs itself
    at its (k+1)-th write_fully / fsync call. Prints [index_dir, op, k, killed, child pid]."""
    torch.set_num_threads(1)  # no OpenMP pool before fork
    docs, _ = collection()
    for index_dir, name, k in json.loads(Path(jobs_file).read_text()):
        pid = os.fork()
        if pid == 0:
            die_at_call(k)
            try:
                apply(index_dir, OPS[name], docs)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        print(json.dumps([index_dir, name, k, killed, pid]), flush=True)


@pytest.mark.slow
def test_kill_9_at_every_step_of_add_delete_update_compact(world, tmp_path, monkeypatch):
    """A writer killed at any write or fsync of an operation leaves the previous generation or the
    next one, whole (every checksum right) and searchable, never a mix. The next writer takes over
    the dead one's lock and removes its leftovers; rerunning the operation then gives the next
    generation, and the directory holds exactly the manifest and the files it names."""
    before, after = world["before"], world["after"]
    base_manifest = (world["root"] / "base" / MANIFEST).read_bytes()
    calls = {}
    jobs = []
    for name, op in OPS.items():
        calls[name] = count_calls(world, fresh_base(world, tmp_path / f"count-{name}"), op, monkeypatch)
        assert any(c.startswith("write file manifest.json") for c in calls[name]), calls[name]
        data = "write file tombstones-" if name == "delete" else "write file codes-"
        assert any(c.startswith(data) for c in calls[name]), calls[name]
        for k in range(len(calls[name])):
            jobs.append([str(fresh_base(world, tmp_path / f"{name}-k{k}")), name, k])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    worker = run_worker("kill", str(tmp_path / "jobs.json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-3000:]
    done = [json.loads(line) for line in out.splitlines()]
    assert [(n, k) for _, n, k, _, _ in done] == [(n, k) for _, n, k in jobs], out[-2000:]
    assert all(killed for *_, killed, _ in done), "every child died at its chosen call"

    seen = {name: [] for name in OPS}
    leftovers_seen = stale_lock_seen = 0
    for index_dir, name, k, _, child in done:
        index_dir = Path(index_dir)
        where = f"{name} killed at call {k} ({calls[name][k]})"
        survivor = state(index_dir, world["Q"])  # loads, checksums verified, searchable
        if survivor == before:
            assert (index_dir / MANIFEST).read_bytes() == base_manifest, where
            assert "new" not in seen[name], f"{where}: the old generation after a kill left the new one"
            seen[name].append("old")
        else:
            assert survivor == after[name], f"{where}: neither the previous generation nor the next one"
            seen[name].append("new")
        lock = index_dir / WriterLock.NAME
        if lock.exists() and lock.read_bytes().strip():
            assert json.loads(lock.read_bytes())["pid"] == child, where
            stale_lock_seen += 1
        extra = set(listing(index_dir)) - set(manifest_and_its_files(index_dir)) - {WriterLock.NAME}
        leftovers_seen += bool(extra)
        # the next writer: takes the dead one's lock, removes its leftovers, and the rerun ends in
        # the next generation (an operation already committed: a writer that changes nothing)
        if survivor == before:
            apply(index_dir, OPS[name], world["docs"])
        else:
            assert delete_documents(index_dir, ["no-such-doc"], missing="ignore")["generation"] == 3
        assert state(index_dir, world["Q"]) == after[name], where
        assert listing(index_dir) == manifest_and_its_files(index_dir), f"{where}: leftovers or lock remain"
    for name, kinds in seen.items():
        assert "old" in kinds and "new" in kinds, f"{name}: the commit point is inside the operation ({kinds})"
    assert leftovers_seen > 0 and stale_lock_seen > 0, (leftovers_seen, stale_lock_seen)


def test_a_failure_at_every_write_and_fsync_changes_nothing(world, tmp_path, monkeypatch):
    """A write or fsync that fails (full disk, I/O error) anywhere in an operation: it raises, the
    manifest and the directory are as before (the writer removed its own files), and a rerun gives
    the next generation. A directory fsync is best effort: the operation goes on."""
    from helpers import fail_at_call  # here: the reader and killer subprocesses import this module

    base_manifest = (world["root"] / "base" / MANIFEST).read_bytes()
    base_names = listing(world["root"] / "base")
    for name, op in OPS.items():
        calls = count_calls(world, fresh_base(world, tmp_path / f"count-{name}"), op, monkeypatch)
        for k, call in enumerate(calls):
            index_dir = fresh_base(world, tmp_path / f"{name}-k{k}")
            fail_at_call(monkeypatch, k)
            try:
                apply(index_dir, op, world["docs"])
                failed = None
            except OSError as e:
                failed = e
            finally:
                monkeypatch.undo()
            where = f"{name}, failure at call {k} ({call})"
            if call.startswith("fsync directory"):
                assert failed is None, where
                assert listing(index_dir) == manifest_and_its_files(index_dir), where
                continue
            assert failed is not None and "injected failure" in str(failed), where
            assert (index_dir / MANIFEST).read_bytes() == base_manifest, where
            assert listing(index_dir) == base_names, where
            if call.startswith("write file manifest.json"):  # the last failure before the commit
                assert state(index_dir, world["Q"]) == world["before"], where
                apply(index_dir, op, world["docs"])
                assert state(index_dir, world["Q"]) == world["after"][name], where
                assert listing(index_dir) == manifest_and_its_files(index_dir), where


# ---- 2. snapshot isolation ------------------------------------------------------------------------


def read_worker(index_dir: str, out_path: str, stop_path: str) -> None:
    """Search the index in a loop until `stop_path` exists; one line [generation, pids, results] per search.

    Even iterations open a fresh LiveIndex; odd ones search a long-lived one, refreshed on every
    third use only, so it often searches a generation whose files a writer has already removed."""
    torch.set_num_threads(1)
    _, Q = collection()
    kept = LiveIndex(index_dir)
    with open(out_path, "w") as out:
        i = 0
        while not os.path.exists(stop_path):
            if i % 2 == 0:
                live = LiveIndex(index_dir)
            else:
                live = kept
                if i % 6 == 1:
                    live.refresh()
            found = results(live.search(Q, k=K, mode="exhaustive"))
            out.write(json.dumps([live.generation, live.searcher.index.pids, found]) + "\n")
            out.flush()
            i += 1


def story(docs) -> list:
    """Ten changes in a row: adds, deletes, updates, compactions."""
    return [
        ("add", ids(70, 80), list(range(70, 80))),
        ("delete", ["d5", "d60"], None),
        ("update", ["d7", "d71"], [100, 101]),
        ("add", ids(80, 90), list(range(80, 90))),
        ("delete", ["d0", "d80"], None),
        ("compact", None, None),
        ("add", ids(90, 95), list(range(90, 95))),
        ("update", ["d1"], [102]),
        ("delete", ["d90"], None),
        ("compact", None, None),
    ]


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_a_reader_sees_exactly_one_committed_generation_whatever_the_writer_does(world, tmp_path):
    """A reader process searches in a loop while this process adds, deletes, updates and compacts.
    Every search it makes equals the exhaustive top k of the generation it reports, computed by
    replaying the same changes without a reader; it never fails on a file a writer removed."""
    docs, Q = world["docs"], world["Q"]
    expected = {world["before"]["generation"]: world["before"]}
    replay = fresh_base(world, tmp_path / "replay")
    for op in story(docs):
        apply(replay, op, docs)
        s = state(replay, Q)
        expected[s["generation"]] = s
    assert sorted(expected) == list(range(2, 13))
    distinct = {json.dumps([s["pids"], s["results"]]) for s in expected.values()}
    assert len(distinct) == 9, "each change but the two compactions changes what a search sees"

    index_dir = fresh_base(world, tmp_path / "idx")
    out, stop = tmp_path / "reads.jsonl", tmp_path / "stop"
    reader = run_worker("read", str(index_dir), str(out), str(stop), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while lines_in(out) < 2 and reader.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for n, op in enumerate(story(docs)):
            apply(index_dir, op, docs)
            if n % 2:  # every other change, let the reader catch up; else change again at once
                seen = lines_in(out)
                while lines_in(out) < seen + 3 and reader.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
        time.sleep(0.2)
    finally:
        stop.touch()
        _, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    reads = [json.loads(line) for line in out.read_text().splitlines()]
    for n, (generation, pids, found) in enumerate(reads):
        assert generation in expected, (n, generation)
        assert pids == expected[generation]["pids"], f"read {n}: not the docs of generation {generation}"
        assert found == expected[generation]["results"], f"read {n}: not what generation {generation} holds"
    generations = {g for g, _, _ in reads}
    assert len(reads) >= 15 and len(generations) >= 5, (len(reads), sorted(generations))
    assert max(generations) == 12, "the reader saw the last generation"

    # a generation opened by this process (one segment after the compaction: memory-mapped) stays
    # searchable after later writers delete its files
    old = LiveIndex(index_dir)
    assert old.generation == 12 and results(old.search(Q, k=K, mode="exhaustive")) == expected[12]["results"]
    old_files = manifest_and_its_files(index_dir)
    apply(index_dir, ("add", ids(95, 98), [95, 96, 97]), docs)
    apply(index_dir, ("compact", None, None), docs)
    assert not set(old_files) - {MANIFEST} & set(listing(index_dir)), "the old generation's files are gone"
    assert results(old.search(Q, k=K, mode="exhaustive")) == expected[12]["results"]
    assert old.refresh() and old.generation == 14


@pytest.mark.parametrize("where", ["sha256", "load_engine"])
def test_a_load_whose_files_a_writer_removes_midway_reads_the_new_generation(world, tmp_path, monkeypatch, where):
    """The race the reader above runs into: Index.load read the manifest and checked the files
    exist, then a compaction committed and removed them before they were hashed (or before the
    engine file was opened). That raised a raw FileNotFoundError; now the file is reported missing,
    the manifest is seen to have changed, and the new generation is read."""
    index_dir = fresh_base(world, tmp_path / "idx")
    index_module = sys.modules[Index.__module__]
    real = getattr(index_module, where)
    raced = []

    def racing(path, *args):
        if not raced:
            raced.append(Path(path).name)
            compact_index(index_dir)
            assert not Path(path).exists()
        return real(path, *args)

    monkeypatch.setattr(index_module, where, racing)
    index = Index.load(index_dir, verify=where == "sha256")
    monkeypatch.undo()
    assert raced and index.manifest["generation"] == 3
    assert index.pids == world["after"]["compact"]["pids"]
    assert state(index_dir, world["Q"]) == world["after"]["compact"]


# ---- 3. one writer at a time -------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from colbert_fast.files import WriterLock
WriterLock(sys.argv[1], "index").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def refused_writes(index_dir: Path, docs, holder_pid: int, opened: LiveIndex) -> None:
    """Every kind of write is refused with a LockHeldError naming the holder, and changes nothing."""
    manifest, names = (index_dir / MANIFEST).read_bytes(), listing(index_dir)
    message = rf"index {index_dir} is being written by another process \(pid {holder_pid} on .*Only one writer"
    attempts = [
        lambda: add_documents(index_dir, ["x1"], [docs[100]]),
        lambda: delete_documents(index_dir, ["d1"]),
        lambda: delete_documents(index_dir, ["no-such-doc"], missing="ignore"),
        lambda: update_documents(index_dir, ["d2"], [docs[101]]),
        lambda: compact_index(index_dir),
        lambda: opened.add(["x2"], [docs[102]]),
        lambda: opened.delete(["d4"]),
        lambda: opened.update(["d6"], [docs[103]]),
        lambda: opened.compact(),
    ]
    for n, attempt in enumerate(attempts):
        with pytest.raises(LockHeldError, match=message):
            attempt()
        assert (index_dir / MANIFEST).read_bytes() == manifest, n
        assert listing(index_dir) == names, n


def test_a_second_writer_is_refused_while_another_process_holds_the_lock(world, tmp_path):
    """Another process holds the writer lock: adds, deletes, updates and compactions are refused
    naming it, nothing changes, and readers (an opened LiveIndex, a fresh one) go on searching the
    last committed generation. Once the holder dies, the next writer gets the lock."""
    docs, Q = world["docs"], world["Q"]
    index_dir = fresh_base(world, tmp_path / "idx")
    opened = LiveIndex(index_dir)
    assert results(opened.search(Q, k=K, mode="exhaustive")) == world["before"]["results"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(index_dir)], stdout=subprocess.PIPE, env=worker_env()
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        refused_writes(index_dir, docs, holder.pid, opened)
        assert not opened.refresh() and opened.generation == 2
        assert results(opened.search(Q, k=K, mode="exhaustive")) == world["before"]["results"]
        assert state(index_dir, Q) == world["before"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    apply(index_dir, OPS["add"], docs)
    assert state(index_dir, Q) == world["after"]["add"]
    assert opened.refresh() and opened.generation == 3


def test_a_writer_blocked_in_its_commit_keeps_others_out_and_readers_on_the_last_generation(
    world, tmp_path, monkeypatch
):
    """A writer holds the lock inside an add, its data files written, its manifest not yet: a
    second writer is refused and changes nothing, readers see the last committed generation (not
    the half-written one), and once the first writer finishes they see its generation."""
    docs, Q = world["docs"], world["Q"]
    index_dir = fresh_base(world, tmp_path / "idx")
    opened = LiveIndex(index_dir)
    opened.search(Q, k=K, mode="exhaustive")
    in_commit, release = threading.Event(), threading.Event()
    real_write = files.write_fully

    from helpers import describe_fd

    def slow_manifest(fd, data):
        if threading.current_thread().name == "writer" and describe_fd(fd).startswith("file manifest.json.tmp"):
            in_commit.set()
            release.wait(60)
        real_write(fd, data)

    monkeypatch.setattr(files, "write_fully", slow_manifest)
    outcome = {}

    def writer():
        try:
            outcome["report"] = apply(index_dir, OPS["add"], docs)
        except BaseException as e:  # pragma: no cover - reported by the assertion below
            outcome["error"] = e

    t = threading.Thread(target=writer, name="writer")
    t.start()
    try:
        assert in_commit.wait(60), outcome
        uncommitted = set(listing(index_dir)) - set(manifest_and_its_files(index_dir)) - {WriterLock.NAME}
        assert any(n.startswith("codes-") for n in uncommitted), uncommitted
        refused_writes(index_dir, docs, os.getpid(), opened)
        assert state(index_dir, Q) == world["before"]
        assert not opened.refresh()
        assert results(opened.search(Q, k=K, mode="exhaustive")) == world["before"]["results"]
    finally:
        release.set()
        t.join(60)
    assert "error" not in outcome, outcome
    assert outcome["report"] == {"generation": 3, "added": 10, "deleted": 0}
    monkeypatch.undo()
    assert opened.refresh() and results(opened.search(Q, k=K, mode="exhaustive")) == world["after"]["add"]["results"]
    assert state(index_dir, Q) == world["after"]["add"]
    assert listing(index_dir) == manifest_and_its_files(index_dir)


# ---- 4. bad input changes nothing --------------------------------------------------------------------


def _bad_inputs(docs):
    d = docs[100]
    nan, inf = d.clone(), d.clone()
    nan[3, 5] = float("nan")
    inf[0, 0] = float("inf")
    return {
        "duplicate ids in one add": (
            lambda p: add_documents(p, ["x1", "x2", "x1"], [d, d, d]),
            ValueError,
            r"ids repeat within one add: \['x1'\]",
        ),
        "an id already in the index": (
            lambda p: add_documents(p, ["x1", "d10"], [d, d]),
            ValueError,
            r"1 ids are already in the index: \['d10'\]",
        ),
        "a deleted id added with one still there": (
            lambda p: LiveIndex(p).add(["d3", "d11"], [d, d]),
            ValueError,
            r"already in the index: \['d11'\]",
        ),
        "delete of unknown ids": (
            lambda p: delete_documents(p, ["d1", "nope", "d3"]),
            KeyError,
            r"2 ids to delete are not in the index: \['nope', 'd3'\]",
        ),
        "delete of unknown ids, LiveIndex": (
            lambda p: LiveIndex(p).delete(["nope"]),
            KeyError,
            r"not in the index: \['nope'\].*missing='ignore'",
        ),
        "delete of a single string": (lambda p: delete_documents(p, "d1"), TypeError, "must be a list of ids"),
        "bad missing=": (
            lambda p: delete_documents(p, ["d1"], missing="skip"),
            ValueError,
            "missing must be 'error' or 'ignore'",
        ),
        "wrong dim": (
            lambda p: add_documents(p, ["x1"], [torch.randn(5, DIM + 1)]),
            ValueError,
            rf"embeddings\[0\] has dim {DIM + 1}, the index has dim {DIM}",
        ),
        "wrong dim, second doc": (
            lambda p: add_documents(p, ["x1", "x2"], [d, torch.randn(5, 16)]),
            ValueError,
            rf"embeddings\[1\] has dim 16, the index has dim {DIM}",
        ),
        "int dtype": (
            lambda p: add_documents(p, ["x1"], [torch.ones(5, DIM, dtype=torch.int64)]),
            TypeError,
            r"embeddings\[0\] must be floating point, got torch.int64",
        ),
        "NaN": (lambda p: add_documents(p, ["x1", "x2"], [d, nan]), ValueError, "NaN or inf"),
        "inf": (lambda p: LiveIndex(p).add(["x1"], [inf]), ValueError, "NaN or inf"),
        "NaN in an update": (lambda p: update_documents(p, ["d1"], [nan]), ValueError, "NaN or inf"),
        "empty add": (lambda p: add_documents(p, [], []), ValueError, "at least one document"),
        "not a [L, dim] matrix": (
            lambda p: add_documents(p, ["x1"], [torch.randn(DIM)]),
            ValueError,
            r"embeddings\[0\] must be \[L, dim\]",
        ),
        "ids and docs of different counts": (
            lambda p: add_documents(p, ["x1", "x2"], [d]),
            ValueError,
            "got 2 ids for 1 documents",
        ),
        "ids and a PackedDocs of different counts": (
            lambda p: add_documents(p, ["x1", "x2"], PackedDocs.from_list([d])),
            ValueError,
            "got 2 ids for 1 documents",
        ),
        "a PackedDocs of the wrong dim": (
            lambda p: add_documents(p, ["x1"], PackedDocs.from_list([torch.randn(4, 16)])),
            ValueError,
            rf"the embeddings have dim 16, the index has dim {DIM}",
        ),
        "a PackedDocs holding NaN": (
            lambda p: add_documents(p, ["x1"], PackedDocs.from_list([nan])),
            ValueError,
            "NaN or inf",
        ),
        "one tensor, not a list": (
            lambda p: add_documents(p, ["x1"], d[None]),
            TypeError,
            "must be a list of .* or a PackedDocs, got Tensor",
        ),
        "a 3-d doc": (
            lambda p: add_documents(p, ["x1"], [d[None]]),
            ValueError,
            r"embeddings\[0\] must be \[L, dim\]",
        ),
        "float64": (lambda p: add_documents(p, ["x1"], [d.double()]), TypeError, "float64"),
        "an id with surrounding whitespace": (
            lambda p: add_documents(p, ["x1", " x2"], [d, d]),
            ValueError,
            "ids must be non-empty and without surrounding whitespace",
        ),
        "an empty id": (lambda p: add_documents(p, [""], [d]), ValueError, "ids must be non-empty"),
        "ids None": (lambda p: add_documents(p, None, [d]), TypeError, "ids must be a list of ids, got NoneType"),
        "delete of None": (
            lambda p: delete_documents(p, None),
            TypeError,
            "ids to delete must be a list of ids, got NoneType",
        ),
        "update of an id not in the index": (
            lambda p: update_documents(p, ["d1", "nope"], [d, d]),
            KeyError,
            r"1 ids to delete are not in the index: \['nope'\]",
        ),
        "update of a deleted id": (
            lambda p: LiveIndex(p).update(["d55"], [d]),
            KeyError,
            r"not in the index: \['d55'\]",
        ),
    }


BAD = list(_bad_inputs(collection()[0]))


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_and_changes_nothing(world, tmp_path, case):
    """Each bad call raises the right exception naming the problem; the manifest's bytes and the
    directory listing are unchanged, and the index searches as before."""
    call, error, message = _bad_inputs(world["docs"])[case]
    index_dir = fresh_base(world, tmp_path / "idx")
    manifest, names = (index_dir / MANIFEST).read_bytes(), listing(index_dir)
    with pytest.raises(error, match=message):
        call(index_dir)
    assert (index_dir / MANIFEST).read_bytes() == manifest
    assert listing(index_dir) == names
    assert state(index_dir, world["Q"]) == world["before"]


def test_ignored_missing_ids_and_empty_deletes_change_nothing(world, tmp_path):
    """missing='ignore' skips unknown ids: with none known (or no ids at all) no generation is
    written; with some known, exactly those are deleted."""
    index_dir = fresh_base(world, tmp_path / "idx")
    manifest, names = (index_dir / MANIFEST).read_bytes(), listing(index_dir)
    for call in (
        lambda: delete_documents(index_dir, ["nope", "d3"], missing="ignore"),
        lambda: delete_documents(index_dir, []),
        lambda: LiveIndex(index_dir).delete(["nope"], missing="ignore"),
    ):
        assert call() == {"generation": 2, "added": 0, "deleted": 0}
        assert (index_dir / MANIFEST).read_bytes() == manifest and listing(index_dir) == names
    report = delete_documents(index_dir, ["nope", "d5", "d60", "d61", "d3"], missing="ignore", auto_compact=False)
    assert report == {"generation": 3, "added": 0, "deleted": 3}
    assert state(index_dir, world["Q"]) == world["after"]["delete"]


def test_ids_that_are_not_strings_mean_the_strings_stored(world, tmp_path):
    """Ids are stored as strings (an index built without ids has "0".."N-1"): an update by int
    ids replaces those docs (it was refused as "already in the index"), like add and delete."""
    docs, Q = world["docs"], world["Q"]
    codebook = Index.load(world["root"] / "base").docs.codebook
    live = LiveIndex.create(tmp_path / "idx", docs[:20], codebook=codebook)
    assert live.update([3, 7], [docs[100], docs[101]]) == {"generation": 1, "added": 2, "deleted": 2}
    assert live.delete([4]) == {"generation": 2, "added": 0, "deleted": 1}
    with pytest.raises(ValueError, match=r"already in the index: \['5'\]"):
        live.add([5], [docs[102]])
    assert live.add([4], [docs[102]])["generation"] == 3
    expected = [str(i) for i in range(20) if i not in (3, 4, 7)] + ["3", "7", "4"]
    assert state(tmp_path / "idx", Q)["pids"] == expected
    now = {str(i): docs[i] for i in range(20)} | {"3": docs[100], "7": docs[101], "4": docs[102]}
    fresh = LiveIndex.create(tmp_path / "fresh", [now[p] for p in expected], expected, codebook=codebook)
    assert state(tmp_path / "idx", Q)["results"] == results(fresh.search(Q, k=K, mode="exhaustive"))


def test_refresh_sees_an_index_rebuilt_in_place(world, tmp_path):
    """A rebuild of the directory (generation 0 again, like the index it replaces) is a new
    generation to an open LiveIndex: refresh() opened it (it compared generation numbers only and
    went on serving the replaced index)."""
    docs, Q = world["docs"], world["Q"]
    codebook = Index.load(world["root"] / "base").docs.codebook
    live = LiveIndex.create(tmp_path / "idx", docs[:20], ids(0, 20), codebook=codebook)
    assert live.generation == 0 and not live.refresh()
    before = results(live.search(Q, k=K, mode="exhaustive"))
    build_index_from_embeddings(docs[50:70], tmp_path / "idx", IndexConfig(ivf=False), ids=ids(50, 70),
                                codebook=codebook)  # fmt: skip
    assert live.refresh() and live.generation == 0
    found = results(live.search(Q, k=K, mode="exhaustive"))
    assert found != before and found == results(LiveIndex(tmp_path / "idx").search(Q, k=K, mode="exhaustive"))
    assert {pid for r in found for pid, _ in r} <= set(ids(50, 70))
    assert not live.refresh()


if __name__ == "__main__":
    if sys.argv[1] == "kill":
        kill_worker(sys.argv[2])
    elif sys.argv[1] == "read":
        read_worker(*sys.argv[2:5])
    else:
        raise SystemExit(f"unknown worker {sys.argv[1]!r}")
