"""CompressedDocs: a packed token store of codes, scored where it lies (never decoded into memory).

Two codecs (docs/spec.md, "Compressed stores"):

    residual  ColBERTv2's scheme: k-means centroids over token vectors; each token stores its
              centroid id (int32), `nbits` per dimension (1, 2 or 4) indexing 2**nbits bucket
              weights shared by every dimension (learned from the residuals' quantiles), and one
              fp16 scale that gives the decoded vector the original's norm:
                  d = scale * (centroids[id] + bucket_weights[b])              dim 128, 2 bits: 38 B
    int8      one int8 per dimension and an fp16 scale per token: d = scale * code     dim 128: 130 B

against 256 bytes per token for fp16. The decoded vectors are defined once, in
colbert_fast.reference (decode_residual, decode_int8); a store's scores equal reference MaxSim over
them under the tolerance rule. Doc i's tokens are rows offsets[i] : offsets[i] + lengths[i] of
every per-token tensor, as in PackedDocs. Files are safetensors, loaded through a memory map.

    >>> docs = PackedDocs.from_list([torch.randn(30, 128), torch.randn(50, 128)])
    >>> small = CompressedDocs.from_packed(docs, codec="residual", nbits=2)
    >>> cf.maxsim_packed(Q, small, pids)            # scored from the codes
    >>> small.decode()                              # PackedDocs of the decoded fp32 vectors
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from . import reference
from .packed import DocLayout, PackedDocs, checked_lengths, open_safetensors, write_safetensors

__all__ = ["CODECS", "CodesView", "CompressedDocs", "ResidualCodec", "kmeans"]

CODECS = ("residual", "int8")
RESIDUAL_NBITS = (1, 2, 4)
_FORMAT = "colbert_fast.CompressedDocs/1"
_ENCODE_ROWS = 1 << 16  # tokens encoded per step
# The nearest-centroid search's blocks: 1,024 rows x 4,096 centroids (16 MB of fp32 scores).
_ROW_TILE = 1 << 10
_CENTROID_TILE = 1 << 12


class CodesView(NamedTuple):
    """What a backend kernel reads of a CompressedDocs (tensors on one device, contiguous).

    codes uint8 [T, ceil(dim * nbits / 8)] (residual) or int8 [T, dim] (nbits 8); scales fp16 [T];
    centroid_ids int32 [T], centroids fp32 [C, dim], bucket_weights fp32 [2**nbits] (residual;
    None for int8); offsets int64 [N+1]; lengths int64 [N]; nbits; dim.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    centroid_ids: torch.Tensor | None
    centroids: torch.Tensor | None
    bucket_weights: torch.Tensor | None
    offsets: torch.Tensor
    lengths: torch.Tensor
    nbits: int
    dim: int


def _check(cond: bool, message: str, error=ValueError) -> None:
    if not cond:
        raise error(message)


def _expect(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple | None, shape_text: str = "") -> None:
    """t must have `dtype` and `shape` (None: whatever it has is wrong): TypeError naming both."""
    want = shape_text or (f"[{', '.join(map(str, shape))}]" if shape is not None else "")
    ok = t.dtype == dtype and shape is not None and tuple(t.shape) == tuple(shape)
    _check(ok, f"{name} must be {dtype} {want}, got {t.dtype} {tuple(t.shape)}", TypeError)


def kmeans(
    x: torch.Tensor, k: int, iterations: int = 8, seed: int = 0, fast: bool | None = None, progress=None
) -> torch.Tensor:
    """Lloyd's k-means (squared L2) on fp32 rows x [n, dim]: k centroids [k, dim].

    Starts from k distinct random rows; a centroid that loses every point is moved to the point
    farthest from its centroid, so none is wasted. fast (default: where bf16 products are native,
    _bf16_is_fast) assigns points to centroids from bf16 operands and scores (rounded to bf16:
    ~2^-8 of x.c - |c|^2 / 2), so a point may go to a centroid that is that close to its nearest;
    the means stay fp32, and encoding (ResidualCodec.encode) always assigns in fp32. progress: None
    or a callable progress(stage, done, total) (see CompressedDocs.from_packed), told of each pass.
    """
    n = x.shape[0]
    _check(1 <= k <= n, f"k-means needs 1 <= k <= number of vectors, got k={k} for {n} vectors")
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = x.float()
    centroids = x[torch.randperm(n, generator=g)[:k].to(x.device)].clone()
    low = x.bfloat16() if (_bf16_is_fast(x.device) if fast is None else fast) else None
    for it in range(iterations):
        if progress is not None:
            progress("k-means", it, iterations)
        assign, dist = _nearest(x, centroids, low)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].float(), centroids)
        if empty.numel():
            far = torch.topk(dist, min(empty.numel(), n)).indices
            centroids[empty[: far.numel()]] = x[far]
    if progress is not None:
        progress("k-means", iterations, iterations)
    return centroids


def _fp16_exact(centroids: torch.Tensor) -> torch.Tensor:
    """The centroids rounded to fp16 values (kept fp32), unless one would overflow fp16: a store then
    saves its codebook in half the bytes (CompressedDocs.save), and the residuals are taken against
    exactly what is stored. The rounding (2^-11 relative) is far below the residuals it shifts."""
    if not bool((centroids.abs() <= torch.finfo(torch.float16).max).all()):
        return centroids
    return centroids.half().float()


def _bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matrix products beat fp32 ones here: CUDA, or a CPU with AVX-512 BF16 (measured
    2.4x on this project's CI machine); elsewhere bf16 is emulated and slower."""
    if device.type == "cuda":
        return True
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return device.type == "cpu" and check is not None and bool(check())


def _nearest(x: torch.Tensor, centroids: torch.Tensor, low=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid (squared L2) of every row, and that squared distance.

    The nearest centroid maximises x.c - |c|^2 / 2: one addmm per block (the -|c|^2 / 2 row is the
    GEMM's starting value, so no pass over the scores is spent on it) and a max. Blocks are
    _ROW_TILE rows x _CENTROID_TILE centroids, with a running best across centroid tiles: with
    32,768 centroids (E1 100k) a block of all of them leaves 128 rows, and the fp32 pass ran 1.5x
    slower than with these tiles. Equal scores keep the lowest centroid index.
    low: x in bf16 (k-means' training passes): bf16 operands and bf16 scores (~2^-8 of their size;
    the max over bf16 also reads half the bytes), so a point may go to a centroid that close to
    its nearest.
    """
    neg_half_norms = -0.5 * (centroids * centroids).sum(dim=1)
    num_c = centroids.shape[0]
    assign = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    dist = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    if low is not None:
        operands, lhs, bias = centroids.bfloat16().T, low, neg_half_norms.bfloat16()
    else:
        operands, lhs, bias = centroids.T, x, neg_half_norms
    for s in range(0, x.shape[0], _ROW_TILE):
        rows = lhs[s : s + _ROW_TILE]
        for t in range(0, num_c, _CENTROID_TILE):
            v, i = torch.addmm(bias[t : t + _CENTROID_TILE], rows, operands[:, t : t + _CENTROID_TILE]).max(dim=1)
            if t == 0:
                best, idx = v, i
            else:  # strictly better only: a tie keeps the earlier (lower) centroid
                better = v > best
                best, idx = torch.where(better, v, best), torch.where(better, i + t, idx)
        block = x[s : s + _ROW_TILE]
        assign[s : s + _ROW_TILE] = idx
        dist[s : s + _ROW_TILE] = ((block * block).sum(dim=1) - 2 * best.float()).clamp(min=0)
    return assign, dist


def _pack_bits(buckets: torch.Tensor, nbits: int) -> torch.Tensor:
    """int bucket indices [T, dim] -> uint8 [T, ceil(dim * nbits / 8)] (reference.unpack_bits inverts it)."""
    per_byte = 8 // nbits
    T, dim = buckets.shape
    width = -(-dim // per_byte)
    padded = torch.zeros(T, width * per_byte, dtype=torch.int64, device=buckets.device)
    padded[:, :dim] = buckets
    shifts = torch.arange(per_byte, device=buckets.device, dtype=torch.int64) * nbits
    return (padded.view(T, width, per_byte) << shifts).sum(dim=-1).to(torch.uint8)


@dataclasses.dataclass
class ResidualCodec:
    """What a residual store needs to encode tokens: centroids fp32 [C, dim], the bucket cutoffs
    fp32 [2**nbits - 1] (a residual value below cutoff j goes to a bucket <= j) and the bucket
    weights fp32 [2**nbits] (the value each bucket decodes to)."""

    centroids: torch.Tensor
    bucket_cutoffs: torch.Tensor
    bucket_weights: torch.Tensor
    nbits: int

    @classmethod
    def train(
        cls,
        vectors: torch.Tensor,
        nbits: int = 2,
        num_centroids: int | None = None,
        *,
        sample: int | None = None,
        iterations: int = 8,
        seed: int = 0,
        progress=None,
    ) -> ResidualCodec:
        """Fit centroids (k-means on a sample) and bucket cutoffs/weights (quantiles of the sample's
        residuals, as ColBERTv2 does).

        Args:
            vectors: [T, dim] token vectors (any float dtype).
            nbits: 1, 2 or 4 bits per dimension.
            num_centroids: default 2**floor(log2(16 sqrt(T))) (PLAID's rule), at most the sample size.
            sample: vectors used for training (default min(T, max(65,536, 64 * centroids))).
            progress: None or progress(stage, done, total) (CompressedDocs.from_packed).
        """
        _check(nbits in RESIDUAL_NBITS, f"nbits must be one of {RESIDUAL_NBITS}, got {nbits!r}")
        _check(
            vectors.dim() == 2 and vectors.shape[0] >= 1, f"vectors must be [T >= 1, dim], got {tuple(vectors.shape)}"
        )
        T = vectors.shape[0]
        if num_centroids is None:
            num_centroids = 2 ** int(math.floor(math.log2(max(1.0, 16 * math.sqrt(T)))))
        size = min(T, sample or max(65_536, 64 * num_centroids))
        g = torch.Generator().manual_seed(seed)
        rows = torch.randperm(T, generator=g)[:size].sort().values.to(vectors.device)
        x = vectors[rows].float()
        _check(bool(torch.isfinite(x).all()), "vectors hold NaN or inf values")
        centroids = _fp16_exact(kmeans(x, min(num_centroids, size), iterations, seed, progress=progress))
        # The residuals' quantiles are statistics of the sample: assigned as k-means' passes are.
        assign, _ = _nearest(x, centroids, x.bfloat16() if _bf16_is_fast(x.device) else None)
        residuals = (x - centroids[assign]).flatten()
        levels = 1 << nbits
        probs = torch.arange(1, levels, dtype=torch.float64) / levels
        mids = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
        residuals = residuals[torch.randperm(residuals.numel(), generator=g)[: 1 << 24].to(residuals.device)]
        cutoffs = torch.quantile(residuals.double(), probs.to(residuals.device)).float()
        weights = torch.quantile(residuals.double(), mids.to(residuals.device)).float()
        return cls(centroids.contiguous(), cutoffs, weights, nbits)

    def encode(self, vectors: torch.Tensor, progress=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[T, dim] -> (centroid_ids int32 [T], codes uint8 [T, ceil(dim * nbits / 8)], scales fp16 [T]).
        progress: None or progress("encoding", tokens done, T) (CompressedDocs.from_packed)."""
        _check(vectors.dim() == 2 and vectors.shape[1] == self.centroids.shape[1],
               f"vectors must be [T, {self.centroids.shape[1]}], got {tuple(vectors.shape)}")  # fmt: skip
        ids, codes, scales = [], [], []
        centroids = self.centroids.to(vectors.device)
        cutoffs, weights = self.bucket_cutoffs.to(vectors.device), self.bucket_weights.to(vectors.device)
        for s in range(0, vectors.shape[0], _ENCODE_ROWS):
            x = vectors[s : s + _ENCODE_ROWS].float()
            _check(bool(torch.isfinite(x).all()), "vectors hold NaN or inf values")
            assign, _ = _nearest(x, centroids)
            buckets = torch.bucketize(x - centroids[assign], cutoffs)
            decoded = centroids[assign] + weights[buckets]
            ids.append(assign.to(torch.int32))
            codes.append(_pack_bits(buckets, self.nbits))
            scales.append(_norm_scales(x, decoded))
            if progress is not None:
                progress("encoding", s + x.shape[0], vectors.shape[0])
        if not ids:
            dim = self.centroids.shape[1]
            return (torch.zeros(0, dtype=torch.int32), torch.zeros(0, -(-dim * self.nbits // 8), dtype=torch.uint8),
                    torch.zeros(0, dtype=torch.float16))  # fmt: skip
        return torch.cat(ids), torch.cat(codes), torch.cat(scales)


def _norm_scales(x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """fp16 scale per row so that scale * decoded has x's norm (0 for a zero decode)."""
    want, have = x.norm(dim=1), decoded.norm(dim=1)
    scale = torch.where(have > 0, want / have.clamp(min=1e-30), torch.zeros_like(want))
    _check(bool((scale < 65504).all()), "a token's norm does not fit an fp16 scale (over 65,504 times its decode's)")
    return scale.to(torch.float16)


def _encode_int8(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, dim] -> (codes int8 [T, dim], scales fp16 [T]); code = round(x / scale), |code| <= 127."""
    codes, scales = [], []
    for s in range(0, vectors.shape[0], _ENCODE_ROWS):
        x = vectors[s : s + _ENCODE_ROWS].float()
        _check(bool(torch.isfinite(x).all()), "vectors hold NaN or inf values")
        scale = (x.abs().amax(dim=1) / 127).to(torch.float16)  # the stored (rounded) scale is the one used
        _check(bool(torch.isfinite(scale).all()), "a token's largest value does not fit an fp16 scale")
        s32 = scale.float().unsqueeze(1)
        q = torch.where(s32 > 0, torch.round(x / s32.clamp(min=1e-30)), torch.zeros_like(x))
        codes.append(q.clamp(-127, 127).to(torch.int8))
        scales.append(scale)
    if not codes:
        return torch.zeros(0, vectors.shape[1], dtype=torch.int8), torch.zeros(0, dtype=torch.float16)
    return torch.cat(codes), torch.cat(scales)


class CompressedDocs(DocLayout):
    """A packed store of codes (see the module doc). Build one with from_packed or from_list.

    Args (the stored tensors, all on one device):
        codec: "residual" or "int8".
        nbits: 1, 2 or 4 for residual; 8 for int8.
        lengths: int [N], doc i's token count; they sum to T.
        codes: residual: uint8 [T, ceil(dim * nbits / 8)]; int8: int8 [T, dim].
        scales: fp16 [T].
        centroid_ids: residual: int32 [T], each in [0, C).
        centroids: residual: fp32 [C, dim].
        bucket_cutoffs, bucket_weights: residual: fp32 [2**nbits - 1], [2**nbits].
        dim: int8 needs none (codes' width); residual: centroids' width.

    Attributes: offsets int64 [N+1], lengths int64 [N], num_docs, num_tokens, dim, device,
    dtype (float32: queries are converted to it), max_length (host int), bytes_per_token.
    """

    def __init__(
        self,
        codec: str,
        nbits: int,
        lengths,
        codes: torch.Tensor,
        scales: torch.Tensor,
        centroid_ids: torch.Tensor | None = None,
        centroids: torch.Tensor | None = None,
        bucket_cutoffs: torch.Tensor | None = None,
        bucket_weights: torch.Tensor | None = None,
    ):
        _check(codec in CODECS, f"codec must be one of {CODECS}, got {codec!r}")
        for name, t in (("codes", codes), ("scales", scales)):
            _check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
        device = codes.device
        residual_parts = {
            "centroid_ids": centroid_ids,
            "centroids": centroids,
            "bucket_cutoffs": bucket_cutoffs,
            "bucket_weights": bucket_weights,
        }
        if codec == "int8":
            _check(nbits == 8, f"the int8 codec has nbits=8, got {nbits!r}")
            _expect("int8 codes", codes, torch.int8, (codes.shape[0], codes.shape[-1]) if codes.dim() == 2 else None)
            dim = codes.shape[1]
            _check(all(t is None for t in residual_parts.values()), "the int8 codec takes no centroids or buckets")
        else:
            _check(nbits in RESIDUAL_NBITS, f"residual nbits must be one of {RESIDUAL_NBITS}, got {nbits!r}")
            for name, t in residual_parts.items():
                _check(isinstance(t, torch.Tensor), f"the residual codec needs {name} (a tensor)", TypeError)
                _check(t.device == device, f"{name} is on {t.device} but codes are on {device}")
            ok = centroids.dim() == 2 and centroids.shape[0] >= 1
            _expect("centroids", centroids, torch.float32, tuple(centroids.shape) if ok else None, "[C >= 1, dim]")
            dim = centroids.shape[1]
            width = -(-dim * nbits // 8)
            _expect(f"residual codes (dim {dim}, {nbits} bits)", codes, torch.uint8, (codes.shape[0], width))
            _expect("centroid_ids", centroid_ids, torch.int32, (codes.shape[0],))
            levels = 1 << nbits
            _expect("bucket_weights", bucket_weights, torch.float32, (levels,))
            _expect("bucket_cutoffs", bucket_cutoffs, torch.float32, (levels - 1,))
            finite = bool(torch.isfinite(centroids).all()) and bool(torch.isfinite(bucket_weights).all())
            _check(finite, "centroids and bucket_weights must be finite")
            if centroid_ids.numel():
                lo, hi = int(centroid_ids.min()), int(centroid_ids.max())
                in_range = 0 <= lo and hi < centroids.shape[0]
                _check(
                    in_range,
                    f"centroid ids span [{lo}, {hi}]: out of range for {centroids.shape[0]} centroids",
                    IndexError,
                )
        T = codes.shape[0]
        _expect("scales", scales, torch.float16, (T,))
        _check(scales.device == device, f"scales is on {scales.device} but codes are on {device}")
        _check(T == 0 or bool(torch.isfinite(scales).all()), "scales must be finite")
        lengths = checked_lengths(lengths, T, device)
        self.codec, self.nbits, self.dim = codec, int(nbits), int(dim)
        # What the kernels read is the store's own, as in PackedDocs: the tensors are reachable
        # only through read-only properties (views: values may change, shapes and storage may not;
        # centroid ids are re-checked by the CPU op and guarded in the GPU kernels), lengths and
        # offsets only as copies.
        self._codes, self._scales = codes.contiguous(), scales.contiguous()
        self._centroid_ids = None if centroid_ids is None else centroid_ids.contiguous()
        self._centroids = None if centroids is None else centroids.contiguous()
        self._bucket_cutoffs = None if bucket_cutoffs is None else bucket_cutoffs.contiguous()
        self._bucket_weights = None if bucket_weights is None else bucket_weights.contiguous()
        self._set_layout(lengths, device)

    @staticmethod
    def _view(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.view(t.shape)

    @property
    def codes(self) -> torch.Tensor:
        return self._view(self._codes)

    @property
    def scales(self) -> torch.Tensor:
        return self._view(self._scales)

    @property
    def centroid_ids(self) -> torch.Tensor | None:
        return self._view(self._centroid_ids)

    @property
    def centroids(self) -> torch.Tensor | None:
        return self._view(self._centroids)

    @property
    def bucket_cutoffs(self) -> torch.Tensor | None:
        return self._view(self._bucket_cutoffs)

    @property
    def bucket_weights(self) -> torch.Tensor | None:
        return self._view(self._bucket_weights)

    # ---- building ----------------------------------------------------------------------------

    @classmethod
    def from_packed(
        cls,
        docs: PackedDocs,
        codec: str = "residual",
        nbits: int = 2,
        *,
        codebook: ResidualCodec | None = None,
        num_centroids: int | None = None,
        seed: int = 0,
        progress=None,
    ) -> CompressedDocs:
        """Encode a PackedDocs. residual: trains a codebook on the store (or uses `codebook`, e.g.
        an existing index's, so new docs are encoded against the same centroids).

        progress: None, or a callable progress(stage, done, total) told how the long parts advance:
        stage "k-means" (done of `total` passes) and "encoding" (done of `total` tokens); at scale
        they take minutes (E1 100k: 10M tokens, 32,768 centroids). retrieval.build draws them as
        tqdm bars.
        """
        _check(isinstance(docs, PackedDocs), f"docs must be a PackedDocs, got {type(docs).__name__}", TypeError)
        _check(codec in CODECS, f"codec must be one of {CODECS}, got {codec!r}")
        if codec == "int8":
            codes, scales = _encode_int8(docs.embeddings)
            return cls("int8", 8, docs.lengths, codes, scales)
        if codebook is None:
            _check(docs.num_tokens >= 1, "cannot train a residual codebook on a store with no tokens")
            codebook = ResidualCodec.train(docs.embeddings, nbits, num_centroids, seed=seed, progress=progress)
        _check(codebook.nbits == nbits or nbits is None, f"codebook has nbits={codebook.nbits}, asked for {nbits}")
        ids, codes, scales = codebook.encode(docs.embeddings, progress)
        book = {
            "centroids": codebook.centroids,
            "bucket_cutoffs": codebook.bucket_cutoffs,
            "bucket_weights": codebook.bucket_weights,
        }
        book = {k: v.to(docs.device) for k, v in book.items()}
        return cls("residual", codebook.nbits, docs.lengths, codes, scales, ids, **book)

    @classmethod
    def from_list(
        cls, docs: Sequence[torch.Tensor], codec: str = "residual", nbits: int = 2, **kwargs
    ) -> CompressedDocs:
        """Encode a list of [L_i, dim] tensors (see from_packed)."""
        return cls.from_packed(PackedDocs.from_list([d.float() for d in docs]), codec, nbits, **kwargs)

    @property
    def codebook(self) -> ResidualCodec | None:
        """The residual codebook (to encode more docs the same way), None for int8."""
        if self.codec != "residual":
            return None
        return ResidualCodec(self.centroids, self.bucket_cutoffs, self.bucket_weights, self.nbits)

    # ---- the PackedDocs surface (lengths, offsets, max_length, num_docs: DocLayout) ----------

    @property
    def num_tokens(self) -> int:
        return self._codes.shape[0]

    @property
    def device(self) -> torch.device:
        return self._codes.device

    @property
    def dtype(self) -> torch.dtype:
        """float32: the precision of the decoded vectors, which queries are scored against."""
        return torch.float32

    @property
    def bytes_per_token(self) -> float:
        """Per-token bytes: codes + scale (+ centroid id); the shared codebook not counted."""
        per = self._codes.shape[1] * self._codes.element_size() + 2
        return per + (4 if self.codec == "residual" else 0)

    def __repr__(self) -> str:
        extra = f", centroids={self._centroids.shape[0]}" if self._centroids is not None else ""
        return (
            f"CompressedDocs(codec={self.codec!r}, nbits={self.nbits}, num_docs={self.num_docs}, "
            f"num_tokens={self.num_tokens}, dim={self.dim}{extra}, device={self.device})"
        )

    def codes_view(self) -> CodesView:
        """The tensors a scoring kernel reads (see CodesView): the store's own, for the backends
        (after check_mapping). Not for changing: see the class doc."""
        return CodesView(self._codes, self._scales, self._centroid_ids, self._centroids, self._bucket_weights,
                         self._offsets, self._lengths, self.nbits, self.dim)  # fmt: skip

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"codes": self._codes, "scales": self._scales}
        if self.codec == "residual":
            out.update(centroid_ids=self._centroid_ids, centroids=self._centroids,
                       bucket_cutoffs=self._bucket_cutoffs, bucket_weights=self._bucket_weights)  # fmt: skip
        return out

    def to(self, device) -> CompressedDocs:
        """A copy on another device (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        self.check_mapping()
        moved = {k: v.to(device) for k, v in self._tensors().items()}
        return CompressedDocs(self.codec, self.nbits, self._lengths.to(device), **moved)

    def decode_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """fp32 [len(rows), dim]: the decoded vectors of token rows `rows` (reference definition)."""
        self.check_mapping()
        rows = rows.to(torch.int64)
        if self.codec == "int8":
            return reference.decode_int8(self._codes[rows], self._scales[rows])
        return reference.decode_residual(self._centroid_ids[rows], self._codes[rows], self._scales[rows],
                                         self._centroids, self._bucket_weights, self.nbits)  # fmt: skip

    def decode(self, dtype: torch.dtype = torch.float32) -> PackedDocs:
        """Every token decoded, as a PackedDocs (for checks and small collections: this is the
        memory the codes save)."""
        rows = torch.arange(self.num_tokens, device=self.device)
        return PackedDocs(self.decode_rows(rows).to(dtype), self._lengths)

    def doc(self, pid: int) -> torch.Tensor:
        """Doc pid's decoded token vectors, fp32 [L, dim]."""
        if not -self.num_docs <= pid < self.num_docs:
            raise IndexError(f"pid {pid} out of range for {self.num_docs} docs")
        pid %= self.num_docs
        start = int(self._offsets[pid])
        return self.decode_rows(torch.arange(start, start + int(self._lengths[pid]), device=self.device))

    # ---- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> dict:
        """Write a safetensors file atomically (temp file + rename), verified (read back and
        compared); returns its {"bytes", "sha256"}."""
        self.check_mapping()
        tensors = {"lengths": self._lengths.cpu(), **{k: v.cpu() for k, v in self._tensors().items()}}
        c = tensors.get("centroids")
        if c is not None and torch.equal(c.half().float(), c):  # a trained codebook is (_fp16_exact): half the bytes
            tensors["centroids"] = c.half()
        meta = {"format": _FORMAT, "codec": self.codec, "nbits": str(self.nbits), "dim": str(self.dim)}
        return write_safetensors(path, {k: [v] for k, v in tensors.items()}, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, device=None) -> CompressedDocs:
        """Read a store written by save(); raises ValueError for a truncated, foreign or tampered file."""
        path = Path(path)
        meta, tensors, mapping = open_safetensors(path, mmap)
        _check(
            meta.get("format") == _FORMAT, f"{path} is not a colbert_fast CompressedDocs file (no '{_FORMAT}' metadata)"
        )
        codec = meta.get("codec")
        _check(codec in CODECS, f"{path}: unknown codec {codec!r}")
        try:
            nbits = int(meta.get("nbits", ""))
        except ValueError:
            raise ValueError(f"{path}: bad nbits {meta.get('nbits')!r}") from None
        names = ("lengths", "codes", "scales") + (
            ("centroid_ids", "centroids", "bucket_cutoffs", "bucket_weights") if codec == "residual" else ()
        )
        missing = [n for n in names if n not in tensors]
        _check(not missing, f"{path} lacks tensors {missing}")
        extra = sorted(set(tensors) - set(names))
        _check(not extra, f"{path} holds unexpected tensors {extra}")
        if codec == "residual" and tensors["centroids"].dtype == torch.float16:  # saved exactly as fp16
            tensors["centroids"] = tensors["centroids"].float()
        try:
            docs = cls(codec, nbits, **{n: tensors[n] for n in names})
        except (TypeError, IndexError) as e:
            raise ValueError(f"{path} is inconsistent: {e}") from None
        docs._mapping = mapping
        return docs.to(device) if device is not None else docs
