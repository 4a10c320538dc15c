"""Ranking metrics: MRR@10, Recall@k, nDCG@k, and recall against another run.

A run is {qid: [pid, ...] best first}; qrels are {qid: {pid: grade}} (colbert_fast.retrieval.tsv
reads both from MS MARCO / TREC files). Conventions (those of the MS MARCO evaluation script
and trec_eval): a doc is relevant when its grade is > 0; metrics are averaged over the queries
that have a relevant doc in the qrels; a query the run lacks scores 0. Recall@k = relevant docs
in the top k / relevant docs of the query. nDCG@k uses gain = grade and discount
1 / log2(rank + 1), normalized by the ideal ranking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["evaluate", "mrr_at", "ndcg_at", "recall_against", "recall_at"]

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Sequence[str]]


def _cutoff(k) -> int:
    """A rank cut-off: an int >= 1. run[:k] with k <= 0 would silently cut from the end (eval
    --recall -5 printed Recall@-5 = 1.0)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"a rank cut-off must be an int >= 1, got {k!r}")
    return k


def _judged(qrels: Qrels) -> dict[str, dict[str, int]]:
    return {q: {p: g for p, g in rel.items() if g > 0} for q, rel in qrels.items() if any(g > 0 for g in rel.values())}


def mrr_at(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant doc within the top k."""
    _cutoff(k)
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
    _cutoff(k)
    judged = _judged(qrels)
    if not judged:
        raise ValueError("the qrels hold no relevant doc")
    total = 0.0
    for qid, rel in judged.items():
        total += len(rel.keys() & set(run.get(qid, [])[:k])) / len(rel)
    return total / len(judged)


def ndcg_at(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean nDCG@k with linear gains (the grade) and log2(rank + 1) discounts (trec_eval's ndcg_cut)."""
    _cutoff(k)
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


def recall_against(run: Run, truth: Run, cutoffs: Iterable[int]) -> dict[str, float]:
    """Mean fraction of each query's top-c in `truth` that `run` has in its top-c, per cutoff c."""
    out = {}
    for c in sorted({_cutoff(c) for c in cutoffs}):
        fractions = [len(set(run.get(q, [])[:c]) & set(t[:c])) / len(t[:c]) for q, t in truth.items() if t]
        out[str(c)] = sum(fractions) / max(len(fractions), 1)
    return out
