"""The text files of the retrieval system: collection, queries, qrels and run files.

    collection  "pid \\t text" per line (MS MARCO; a third column is a title: "title | text")
    queries     "qid \\t text" per line
    qrels       "qid 0 pid rel" (MS MARCO / TREC, tab or space separated) or "qid pid [rel]"
    run         "qid pid rank [score]" (MS MARCO) or "qid Q0 pid rank score tag" (TREC)

Readers name the file and line of anything they cannot read; writers are atomic (a reader sees
the old file or the whole new one).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from colbert_fast.files import atomic_path

__all__ = ["load_qrels", "load_run", "read_collection", "read_queries", "write_collection", "write_run"]


def read_collection(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """An MS MARCO collection TSV: `pid \\t text` per line (a third column is a title: "title | text").

    A header line starting with "id\\t" is skipped. Raises ValueError naming the line for a line
    without a tab, an empty pid, or a duplicate pid.
    """
    pids, texts, seen = [], [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if lineno == 1 and parts[0] == "id":
                continue
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'pid<TAB>text', found no tab")
            pid, text = parts[0].strip(), parts[1]
            if len(parts) >= 3 and parts[2].strip():
                text = f"{parts[2].strip()} | {text}"
            if not pid:
                raise ValueError(f"{path}:{lineno}: empty pid")
            if pid in seen:
                raise ValueError(f"{path}:{lineno}: duplicate pid {pid!r}")
            seen.add(pid)
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
    """A queries TSV: 'qid <TAB> text' per line. Returns (qids, texts)."""
    qids, texts = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            qid, sep, text = line.partition("\t")
            if not sep or not qid.strip():
                raise ValueError(f"{path}:{lineno}: expected 'qid<TAB>query text'")
            qids.append(qid.strip())
            texts.append(text)
    if not qids:
        raise ValueError(f"{path} holds no queries")
    return qids, texts


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """qid -> {pid: grade}. Accepts 4 columns (qid, iter, pid, grade), 3 (qid, pid, grade) or 2 (qid, pid)."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if lineno == 1 and parts[0] in ("query-id", "qid", "query_id"):
                continue  # BEIR-style header
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
            qrels[qid][pid] = max(grade, qrels[qid].get(pid, grade))
    if not qrels:
        raise ValueError(f"{path} holds no judgements")
    return dict(qrels)


def load_run(path: str | os.PathLike) -> dict[str, list[str]]:
    """qid -> pids ranked best first. Accepts 'qid pid rank [score]' or TREC 'qid Q0 pid rank score tag'.

    Rows are ordered by their rank column; a pid repeated for a query keeps its best rank.
    """
    rows: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
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
