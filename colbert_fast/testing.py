"""A tiny BERT-based ColBERT built from a config and a hand-made WordPiece vocab (no downloads),
and small generated collections, for the pipeline tests."""

from __future__ import annotations

import random
import string
from pathlib import Path

import torch

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
    vocab = SPECIAL + list(string.punctuation) + WORDS + SUFFIXES
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return path


def tiny_encoder(directory: Path, seed: int = 0, **config_values):
    """A ColBERT on a 2-layer, hidden-32 BERT with random (seeded) weights."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from colbert_fast.model import ColBERT, ColBERTConfig

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
    return ColBERT.from_backbone(backbone, tokenizer, ColBERTConfig(**config_values), seed=seed)


def random_text(rng: random.Random, lo: int, hi: int) -> str:
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
    Path(path).write_text("".join(f"{start + i}\t{t}\n" for i, t in enumerate(texts)))
    return texts


def write_queries(path: Path, n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    texts = [random_text(rng, 2, 8) for _ in range(n)]
    Path(path).write_text("".join(f"q{i}\t{t}\n" for i, t in enumerate(texts)))
    return texts
