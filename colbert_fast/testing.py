"""What the tests and the benchmark scripts generate: never imported by the package itself.

    tiny_encoder          a ColBERT on a 2-layer, hidden-32 BERT built from a config and a
                          hand-made WordPiece vocab (no downloads)
    write_collection,     small generated collection / queries TSVs
    write_queries
    clustered_collection  E1, the synthetic clustered collection of docs/perf.md (it lives in
                          colbert_fast.benchmark.collections: `colbert-fast bench --workload E1`
                          generates it too)

It sits outside the scoring library and the retrieval system (it may use both): tests/ and bench/
import it, so nothing imports from tests/.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import torch

from colbert_fast.benchmark.collections import clustered_collection
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
