"""Ranking metrics from MS MARCO-format files: MRR@10, Recall@k, nDCG@k.

    qrels  "qid 0 pid rel" (MS MARCO / TREC, tab or space separated) or "qid pid [rel]"
    run    "qid pid rank [score]" (MS MARCO) or "qid Q0 pid rank score tag" (TREC)

Conventions (those of the MS MARCO evaluation script and trec_eval): a doc is relevant when its
grade is > 0; metrics are averaged over the queries that have a relevant doc in the qrels; a
query the run lacks scores 0. Recall@k = relevant docs in the top k / relevant docs of the query.
nDCG@k uses gain = grade and discount 1 / log2(rank + 1), normalized by the ideal ranking.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from .files import atomic_path

__all__ = ["evaluate", "load_qrels", "load_run", "mrr_at", "ndcg_at", "recall_at", "write_run"]

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Sequence[str]]


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


def _judged(qrels: Qrels) -> dict[str, dict[str, int]]:
    return {q: {p: g for p, g in rel.items() if g > 0} for q, rel in qrels.items() if any(g > 0 for g in rel.values())}


def mrr_at(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant doc within the top k."""
    judged = _judged(qrels)
    if not judged:
        raise ValueError("the qrels hold no relevant doc")
    total = 0.0
    for qid, rel in judged.items():
        for rank, pid in enumerate(run.get(qid, [])[:k], 1):
            if pid in rel:
                total += 1.0 / rank
                break
    return total / len(judged)


def recall_at(run: Run, qrels: Qrels, k: int) -> float:
    """Mean fraction of each query's relevant docs found in its top k."""
    judged = _judged(qrels)
    if not judged:
        raise ValueError("the qrels hold no relevant doc")
    total = 0.0
    for qid, rel in judged.items():
        total += len(rel.keys() & set(run.get(qid, [])[:k])) / len(rel)
    return total / len(judged)


def ndcg_at(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean nDCG@k with linear gains (the grade) and log2(rank + 1) discounts (trec_eval's ndcg_cut)."""
    judged = _judged(qrels)
    if not judged:
        raise ValueError("the qrels hold no relevant doc")
    total = 0.0
    for qid, rel in judged.items():
        dcg = sum(rel.get(pid, 0) / math.log2(rank + 1) for rank, pid in enumerate(run.get(qid, [])[:k], 1))
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, 1))
        total += dcg / idcg
    return total / len(judged)


def evaluate(run: Run, qrels: Qrels, recall_ks: Sequence[int] = (50, 200, 1000)) -> dict[str, float]:
    """MRR@10, nDCG@10 and Recall@k for each k, plus query counts."""
    judged = _judged(qrels)
    out = {"MRR@10": mrr_at(run, qrels, 10), "nDCG@10": ndcg_at(run, qrels, 10)}
    for k in recall_ks:
        out[f"Recall@{k}"] = recall_at(run, qrels, k)
    out["queries"] = len(judged)
    out["queries_missing_from_run"] = sum(1 for q in judged if q not in run)
    return out
