"""The ColBERT encoder: a BERT-family backbone, a bias-free linear layer to `dim`, L2 normalization.

    query  "[CLS] [Q] tok ... [SEP] [MASK] ... [MASK]"   always query_maxlen tokens; every one is scored
    doc    "[CLS] [D] tok ... [SEP]"                      at most doc_maxlen; padding and punctuation dropped

[Q] and [D] are ColBERT's reserved-token markers ([unused0], [unused1] in BERT's vocabulary). Query
augmentation pads the query with [MASK] tokens up to query_maxlen; their output vectors take part
in scoring. With attend_to_mask_tokens=False (ColBERTv2's setting) the real tokens do not attend
to them. Doc tokens whose id is in the punctuation skiplist are encoded (they give context) but
never stored or scored.

ColBERT.load reads a local ColBERTv2, PyLate or colbert_fast directory and ColBERT.save writes the
ColBERTv2 format plus colbert_fast.json (the formats: colbert_fast.retrieval.checkpoints).
"""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import checkpoints
from .padding import pad_ids

__all__ = ["ColBERT", "EncoderConfig"]


@dataclasses.dataclass
class EncoderConfig:
    """Everything that decides what the encoder outputs (all of it is saved with the model).

    The JSON keys are these field names, in colbert_fast.json, as before the rename from
    ColBERTConfig (which is colbert-ai's own class name: this is not that class).

    Args:
        dim: output vector size (the linear layer's out_features).
        query_maxlen: queries are truncated/padded to exactly this many tokens (markers included).
        doc_maxlen: docs are truncated to this many tokens (markers included).
        query_marker, doc_marker: tokens inserted after [CLS] ([Q] and [D]); None inserts none
            (a model that was not trained with markers, such as the embedded default).
        attend_to_mask_tokens: whether query tokens attend to the [MASK] padding.
        query_expansion: pad queries with [MASK] (True, ColBERT) or with [PAD], masked out (False).
        mask_punctuation: drop skiplist tokens from docs.
        skiplist: the skiplist words; None means string.punctuation (each character).
        similarity: "cosine" (dot product of unit vectors) or "l2" (negative squared distance).
    """

    dim: int = 128
    query_maxlen: int = 32
    doc_maxlen: int = 180
    query_marker: str | None = "[unused0]"
    doc_marker: str | None = "[unused1]"
    attend_to_mask_tokens: bool = False
    query_expansion: bool = True
    mask_punctuation: bool = True
    skiplist: list[str] | None = None
    similarity: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("dim", "query_maxlen", "doc_maxlen"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EncoderConfig.{name} must be a positive int, got {value!r}")
        if self.query_maxlen < 3 or self.doc_maxlen < 3:
            raise ValueError("query_maxlen and doc_maxlen must be >= 3 ([CLS], marker, [SEP])")
        if self.similarity not in ("cosine", "l2"):
            raise ValueError(f"similarity must be 'cosine' or 'l2', got {self.similarity!r}")

    @property
    def skiplist_words(self) -> list[str]:
        return list(string.punctuation) if self.skiplist is None else list(self.skiplist)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class ColBERT(torch.nn.Module):
    """ColBERT's query and document encoder.

    Args:
        backbone: a transformers encoder (BertModel or any AutoModel returning last_hidden_state).
        tokenizer: its tokenizer; must know the markers and have a [MASK] token (query augmentation).
        config: EncoderConfig.
        linear: nn.Linear(hidden, config.dim, bias=False); a fresh one when None.

    Example:
        >>> enc = ColBERT.load("path/to/colbertv2.0")
        >>> Q, q_mask = enc.encode_queries(["what is late interaction?"])   # [1, 32, 128], all True
        >>> docs = enc.encode_docs(["ColBERT scores with MaxSim."])         # [[L, 128]]
    """

    def __init__(self, backbone, tokenizer, config: EncoderConfig | None = None, linear=None):
        super().__init__()
        config = config or EncoderConfig()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        hidden = backbone.config.hidden_size
        if linear is None:
            linear = torch.nn.Linear(hidden, config.dim, bias=False)
        if linear.bias is not None:
            raise ValueError("ColBERT's projection is bias-free; got a linear layer with a bias")
        if (linear.in_features, linear.out_features) != (hidden, config.dim):
            raise ValueError(
                f"linear layer is {linear.in_features}->{linear.out_features}, expected {hidden}->{config.dim} "
                "(backbone hidden size -> config.dim)"
            )
        self.linear = linear.to(next(backbone.parameters()).dtype)
        self.query_marker_id = self._token_id(config.query_marker, "query_marker")
        self.doc_marker_id = self._token_id(config.doc_marker, "doc_marker")
        self.markers = {t for t in (self.query_marker_id, self.doc_marker_id) if t is not None}
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        self.pad_id = int(tokenizer.pad_token_id)
        mask_id = tokenizer.mask_token_id
        if config.query_expansion and mask_id is None:
            raise ValueError("query_expansion needs a [MASK] token but the tokenizer has none")
        self.mask_id = int(mask_id) if mask_id is not None else self.pad_id
        self.register_buffer("skip_ids", torch.tensor(self._skiplist_ids(), dtype=torch.int64), persistent=False)
        self.eval()

    # ---- tokens ------------------------------------------------------------------------------

    def _token_id(self, token: str | None, what: str) -> int | None:
        if token is None:
            return None
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or (tid == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise ValueError(f"{what} {token!r} is not in the tokenizer's vocabulary")
        return int(tid)

    def _skiplist_ids(self) -> list[int]:
        """Token ids of the skiplist words: each as a vocabulary entry and as its first word piece."""
        if not self.config.mask_punctuation:
            return []
        unk = self.tokenizer.unk_token_id
        ids = set()
        for word in self.config.skiplist_words:
            tid = self.tokenizer.convert_tokens_to_ids(word)
            if tid is not None and tid != unk:
                ids.add(int(tid))
            pieces = self.tokenizer.encode(word, add_special_tokens=False)
            if pieces and pieces[0] != unk:
                ids.add(int(pieces[0]))
        # Never drop the markers or the special tokens, whatever the skiplist says.
        ids -= self.markers | {self.pad_id, self.mask_id}
        return sorted(ids)

    def _tokenize(self, texts: Sequence[str], marker_id: int | None, maxlen: int) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single str")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        # Truncate to maxlen - 1, then insert the marker after the first (CLS) token: the same
        # ids ColBERT gets by tokenizing ". text" and overwriting the "." with the marker.
        if marker_id is None:
            enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=maxlen)
            return [list(ids) for ids in enc["input_ids"]]
        enc = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=maxlen - 1)
        return [ids[:1] + [marker_id] + ids[1:] for ids in enc["input_ids"]]

    def tokenize_queries(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids [B, Lq], attention_mask [B, Lq], q_mask bool [B, Lq] (tokens that are scored)."""
        cfg = self.config
        rows = self._tokenize(texts, self.query_marker_id, cfg.query_maxlen)
        width = cfg.query_maxlen if cfg.query_expansion else None  # None: the longest query
        ids, real = pad_ids(rows, self.mask_id if cfg.query_expansion else self.pad_id, width)
        if cfg.query_expansion:
            attention = real | cfg.attend_to_mask_tokens
            q_mask = torch.ones_like(real)  # query augmentation: the [MASK] outputs are scored too
        else:
            attention, q_mask = real, real
        return ids, attention.long(), q_mask

    def tokenize_docs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids [B, L], attention_mask [B, L], keep bool [B, L] (not padding, not skiplist)."""
        rows = self._tokenize(texts, self.doc_marker_id, self.config.doc_maxlen)
        ids, real = pad_ids(rows, self.pad_id)
        keep = real & ~torch.isin(ids, self.skip_ids.cpu())
        return ids, real.long(), keep

    # ---- encoding ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit vectors [B, L, dim] in fp32 for every position (masking is the caller's job)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.linear(hidden).float(), p=2, dim=-1)

    @torch.inference_mode()
    def encode_queries(self, texts: Sequence[str], batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Q fp32 [B, Lq, dim] (unit rows) and q_mask bool [B, Lq], on the encoder's device."""
        if len(texts) == 0:
            raise ValueError("encode_queries needs at least one query")
        ids, attention, q_mask = self.tokenize_queries(texts)
        out = [
            self(ids[s : s + batch_size].to(self.device), attention[s : s + batch_size].to(self.device))
            for s in range(0, len(texts), batch_size)
        ]
        return torch.cat(out), q_mask.to(self.device)

    @torch.inference_mode()
    def encode_docs(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """One fp32 [L_i, dim] tensor per doc (padding and skiplist tokens dropped), on the encoder's device.

        Encodes the texts as one batch: the indexer sorts by length and calls this per batch.
        """
        if len(texts) == 0:
            return []
        ids, attention, keep = self.tokenize_docs(texts)
        D = self(ids.to(self.device), attention.to(self.device))
        keep = keep.to(self.device)
        return [D[i][keep[i]] for i in range(D.shape[0])]

    # ---- files -------------------------------------------------------------------------------

    @classmethod
    def from_backbone(cls, backbone, tokenizer, config: EncoderConfig | None = None, seed: int | None = None):
        """A fresh model (random linear layer, seeded when seed is given) on top of a backbone."""
        config = config or EncoderConfig()
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        hidden = backbone.config.hidden_size
        linear = torch.nn.Linear(hidden, config.dim, bias=False)
        with torch.no_grad():
            bound = 1.0 / hidden**0.5
            linear.weight.copy_(torch.rand(config.dim, hidden, generator=generator) * 2 * bound - bound)
        return cls(backbone, tokenizer, config, linear)

    def save(self, path: str | os.PathLike) -> None:
        """Write a ColBERTv2-format directory (loadable by ColBERT and PyLate too), replacing `path`
        atomically: a crash never leaves a half-written model there."""
        checkpoints.write_checkpoint(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device=None, dtype: torch.dtype | None = None, **overrides) -> ColBERT:
        """Load a local ColBERTv2-format, PyLate or colbert_fast directory (never the hub).

        overrides: EncoderConfig fields that replace the checkpoint's (e.g. doc_maxlen=300).
        """
        found = checkpoints.read_checkpoint(path)
        linear = torch.nn.Linear(found.linear_weight.shape[1], found.linear_weight.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(found.linear_weight)
        config = EncoderConfig.from_dict({**found.config, **overrides})
        model = cls(found.backbone, found.tokenizer, config, linear)
        return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model
