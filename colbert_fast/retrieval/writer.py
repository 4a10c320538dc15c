"""Writing one generation of an index directory: the lock, verified files, the commit, the cleanup.

Every change of an index on disk (a build today; add, delete and compact later) is a new
generation: new data files under a new tag, then a new manifest naming exactly them (the commit
point), then removal of the files no manifest names any more. IndexWriter is that sequence, and
the only code that writes or deletes in an index directory:

    with IndexWriter(index_dir) as w:        # lock (one writer, LockHeldError for a second one),
                                              # then leftovers of failed writes removed
        w.check_space(bytes_needed, "...")    # before the long work, where the size is known
        w.write("ivf-<tag>.faiss", fill)      # fill(f): f.write(bytes); verified (size, sha256)
        w.add("docs-<tag>.safetensors", rec)  # a file written elsewhere with files.verified_file
        w.carry("docs-<old tag>...", record)   # keep a file of the committed generation (live index)
        w.commit(manifest, {"docs": name, ...})   # re-checks every file, writes the manifest,
                                              # then deletes the previous generation
    # on an exception: nothing is committed, the previous generation is untouched, and this
    # writer's own files are removed; the lock is released either way

What a crash (kill -9) leaves at any point: the previous manifest and every file it names, plus
files of the unfinished generation, which the next writer removes before it starts (partial-*
chunk folders excepted: a build resumes from them).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

from colbert_fast.files import (
    VerificationError,
    WriterLock,
    check_free_space,
    fsync_dir,
    read_regular,
    sha256,
    verified_file,
)

from .index import MANIFEST, OUR_FILES

__all__ = ["IndexWriter", "live_files"]


def live_files(index_dir: Path) -> set[str]:
    """The file names the committed manifest of `index_dir` names (empty when there is none, or it
    cannot be read: then every file of ours is a leftover, and the next commit replaces it)."""
    try:
        manifest = json.loads(read_regular(index_dir / MANIFEST))
        return {str(info["name"]) for info in manifest["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


class IndexWriter:
    """One writer of an index directory, from lock to commit (see the module doc).

    Args:
        index_dir: the index directory (created if needed).
        keep: names in index_dir that leftover cleaning must not remove (a resumable build's
            partial-<fingerprint> folder).
    """

    def __init__(self, index_dir: str | os.PathLike, keep: tuple[str, ...] = ()):
        self.dir = Path(index_dir)
        self.keep = set(keep)
        self.lock = WriterLock(self.dir, "index")
        self.records: dict[str, dict] = {}  # name -> {"bytes", "sha256"} of the files written
        self.carried: dict[str, dict] = {}  # name -> record of committed files the new generation keeps
        self.committed: dict | None = None

    def __enter__(self) -> IndexWriter:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self.remove_leftovers()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.committed is None:  # failed or abandoned: this generation's files go
                for name in self.records:
                    with contextlib.suppress(OSError):
                        (self.dir / name).unlink()
        finally:
            self.lock.release()

    # ---- before writing --------------------------------------------------------------------------

    def remove_leftovers(self) -> list[str]:
        """Remove what failed or killed writers left: data files no committed manifest names, their
        temp files, temp manifests, and temp files inside chunk folders. Returns the names removed."""
        live = live_files(self.dir)
        removed = []
        for path in self.dir.iterdir():
            name = path.name
            if name in live or name in self.keep or name == WriterLock.NAME:
                continue
            ours = OUR_FILES.fullmatch(name) or (
                name.startswith(f"{MANIFEST}.tmp") and name[len(MANIFEST) + 4 :].isdigit()
            )
            if ours and path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(name)
            elif name.startswith("partial-") and path.is_dir() and not path.is_symlink():
                for tmp in path.glob("*.tmp*"):  # a chunk being written when the build died
                    if tmp.is_file():
                        tmp.unlink()
                        removed.append(f"{name}/{tmp.name}")
        return removed

    def check_space(self, needed: int, what: str) -> None:
        """OSError(ENOSPC) now, when the filesystem lacks `needed` bytes (plus slack) for `what`."""
        check_free_space(self.dir, int(needed), what)

    # ---- writing ---------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.dir / name

    def write(self, name: str, fill: Callable[[object], None]) -> dict:
        """Write file `name` through fill(f) (f.write(bytes)), atomically and verified; returns its record."""
        self._check_name(name)
        with verified_file(self.dir / name) as f:
            fill(f)
        return self.add(name, f.record)

    def add(self, name: str, record: dict) -> dict:
        """Adopt a file of this generation written elsewhere (with files.verified_file, which
        returned `record`): it is checked again at commit and removed if the write fails."""
        self._check_name(name)
        self.records[name] = {"bytes": int(record["bytes"]), "sha256": str(record["sha256"])}
        return self.records[name]

    def carry(self, name: str, record: dict) -> dict:
        """Keep a file of the committed generation in the new one (a live index's unchanged segments).

        Only a file the committed manifest names, of the size it records, can be carried; it is never
        removed when this writer fails (it still belongs to the committed generation)."""
        self._check_name(name)
        if name not in live_files(self.dir):
            raise ValueError(f"{name} is not a file of the committed generation: it cannot be carried")
        path = self.dir / name
        size = path.stat().st_size if path.is_file() and not path.is_symlink() else -1
        if size != int(record["bytes"]):
            raise VerificationError(errno.EIO, f"{path} is not the file the manifest names ({size} bytes)", str(path))
        self.carried[name] = {"bytes": int(record["bytes"]), "sha256": str(record["sha256"])}
        return self.carried[name]

    def _check_name(self, name: str) -> None:
        if not OUR_FILES.fullmatch(name):
            raise ValueError(f"{name!r} is not a name an index generation may write (<kind>-<12 hex tag>.<ext>)")

    # ---- the commit ------------------------------------------------------------------------------

    def commit(self, manifest: dict, files: dict[str, str], *, rehash: bool = False) -> dict:
        """Check every file, write the manifest naming them (the commit point), remove the old generation.

        files: manifest key -> file name; each must have been written by this writer. Each is
        checked against what was written: size, and with rehash=True its sha256 read again (each
        was already read back once, right after it was written). Returns the manifest written,
        with its "files" entry ({key: {name, bytes, sha256}}).
        """
        if not self.lock.held:
            raise RuntimeError("IndexWriter.commit outside its `with` block: the lock is not held")
        entries = {}
        for key, name in files.items():
            record = self.records.get(name) or self.carried.get(name)
            if record is None:
                raise ValueError(f"{name} was not written or carried by this writer: it cannot be committed")
            path = self.dir / name
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise VerificationError(errno.ENOENT, f"{path} disappeared before the commit", str(path)) from None
            if size != record["bytes"] or (rehash and sha256(path) != record["sha256"]):
                raise VerificationError(
                    errno.EIO, f"{path} changed after it was written ({size} bytes, wrote {record['bytes']})", str(path)
                )
            entries[key] = {"name": name, **record}
        manifest = {**manifest, "files": entries}
        fsync_dir(self.dir)  # the data files' renames are durable before the manifest names them
        with verified_file(self.dir / MANIFEST) as f:
            f.write(json.dumps(manifest, indent=2).encode())
        fsync_dir(self.dir)  # the commit itself
        self.committed = manifest
        self.remove_leftovers()  # the previous generation, now named by no manifest
        return manifest
