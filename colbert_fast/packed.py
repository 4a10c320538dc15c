"""PackedDocs: one contiguous token store for a whole collection (ColBERT's IndexPart).

Doc i's token vectors are rows offsets[i] : offsets[i] + lengths[i] of `embeddings`. Offsets are
int64: a real collection has far more than 2^31 elements. Files are safetensors (never pickle)
and load through a memory map, so opening a 100 GB store costs nothing until rows are read.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import torch

from .files import open_regular, verified_file

__all__ = [
    "DocLayout",
    "MappedFile",
    "PackedDocs",
    "PackedView",
    "SUPPORTED_DTYPES",
    "check_dtype",
    "checked_lengths",
    "open_safetensors",
    "read_safetensors",
    "write_safetensors",
    "write_store",
]

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


class PackedView(NamedTuple):
    """What a backend kernel reads of a PackedDocs: the store's own tensors (never to be changed)."""

    embeddings: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    max_length: int


class DocLayout:
    """Where each doc's rows are in a store, shared by PackedDocs and CompressedDocs: lengths, the
    offsets derived from them, the longest doc, and the file under a memory-mapped store.

    The kernels trust these: they are the store's own (lengths and offsets are copies nobody else
    holds) and only copies are handed out, so nothing can change them behind the kernels' back
    (docs/spec.md section 9)."""

    def _set_layout(self, lengths: torch.Tensor, device: torch.device) -> None:
        """lengths: int64, already checked (checked_lengths)."""
        self._lengths = lengths
        self._offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=device)
        torch.cumsum(lengths, 0, out=self._offsets[1:])
        # Host copy of the longest doc: gather sizes its output from it without a device sync.
        self._max_length = int(lengths.max()) if lengths.numel() else 0
        self._mapping: MappedFile | None = None  # the file under a memory-mapped store (load)

    @property
    def lengths(self) -> torch.Tensor:
        """int64 [N]: a copy (the store's own lengths cannot be changed from outside)."""
        return self._lengths.clone()

    @property
    def offsets(self) -> torch.Tensor:
        """int64 [N + 1], the running sum of lengths: a copy, as lengths."""
        return self._offsets.clone()

    @property
    def max_length(self) -> int:
        """The longest doc's length (a host int)."""
        return self._max_length

    @property
    def num_docs(self) -> int:
        return self._lengths.numel()

    def __len__(self) -> int:
        return self.num_docs

    def check_mapping(self) -> None:
        """Raise ValueError when the file under a memory-mapped store has shrunk since it was loaded
        (reading the lost pages would kill the process with SIGBUS). Every op calls it first; it
        costs one fstat. A no-op for a store in memory."""
        if self._mapping is not None:
            self._mapping.check()


class PackedDocs(DocLayout):
    """A packed token store.

    Args:
        embeddings: [T, dim] float32/float16/bfloat16, every doc's rows back to back.
        lengths: int [N], doc i's token count; must sum to T.

    Attributes: offsets int64 [N+1] (offsets[i] is doc i's first row), lengths int64 [N],
    num_docs, dim, dtype, device. The store is memory-safe by construction: lengths are checked
    (non-negative, summing to T without overflow) and copied, and `lengths`, `offsets` return
    copies and `embeddings` a view, so what the kernels index cannot be changed from outside.

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
        lengths = checked_lengths(lengths, embeddings.shape[0], embeddings.device, "embeddings")
        if embeddings.stride(-1) != 1 or embeddings.stride(0) != embeddings.shape[1]:
            embeddings = embeddings.contiguous()
        # The embeddings are reachable only as a view (see the property), the layout only as copies.
        self._embeddings = embeddings
        self._set_layout(lengths, embeddings.device)

    @property
    def embeddings(self) -> torch.Tensor:
        """[T, dim]: every doc's rows back to back (a view of the store's tensor: its values may be
        changed in place, its shape and storage, which the kernels rely on, may not)."""
        return self._embeddings.view(self._embeddings.shape)

    def packed_view(self) -> PackedView:
        """The tensors the scoring kernels read (the store's own, for the backends, after
        check_mapping): not for changing, see the class doc."""
        return PackedView(self._embeddings, self._offsets, self._lengths, self._max_length)

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
    def dim(self) -> int:
        return self._embeddings.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._embeddings.dtype

    @property
    def device(self) -> torch.device:
        return self._embeddings.device

    @property
    def num_tokens(self) -> int:
        return self._embeddings.shape[0]

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
        self.check_mapping()
        start = int(self._offsets[pid])
        return self._embeddings[start : start + int(self._lengths[pid])]

    def to(self, device=None, dtype: torch.dtype | None = None) -> "PackedDocs":
        """A copy on another device and/or dtype (self when nothing changes)."""
        self.check_mapping()
        emb = self._embeddings.to(device=device, dtype=dtype)
        if emb is self._embeddings:
            return self
        return PackedDocs(emb, self._lengths.to(emb.device))

    # ---- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> dict:
        """Write a safetensors file atomically (temp file + rename), verified (read back and
        compared); returns its {"bytes", "sha256"}."""
        self.check_mapping()
        return write_store(path, self._lengths.cpu(), [self._embeddings], self.dim, self.dtype)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, device=None) -> "PackedDocs":
        """Read a store written by save(). With mmap=True the embeddings are a lazy memory map.

        Raises ValueError for a file that is truncated, not ours, inconsistent, or not a regular
        file (a FIFO is refused, never waited on).
        """
        path = Path(path)
        meta, tensors, mapping = open_safetensors(path, mmap)
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
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} is inconsistent: {e}") from None
        docs._mapping = mapping
        return docs.to(device) if device is not None else docs


def write_store(
    path: str | os.PathLike, lengths: torch.Tensor, chunks: Iterable[torch.Tensor], dim: int, dtype: torch.dtype
) -> dict:
    """Write a PackedDocs file from row chunks [T_i, dim] that together hold sum(lengths) rows.

    The rows are streamed, so a collection larger than memory can be written from memory-mapped
    parts. Layout: a safetensors header, lengths (int64), then embeddings; both naturally aligned.
    The write is atomic (temp file + rename) and verified (files.verified_file); returns the file's
    {"bytes", "sha256"}.
    """
    lengths = lengths.to("cpu", torch.int64).contiguous()
    num_tokens = int(lengths.sum())
    return write_safetensors(
        path,
        {"lengths": [lengths], "embeddings": (dtype, (num_tokens, dim), chunks)},
        {"format": _FORMAT},
    )


# ---- safetensors, streamed and memory-mapped (PackedDocs and CompressedDocs files) ----------------


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> dict:
    """Write tensors as one safetensors file, atomically (temp file + rename), streaming the data,
    and verified (read back and compared: files.verified_file). Returns {"bytes", "sha256"}.

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
    with verified_file(path) as f:
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
    return f.record


def _elem_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


class MappedFile:
    """The file under a memory-mapped store, kept open to notice that it shrank.

    Reading a page of a mapping past the end of its (truncated) file raises SIGBUS, which kills the
    process: no portable way turns that signal, raised inside native multi-threaded kernels, into an
    exception. So every op checks the file's size first (one fstat on the mapping's own descriptor,
    ~1 us) and raises ValueError instead. What this cannot catch is a truncation that races with a
    kernel already running; nothing this package writes ever truncates a file in place (every
    write is a new file renamed over the old one, which keeps the old inode, and so any mapping of
    it, intact), so that takes another program truncating the file under a running search.
    """

    def __init__(self, path: Path, mapping: mmap.mmap, size: int):
        self.path, self._mmap, self.size = path, mapping, size

    def check(self) -> None:
        now = self._mmap.size()  # fstat of the mapped file itself, even if `path` now names another
        if now < self.size:
            raise ValueError(
                f"{self.path} shrank from {self.size} to {now} bytes while memory-mapped (truncated by "
                "another program?): reading it would crash the process; load it again"
            )


def read_safetensors(path: str | os.PathLike, mmap: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, {name: tensor}) of a safetensors file; with mmap=True the tensors view a lazy
    memory map. Raises ValueError for a file that is truncated, malformed, inconsistent or not a
    regular file."""
    meta, tensors, _ = open_safetensors(path, mmap)
    return meta, tensors


def open_safetensors(
    path: str | os.PathLike, mmap: bool = True
) -> tuple[dict, dict[str, torch.Tensor], MappedFile | None]:
    """read_safetensors, plus the MappedFile under the tensors (None with mmap=False)."""
    path = Path(path)
    try:
        fd = open_regular(path, "store file")
    except ValueError as e:  # a FIFO, a device: refused before a byte is read (a FIFO would block)
        raise ValueError(str(e)) from None
    with os.fdopen(fd, "rb") as f:
        header, data_start, file_size = _read_safetensors_header(path, f)
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict):
            raise ValueError(f"{path} has a corrupt header: metadata is not an object")
        layout = {}
        for name, info in header.items():
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                shape = [int(x) for x in info["shape"]]
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError, AttributeError):
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
        mapped = None
        if mmap:
            # Mapped from the descriptor that was checked (not the path, which could name another
            # file by now); private (copy-on-write): writes to the tensors never reach the file.
            m = _mmap_module.mmap(f.fileno(), file_size, access=_mmap_module.ACCESS_COPY)
            raw = torch.frombuffer(m, dtype=torch.uint8)  # keeps the mapping alive
            mapped = MappedFile(path, m, file_size)
        else:
            f.seek(0)
            raw = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
            if raw.numel() != file_size:
                raise ValueError(f"{path} changed size while being read")
    out = {}
    for name, (dtype, shape, begin, end) in layout.items():
        chunk = raw[data_start + begin : data_start + end]
        if (data_start + begin) % _elem_size(dtype):
            chunk = chunk.clone()  # unaligned (never written by us): copy rather than misread
        out[name] = chunk.view(dtype).reshape(shape)
    return {str(k): str(v) for k, v in meta.items()}, out, mapped


_mmap_module = mmap  # the module: `mmap` is also read_safetensors' argument name


def _read_safetensors_header(path: Path, f) -> tuple[dict, int, int]:
    file_size = os.fstat(f.fileno()).st_size
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


def checked_lengths(lengths, num_tokens: int, device: torch.device, rows_desc: str = "the store") -> torch.Tensor:
    """lengths as a new int64 [N] tensor on device (a copy nobody else holds), each >= 0, summing to
    num_tokens, checked without int64 wrap-around.

    Raises TypeError for non-integer lengths, ValueError naming the first negative one or the sums
    ("offsets do not add up"). Why the check cannot be fooled by a wrap-around: every length is
    first checked to be <= num_tokens, so each partial sum is at most 2 * num_tokens < 2^63 before
    it is compared with num_tokens; the first partial sum past num_tokens is therefore exact, and
    any set of lengths whose true sum is not num_tokens fails (e.g. [2^63-1, 2^63+1-2^20, 5+2^20],
    whose int64 sum wraps around to 5).
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be [N], got shape {tuple(lengths.shape)}")
    host = lengths.to("cpu", torch.int64, copy=True)
    if host.numel():
        if int(host.min()) < 0:
            bad = int(torch.nonzero(host < 0)[0])
            raise ValueError(f"lengths must be >= 0, got lengths[{bad}] = {int(host[bad])}")
        running = host.cumsum(0)
        if not (
            int(host.max()) <= num_tokens and bool((running <= num_tokens).all()) and int(running[-1]) == num_tokens
        ):
            total = sum(host.tolist())  # exact (Python ints): the message names the true sum
            raise ValueError(
                f"offsets do not add up: lengths sum to {total} rows but {rows_desc} has {num_tokens} rows"
            )
    elif num_tokens != 0:
        raise ValueError(f"offsets do not add up: no docs but {rows_desc} has {num_tokens} rows")
    return host.to(device)
