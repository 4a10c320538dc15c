"""Model directories: ColBERTv2, PyLate and colbert_fast checkpoints, read and written.

Checkpoints load from a local directory, never the hub:
  - ColBERTv2 format (as colbert-ir/colbertv2.0 ships): config.json, model.safetensors or
    pytorch_model.bin with the backbone under "bert." plus "linear.weight", artifact.metadata
    (JSON: dim, query_maxlen, doc_maxlen, attend_to_mask_tokens, similarity, ...), tokenizer files.
  - PyLate / sentence-transformers ColBERT: modules.json, a Transformer module, a Dense module
    (1_Dense) and config_sentence_transformers.json (query_prefix, query_length, ...).
write_checkpoint writes the ColBERTv2 format plus colbert_fast.json (our full config), so ColBERT
and PyLate can load what we save. Nothing is unpickled except through torch's weights-only loader.

This module reads and writes the parts (backbone, tokenizer, config values, projection); the
encoder (colbert_fast.retrieval.encoder.ColBERT.load / .save) assembles and takes them apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from colbert_fast.files import atomic_path

__all__ = ["Checkpoint", "read_checkpoint", "read_tokenizer", "require_transformers", "write_checkpoint"]

OUR_CONFIG = "colbert_fast.json"
OUR_FORMAT = "colbert_fast.ColBERT/1"


@dataclasses.dataclass
class Checkpoint:
    """What a model directory holds.

    Attributes:
        backbone: the transformers encoder, weights loaded.
        tokenizer: its tokenizer.
        config: EncoderConfig fields the directory sets (JSON keys of colbert_fast.json's "config").
        linear_weight: the bias-free projection, [dim, hidden].
    """

    backbone: Any
    tokenizer: Any
    config: dict
    linear_weight: torch.Tensor


def require_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the ColBERT encoder needs `transformers`: pip install 'colbert_fast[pipeline]'") from e
    return transformers


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a local ColBERTv2-format, PyLate or colbert_fast directory (never the hub)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist (only local checkpoints are loaded)")
    if (path / "modules.json").exists():
        return _read_pylate(path)
    if (path / "config.json").exists():
        return _read_colbertv2(path)
    raise ValueError(
        f"{path} is neither a ColBERTv2 checkpoint (config.json + weights + artifact.metadata) "
        "nor a PyLate/sentence-transformers one (modules.json)"
    )


def write_checkpoint(model, path: str | os.PathLike) -> None:
    """Write `model` (a ColBERT: backbone, tokenizer, config, linear) as a ColBERTv2-format directory
    plus colbert_fast.json, replacing `path` atomically (files.atomic_path: a crash never leaves a
    half-written model there)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        prefix = model.backbone.base_model_prefix or "model"
        tensors = {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in model.backbone.state_dict().items()}
        tensors["linear.weight"] = model.linear.weight.detach().contiguous().cpu()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.backbone.config.to_dict()
        cfg["architectures"] = ["HF_ColBERT"]
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        model.tokenizer.save_pretrained(str(tmp))
        c = model.config
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
        ours = {"format": OUR_FORMAT, "config": c.to_dict(), "backbone_prefix": prefix}
        (tmp / OUR_CONFIG).write_text(json.dumps(ours, indent=2))


def read_tokenizer(directory: Path):
    transformers = require_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ...
        raise ValueError(f"cannot load a tokenizer from {directory}: {e}") from None


# ---- readers -------------------------------------------------------------------------------------


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


# artifact.metadata key -> EncoderConfig field
_ARTIFACT_KEYS = (
    ("dim", "dim"),
    ("query_maxlen", "query_maxlen"),
    ("doc_maxlen", "doc_maxlen"),
    ("query_token_id", "query_marker"),
    ("doc_token_id", "doc_marker"),
    ("attend_to_mask_tokens", "attend_to_mask_tokens"),
    ("mask_punctuation", "mask_punctuation"),
    ("similarity", "similarity"),
)
# config_sentence_transformers.json key -> EncoderConfig field
_PYLATE_KEYS = (
    ("query_prefix", "query_marker"),
    ("document_prefix", "doc_marker"),
    ("query_length", "query_maxlen"),
    ("document_length", "doc_maxlen"),
    ("attend_to_expansion_tokens", "attend_to_mask_tokens"),
    ("do_query_expansion", "query_expansion"),
    ("skiplist_words", "skiplist"),
)


def _colbertv2_config(path: Path, ours: dict | None) -> dict:
    """EncoderConfig values: colbert_fast.json's when present, else those artifact.metadata sets."""
    if ours is not None:
        return dict(ours.get("config", {}))
    values: dict = {}
    if (path / "artifact.metadata").exists():
        meta = _read_json(path / "artifact.metadata")
        meta = meta.get("config", meta) if isinstance(meta.get("config"), dict) else meta
        if meta.get("interaction", "colbert") != "colbert":
            raise ValueError(f"{path}: interaction {meta['interaction']!r} is not supported (only 'colbert')")
        values = {mine: meta[theirs] for theirs, mine in _ARTIFACT_KEYS if meta.get(theirs) is not None}
    return values


def _read_colbertv2(path: Path) -> Checkpoint:
    transformers = require_transformers()
    ours = _read_json(path / OUR_CONFIG) if (path / OUR_CONFIG).exists() else None
    values = _colbertv2_config(path, ours)
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
    return Checkpoint(backbone, read_tokenizer(path), values, linear_w)


def _read_pylate(path: Path) -> Checkpoint:
    transformers = require_transformers()
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
    st_path = path / "config_sentence_transformers.json"
    st = _read_json(st_path) if st_path.exists() else {}
    values = {"dim": dense_w.shape[0]}
    values.update({mine: st[theirs] for theirs, mine in _PYLATE_KEYS if st.get(theirs) is not None})
    try:
        backbone = transformers.AutoModel.from_pretrained(str(tdir), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ...
        raise ValueError(f"cannot load the Transformer module from {tdir}: {e}") from None
    return Checkpoint(backbone, read_tokenizer(tdir), values, dense_w)
