"""E1: a synthetic clustered collection for end-to-end search, generated with a fixed seed.

Token vectors of real ColBERT models cluster (by word and sense) with a skewed frequency, and a
query shares tokens with the passages that answer it. The generator imitates that much:

    centres    V unit vectors ("senses"), used with Zipf-like frequency p(v) ~ 1 / (v + 10)
    doc        length uniform in [20, 180]; each doc has 8 topic centres drawn by frequency;
               half its tokens come from its topics, half from the whole vocabulary by frequency;
               token = normalize(centre + noise), noise N(0, 0.08^2) per component (|noise| ~ 0.9)
    query      32 tokens near the tokens of one target doc: normalize(doc token + N(0, 0.08^2))

so every query has one doc it was drawn from, nearby docs that share its topics, and a long tail
that shares only frequent senses. V grows with the collection (~ 8 sqrt(#tokens), at least 256).
Docs are generated in blocks of 4,096 from per-block seeds (bounded memory; the same collection
on every machine).

The benchmark's end-to-end workload E1 (colbert_fast/benchmark/engines.py) and the tests
(through colbert_fast.testing) use it.
"""

from __future__ import annotations

import math

import torch

from colbert_fast import PackedDocs

__all__ = ["DIM", "QUERY_TOKENS", "clustered_collection"]

DIM = 128
LEN_LO, LEN_HI = 20, 180
QUERY_TOKENS = 32
TOPICS_PER_DOC = 8
NOISE = 0.08
_BLOCK = 4096


def _vocabulary(num_docs: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    expected_tokens = num_docs * (LEN_LO + LEN_HI) / 2
    v = max(256, int(8 * math.sqrt(expected_tokens)))
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(v, dim, generator=g), dim=-1)
    freq = 1.0 / (torch.arange(v, dtype=torch.float64) + 10.0)
    return centres, freq / freq.sum()


def _block(first: int, count: int, centres: torch.Tensor, freq: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed * 1_000_003 + first // _BLOCK)
    dim = centres.shape[1]
    lengths = torch.randint(LEN_LO, LEN_HI + 1, (count,), generator=g)
    topics = torch.multinomial(freq, count * TOPICS_PER_DOC, replacement=True, generator=g).view(count, -1)
    total = int(lengths.sum())
    owner = torch.repeat_interleave(torch.arange(count), lengths)
    from_topic = torch.rand(total, generator=g) < 0.5
    topic_pick = topics[owner, torch.randint(0, TOPICS_PER_DOC, (total,), generator=g)]
    global_pick = torch.multinomial(freq, total, replacement=True, generator=g)
    sense = torch.where(from_topic, topic_pick, global_pick)
    tokens = centres[sense] + NOISE * torch.randn(total, dim, generator=g)
    return torch.nn.functional.normalize(tokens, dim=-1).to(torch.float16), lengths


def clustered_collection(
    num_docs: int, *, num_queries: int = 64, dim: int = DIM, seed: int = 0
) -> tuple[PackedDocs, torch.Tensor, torch.Tensor]:
    """E1 at `num_docs` docs.

    Returns:
        docs: PackedDocs, fp16, L2-normalized rows, lengths uniform in [20, 180];
        queries: fp32 [num_queries, 32, dim], unit rows;
        targets: int64 [num_queries], the doc each query was drawn from.
    """
    if num_docs < 1 or num_queries < 0:
        raise ValueError(f"need num_docs >= 1 and num_queries >= 0, got {num_docs}, {num_queries}")
    centres, freq = _vocabulary(num_docs, dim, seed)
    rows, lengths = [], []
    for first in range(0, num_docs, _BLOCK):
        emb, lens = _block(first, min(_BLOCK, num_docs - first), centres, freq, seed)
        rows.append(emb)
        lengths.append(lens)
    docs = PackedDocs(torch.cat(rows), torch.cat(lengths))
    g = torch.Generator().manual_seed(seed + 7919)
    targets = torch.randint(0, num_docs, (num_queries,), generator=g)
    picks = torch.rand(num_queries, QUERY_TOKENS, generator=g)
    rows_of = docs.offsets[targets, None] + (picks * docs.lengths[targets, None]).long()
    Q = docs.embeddings[rows_of].float() + NOISE * torch.randn(num_queries, QUERY_TOKENS, dim, generator=g)
    return docs, torch.nn.functional.normalize(Q, dim=-1), targets
