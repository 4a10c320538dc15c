"""The standard workloads of docs/perf.md, built on a device with a fixed seed.

All: dim 128, L2-normalized rows, doc lengths uniform in [20, 180], Lq 32 unless stated.

    R1  rerank     1 query x 1,000 candidates from a packed store of 100,000 docs
    R2  rerank     1 query x 10,000 candidates (same store)
    R3  batch      64 queries x their own 1,000 candidates each (same store; no candidate shared)
    X1  all-pairs  64 queries x the same 1,000 docs, padded to 180 with valid lengths
    X2  all-pairs  128 x 128 docs of Ld 300 (in-batch training shape; every token valid)
    P1  ColPali    1 query (Lq 1024) x 1,000 docs of Ld 1024 (every patch valid)
    T1  training   X2's shape, forward + backward

Three sizes: "full" (docs/perf.md, the GPU default), "quick" (the CPU default, scaled so the whole
suite runs in well under two minutes on a 2-core machine: what is scaled is stated in each
workload's `scaled` text) and "tiny" (seconds; for tests and CI smoke runs). Rerank candidates
are drawn without replacement, so every doc a query scores is a distinct read.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch

from ..compressed import CompressedDocs
from ..packed import PackedDocs
from . import counters

DIM = 128
LEN_LO, LEN_HI = 20, 180
SIZES = ("full", "quick", "tiny")


@dataclass(frozen=True)
class Spec:
    name: str
    mode: str  # "packed" | "pairs" | "train"
    title: str
    B: int
    K: int  # candidates per query (packed) or docs (pairs/train)
    Lq: int = 32
    Ld: int | None = None  # fixed doc length (pairs/train); None: uniform [20, 180] padded to 180
    store: int = 100_000  # packed store size


# docs/perf.md sizes, then the scaled-down sizes per workload.
FULL = {
    "R1": Spec("R1", "packed", "rerank 1 q x 1,000 cands (store 100k)", B=1, K=1_000),
    "R2": Spec("R2", "packed", "rerank 1 q x 10,000 cands (store 100k)", B=1, K=10_000),
    "R3": Spec("R3", "packed", "batch 64 q x 1,000 own cands (store 100k)", B=64, K=1_000),
    "X1": Spec("X1", "pairs", "all-pairs 64 q x 1,000 docs (Ld<=180)", B=64, K=1_000),
    "X2": Spec("X2", "pairs", "all-pairs 128 q x 128 docs, Ld 300", B=128, K=128, Ld=300),
    "P1": Spec("P1", "pairs", "ColPali 1 q x 1,000 docs, Lq 1024, Ld 1024", B=1, K=1_000, Lq=1024, Ld=1024),
    "T1": Spec("T1", "train", "train fwd+bwd 128 q x 128 docs, Ld 300", B=128, K=128, Ld=300),
}
QUICK = {
    "R1": {"store": 10_000},
    "R2": {"K": 5_000, "store": 10_000},
    "R3": {"B": 16, "K": 250, "store": 10_000},
    "X1": {"B": 16, "K": 250},
    "X2": {"B": 32, "K": 32},
    "P1": {"K": 16},
    "T1": {"B": 32, "K": 32},
}
TINY = {
    "R1": {"K": 50, "store": 400},
    "R2": {"K": 200, "store": 400},
    "R3": {"B": 3, "K": 20, "store": 400},
    "X1": {"B": 3, "K": 20},
    "X2": {"B": 4, "K": 4, "Ld": 40},
    "P1": {"K": 2, "Lq": 64, "Ld": 64},
    "T1": {"B": 4, "K": 4, "Ld": 40},
}
WORKLOADS = tuple(FULL)
# Compressed stores scored beside the float store in the packed workloads (name -> codec, nbits).
CODECS = {"residual1": ("residual", 1), "residual2": ("residual", 2), "residual4": ("residual", 4), "int8": ("int8", 8)}
DEFAULT_CODECS = ("residual2", "int8")
# The latency-vs-number-of-docs sweep: R1's shape (1 query, same store) at K candidates, named S<K>.
SWEEP = {
    "full": (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000),
    "quick": (100, 300, 1_000, 3_000, 10_000),
    "tiny": (10, 30, 100),
}


def sweep_names(size: str) -> list[str]:
    return [f"S{k}" for k in SWEEP[size]]


def spec(name: str, size: str = "full") -> Spec:
    if name.startswith("S") and name[1:].isdigit():
        store = spec("R1", size).store
        k = int(name[1:])
        if not 1 <= k <= store:
            raise ValueError(f"sweep workload {name}: K must be in [1, {store}] (the {size} store)")
        return Spec(name, "packed", f"rerank sweep 1 q x {k:,} cands (store {store // 1000}k)", B=1, K=k, store=store)
    if name not in FULL:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    base = FULL[name]
    changes = {"quick": QUICK, "tiny": TINY}.get(size, {}).get(name, {})
    return Spec(**{**base.__dict__, **changes})


def scaled_text(name: str, size: str) -> str | None:
    """What differs from docs/perf.md at this size, e.g. 'B 64->16, K 1000->250'; None at full size."""
    if name not in FULL:  # a sweep point: only its store can be scaled
        full_store, store = spec("R1", "full").store, spec("R1", size).store
        return None if full_store == store else f"store {full_store}->{store}"
    base, s = FULL[name], spec(name, size)
    diffs = [
        f"{f} {getattr(base, f)}->{getattr(s, f)}"
        for f in ("B", "K", "Lq", "Ld", "store")
        if getattr(base, f) != getattr(s, f)
    ]
    return ", ".join(diffs) or None


@dataclass
class Case:
    """One workload's inputs on a device, plus everything the counters need."""

    spec: Spec
    size: str
    dtype: torch.dtype
    device: torch.device
    Q: torch.Tensor  # [B, Lq, dim]
    docs: PackedDocs | None = None  # packed mode
    pids: torch.Tensor | None = None  # packed mode: int64 [B, K]
    D: torch.Tensor | None = None  # pairs/train: [N, Ld, dim]
    d_lengths: torch.Tensor | None = None  # pairs/train: int64 [N], None = every token valid
    lengths_cpu: torch.Tensor = field(default=None)  # host copy: [B, K] candidate lengths or [N]
    pad_len: int = 0  # the padded baseline's Ld (longest doc it must pad to)
    codes_cache: dict | None = None  # packed mode: codec name -> CompressedDocs of the same docs (shared)
    seed: int = 0

    def codes(self, codec: str) -> CompressedDocs:
        """The packed store as a compressed store (codes_store), built once per store and codec."""
        if self.codes_cache is None:
            self.codes_cache = {}
        if codec not in self.codes_cache:
            self.codes_cache[codec] = codes_store(self.docs, codec, self.seed)
        return self.codes_cache[codec]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def num_docs_per_query(self) -> int:
        return self.spec.K

    def counts(self) -> counters.Counts:
        s, elem = self.spec, self.Q.element_size()
        real = int(self.lengths_cpu.sum())
        if self.mode == "packed":
            return counters.packed_counts(s.B, s.K, s.Lq, s.Lq, DIM, real, self.pad_len, elem)
        fn = counters.pairs_counts if self.mode == "pairs" else counters.train_counts
        return fn(s.B, s.K, s.Lq, s.Lq, DIM, real, self.pad_len, elem, has_lengths=self.d_lengths is not None)

    def describe(self) -> dict:
        s = self.spec
        return {
            "name": s.name,
            "mode": s.mode,
            "title": s.title,
            "size": self.size,
            "B": s.B,
            "K": s.K,
            "Lq": s.Lq,
            "Ld": s.Ld,
            "store": s.store if s.mode == "packed" else None,
            "dim": DIM,
            "pad_len": self.pad_len,
            "real_doc_tokens": int(self.lengths_cpu.sum()),
            "scaled": scaled_text(s.name, self.size),
        }


def seed_for(name: str, seed: int = 0) -> int:
    """A stable per-workload seed (crc32, not hash(): Python salts str hashes per process)."""
    return (zlib.crc32(name.encode()) + seed) % (2**31)


def normalized_rows(n: int, dim: int, dtype, device, gen: torch.Generator, chunk: int = 1 << 20) -> torch.Tensor:
    """n L2-normalized rows, generated in chunks so a 10M-row store never needs an fp32 copy."""
    out = torch.empty((n, dim), dtype=dtype, device=device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = torch.randn((stop - start, dim), generator=gen, device=device, dtype=torch.float32)
        out[start:stop] = torch.nn.functional.normalize(x, dim=-1).to(dtype)
    return out


def build_store(num_docs: int, dtype, device, seed: int = 0) -> PackedDocs:
    gen = torch.Generator(device=device).manual_seed(seed_for("store", seed))
    lengths = torch.randint(LEN_LO, LEN_HI + 1, (num_docs,), generator=gen, device=device)
    emb = normalized_rows(int(lengths.sum()), DIM, dtype, device, gen)
    return PackedDocs(emb, lengths)


def build(name: str, size: str, dtype: torch.dtype, device, seed: int = 0, store_cache: dict | None = None) -> Case:
    """Workload `name` at `size` on `device`. Packed workloads share one store per (size, dtype)
    through `store_cache` (building a 100k-doc store is the slowest part of setup)."""
    s = spec(name, size)
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed_for(name, seed))
    Q = normalized_rows(s.B * s.Lq, DIM, dtype, device, gen).view(s.B, s.Lq, DIM)
    if s.mode == "packed":
        key = (s.store, dtype, str(device), seed)
        docs = store_cache.get(key) if store_cache is not None else None
        if docs is None:
            docs = build_store(s.store, dtype, device, seed)
            if store_cache is not None:
                store_cache[key] = docs
        codes_cache = store_cache.setdefault(("codes", *key), {}) if store_cache is not None else None
        if s.B * s.K > docs.num_docs:
            raise ValueError(f"{name}: {s.B} x {s.K} distinct candidates need a store of >= {s.B * s.K} docs")
        perm = torch.randperm(docs.num_docs, generator=gen, device=device)[: s.B * s.K]
        pids = perm.view(s.B, s.K).contiguous()
        lengths_cpu = docs.lengths[pids].cpu()
        return Case(
            s, size, dtype, device, Q, docs=docs, pids=pids, lengths_cpu=lengths_cpu, pad_len=docs.max_length,
            codes_cache=codes_cache, seed=seed,
        )  # fmt: skip
    if s.Ld is None:  # padded to 180 with uniform valid lengths
        d_lengths = torch.randint(LEN_LO, LEN_HI + 1, (s.K,), generator=gen, device=device)
        D = normalized_rows(s.K * LEN_HI, DIM, dtype, device, gen).view(s.K, LEN_HI, DIM)
        return Case(s, size, dtype, device, Q, D=D, d_lengths=d_lengths, lengths_cpu=d_lengths.cpu(), pad_len=LEN_HI)
    D = normalized_rows(s.K * s.Ld, DIM, dtype, device, gen).view(s.K, s.Ld, DIM)
    return Case(s, size, dtype, device, Q, D=D, lengths_cpu=torch.full((s.K,), s.Ld), pad_len=s.Ld)


def codes_store(docs: PackedDocs, name: str, seed: int = 0) -> CompressedDocs:
    """A compressed store (codec `name` of CODECS) of the same docs and lengths as `docs`, with its
    codes drawn at random: scoring speed does not depend on which codes a token has, and encoding a
    10M-token store (k-means) would dominate a benchmark run. Decoded rows have norm ~1, as real
    ones do; quality is measured where it means something (`colbert-fast experiment`). Residual
    stores get PLAID's codebook size, 2**floor(log2(16 sqrt(tokens))), so the centroid table is as
    large (and as uncached) as a real index's."""
    codec, nbits = CODECS[name]
    device = docs.device
    T = docs.num_tokens
    gen = torch.Generator(device=device).manual_seed(seed_for("codes-" + name, seed))
    if codec == "int8":
        codes = torch.randint(-127, 128, (T, DIM), generator=gen, device=device, dtype=torch.int8)
        scales = torch.full((T,), (3.0 / DIM) ** 0.5 / 127, dtype=torch.float16, device=device)
        return CompressedDocs("int8", 8, docs.lengths, codes, scales)
    num_centroids = 2 ** int(math.floor(math.log2(max(1.0, 16 * math.sqrt(T)))))
    centroids = normalized_rows(num_centroids, DIM, torch.float32, device, gen)
    levels = 1 << nbits
    weights = torch.linspace(-0.05, 0.05, levels, device=device)
    cutoffs = (weights[1:] + weights[:-1]) / 2
    ids = torch.randint(0, num_centroids, (T,), generator=gen, device=device, dtype=torch.int32)
    width = -(-DIM * nbits // 8)
    codes = torch.randint(0, 256, (T, width), generator=gen, device=device, dtype=torch.uint8)
    scales = torch.ones(T, dtype=torch.float16, device=device)
    return CompressedDocs("residual", nbits, docs.lengths, codes, scales, ids, centroids, cutoffs, weights)
