"""Files written so that nothing is lost, and read so that nothing hangs or crashes.

Writes: a reader sees the old file (or directory) or the whole new one, never a torn one. One
helper, atomic_path, serves every write of the package: the packed store, the index files and
manifests, run files, collections, model directories. The caller writes a temporary sibling (a
file, or a directory it creates); only a complete one is renamed over the target, and only over a
regular file, a directory or nothing (never a FIFO, a device node or a socket; a symbolic link is
followed, so the file it points at is replaced and the link stays).

verified_file adds what a build needs before it may commit: every byte goes through checked
writes (a full disk raises), the file is flushed, fsynced and closed with every error checked, then
read back from disk and compared (size and sha256) with what was written; its `record` is what a
manifest stores.

WriterLock: one writer per directory (an index), held for the whole write. Reads: open_regular
opens only regular files (a FIFO would block the reader forever).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: WriterLock locks a byte of the file with msvcrt instead
    fcntl = None
    import msvcrt

__all__ = [
    "LockHeldError",
    "NotRegularFileError",
    "VerificationError",
    "WriterLock",
    "atomic_path",
    "check_free_space",
    "check_output_file",
    "fsync_dir",
    "open_regular",
    "sha256",
    "verified_file",
    "write_bytes_atomic",
]


class NotRegularFileError(OSError, ValueError):
    """A path that is not a regular file where one is read or replaced (a FIFO, a device node, a
    socket, a dangling symbolic link). A ValueError too: for a store or index it is a bad file."""


class VerificationError(OSError):
    """A file read back after writing is not what was written (size or sha256): a failed write."""


class LockHeldError(RuntimeError):
    """Another process is writing the directory (WriterLock); `holder` says who, as it wrote it."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


# ---- reading ---------------------------------------------------------------------------------------


def open_regular(path: str | os.PathLike, what: str = "file") -> int:
    """A read-only fd of `path`, which must be a regular file (symbolic links followed).

    Opened non-blocking first: opening a FIFO for reading otherwise waits forever for a writer.
    The type is checked on the opened fd itself (no window between a check and the open), then
    the fd is switched back to blocking reads. The caller closes it.
    Raises NotRegularFileError naming the path and its kind; FileNotFoundError when it is missing.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, f"{what} {path} is {_kind(mode)}, not a regular file", str(path))
        if fcntl is not None:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, what: str = "file") -> bytes:
    """The whole content of a regular file (see open_regular)."""
    with os.fdopen(open_regular(path, what), "rb") as f:
        return f.read()


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a regular file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


# ---- writing ---------------------------------------------------------------------------------------


def _check_target(path: Path) -> Path:
    """Where a write of `path` lands: `path` itself, or the file a symbolic link at `path` points at.

    Refuses what must not be replaced by a regular file: a FIFO, a device node, a socket (`os.replace`
    would silently swap it for a file; as root, a device node), or a dangling link (its target is
    not ours to create)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(path))
        if not target.exists():
            raise NotRegularFileError(
                errno.EINVAL, f"refusing to write {path}: a symbolic link to a missing {target}", str(path)
            )
        return _check_target(target)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise NotRegularFileError(
            errno.EINVAL, f"refusing to write {path}: it is {_kind(st.st_mode)}, not a regular file", str(path)
        )
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Where a file written to `path` by atomic_path lands (a symbolic link is followed), checked up
    front so a command can refuse a bad output path before hours of work: NotRegularFileError for a
    FIFO, device node, socket or dangling link, IsADirectoryError for a directory. atomic_path
    checks again when it writes (the path may change meanwhile)."""
    target = _check_target(Path(path))
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"refusing to write {path}: it is a directory", str(path))
    return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success make it durable and rename it over `path`.

    The caller creates a file there, or a directory (a model checkpoint). A file is fsynced,
    then renamed over `path` in one step. A directory cannot replace a non-empty one in one
    rename: the old one is moved aside first, then removed, so for that instant `path` is
    missing, but it never holds a mix of old and new files.
    On an exception the temp path is removed and `path` is left as it was. A `path` that is a
    FIFO, device node or socket is refused before anything is written (NotRegularFileError); a
    symbolic link is followed. A file never replaces a directory, nor a directory a file.
    """
    path = _check_target(Path(path))
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    _remove(tmp)  # left by a crashed run that had this pid
    try:
        yield tmp
        path = _check_target(path)  # it may have changed while the caller wrote
        if tmp.is_dir():
            if path.exists() and not path.is_dir():
                raise IsADirectoryError(errno.EISDIR, f"refusing to replace the file {path} by a directory", str(path))
            old = path.with_name(f"{path.name}.old{os.getpid()}")
            _remove(old)
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, f"refusing to replace the directory {path} by a file", str(path))
            with open(tmp, "rb+") as f:
                fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# The two system calls every verified write goes through: module functions, so tests can inject
# a full disk or a slow or failing fsync exactly where a real one would strike.


def write_fully(fd: int, data) -> None:
    """os.write until every byte is written (a short write is retried; ENOSPC and EIO raise)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[n:]


def fsync(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the renames inside `directory` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _drop_cache(fd: int) -> None:
    """Ask the kernel to forget the file's cached pages (written and fsynced): the read-back then
    comes from the device where the platform allows it, not from the memory the writes went to."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


class VerifiedWriter:
    """The file object verified_file yields: write(bytes-like) -> bytes written. Buffered in 4 MiB
    pieces; every system write is checked. `record` ({"bytes", "sha256"}) is set on success."""

    _BUFFER = 4 << 20

    def __init__(self, fd: int, path: Path):
        self._fd, self.path = fd, path
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.bytes = 0
        self.record: dict | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self.bytes += len(view)
        if len(view) >= self._BUFFER:  # large pieces go straight to the file, uncopied
            self.flush()
            write_fully(self._fd, view)
        else:
            self._pending.append(bytes(view))  # the caller may reuse its buffer
            self._pending_bytes += len(view)
            if self._pending_bytes >= self._BUFFER:
                self.flush()
        return len(view)

    def flush(self) -> None:
        if self._pending:
            write_fully(self._fd, b"".join(self._pending))
            self._pending, self._pending_bytes = [], 0

    def digest(self) -> str:
        return self._hash.hexdigest()


@contextlib.contextmanager
def verified_file(path: str | os.PathLike) -> Iterator[VerifiedWriter]:
    """Write `path` atomically, then prove it: yields a VerifiedWriter.

    On success: the data is flushed, fsynced and closed (each error raised), the temp file is read
    back from disk and must have the size and sha256 of what was written (else VerificationError),
    then it is renamed over `path`. writer.record = {"bytes": ..., "sha256": ...} is what a
    manifest records. On any error nothing replaces `path` and the temp file is removed.
    """
    with atomic_path(path) as tmp:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o644)
        writer = VerifiedWriter(fd, Path(path))
        try:
            yield writer
            writer.flush()
            fsync(fd)
            _drop_cache(fd)
        finally:
            os.close(fd)  # a close error (NFS reports late write errors here) raises too
        expected = {"bytes": writer.bytes, "sha256": writer.digest()}
        size = tmp.stat().st_size
        found = sha256(tmp) if size == expected["bytes"] else None
        if size != expected["bytes"] or found != expected["sha256"]:
            raise VerificationError(
                errno.EIO,
                f"writing {path} failed: read back {size} bytes (sha256 {found}), wrote {expected['bytes']} "
                f"bytes (sha256 {expected['sha256']}); the file was not committed",
                str(path),
            )
        writer.record = expected


def check_free_space(directory: str | os.PathLike, needed: int, what: str) -> None:
    """Raise OSError(ENOSPC) before writing when `directory`'s filesystem has less than `needed`
    bytes free (plus 1% or 64 MiB of slack, the larger): a build fails at once, not hours in."""
    free = shutil.disk_usage(directory).free
    slack = max(64 << 20, needed // 100)
    if free < needed + slack:
        raise OSError(
            errno.ENOSPC,
            f"not enough free space in {directory} for {what}: about {_mib(needed + slack)} needed, {_mib(free)} free",
        )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


# ---- one writer per directory ---------------------------------------------------------------------------


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


class WriterLock:
    """An exclusive lock on a directory for one writer, held from acquire() to release().

    The lock is an flock(2) on `<directory>/.lock`: the kernel releases it when the holder exits,
    however it exits (kill -9 included), so a lock never outlives its process and a dead holder's
    lock is taken over at once. The file holds the holder's pid, host, start time and command line,
    for the error a second writer gets (LockHeldError); a file left with a holder's details (the
    holder was killed before removing it) is reported as `stale` and overwritten. The file is
    removed on release, while still locked; an acquirer that locked a file that was removed
    meanwhile sees the inode change and tries again, so two writers never hold two different
    files. Not reentrant: a second acquire in the same process fails too.
    """

    NAME = ".lock"

    def __init__(self, directory: str | os.PathLike, what: str = "directory"):
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self.what = what
        self.stale: dict | None = None  # the details a killed holder left behind, if any
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WriterLock:
        if self._fd is not None:
            raise RuntimeError(f"the lock on {self.directory} is already held by this WriterLock")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # each retry means another writer removed the file we locked
            fd = os.open(self.path, _LOCK_FLAGS, 0o644)
            locked = False
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    message = f"lock file {self.path} is not a regular file"
                    raise NotRegularFileError(errno.EINVAL, message, str(self.path))
                if not self._try_lock(fd):
                    holder = _read_holder(fd)
                    raise LockHeldError(self._held_message(holder), holder)
                locked = True
                try:
                    same = _same_file(os.stat(self.path), os.fstat(fd))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                previous = _read_holder(fd)
                self.stale = previous or None
                _write_holder(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    if locked and _same_file(os.stat(self.path), os.fstat(fd)):
                        os.unlink(self.path)  # e.g. a full disk for the details: leave no empty lock file
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._fd = fd
            return self
        raise LockHeldError(f"could not lock {self.path}: it keeps being replaced by other writers")

    def _try_lock(self, fd: int) -> bool:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # released by Windows when the process exits, as flock is
                os.lseek(fd, 1 << 20, os.SEEK_SET)  # a byte past the details, which are read while locked
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except (BlockingIOError, PermissionError):
            return False
        return True

    def _held_message(self, holder: dict) -> str:
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"
            + (f": {holder['command']}" if holder.get("command") else "")
            if holder
            else "a process that has not written its details yet"
        )
        return (
            f"{self.what} {self.directory} is being written by another process ({who}). Only one writer "
            f"at a time: wait for it to finish or stop it (its lock on {self.path} is released when it "
            "exits, even if it is killed)"
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                if _same_file(os.stat(self.path), os.fstat(fd)):
                    os.unlink(self.path)  # while locked: nobody can have locked this file meanwhile
        finally:
            os.close(fd)  # releases the flock


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 1 << 16)
        holder = json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"details": "unreadable"}
    return holder if isinstance(holder, dict) else {"details": "unreadable"}


def _write_holder(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv)[:500],
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    write_fully(fd, json.dumps(holder).encode())
