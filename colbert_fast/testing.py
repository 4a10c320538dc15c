"""What the tests and the benchmark scripts generate: never imported by the package itself.

    tiny_encoder          a ColBERT on a 2-layer, hidden-32 BERT built from a config and a
                          hand-made WordPiece vocab (no downloads)
    write_collection,     small generated collection / queries TSVs
    write_queries
    clustered_collection  E1, the synthetic clustered collection of docs/perf.md

It sits outside the scoring library and the retrieval system (it may use both): tests/ and bench/
import it, so nothing imports from tests/.

E1: a synthetic clustered collection for end-to-end search, generated with a fixed seed.

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
"""

from __future__ import annotations

import math
import random
import string
from pathlib import Path

import torch

from colbert_fast import PackedDocs
from colbert_fast.retrieval import tsv
from colbert_fast.retrieval.encoder import ColBERT, EncoderConfig

__all__ = ["clustered_collection", "tiny_encoder", "write_collection", "write_queries", "write_vocab"]

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "cat",
    "dog",
    "fish",
    "bird",
    "horse",
    "red",
    "blue",
    "green",
    "yellow",
    "house",
    "car",
    "tree",
    "river",
    "mountain",
    "city",
    "run",
    "jump",
    "eat",
    "sleep",
    "swim",
    "big",
    "small",
    "fast",
    "slow",
    "old",
    "new",
    "water",
    "fire",
    "stone",
    "music",
    "paper",
    "coffee",
    "tea",
    "bread",
    "apple",
    "night",
    "day",
    "sun",
    "moon",
    "star",
    "ship",
    "train",
    "road",
    "bridge",
    "garden",
]
SPECIAL = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SUFFIXES = ["##s", "##ing", "##ed"]


def write_vocab(directory: Path) -> Path:
    """vocab.txt of the tiny encoder: BERT's special tokens, punctuation, WORDS and a few suffixes."""
    vocab = SPECIAL + list(string.punctuation) + WORDS + SUFFIXES
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return path


def tiny_encoder(directory: Path, seed: int = 0, **config_values):
    """A ColBERT on a 2-layer, hidden-32 BERT with random (seeded) weights."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(str(write_vocab(directory)))
    torch.manual_seed(seed)
    bert_config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    backbone = BertModel(bert_config).eval()
    return ColBERT.from_backbone(backbone, tokenizer, EncoderConfig(**config_values), seed=seed)


def random_text(rng: random.Random, lo: int, hi: int) -> str:
    """lo..hi words of WORDS, some with a suffix, some followed by punctuation."""
    words = []
    for _ in range(rng.randint(lo, hi)):
        w = rng.choice(WORDS)
        if rng.random() < 0.15:
            w += rng.choice(["s", "ing", "ed"])
        words.append(w)
        if rng.random() < 0.1:
            words.append(rng.choice(",.!?;:"))
    return " ".join(words)


def write_collection(path: Path, n: int, seed: int = 0, lo: int = 3, hi: int = 40, start: int = 0) -> list[str]:
    """An MS MARCO-style TSV (pid \\t text) of n generated passages; returns the texts."""
    rng = random.Random(seed)
    texts = [random_text(rng, lo, hi) for _ in range(n)]
    tsv.write_collection(path, [str(start + i) for i in range(n)], texts)
    return texts


def write_queries(path: Path, n: int, seed: int = 1) -> list[str]:
    """A queries TSV (qid \t text) of n generated queries q0..q{n-1}; returns the texts."""
    rng = random.Random(seed)
    texts = [random_text(rng, 2, 8) for _ in range(n)]
    Path(path).write_text("".join(f"q{i}\t{t}\n" for i, t in enumerate(texts)))
    return texts


# ---- E1 -------------------------------------------------------------------------------------------

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
