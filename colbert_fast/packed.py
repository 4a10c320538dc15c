"""PackedDocs: one contiguous token store for a whole collection (ColBERT's IndexPart).

Doc i's token vectors are rows offsets[i] : offsets[i] + lengths[i] of `embeddings`. Offsets are
int64: a real collection has far more than 2^31 elements. Files are safetensors (never pickle)
and load through a memory map, so opening a 100 GB store costs nothing until rows are read.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .files import atomic_path

__all__ = ["PackedDocs", "SUPPORTED_DTYPES", "check_dtype", "read_safetensors", "write_safetensors", "write_store"]

# The dtypes a store holds, and so the dtypes every op scores (docs/spec.md section 4).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
}
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
        meta, tensors = read_safetensors(path, mmap)
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a colbert_fast PackedDocs file (no '{_FORMAT}' metadata)")
        for name in ("embeddings", "lengths"):
            if name not in tensors:
                raise ValueError(f"{path} has no tensor '{name}'")
        if tensors["lengths"].dtype != torch.int64 or tensors["embeddings"].dtype not in SUPPORTED_DTYPES:
            dtypes = f"lengths {tensors['lengths'].dtype}, embeddings {tensors['embeddings'].dtype}"
            raise ValueError(f"{path}: unsupported dtypes ({dtypes})")
        try:
            docs = cls(tensors["embeddings"], tensors["lengths"])
        except TypeError as e:
            raise ValueError(f"{path} is inconsistent: {e}") from None
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
    write_safetensors(
        path,
        {"lengths": [lengths], "embeddings": (dtype, (num_tokens, dim), chunks)},
        {"format": _FORMAT},
    )


# ---- safetensors, streamed and memory-mapped (PackedDocs and CompressedDocs files) ----------------


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> None:
    """Write tensors as one safetensors file, atomically (temp file + rename), streaming the data.

    tensors: name -> a list of tensors concatenated along dim 0, or (dtype, shape, iterable of
    chunks) when the chunks are produced on the fly (their rows must add up to shape[0]).
    """
    specs = {}
    for name, value in tensors.items():
        if isinstance(value, tuple):
            dtype, shape, chunks = value
        else:
            dtype, chunks = value[0].dtype, value
            shape = (sum(c.shape[0] for c in value), *value[0].shape[1:])
        specs[name] = (dtype, tuple(int(x) for x in shape), chunks)
    # Widest elements first: every tensor then starts at a multiple of its element size (each
    # size is a multiple of its element size), so a memory map can view it in place, and the data
    # has no gaps (which the safetensors format forbids).
    specs = dict(sorted(specs.items(), key=lambda kv: -_elem_size(kv[1][0])))
    header: dict = {"__metadata__": dict(metadata)}
    start = 0
    for name, (dtype, shape, _) in specs.items():
        nbytes = math.prod(shape) * _elem_size(dtype)
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [start, start + nbytes]}
        start += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header so the data starts 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, (dtype, shape, chunks) in specs.items():
            row_bytes = math.prod(shape[1:]) * _elem_size(dtype)
            step = max(1, _WRITE_STEP_BYTES // max(1, row_bytes))
            rows = 0
            for chunk in chunks:
                if chunk.dtype != dtype or tuple(chunk.shape[1:]) != shape[1:]:
                    raise ValueError(
                        f"{name}: chunk of shape {tuple(chunk.shape)} dtype {chunk.dtype}: expected "
                        f"[rows, {', '.join(map(str, shape[1:]))}] {dtype}"
                    )
                for s in range(0, chunk.shape[0], step):
                    f.write(chunk[s : s + step].contiguous().cpu().view(torch.uint8).numpy().tobytes())
                rows += chunk.shape[0]
            if rows != shape[0]:
                raise ValueError(f"offsets do not add up: {name} should have {shape[0]} rows, the chunks hold {rows}")


def _elem_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def read_safetensors(path: str | os.PathLike, mmap: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, {name: tensor}) of a safetensors file; with mmap=True the tensors view a lazy
    memory map. Raises ValueError for a file that is truncated, malformed or inconsistent."""
    path = Path(path)
    header, data_start, file_size = _read_safetensors_header(path)
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has a corrupt header: metadata is not an object")
    layout = {}
    for name, info in header.items():
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = [int(x) for x in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path} has a corrupt header entry for tensor '{name}'") from None
        if any(x < 0 for x in shape) or not 0 <= begin <= end:
            raise ValueError(f"{path}: tensor '{name}' has a bad shape or byte range")
        if data_start + end > file_size:
            raise ValueError(
                f"{path} is truncated: tensor '{name}' ends at byte {data_start + end}, file has {file_size}"
            )
        if end - begin != math.prod(shape) * _elem_size(dtype):
            raise ValueError(f"{path}: tensor '{name}' size does not match shape {shape}")
        layout[name] = (dtype, shape, begin, end)
    if mmap:
        storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=file_size)
        raw = torch.empty(0, dtype=torch.uint8).set_(storage)
    else:
        raw = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    out = {}
    for name, (dtype, shape, begin, end) in layout.items():
        chunk = raw[data_start + begin : data_start + end]
        if (data_start + begin) % _elem_size(dtype):
            chunk = chunk.clone()  # unaligned (never written by us): copy rather than misread
        out[name] = chunk.view(dtype).reshape(shape)
    return {str(k): str(v) for k, v in meta.items()}, out


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
