"""Atomic writes and checksums: a reader sees the old file (or directory) or the whole new one, never a torn one.

One helper, atomic_path, serves every write of the package: the packed store, the index files
and manifests, run files, collections, model directories. The caller writes a temporary sibling
(a file, or a directory it creates); only a complete one is renamed over the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator


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
    On an exception the temp path is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    _remove(tmp)  # left by a crashed run that had this pid
    try:
        yield tmp
        if tmp.is_dir():
            old = path.with_name(f"{path.name}.old{os.getpid()}")
            _remove(old)
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the renames inside `directory` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()
