"""What a MaxSim call must do, in FLOPs and bytes, counted from the real (unpadded) lengths.

Three modes, matching the workloads:

    packed  B queries, each against its own K candidates read from a packed store (pids [B, K])
    pairs   B queries against the same N docs (padded [N, Ld, dim] with valid prefix lengths)
    train   pairs, forward + backward

useful FLOPs: 2 * Lq_valid * dim per (query token, real doc token) pair: one multiply-add per
    element of every dot product that can influence a score. Padding and the max/sum are not
    counted (the max is one comparison per similarity, negligible next to the dot product).
    train adds the minimal backward: the gradient of a max reaches only the argmax doc token, so
    dQ and dD each need one dim-long multiply-add per (query, doc, query token): 4*B*N*Lq*dim.
padded FLOPs: what the padded plain-PyTorch baseline executes: every query token against every
    position of the padded batch, padding included (train: forward + two backward GEMMs).
minimum bytes: every real doc token read once, the queries read once, the per-candidate
    metadata (pid, offset, length; or a length per doc), and the fp32 scores written. A kernel
    cannot do less traffic than this, so bytes / time is a lower bound on its bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

PID_BYTES = 8  # int64 pids
META_BYTES = 16  # an int64 offset and an int64 length per candidate
LEN_BYTES = 8  # an int64 length per padded doc
SCORE_BYTES = 4  # fp32 scores


@dataclass(frozen=True)
class Counts:
    useful_flops: int
    padded_flops: int
    min_bytes: int

    @property
    def padding_waste(self) -> float:
        """Fraction of the baseline's FLOPs spent on padding."""
        return 1.0 - self.useful_flops / self.padded_flops if self.padded_flops else 0.0

    @property
    def intensity(self) -> float:
        """Useful FLOPs per byte that must move (the roofline's x axis)."""
        return self.useful_flops / self.min_bytes if self.min_bytes else 0.0


def packed_counts(
    B: int, K: int, lq_valid: int, lq: int, dim: int, real_tokens: int, pad_len: int, elem: int
) -> Counts:
    """B queries x K candidates each, `real_tokens` = sum of the candidates' lengths (pid -1 = 0)."""
    useful = 2 * lq_valid * dim * real_tokens
    padded = 2 * B * K * lq * pad_len * dim
    nbytes = real_tokens * dim * elem + B * lq * dim * elem + B * K * (PID_BYTES + META_BYTES + SCORE_BYTES)
    return Counts(useful, padded, nbytes)


def codes_counts(
    B: int, K: int, lq: int, dim: int, real_tokens: int, pad_len: int, bytes_per_token: float, q_elem: int
) -> Counts:
    """packed_counts for a compressed store: each real token costs its codes (+ scale, centroid id)
    instead of dim elements; the shared codebook is not counted (it stays in cache)."""
    useful = 2 * lq * dim * real_tokens
    padded = 2 * B * K * lq * pad_len * dim
    nbytes = int(real_tokens * bytes_per_token) + B * lq * dim * q_elem + B * K * (PID_BYTES + META_BYTES + SCORE_BYTES)
    return Counts(useful, padded, nbytes)


def pairs_counts(
    B: int,
    N: int,
    lq_valid: int,
    lq: int,
    dim: int,
    real_tokens: int,
    pad_len: int,
    elem: int,
    has_lengths: bool = True,
) -> Counts:
    """B queries x the same N docs; `real_tokens` = sum of the N docs' lengths."""
    useful = 2 * B * lq_valid * dim * real_tokens
    padded = 2 * B * N * lq * pad_len * dim
    nbytes = (
        real_tokens * dim * elem + B * lq * dim * elem + (N * LEN_BYTES if has_lengths else 0) + B * N * SCORE_BYTES
    )
    return Counts(useful, padded, nbytes)


def train_counts(
    B: int,
    N: int,
    lq_valid: int,
    lq: int,
    dim: int,
    real_tokens: int,
    pad_len: int,
    elem: int,
    has_lengths: bool = True,
) -> Counts:
    """Forward + backward of pairs scoring (loss = any function of the [B, N] scores)."""
    fwd = pairs_counts(B, N, lq_valid, lq, dim, real_tokens, pad_len, elem, has_lengths)
    useful = fwd.useful_flops + 4 * B * N * lq_valid * dim
    padded = 3 * fwd.padded_flops  # forward GEMM + the dQ and dD GEMMs of autograd
    # backward: read the score gradient, Q and D again; write dQ and dD (real rows).
    bwd_bytes = B * N * SCORE_BYTES + 2 * (B * lq * dim * elem) + 2 * (real_tokens * dim * elem)
    return Counts(useful, padded, fwd.min_bytes + bwd_bytes)
