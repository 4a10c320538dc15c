"""Fused MaxSim forward kernels: padded all-pairs, padded per-query, and packed (pid -> rows).

    score[b, n] = sum_{i < Lq, q_mask[b, i]} max_{j valid in doc n} <Q[b, i], D[n, j]>

with masked doc tokens excluded before the max (-inf), a doc with no valid token giving 0 per
query token, and (packed) an empty slot pid = -1 scoring -inf. With a per-doc FLOOR each query
token's max is max(floor_d, max_j ...) and only a max still at -inf counts 0. A NaN or infinite
similarity of a valid (query token, doc token) pair makes the doc's score NaN (docs/spec.md
section 10): `s - s` is 0 for a finite similarity and NaN otherwise, and those are summed per query
row beside the max (tl.maximum's NaN handling differs between the GPU and the interpreter).
Products are tl.dot with fp16/bf16 operands and fp32 accumulation (fp32 inputs use tf32x3, which
keeps fp32 accuracy); the running row maximum lives in registers and the per-token maxima are
summed in fp32. No similarity matrix ever reaches device memory.

Design (what the workloads of docs/perf.md need):

* all-pairs (`_maxsim_all_pairs_kernel`, X1/X2/P1, compute-bound): one program = one doc and a
  group of G = BLOCK_M // Lq whole queries stacked into the M dimension, so four 32-token ColBERT
  queries fill a 128-row MMA tile and share every doc tile read. Longer queries (ColPali, Lq
  1024) take G = 1 and loop over 128-row chunks, re-reading the doc from L2. Programs are ordered
  doc-major so the query groups of one doc run together and hit L2 for its tiles.
* per-query and packed (`_maxsim_segmented_kernel`, R1-R3, memory-bound): one program = one
  query and DOCS of its candidates. The candidates' valid rows are concatenated into one virtual
  row range and streamed in BLOCK_N-row tiles, so short docs still give full tiles and one
  program keeps several docs in flight (one tile per doc is where peers lose bandwidth). A row's
  doc slot is found by comparing its index against the slots' running ends; the per-slot max is
  DOCS masked row-maxima per tile, cheap next to the memory time at Lq 32. In packed mode the
  kernel reads pid -> offsets[pid], lengths[pid] itself: no padded copy, no host sync, one launch.
* Length-aware: each doc's own length bounds its loop (d_lengths, or for a bool mask its last
  valid token + 1), so tiles past it are neither loaded nor computed; the mask is applied on top.
* Runtime shapes (B, N, K, Lq, Ld, lengths, strides) are runtime arguments; only BLOCK_M,
  DIM_PAD, the dtype and the autotuned tile choices are compile-time. Element offsets are int64.
* SAVE_ARGMAX also writes the winning doc-token index per (query, doc, query token), int32,
  -1 where nothing won: the backward needs only that, O(B*N*Lq) memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import settings
from .codes import decoded_rows
from .launch import device_guard, wrap
from .scoring_mode import packed, per_query

# -inf is written float("-inf") inside the kernels, never as a module-level tl.constexpr: Inductor copies
# such a global into the module it generates as `tl.constexpr(-inf)` (repr of the value), and
# loading that module raises NameError (tests/backends/test_triton_compile.py rebuilds it the same way).


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    # fp32 inputs: tf32x3 keeps fp32 accuracy on tensor cores; bf16 under the interpreter is
    # upcast (the interpreter's bf16 dot is wrong), never on a GPU.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a, b)


@triton.jit(do_not_specialize=["B", "N", "Lq", "Ld", "G"])
def _maxsim_all_pairs_kernel(
    Q, D, QMASK, DMASK, DLEN, FLOOR, OUT, ARGMAX,
    B, N, Lq, Ld, dim, G,
    stride_qb, stride_qt, stride_dn, stride_dt,
    stride_qmb, stride_qmt, stride_dmn, stride_dmt, stride_ln,
    has_qmask, has_dmask, has_len, has_floor,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DIM_PAD: tl.constexpr,
    SAVE_ARGMAX: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    n_groups = tl.cdiv(B, G)
    n = pid // n_groups  # doc-major: the query groups of one doc run side by side (L2 reuse)
    b0 = (pid % n_groups) * G

    length = Ld
    if has_len:
        length = tl.load(DLEN + n * stride_ln).to(tl.int32)
    floor = tl.load(FLOOR + n, mask=has_floor != 0, other=float("-inf"))  # FLOOR is contiguous [N]

    offs_r = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DIM_PAD)
    d_ok = offs_d < dim
    d_base = D + n * stride_dn
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)  # acc[g]: score of query b0 + g

    for c in range(tl.cdiv(G * Lq, BLOCK_M)):
        f = c * BLOCK_M + offs_r  # flat (query in group, token) row
        g = f // Lq
        t = f % Lq
        b = b0 + g
        row_ok = (f < G * Lq) & (b < B)
        q_ptrs = Q + b.to(tl.int64)[:, None] * stride_qb + t.to(tl.int64)[:, None] * stride_qt + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

        m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        nonfinite = tl.zeros([BLOCK_M], dtype=tl.float32)  # 0, or NaN once a valid similarity was NaN/inf
        am = tl.full([BLOCK_M], -1, dtype=tl.int32)
        for j0 in range(0, length, BLOCK_N):
            j = j0 + offs_n
            j_ok = j < length
            k_ptrs = d_base + j.to(tl.int64)[:, None] * stride_dt + offs_d[None, :]
            k = tl.load(k_ptrs, mask=j_ok[:, None] & d_ok[None, :], other=0.0)
            s = _dot(q, tl.trans(k), UPCAST)
            # has_dmask == 0 masks the load off entirely: no traffic, no branch in the loop.
            keep = tl.load(DMASK + n * stride_dmn + j.to(tl.int64) * stride_dmt, mask=j_ok & (has_dmask != 0), other=1)
            valid = (j_ok & (keep != 0))[None, :]
            nonfinite += tl.sum(tl.where(valid, s - s, 0.0), axis=1)
            s = tl.where(valid, s, float("-inf"))
            if SAVE_ARGMAX:
                tile_max, tile_arg = tl.max(s, axis=1, return_indices=True)
                better = tile_max > m  # strict: the first maximum wins, as in torch.max
                am = tl.where(better, j0 + tile_arg, am)
                m = tl.maximum(m, tile_max)
            else:
                m = tl.maximum(m, tl.max(s, axis=1))
        if SAVE_ARGMAX:
            am = tl.where(floor > m, -1, am)  # the floor won: no doc token gets the gradient
        m = tl.maximum(m, floor)

        q_ok = row_ok
        if has_qmask:
            qm = tl.load(QMASK + b.to(tl.int64) * stride_qmb + t.to(tl.int64) * stride_qmt, mask=row_ok, other=0)
            q_ok = q_ok & (qm != 0)
        won = q_ok & (m != float("-inf"))  # an empty doc (no floor) contributes 0, a masked query token 0
        best = tl.where(won, m, 0.0) + tl.where(q_ok, nonfinite, 0.0)
        acc += tl.sum(tl.where(g[:, None] == offs_r[None, :], best[:, None], 0.0), axis=0)
        if SAVE_ARGMAX:
            a_ptrs = ARGMAX + (b.to(tl.int64) * N + n) * Lq + t
            tl.store(a_ptrs, tl.where(won, am, -1), mask=row_ok)

    b_out = b0 + offs_r
    tl.store(OUT + b_out * N + n, acc, mask=(offs_r < G) & (b_out < B))


@triton.jit(do_not_specialize=["B", "K", "Lq", "Ld"])
def _maxsim_segmented_kernel(
    Q, D, QMASK, DMASK, DLEN, PIDS, OFFSETS, FLOOR, OUT, ARGMAX,
    CODES, SCALES, CIDS, CENT, WEIGHTS,
    B, K, Lq, Ld, dim, code_bytes,
    stride_qb, stride_qt, stride_db, stride_dk, stride_dt,
    stride_qmb, stride_qmt, stride_dmb, stride_dmk, stride_dmt,
    stride_lb, stride_lk, stride_pb, stride_pk,
    has_qmask, has_dmask, has_len, mode, has_floor,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOCS: tl.constexpr, DIM_PAD: tl.constexpr,
    SAVE_ARGMAX: tl.constexpr, UPCAST: tl.constexpr, CODEC: tl.constexpr = 0, NBITS: tl.constexpr = 0,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    n_kb = tl.cdiv(K, DOCS)
    b = pid // n_kb
    slots = tl.arange(0, DOCS)
    k = (pid % n_kb) * DOCS + slots
    k_ok = k < K

    # Per slot: where its rows start (packed: row offsets[pid]; padded: candidate k) and its valid
    # length. Branch-free: the unused
    # mode's loads are masked off.
    is_packed = mode == packed  # a constexpr global, so Inductor copies it with the kernel
    pids = tl.load(PIDS + b * stride_pb + k * stride_pk, mask=k_ok & is_packed, other=-1)
    doc_ok = k_ok & ((~is_packed) | (pids >= 0))
    safe = tl.maximum(pids, 0)
    len_packed = tl.load(DLEN + safe, mask=doc_ok & is_packed, other=0)
    len_padded = tl.load(DLEN + b * stride_lb + k * stride_lk, mask=k_ok & (~is_packed) & (has_len != 0), other=0)
    len_padded = tl.where(has_len != 0, len_padded, Ld)
    lens = tl.where(doc_ok, tl.where(is_packed, len_packed, len_padded), 0)
    row0 = tl.load(OFFSETS + safe, mask=doc_ok & is_packed, other=0)  # padded: 0
    kk = tl.where(is_packed, 0, k)  # packed: 0 (and the launcher passes stride_db = stride_dk = 0)
    mbase = b * stride_dmb + k * stride_dmk
    ends = tl.cumsum(lens, axis=0)
    starts = ends - lens
    total = tl.sum(lens, axis=0)
    floors = tl.load(FLOOR + b * K + k, mask=k_ok & (has_floor != 0), other=float("-inf"))  # contiguous [B, K]

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DIM_PAD)
    d_ok = offs_d < dim
    score = tl.zeros([DOCS], dtype=tl.float32)

    for c in range(tl.cdiv(Lq, BLOCK_M)):
        t = c * BLOCK_M + offs_m
        t_ok = t < Lq
        q_ptrs = Q + b * stride_qb + t.to(tl.int64)[:, None] * stride_qt + offs_d[None, :]
        q = tl.load(q_ptrs, mask=t_ok[:, None] & d_ok[None, :], other=0.0)
        M = tl.full([BLOCK_M, DOCS], float("-inf"), dtype=tl.float32)
        NONFINITE = tl.zeros([BLOCK_M, DOCS], dtype=tl.float32)  # per (query row, slot): 0 or NaN
        AM = tl.full([BLOCK_M, DOCS], -1, dtype=tl.int32)

        for v0 in range(0, total, BLOCK_N):
            v = v0 + offs_n  # virtual row: the slots' valid rows back to back
            v_ok = v < total
            slot = tl.sum((v[:, None] >= ends[None, :]).to(tl.int32), axis=1)
            onehot = slot[:, None] == slots[None, :]
            tok = v - tl.sum(tl.where(onehot, starts[None, :], 0), axis=1)
            k_row = tl.sum(tl.where(onehot, kk[None, :], 0), axis=1)
            r_row = tl.sum(tl.where(onehot, row0[None, :], 0), axis=1) + tok
            # Multiply by the strides after the per-row selection: the compiler then knows each
            # row starts 16-element aligned (strides are specialised on divisibility), so the row
            # loads vectorise and pipeline (cp.async / TMA-free async copies).
            if CODEC == 0:
                row_off = b * stride_db + k_row * stride_dk + r_row * stride_dt
                k_ptrs = D + row_off[:, None] + offs_d[None, :]
                kt = tl.load(k_ptrs, mask=v_ok[:, None] & d_ok[None, :], other=0.0)
            else:  # a compressed store (packed only): decoded here, scored in Q's dtype (fp16)
                kt = decoded_rows(CODES, SCALES, CIDS, CENT, WEIGHTS, code_bytes, dim, r_row, v_ok, offs_d, d_ok,
                                  CODEC, NBITS).to(q.dtype)  # fmt: skip
            s = _dot(q, tl.trans(kt), UPCAST)
            mrow = tl.sum(tl.where(onehot, mbase[None, :], 0), axis=1)
            keep = tl.load(DMASK + mrow + tok * stride_dmt, mask=v_ok & (has_dmask != 0), other=1)
            valid = (v_ok & (keep != 0))[None, :]
            z = tl.where(valid, s - s, 0.0)  # 0, or NaN where a valid similarity is NaN or +-inf
            s = tl.where(valid, s, float("-inf"))
            # Slots whose rows this tile holds: [first, last]. The others are skipped (a uniform
            # branch), so the per-slot max costs about (rows per tile / doc length + 1) passes.
            first = tl.sum((v0 >= ends).to(tl.int32), axis=0)
            last = tl.sum((tl.minimum(v0 + BLOCK_N, total) - 1 >= ends).to(tl.int32), axis=0)
            for sl in tl.static_range(DOCS):
                if (sl >= first) & (sl <= last):
                    in_slot = slots[None, :] == sl
                    ss = tl.where((slot == sl)[None, :], s, float("-inf"))
                    if SAVE_ARGMAX:
                        mx, ix = tl.max(ss, axis=1, return_indices=True)
                        cur = tl.max(tl.where(in_slot, M, float("-inf")), axis=1)
                        start = tl.sum(tl.where(slots == sl, starts, 0), axis=0)
                        idx = (v0 + ix - start).to(tl.int32)
                        AM = tl.where(in_slot & (mx > cur)[:, None], idx[:, None], AM)
                    else:
                        mx = tl.max(ss, axis=1)
                    M = tl.where(in_slot, tl.maximum(M, mx[:, None]), M)
            # Non-finite similarities are rare: their per-slot attribution runs only for a tile that
            # has one (a uniform branch), so the common path adds one sum per tile row.
            zt = tl.sum(tl.sum(z, axis=1), axis=0)
            if zt != zt:
                for sl in tl.static_range(DOCS):
                    if (sl >= first) & (sl <= last):
                        zs = tl.sum(tl.where((slot == sl)[None, :], z, 0.0), axis=1)
                        NONFINITE = tl.where(slots[None, :] == sl, NONFINITE + zs[:, None], NONFINITE)
        if SAVE_ARGMAX:
            AM = tl.where(floors[None, :] > M, -1, AM)  # the floor won: no doc token gets the gradient
        M = tl.maximum(M, floors[None, :])

        q_ok = t_ok
        if has_qmask:
            qm = tl.load(QMASK + b * stride_qmb + t.to(tl.int64) * stride_qmt, mask=t_ok, other=0)
            q_ok = q_ok & (qm != 0)
        won = q_ok[:, None] & (M != float("-inf"))
        score += tl.sum(tl.where(won, M, 0.0) + tl.where(q_ok[:, None], NONFINITE, 0.0), axis=0)
        if SAVE_ARGMAX:
            a_ptrs = ARGMAX + (b * K + k[None, :]) * Lq + t[:, None]
            tl.store(a_ptrs, tl.where(won, AM, -1), mask=t_ok[:, None] & k_ok[None, :])

    score = tl.where(doc_ok, score, float("-inf"))  # only packed slots with pid -1 are not doc_ok
    tl.store(OUT + b * K + k, score, mask=k_ok)


# ---- launchers ----------------------------------------------------------------------------------


# One autotuner per (kernel, arch, query block, dim block, element size, argmax saving, shape
# bucket): each tunes once, on its first launch, so a shape from another bucket is never stuck
# with the tile the first shape seen chose. Built on first use, not at import: the configs
# depend on the GPU, and importing must not touch CUDA.
_TUNERS: dict[tuple, object] = {}


def _tuned(kernel: str, arch, block_m: int, dim_pad: int, elsize: int, save_argmax: bool, bucket: str, codec=0):
    """The autotuned kernel for one launch; bucket from settings.shape_bucket ("tiny": one fixed
    small config, never benchmarked: Triton's autotuner skips tuning a single config). codec
    (a compressed store's CODEC, 1 or 2) gets tuners of its own: decoding changes the best tile."""
    key = (kernel, arch, block_m, dim_pad, elsize, save_argmax, codec, bucket)
    tuner = _TUNERS.get(key)
    if tuner is None:
        fn = _maxsim_all_pairs_kernel if kernel == "all_pairs" else _maxsim_segmented_kernel
        configs = [
            triton.Config(c.as_dict(), num_warps=c.num_warps, num_stages=c.num_stages)
            for c in settings.autotune_configs(
                kernel, arch, block_m, dim_pad, elsize, save_argmax, tiny=bucket == "tiny", codec=codec
            )
        ]
        tuner = _TUNERS[key] = triton.autotune(configs=configs, key=["SAVE_ARGMAX"])(fn)
    return tuner


def _placeholder(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Pointer arguments a launch does not use: one element, never read (their loads are masked).
    return torch.empty(1, dtype=dtype, device=like.device)


def _no_codes(like: torch.Tensor) -> tuple:
    """The compressed-store pointers of a launch over token rows (never read: CODEC is 0)."""
    return (
        _placeholder(like, torch.uint8),
        _placeholder(like, torch.float16),
        _placeholder(like, torch.int32),
        _placeholder(like, torch.float32),
        _placeholder(like, torch.float32),
    )


def _mask_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Last valid position + 1 along the last dim (0 when none): a bool mask's loop bound."""
    if mask.shape[-1] == 0:
        return torch.zeros(mask.shape[:-1], dtype=torch.int64, device=mask.device)
    pos = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return torch.where(mask, pos, 0).amax(dim=-1)


def _contiguous_floor(floor: torch.Tensor | None, shape, like: torch.Tensor) -> torch.Tensor:
    """The kernels index FLOOR as a contiguous fp32 array of `shape` (one value per doc)."""
    if floor is None:
        return _placeholder(like, torch.float32)
    if floor.dtype != torch.float32 or tuple(floor.shape) != tuple(shape):
        raise ValueError(f"floor must be float32 of shape {tuple(shape)}, got {floor.dtype} {tuple(floor.shape)}")
    return floor.contiguous()


def _check_inputs(Q: torch.Tensor, D: torch.Tensor) -> None:
    if Q.dtype != D.dtype:
        raise TypeError(f"Q ({Q.dtype}) must have D's dtype ({D.dtype})")
    if (Q.stride(-1) != 1 or D.stride(-1) != 1) and Q.shape[-1] > 1:
        raise ValueError(f"Q and D need a contiguous last dim, got strides {Q.stride()} and {D.stride()}")
    if Q.device != D.device:
        raise ValueError(f"Q is on {Q.device} but D is on {D.device}")
    settings.dim_pad(Q.shape[-1])


def maxsim_fwd(
    Q: torch.Tensor,
    D: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    d_mask: torch.Tensor | None = None,
    d_lengths: torch.Tensor | None = None,
    save_argmax: bool = False,
    floor: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Padded MaxSim. Q [B, Lq, dim]; D [N, Ld, dim] -> fp32 [B, N], or D [B, K, Ld, dim] -> [B, K].

    q_mask bool [B, Lq]; d_mask bool D.shape[:-1]; d_lengths int64 D.shape[:-2] (at most one of
    the two); floor fp32 D.shape[:-2] (each token's max starts there; -inf = none). Q must have
    D's dtype and both a contiguous last dim; other strides are free.
    Returns (scores, argmax): argmax int32 [B, N or K, Lq] (winning doc-token index, -1 when no
    token won, or the floor did) when save_argmax, else None.
    """
    _check_inputs(Q, D)
    B, Lq, dim = Q.shape
    all_pairs = D.dim() == 3
    N, Ld = D.shape[-3], D.shape[-2]
    out = torch.empty((B, N), dtype=torch.float32, device=Q.device)
    argmax = torch.empty((B, N, Lq), dtype=torch.int32, device=Q.device) if save_argmax else None
    if B == 0 or N == 0:
        return out, argmax
    if Ld == 0 and floor is None:
        out.zero_()
        if argmax is not None:
            argmax.fill_(-1)
        return out, argmax
    if d_mask is not None:
        d_lengths = _mask_lengths(d_mask)  # loop bound; the mask itself is applied on top
    qm = q_mask.view(torch.uint8) if q_mask is not None else _placeholder(Q, torch.uint8)
    dm = d_mask.view(torch.uint8) if d_mask is not None else _placeholder(Q, torch.uint8)
    dl = d_lengths if d_lengths is not None else _placeholder(Q, torch.int64)
    fl = _contiguous_floor(floor, D.shape[:-2], Q)
    am = argmax if argmax is not None else _placeholder(Q, torch.int32)
    arch = settings.device_arch(Q.device)
    dp = settings.dim_pad(dim)
    common = {"SAVE_ARGMAX": save_argmax, "UPCAST": settings.upcast_dot(D.dtype), "DIM_PAD": dp}
    flags = (int(q_mask is not None), int(d_mask is not None), int(d_lengths is not None), int(floor is not None))
    qm_strides = q_mask.stride() if q_mask is not None else (0, 0)

    if all_pairs:
        bm = settings.all_pairs_block_m(B * Lq)
        group = max(1, min(bm // Lq, B))
        grid = (N * triton.cdiv(B, group),)
        bucket = settings.shape_bucket("all_pairs", grid[0], Ld)
        kernel = wrap(_tuned("all_pairs", arch, bm, dp, D.element_size(), save_argmax, bucket))
        with device_guard(Q.device):
            kernel[grid](
                Q, D, qm, dm, dl, fl, out, am,
                B, N, Lq, Ld, dim, group,
                Q.stride(0), Q.stride(1), D.stride(0), D.stride(1),
                *qm_strides, *(d_mask.stride() if d_mask is not None else (0, 0)),
                d_lengths.stride(0) if d_lengths is not None else 0,
                *flags, BLOCK_M=bm, **common,
            )  # fmt: skip
        return out, argmax

    bm = settings.per_query_block_m(Lq)
    K = N
    bucket = settings.shape_bucket("segmented", B * K, Ld)
    kernel = wrap(_tuned("segmented", arch, bm, dp, D.element_size(), save_argmax, bucket))
    has_qmask, has_dmask, has_len, has_floor = flags
    with device_guard(Q.device):
        kernel[lambda meta: (B * triton.cdiv(K, meta["DOCS"]),)](
            Q, D, qm, dm, dl, dl, dl, fl, out, am, *_no_codes(Q),
            B, K, Lq, Ld, dim, 0,
            Q.stride(0), Q.stride(1), D.stride(0), D.stride(1), D.stride(2),
            *qm_strides, *(d_mask.stride() if d_mask is not None else (0, 0, 0)),
            *(d_lengths.stride() if d_lengths is not None else (0, 0)), 0, 0,
            has_qmask, has_dmask, has_len, per_query.value, has_floor, BLOCK_M=bm, **common,
        )  # fmt: skip
    return out, argmax


def maxsim_packed_fwd(
    Q: torch.Tensor,
    embeddings: torch.Tensor,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    pids: torch.Tensor,
    q_mask: torch.Tensor | None = None,
    floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed MaxSim: Q [B, Lq, dim] against its own candidates pids int64 [B, K] -> fp32 [B, K].

    embeddings [T, dim] (rows of doc p are offsets[p] : offsets[p] + lengths[p]); offsets,
    lengths int64 (made contiguous: the kernel indexes them as plain arrays); floor fp32 [B, K]
    or None (as for maxsim_fwd). pid -1 scores -inf. One launch, no host sync: the kernel
    resolves pids itself.
    """
    _check_inputs(Q, embeddings)
    if pids.dtype != torch.int64 or offsets.dtype != torch.int64 or lengths.dtype != torch.int64:
        raise TypeError(f"pids, offsets and lengths must be int64, got {pids.dtype}, {offsets.dtype}, {lengths.dtype}")
    B, Lq, dim = Q.shape
    K = pids.shape[1]
    out = torch.empty((B, K), dtype=torch.float32, device=Q.device)
    if B == 0 or K == 0:
        return out
    qm = q_mask.view(torch.uint8) if q_mask is not None else _placeholder(Q, torch.uint8)
    emb = embeddings if embeddings.shape[0] > 0 else _placeholder(Q, embeddings.dtype)
    # The kernel reads lengths[pid] and offsets[pid] with unit stride (a no-op for PackedDocs').
    lengths, offsets = lengths.contiguous(), offsets.contiguous()
    bm = settings.per_query_block_m(Lq)
    dp = settings.dim_pad(dim)
    bucket = settings.shape_bucket("segmented", B * K, 0)  # the docs' lengths stay on the device
    kernel = wrap(_tuned("segmented", settings.device_arch(Q.device), bm, dp, embeddings.element_size(), False, bucket))
    fl = _contiguous_floor(floor, (B, K), Q)
    with device_guard(Q.device):
        kernel[lambda meta: (B * triton.cdiv(K, meta["DOCS"]),)](
            Q, emb, qm, qm, lengths, pids, offsets, fl, out, _placeholder(Q, torch.int32), *_no_codes(Q),
            B, K, Lq, 0, dim, 0,
            Q.stride(0), Q.stride(1), 0, 0, embeddings.stride(0),
            *(q_mask.stride() if q_mask is not None else (0, 0)), 0, 0, 0,
            0, 0, pids.stride(0), pids.stride(1),
            int(q_mask is not None), 0, 1, packed.value, int(floor is not None),
            BLOCK_M=bm, DIM_PAD=dp, SAVE_ARGMAX=False, UPCAST=settings.upcast_dot(embeddings.dtype),
        )  # fmt: skip
    return out


def maxsim_packed_codes_fwd(
    Q: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    centroid_ids: torch.Tensor | None,
    centroids: torch.Tensor | None,
    bucket_weights: torch.Tensor | None,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    pids: torch.Tensor,
    nbits: int,
    q_mask: torch.Tensor | None = None,
    floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed MaxSim over a compressed store (colbert_fast.compressed), decoded in registers.

    Q [B, Lq, dim] (any float dtype: scored in fp16, the tensor-core input, as the decoded rows
    are); codes uint8 [T, ceil(dim * nbits / 8)] (residual, nbits 1/2/4) or int8 [T, dim]
    (nbits 8); scales fp16 [T]; centroid_ids int32 [T], centroids fp32 [C, dim], bucket_weights
    fp32 [2**nbits] (residual; None for int8); offsets, lengths int64; pids int64 [B, K].
    Returns fp32 [B, K] (pid -1: -inf). One launch, no host sync.
    """
    if pids.dtype != torch.int64 or offsets.dtype != torch.int64 or lengths.dtype != torch.int64:
        raise TypeError(f"pids, offsets and lengths must be int64, got {pids.dtype}, {offsets.dtype}, {lengths.dtype}")
    residual = nbits != 8
    if residual and (centroid_ids is None or centroids is None or bucket_weights is None):
        raise ValueError("a residual store needs centroid_ids, centroids and bucket_weights")
    B, Lq, dim = Q.shape
    K = pids.shape[1]
    out = torch.empty((B, K), dtype=torch.float32, device=Q.device)
    if B == 0 or K == 0:
        return out
    Q = Q.to(torch.float16)
    if Q.stride(-1) != 1:
        Q = Q.contiguous()
    qm = q_mask.view(torch.uint8) if q_mask is not None else _placeholder(Q, torch.uint8)
    lengths, offsets = lengths.contiguous(), offsets.contiguous()
    no = _no_codes(Q)
    code_ptrs = (
        codes.view(torch.uint8) if codes.numel() else no[0],
        scales if scales.numel() else no[1],
        centroid_ids if residual and centroid_ids.numel() else no[2],
        centroids if residual else no[3],
        bucket_weights if residual else no[4],
    )
    bm = settings.per_query_block_m(Lq)
    dp = settings.dim_pad(dim)
    bucket = settings.shape_bucket("segmented", B * K, 0)
    codec = 1 if residual else 2
    kernel = wrap(_tuned("segmented", settings.device_arch(Q.device), bm, dp, 2, False, bucket, codec))
    fl = _contiguous_floor(floor, (B, K), Q)
    with device_guard(Q.device):
        kernel[lambda meta: (B * triton.cdiv(K, meta["DOCS"]),)](
            Q, no[3], qm, qm, lengths, pids, offsets, fl, out, _placeholder(Q, torch.int32), *code_ptrs,
            B, K, Lq, 0, dim, codes.shape[1],
            Q.stride(0), Q.stride(1), 0, 0, 0,
            *(q_mask.stride() if q_mask is not None else (0, 0)), 0, 0, 0,
            0, 0, pids.stride(0), pids.stride(1),
            int(q_mask is not None), 0, 1, packed.value, int(floor is not None),
            BLOCK_M=bm, DIM_PAD=dp, SAVE_ARGMAX=False, UPCAST=False, CODEC=codec, NBITS=nbits,
        )  # fmt: skip
    return out
