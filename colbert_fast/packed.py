"""PackedDocs: one contiguous token store for a whole collection (ColBERT's IndexPart).

Doc i's token vectors are rows offsets[i] : offsets[i] + lengths[i] of `embeddings`. Offsets are
int64: a real collection has far more than 2^31 elements. Files are safetensors (never pickle)
and load through a memory map, so opening a 100 GB store costs nothing until rows are read.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .files import atomic_path

__all__ = ["PackedDocs", "SUPPORTED_DTYPES", "check_dtype", "write_store"]

# The dtypes a store holds, and so the dtypes every op scores (docs/spec.md section 4).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_WRITE_STEP_BYTES = 64 << 20  # rows are streamed to disk in pieces of this size
_FORMAT = "colbert_fast.PackedDocs/1"


def check_dtype(name: str, t: torch.Tensor) -> None:
    """TypeError naming `name` unless t holds one of SUPPORTED_DTYPES."""
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; supported: float32, float16, bfloat16")


class PackedDocs:
    """A packed token store.

    Args:
        embeddings: [T, dim] float32/float16/bfloat16, every doc's rows back to back.
        lengths: int [N], doc i's token count; must sum to T.

    Attributes: offsets int64 [N+1] (offsets[i] is doc i's first row), lengths int64 [N],
    num_docs, dim, dtype, device.

    Example:
        >>> docs = PackedDocs.from_list([torch.randn(3, 128), torch.randn(5, 128)])
        >>> docs.offsets.tolist(), docs.lengths.tolist()
        ([0, 3, 8], [3, 5])
    """

    def __init__(self, embeddings: torch.Tensor, lengths: torch.Tensor | Sequence[int]):
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be [T, dim], got shape {tuple(embeddings.shape)}")
        check_dtype("embeddings", embeddings)
        lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
        if lengths.dim() != 1:
            raise ValueError(f"lengths must be [N], got shape {tuple(lengths.shape)}")
        lengths = lengths.to(device=embeddings.device, dtype=torch.int64)
        lengths_cpu = lengths.cpu()
        if lengths_cpu.numel() and int(lengths_cpu.min()) < 0:
            bad = int(torch.nonzero(lengths_cpu < 0)[0])
            raise ValueError(f"lengths must be >= 0, got lengths[{bad}] = {int(lengths_cpu[bad])}")
        total = int(lengths_cpu.sum())
        if total != embeddings.shape[0]:
            raise ValueError(
                f"offsets do not add up: lengths sum to {total} rows but embeddings has "
                f"{embeddings.shape[0]} rows (shape {tuple(embeddings.shape)})"
            )
        if embeddings.stride(-1) != 1 or embeddings.stride(0) != embeddings.shape[1]:
            embeddings = embeddings.contiguous()
        self.embeddings = embeddings
        self.lengths = lengths
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=embeddings.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        self.offsets = offsets
        # Host copy of the longest doc: gather sizes its output from it without a device sync.
        self.max_length = int(lengths_cpu.max()) if lengths_cpu.numel() else 0

    @classmethod
    def from_list(cls, docs: Sequence[torch.Tensor]) -> "PackedDocs":
        """Pack a list of [L_i, dim] tensors (L_i may be 0)."""
        if len(docs) == 0:
            raise ValueError("from_list needs at least one doc to know dim and dtype")
        for i, d in enumerate(docs):
            if not isinstance(d, torch.Tensor) or d.dim() != 2:
                shape = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
                raise ValueError(f"docs[{i}] must be a [L, dim] tensor, got {shape}")
            if d.shape[1] != docs[0].shape[1] or d.dtype != docs[0].dtype:
                raise ValueError(
                    f"docs[{i}] has shape {tuple(d.shape)} dtype {d.dtype}; docs[0] has dim "
                    f"{docs[0].shape[1]} dtype {docs[0].dtype}: all docs must share dim and dtype"
                )
        return cls(torch.cat(list(docs), dim=0), [d.shape[0] for d in docs])

    @property
    def num_docs(self) -> int:
        return self.lengths.numel()

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.dtype

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    @property
    def num_tokens(self) -> int:
        return self.embeddings.shape[0]

    def __len__(self) -> int:
        return self.num_docs

    def __repr__(self) -> str:
        return (
            f"PackedDocs(num_docs={self.num_docs}, num_tokens={self.num_tokens}, dim={self.dim}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    def doc(self, pid: int) -> torch.Tensor:
        """Doc pid's token rows [L, dim] (a view, no copy)."""
        if not -self.num_docs <= pid < self.num_docs:
            raise IndexError(f"pid {pid} out of range for {self.num_docs} docs")
        pid %= self.num_docs
        start = int(self.offsets[pid])
        return self.embeddings[start : start + int(self.lengths[pid])]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "PackedDocs":
        """A copy on another device and/or dtype (self when nothing changes)."""
        emb = self.embeddings.to(device=device, dtype=dtype)
        if emb is self.embeddings:
            return self
        return PackedDocs(emb, self.lengths.to(emb.device))

    # ---- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file atomically (temp file + rename)."""
        write_store(path, self.lengths.cpu(), [self.embeddings], self.dim, self.dtype)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, device=None) -> "PackedDocs":
        """Read a store written by save(). With mmap=True the embeddings are a lazy memory map.

        Raises ValueError for a file that is truncated, not ours, or inconsistent.
        """
        path = Path(path)
        header, data_start, file_size = _read_safetensors_header(path)
        if header.get("__metadata__", {}).get("format") != _FORMAT:
            raise ValueError(f"{path} is not a colbert_fast PackedDocs file (no '{_FORMAT}' metadata)")
        for name in ("embeddings", "lengths"):
            if name not in header:
                raise ValueError(f"{path} has no tensor '{name}'")
            begin, end = header[name]["data_offsets"]
            if data_start + end > file_size:
                raise ValueError(
                    f"{path} is truncated: tensor '{name}' ends at byte {data_start + end}, file has {file_size}"
                )
        tensors = _load_tensors(path, header, data_start, file_size, mmap)
        docs = cls(tensors["embeddings"], tensors["lengths"])
        return docs.to(device) if device is not None else docs


def write_store(
    path: str | os.PathLike, lengths: torch.Tensor, chunks: Iterable[torch.Tensor], dim: int, dtype: torch.dtype
) -> None:
    """Write a PackedDocs file from row chunks [T_i, dim] that together hold sum(lengths) rows.

    The rows are streamed, so a collection larger than memory can be written from memory-mapped
    parts. Layout: a safetensors header, lengths (int64), then embeddings; both naturally aligned.
    The write is atomic (temp file + rename).
    """
    lengths = lengths.to("cpu", torch.int64).contiguous()
    num_tokens = int(lengths.sum())
    elem = torch.empty(0, dtype=dtype).element_size()
    len_bytes, emb_bytes = lengths.numel() * 8, num_tokens * dim * elem
    header = {
        "__metadata__": {"format": _FORMAT},
        "lengths": {"dtype": "I64", "shape": [lengths.numel()], "data_offsets": [0, len_bytes]},
        "embeddings": {
            "dtype": _ST_NAMES[dtype],
            "shape": [num_tokens, dim],
            "data_offsets": [len_bytes, len_bytes + emb_bytes],
        },
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header so the data starts 8-byte aligned
    written = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.write(lengths.numpy().tobytes())
        step = max(1, _WRITE_STEP_BYTES // max(1, dim * elem))
        for chunk in chunks:
            if chunk.dtype != dtype or chunk.dim() != 2 or chunk.shape[1] != dim:
                raise ValueError(
                    f"chunk of shape {tuple(chunk.shape)} dtype {chunk.dtype}: expected [T, {dim}] {dtype}"
                )
            for start in range(0, chunk.shape[0], step):
                f.write(chunk[start : start + step].contiguous().cpu().view(torch.uint8).numpy().tobytes())
            written += chunk.shape[0]
        if written != num_tokens:
            raise ValueError(f"offsets do not add up: lengths sum to {num_tokens} rows but the chunks hold {written}")


def _read_safetensors_header(path: Path) -> tuple[dict, int, int]:
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path} is truncated or not a safetensors file ({file_size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(file_size - 8, 100 << 20):
            raise ValueError(f"{path} is truncated or not a safetensors file (header length {header_len})")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} has a corrupt header: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupt header")
    return header, 8 + header_len, file_size


def _load_tensors(path: Path, header: dict, data_start: int, file_size: int, mmap: bool) -> dict:
    if mmap:
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=file_size)
        raw = torch.empty(0, dtype=torch.uint8).set_(storage)
    else:
        raw = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    out = {}
    for name in ("embeddings", "lengths"):
        info = header[name]
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None or (name == "lengths") != (dtype == torch.int64):
            raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = info["shape"]
        count = 1
        for s in shape:
            count *= s
        elem = torch.empty(0, dtype=dtype).element_size()
        if end - begin != count * elem:
            raise ValueError(f"{path}: tensor '{name}' size does not match shape {shape}")
        chunk = raw[data_start + begin : data_start + end]
        if (data_start + begin) % elem:
            chunk = chunk.clone()  # unaligned (never written by save): copy rather than misread
        out[name] = chunk.view(dtype).reshape(shape)
    if out["embeddings"].dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{path}: embeddings dtype {out['embeddings'].dtype} is not supported")
    return out
