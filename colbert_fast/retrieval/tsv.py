"""The text files of the retrieval system: collection, queries, qrels and run files.

    collection  "pid \\t text" per line (MS MARCO; a third column is a title: "title | text")
    queries     "qid \\t text" per line
    qrels       "qid 0 pid rel" (MS MARCO / TREC, tab or space separated) or "qid pid [rel]"
    run         "qid pid rank [score]" (MS MARCO) or "qid Q0 pid rank score tag" (TREC)

Every reader goes through one strict line reader (_lines): UTF-8, a byte-order mark at the start
dropped, lines ending in \\n or \\r\\n; a \\r anywhere else is an error (a passage broken by a stray
carriage return must not become two). What a reader cannot read unambiguously raises ValueError
naming the file and line: a wrong column count, an empty id or one holding whitespace (qrels and
run files are whitespace-separated, so such an id could not round-trip), a duplicate pid, qid or
judgement. Nothing is merged or dropped silently; blank lines hold no record and are skipped. A
header line is skipped only when it is exactly one of the known headers (HEADERS), never because
a first id looks like one. Writers are atomic (a reader sees the old file or the whole new one).
"""

from __future__ import annotations

import codecs
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from colbert_fast.files import atomic_path, open_regular

__all__ = ["load_qrels", "load_run", "read_collection", "read_queries", "write_collection", "write_run"]

# The exact first lines read as headers (split into fields): BEIR's corpus TSV export and its qrels.
# Anything else on line 1 is a record (queries files have no header).
HEADERS = {
    "collection": {("id", "text"), ("id", "text", "title")},
    "qrels": {("query-id", "corpus-id", "score"), ("query_id", "corpus_id", "score")},
}


def _lines(path: str | os.PathLike, what: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its ending) of every non-blank line of a UTF-8 text file.

    Read as bytes and split at \\n only: text mode would also split at a lone \\r (universal
    newlines), silently turning one damaged passage into two records. Opened with open_regular: a
    FIFO is refused, not waited on.
    """
    with os.fdopen(open_regular(path, what), "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            if b"\r" in raw:
                raise ValueError(f"{path}:{lineno}: a carriage return (\\r) inside the line (a damaged line ending?)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if line.strip():
                yield lineno, line


def _records(path, what: str, sep: str | None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every record: split at `sep` (None: any whitespace), the first
    non-blank line skipped when it is exactly one of HEADERS[what]."""
    first = True
    for lineno, line in _lines(path, what):
        fields = line.split(sep)
        if first and tuple(fields) in HEADERS.get(what, ()):
            first = False
            continue
        first = False
        yield lineno, fields


def _id(value: str, path, lineno: int, name: str) -> str:
    if not value:
        raise ValueError(f"{path}:{lineno}: empty {name}")
    if len(value.split()) != 1 or value.strip() != value:
        raise ValueError(f"{path}:{lineno}: {name} {value!r} holds whitespace")
    return value


def read_collection(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """An MS MARCO collection TSV: `pid \\t text` per line (a third column is a title: "title | text").

    Raises ValueError naming the line for a line with other than 2 or 3 columns, an empty pid or
    one holding whitespace, or a duplicate pid (see the module doc for the line rules).
    """
    pids, texts, seen = [], [], {}
    for lineno, parts in _records(path, "collection", "\t"):
        if len(parts) not in (2, 3):
            found = "no tab" if len(parts) == 1 else f"{len(parts)} columns"
            raise ValueError(f"{path}:{lineno}: expected 'pid<TAB>text' or 'pid<TAB>text<TAB>title', found {found}")
        pid, text = _id(parts[0], path, lineno, "pid"), parts[1]
        if len(parts) == 3 and parts[2].strip():
            text = f"{parts[2].strip()} | {text}"
        if pid in seen:
            raise ValueError(f"{path}:{lineno}: duplicate pid {pid!r} (first on line {seen[pid]})")
        seen[pid] = lineno
        pids.append(pid)
        texts.append(text)
    if not pids:
        raise ValueError(f"{path} holds no passages")
    return pids, texts


def write_collection(path: str | os.PathLike, pids: Sequence[str], texts: Sequence[str]) -> Path:
    """Write 'pid \\t text' lines (whitespace in a text folded to single spaces: one line each)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(f"{pid}\t{' '.join(text.split())}\n" for pid, text in zip(pids, texts))
    return path


def read_queries(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """A queries TSV: 'qid <TAB> text' per line. Returns (qids, texts).

    Raises ValueError naming the line for a line with other than 2 columns, an empty qid or one
    holding whitespace, or a duplicate qid (two queries under one id would be merged downstream).
    """
    qids, texts, seen = [], [], {}
    for lineno, parts in _records(path, "queries", "\t"):
        if len(parts) != 2:
            found = "no tab" if len(parts) == 1 else f"{len(parts)} columns"
            raise ValueError(f"{path}:{lineno}: expected 'qid<TAB>query text', found {found}")
        qid = _id(parts[0], path, lineno, "qid")
        if qid in seen:
            raise ValueError(f"{path}:{lineno}: duplicate qid {qid!r} (first on line {seen[qid]})")
        seen[qid] = lineno
        qids.append(qid)
        texts.append(parts[1])
    if not qids:
        raise ValueError(f"{path} holds no queries")
    return qids, texts


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """qid -> {pid: grade}. Accepts 4 columns (qid, iter, pid, grade), 3 (qid, pid, grade) or 2 (qid, pid).

    A (qid, pid) pair judged twice is an error naming both lines (no silent max or last-wins).
    """
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    where: dict[tuple[str, str], int] = {}
    for lineno, parts in _records(path, "qrels", None):
        try:
            if len(parts) == 4:
                qid, _, pid, grade = parts[0], parts[1], parts[2], int(parts[3])
            elif len(parts) == 3:
                qid, pid, grade = parts[0], parts[1], int(parts[2])
            elif len(parts) == 2:
                qid, pid, grade = parts[0], parts[1], 1
            else:
                raise ValueError(f"{len(parts)} columns")
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: not a qrels line ('qid 0 pid grade'): {e}") from None
        if (qid, pid) in where:
            raise ValueError(f"{path}:{lineno}: qid {qid!r} judges pid {pid!r} again (first on line {where[qid, pid]})")
        where[qid, pid] = lineno
        qrels[qid][pid] = grade
    if not qrels:
        raise ValueError(f"{path} holds no judgements")
    return dict(qrels)


def load_run(path: str | os.PathLike) -> dict[str, list[str]]:
    """qid -> pids ranked best first. Accepts 'qid pid rank [score]' or TREC 'qid Q0 pid rank score tag'.

    Rows are ordered by their rank column; a pid repeated for a query keeps its best rank (runs
    of other systems hold such repeats; this is the documented rule, not a silent merge).
    """
    rows: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for lineno, parts in _records(path, "run", None):
        try:
            if len(parts) == 6:
                qid, pid, rank = parts[0], parts[2], int(parts[3])
            elif len(parts) in (3, 4):
                qid, pid, rank = parts[0], parts[1], int(parts[2])
            else:
                raise ValueError(f"{len(parts)} columns")
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: not a run line ('qid pid rank [score]'): {e}") from None
        rows[qid].append((rank, pid))
    run = {}
    for qid, ranked in rows.items():
        seen, order = set(), []
        for _, pid in sorted(ranked, key=lambda r: r[0]):
            if pid not in seen:
                seen.add(pid)
                order.append(pid)
        run[qid] = order
    return run


def write_run(path: str | os.PathLike, rankings: Iterable[tuple[str, Sequence[tuple[str, float]]]]) -> None:
    """Write 'qid \\t pid \\t rank \\t score' lines (rank from 1) for (qid, [(pid, score), ...]) pairs."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for qid, ranking in rankings:
            f.writelines(f"{qid}\t{pid}\t{rank}\t{score:.6f}\n" for rank, (pid, score) in enumerate(ranking, 1))
