"""Block sizes and autotune configs for every kernel in colbert_fast.kernels, in one place.

What specialises a kernel (a tl.constexpr) is only: the query block BLOCK_M, the padded
dimension DIM_PAD, the dtype (through the pointer types), and the choices an autotune config
makes (doc block, docs per program, warps, stages). Everything that changes per call (B, N, K,
Lq, Ld, lengths, max_len, strides) is a runtime argument, so a new batch or corpus size reuses
the compiled kernel.

The launchers call only the functions below, and tests/backends/test_triton_compile.py enumerates
`variants()` to AOT-compile every combination they can produce for sm_80 and sm_90.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

# Largest embedding dim the Triton kernels take: the whole query tile [BLOCK_M, DIM_PAD] stays in
# registers. Wider embeddings go to the plain-PyTorch backend (see backends/triton_backend.py).
MAX_DIM = 128
DIM_PADS = (64, 128)
# Query tiles: 32 rows covers a ColBERT query (memory-bound: an emptier tile costs nothing); 128
# fills an MMA with stacked queries or holds a chunk of a long (ColPali) query, which the kernels
# loop over. Two sizes keep the number of compiled variants (and the compile check) small.
ALL_PAIRS_BLOCK_MS = (32, 128)
PER_QUERY_BLOCK_MS = (32, 128)
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Backward and gather: fixed blocks (no autotune: the atomic dD kernel accumulates, so it cannot
# be re-run by a tuner, and the others are short gathers).
BWD_BLOCK_T = 32  # query tokens per dQ / atomic-dD program
BWD_BLOCK_J = 64  # doc tokens per deterministic-dD program
BWD_BLOCK_R = 32  # query-token rows per step of the deterministic-dD one-hot product
GATHER_BLOCK_T = 32  # doc rows per gather program
GATHER_BLOCK_D = 128  # dim chunk per gather step
# Compressed stores (colbert_fast.compressed) as the kernels' CODEC/NBITS constexprs: residual at 1,
# 2 and 4 bits, and int8. (CODEC 0 = rows of a float store.)
CODES_VARIANTS = ((1, 1), (1, 2), (1, 4), (2, 8))


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Whether the kernel modules were created for the interpreter: triton.jit decides that when a
# kernel is defined, so TRITON_INTERPRET must be set before colbert_fast.kernels is imported.
INTERPRETED_AT_IMPORT = interpreting()


def dim_pad(dim: int) -> int:
    if dim > MAX_DIM:
        raise ValueError(f"the Triton kernels take dim <= {MAX_DIM}, got dim {dim}")
    return 64 if dim <= 64 else 128


def all_pairs_block_m(rows: int) -> int:
    """Query tile for all-pairs mode, where `rows` = B * Lq query tokens share every doc tile."""
    for bm in ALL_PAIRS_BLOCK_MS:
        if rows <= bm:
            return bm
    return ALL_PAIRS_BLOCK_MS[-1]


def per_query_block_m(lq: int) -> int:
    """Query tile for per-query and packed mode: one query's tokens (chunks of 128 beyond that)."""
    for bm in PER_QUERY_BLOCK_MS:
        if lq <= bm:
            return bm
    return PER_QUERY_BLOCK_MS[-1]


def upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter computes bf16 tl.dot wrongly (upstream bug): upcast there, and only there."""
    return interpreting() and dtype == torch.bfloat16


@dataclass(frozen=True)
class Config:
    """One autotune choice: constexpr block sizes plus warps and pipeline stages."""

    kwargs: tuple  # ((name, value), ...)
    num_warps: int
    num_stages: int

    def as_dict(self) -> dict:
        return dict(self.kwargs)


def _cfg(num_warps: int, num_stages: int, **kwargs) -> Config:
    return Config(tuple(sorted(kwargs.items())), num_warps, num_stages)


# A launch with fewer work units than this (docs x query groups: the programs it would start)
# leaves most SMs idle whatever the tile: it runs one small fixed config and is never tuned
# (tuning such a launch measures launch noise, and its choice would then stick for its bucket).
TINY_WORK = 128


def shape_bucket(kernel: str, work: int, ld: int) -> str:
    """The autotune key of a launch: "tiny", or the work units and padded doc length in powers of 4.

    work = docs x query groups (all-pairs) or queries x candidates (segmented): how many programs
    the grid has, up to the docs per program. ld = padded doc length (0 for the packed store,
    whose lengths are on the device: reading them would be a host sync). The best tile depends on
    both (a grid of 200 programs wants small tiles, one of 100,000 wide ones), so the tuner runs
    once per bucket, never once for every shape (a recompile-free run sees few buckets)."""
    if work < TINY_WORK:
        return "tiny"

    def log4(x: int) -> int:  # ceil(log4(x)) by comparisons only: shapes may be SymInts under torch.compile
        n, v = 0, 1
        while v < x:
            n, v = n + 1, v * 4
        return n

    return f"{kernel}-w{log4(work)}-l{log4(ld)}"


# Compressed stores: the decoded fp32 tile [BLOCK_N, DIM_PAD] and its centroid rows and code fields
# live in registers too, so the segmented kernel's tiles are smaller. Chosen by compiling every
# candidate for sm_80 and sm_90: these are the ones without spills for every codec (the compile
# check holds them to it), per (BLOCK_M, DIM_PAD).
_CODES_CONFIGS = {
    (32, 64): ((8, 3, 16, 4),),  # 4 warps spilled 12-48 B once the kernels tracked non-finite values
    (32, 128): ((8, 3, 32, 4), (8, 2, 64, 2)),  # 64 x 4 docs spilled 8 B for int8 on sm_80
    (128, 64): ((8, 3, 32, 4), (4, 3, 16, 4)),
    (128, 128): ((8, 2, 32, 2),),
}


def autotune_configs(
    kernel: str,
    arch: int | None,
    block_m: int,
    dim_pad_: int,
    elsize: int,
    save_argmax: bool,
    tiny: bool = False,
    codec: int = 0,
) -> list[Config]:
    """Autotune configs for `kernel` ("all_pairs" or "segmented") on sm_<arch>.

    arch None means the interpreter: exactly one config (multi-config tuning needs a driver).
    tiny: one small fixed config (see TINY_WORK). Otherwise two candidates for the fp16/bf16
    inference paths, one for fp32 inputs (tf32x3 splits each operand, so its tiles take three
    times the shared memory and registers: 16-row doc tiles, two stages) and one for the
    training forward (SAVE_ARGMAX). Every config compiles without register spills on sm_80 and
    sm_90 and fits shared memory: tests/backends/test_triton_compile.py checks each one.
    """
    if arch is None:
        return [_cfg(4, 1, BLOCK_N=32, DOCS=4)] if kernel == "segmented" else [_cfg(4, 1, BLOCK_N=32)]
    if kernel not in ("all_pairs", "segmented"):
        raise ValueError(f"no autotune configs for kernel {kernel!r}")
    if codec:
        cands = [_cfg(w, st, BLOCK_N=bn, DOCS=docs) for w, st, bn, docs in _CODES_CONFIGS[(block_m, dim_pad_)]]
        return cands[:1] if tiny else cands
    big = arch in (90, 100, 103)  # 227 KB of shared memory per block; consumer parts have ~99 KB
    if elsize == 4:
        # tf32x3 keeps a hi and a lo part of each operand: 16-row doc tiles, and 8 warps wherever
        # 4 spilled (the per-slot maxima of the segmented kernel, the 128-row query tile, and the
        # 32-row one on sm_80 once the non-finite flag of docs/spec.md section 10 was added).
        warps = 8
        return [_cfg(warps, 2, BLOCK_N=16, DOCS=2)] if kernel == "segmented" else [_cfg(warps, 2, BLOCK_N=16)]
    if tiny:
        # Few programs: small doc tiles and two docs per program keep as many programs as possible.
        if kernel == "all_pairs":
            return [_cfg(4, 2, BLOCK_N=32)]
        # The 32-row inference tile takes two stages: with three it spilled 8-36 B on sm_80 once
        # the kernel tracked non-finite values (docs/spec.md section 10); the training forward
        # (SAVE_ARGMAX) keeps three (with two it spilled 24 B).
        if block_m == 32:
            return [_cfg(4, 3 if save_argmax else 2, BLOCK_N=64, DOCS=2)]
        return [_cfg(8, 2, BLOCK_N=64, DOCS=2)]
    if kernel == "all_pairs":
        # Compute-bound when queries are stacked (X1/X2/P1): wide doc tiles, 8 warps for the
        # 128-row tile (Hopper wgmma wants a warpgroup multiple; 4 warps spill at 128 x 128 on
        # sm_90), deeper pipelines on Hopper.
        if block_m == 128:
            cands = [_cfg(8, 3 if big else 2, BLOCK_N=128), _cfg(8, 4 if big else 3, BLOCK_N=64)]
        else:
            cands = [_cfg(4, 4 if big else 3, BLOCK_N=64), _cfg(4, 3, BLOCK_N=128)]
    else:
        # Memory-bound for ColBERT queries (R1-R3): several docs' rows concatenated per tile so
        # short docs still stream full tiles; the per-doc max costs DOCS selects per score, so
        # fewer docs per program for the compute-bound long-query tile. 128 rows x 8 docs needs
        # 8 warps (with 4 it spilled 124-204 B per thread on sm_80/sm_90).
        if block_m == 128:
            cands = [_cfg(8, 3 if big else 2, BLOCK_N=64, DOCS=2), _cfg(4, 3, BLOCK_N=64, DOCS=1)]
        else:
            cands = [_cfg(4, 4, BLOCK_N=64, DOCS=4), _cfg(8, 3, BLOCK_N=128, DOCS=8)]
    return cands[:1] if save_argmax else cands


def device_arch(device: torch.device) -> int | None:
    """sm number (80, 90, ...) of a CUDA device; None under the interpreter or on CPU."""
    if interpreting() or device.type != "cuda":
        return None
    return _arch(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _arch(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return major * 10 + minor


def bwd_num_warps(kernel: str = "bwd_dq") -> int:
    # The one-hot dD kernel holds a [64, DIM_PAD] fp32 accumulator and tf32x3 operand splits:
    # with 4 warps it spilled ~230 B per thread at DIM_PAD 128 on sm_80.
    return 8 if kernel == "bwd_dd_onehot" else 4


def dq_doc_splits(programs: int, docs: int, device: torch.device) -> int:
    """How many ways the dQ kernel splits the docs: enough programs for ~4 per SM (1 when
    interpreting: programs are what the interpreter pays for)."""
    if device.type != "cuda" or interpreting():
        return 1
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(docs, -(-4 * sms // max(programs, 1)), 64))


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _configs(kernel: str, arch: int, bm: int, dp: int, elsize: int, save: bool, codec: int = 0) -> list[Config]:
    """Every config a launch can use: the tuned candidates and the tiny-grid one, without repeats."""
    out = []
    for tiny in (False, True):
        for cfg in autotune_configs(kernel, arch, bm, dp, elsize, save, tiny, codec):
            if cfg not in out:
                out.append(cfg)
    return out


def variants(arch: int):
    """Every (kernel name, constexprs, num_warps, num_stages, dtype) the launchers can produce on sm_<arch>.

    Used by the compile test; kept next to the choices it mirrors so the two cannot drift apart.
    """
    for dtype in DTYPES:
        elsize = torch.empty((), dtype=dtype).element_size()
        for dp in DIM_PADS:
            for bm in ALL_PAIRS_BLOCK_MS:
                for save in (False, True):
                    for cfg in _configs("all_pairs", arch, bm, dp, elsize, save):
                        constexprs = {
                            "BLOCK_M": bm,
                            "DIM_PAD": dp,
                            "SAVE_ARGMAX": save,
                            "UPCAST": False,
                            **cfg.as_dict(),
                        }
                        yield ("all_pairs", constexprs, cfg.num_warps, cfg.num_stages, dtype)
            for bm in PER_QUERY_BLOCK_MS:
                for save in (False, True):
                    for cfg in _configs("segmented", arch, bm, dp, elsize, save):
                        constexprs = {
                            "BLOCK_M": bm,
                            "DIM_PAD": dp,
                            "SAVE_ARGMAX": save,
                            "UPCAST": False,
                            "CODEC": 0,
                            "NBITS": 0,
                            **cfg.as_dict(),
                        }
                        yield ("segmented", constexprs, cfg.num_warps, cfg.num_stages, dtype)
            if dtype == torch.float16:  # compressed stores: fp16 queries, rows decoded in the kernel
                for bm in PER_QUERY_BLOCK_MS:
                    for codec, nbits in CODES_VARIANTS:
                        for cfg in _configs("segmented", arch, bm, dp, 2, False, codec):
                            constexprs = {
                                "BLOCK_M": bm,
                                "DIM_PAD": dp,
                                "SAVE_ARGMAX": False,
                                "UPCAST": False,
                                "CODEC": codec,
                                "NBITS": nbits,
                                **cfg.as_dict(),
                            }
                            yield ("segmented", constexprs, cfg.num_warps, cfg.num_stages, dtype)
            per_token = {"BLOCK_T": BWD_BLOCK_T, "DIM_PAD": dp}
            yield ("bwd_dq", per_token, bwd_num_warps(), 2, dtype)
            yield ("bwd_dd_atomic", per_token, bwd_num_warps(), 2, dtype)
            onehot = {"BLOCK_J": BWD_BLOCK_J, "BLOCK_R": BWD_BLOCK_R, "DIM_PAD": dp}
            yield ("bwd_dd_onehot", onehot, bwd_num_warps("bwd_dd_onehot"), 2, dtype)
        yield ("gather", {"BLOCK_T": GATHER_BLOCK_T, "BLOCK_D": GATHER_BLOCK_D}, 4, 2, dtype)
        for codec, nbits in CODES_VARIANTS:  # decoding into this dtype
            constexprs = {"BLOCK_T": GATHER_BLOCK_T, "BLOCK_D": GATHER_BLOCK_D, "CODEC": codec, "NBITS": nbits}
            yield ("gather_codes", constexprs, 4, 2, dtype)
