"""Triton backend: the fused kernels of colbert_fast.kernels, registered as torch ops.

Ops (torch.library.triton_op, so torch.compile traces through them; plain functions on a torch
without triton_op):
    colbert_fast::triton_maxsim_fwd     padded MaxSim, both modes, optionally saving the argmax
    colbert_fast::triton_maxsim_bwd     dQ, dD from the saved argmax
    colbert_fast::triton_maxsim_packed  MaxSim straight from the packed store
    colbert_fast::triton_gather         packed -> padded copy
    colbert_fast::triton_maxsim_packed_codes, triton_gather_codes   the same from a CompressedDocs

maxsim() runs through a torch.autograd.Function when Q or D requires grad: the forward saves the
argmax (int32 [B, N, Lq]) and the backward uses it. dD is accumulated with atomics unless
torch.use_deterministic_algorithms(True) is on, which selects the deterministic one-hot kernel.

Runs on CUDA tensors, and on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1 set
before colbert_fast.kernels is imported; that is how CI runs the kernels). Embeddings wider than
kernels.settings.MAX_DIM (128) are scored by the plain-PyTorch backend (the kernels hold a whole
query tile in registers); gather takes any dim.
"""

# Optional[...] rather than "X | None", and no `from __future__ import annotations`: the op
# schemas are inferred from these annotations at run time, on every torch version we support.
# ruff: noqa: UP045
import os
from typing import Optional

import torch

from . import torch_backend

NAME = "triton"
SUPPORTS_BACKWARD = True
BACKWARD_OPS = ("maxsim",)  # the packed and gather ops have no backward kernel


def _import_kernels():
    from ..kernels import gather as gather_kernels
    from ..kernels import maxsim as maxsim_kernels
    from ..kernels import maxsim_bwd as bwd_kernels
    from ..kernels import settings

    return gather_kernels, maxsim_kernels, bwd_kernels, settings


def unavailable_reason(device: torch.device) -> Optional[str]:
    try:
        import triton  # noqa: F401  (only: is it installed?)
    except ImportError as e:
        return f"triton is not installed ({e}); pip install triton"
    try:
        _, _, _, settings = _import_kernels()
    except Exception as e:  # noqa: BLE001  (a broken triton install or kernel: report it as the reason)
        return f"colbert_fast.kernels failed to import: {type(e).__name__}: {e}"
    interpret_env = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
        return None
    if device.type == "cpu":
        if not interpret_env:
            return "Triton runs CPU tensors only under its interpreter: set TRITON_INTERPRET=1 (or use 'cpu'/'torch')"
        if not settings.INTERPRETED_AT_IMPORT:
            return "TRITON_INTERPRET=1 was set after colbert_fast.kernels was imported: set it before importing"
        return None
    return f"the Triton kernels run on CUDA devices (or CPU under the interpreter), not {device.type}"


# ---- op registration ----------------------------------------------------------------------------


def _fwd_impl(
    Q: torch.Tensor,
    D: torch.Tensor,
    q_mask: Optional[torch.Tensor],
    d_mask: Optional[torch.Tensor],
    d_lengths: Optional[torch.Tensor],
    floor: Optional[torch.Tensor],
    save_argmax: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _, maxsim_kernels, _, _ = _import_kernels()
    scores, argmax = maxsim_kernels.maxsim_fwd(Q, D, q_mask, d_mask, d_lengths, save_argmax, floor)
    # Ops cannot return None: an empty int32 vector stands for "not saved".
    return scores, argmax if argmax is not None else torch.empty(0, dtype=torch.int32, device=Q.device)


def _bwd_impl(
    grad: torch.Tensor,
    Q: torch.Tensor,
    D: torch.Tensor,
    argmax: torch.Tensor,
    need_dq: bool,
    need_dd: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, bwd_kernels, _ = _import_kernels()
    dQ, dD = bwd_kernels.maxsim_bwd(grad, Q, D, argmax, need_dq, need_dd, deterministic)
    empty = torch.empty(0, dtype=Q.dtype, device=Q.device)
    return (dQ if dQ is not None else empty), (dD if dD is not None else empty.clone())


def _packed_impl(
    Q: torch.Tensor,
    embeddings: torch.Tensor,
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    pids: torch.Tensor,
    q_mask: Optional[torch.Tensor],
    floor: Optional[torch.Tensor],
) -> torch.Tensor:
    _, maxsim_kernels, _, _ = _import_kernels()
    return maxsim_kernels.maxsim_packed_fwd(Q, embeddings, offsets, lengths, pids, q_mask, floor)


def _gather_impl(
    embeddings: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, pids: torch.Tensor, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gather_kernels, _, _, _ = _import_kernels()
    return gather_kernels.gather(embeddings, offsets, lengths, pids, max_len)


def _packed_codes_impl(
    Q: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    centroid_ids: Optional[torch.Tensor],
    centroids: Optional[torch.Tensor],
    bucket_weights: Optional[torch.Tensor],
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    pids: torch.Tensor,
    q_mask: Optional[torch.Tensor],
    nbits: int,
    floor: Optional[torch.Tensor],
) -> torch.Tensor:
    _, maxsim_kernels, _, _ = _import_kernels()
    return maxsim_kernels.maxsim_packed_codes_fwd(
        Q, codes, scales, centroid_ids, centroids, bucket_weights, offsets, lengths, pids, nbits, q_mask, floor
    )


def _gather_codes_impl(
    codes: torch.Tensor,
    scales: torch.Tensor,
    centroid_ids: Optional[torch.Tensor],
    centroids: Optional[torch.Tensor],
    bucket_weights: Optional[torch.Tensor],
    offsets: torch.Tensor,
    lengths: torch.Tensor,
    pids: torch.Tensor,
    max_len: int,
    nbits: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    gather_kernels, _, _, _ = _import_kernels()
    return gather_kernels.gather_codes(
        codes, scales, centroid_ids, centroids, bucket_weights, offsets, lengths, pids, max_len, nbits, dtype
    )


def _register_ops():
    """torch.library.triton_op where torch has it (>= 2.6); otherwise the plain functions.

    Under the Triton interpreter the kernels cannot be traced (wrap_triton hands back the
    interpreted kernel, and triton_op would let torch.compile inline a body whose launches it
    cannot see), so there the ops are opaque custom ops whose fake implementation is the same
    body with the launches skipped (kernels/launch.py).
    """
    try:
        from torch.library import custom_op, triton_op
    except ImportError:
        return _fwd_impl, _bwd_impl, _packed_impl, _gather_impl, _packed_codes_impl, _gather_codes_impl
    _, _, _, settings = _import_kernels()
    ops = []
    for name, fn in (
        ("triton_maxsim_fwd", _fwd_impl),
        ("triton_maxsim_bwd", _bwd_impl),
        ("triton_maxsim_packed", _packed_impl),
        ("triton_gather", _gather_impl),
        ("triton_maxsim_packed_codes", _packed_codes_impl),
        ("triton_gather_codes", _gather_codes_impl),
    ):
        qualname = f"colbert_fast::{name}"
        try:
            if settings.interpreting():
                op = custom_op(qualname, fn, mutates_args=())
                op.register_fake(fn)
            else:
                op = triton_op(qualname, fn, mutates_args=())
        except RuntimeError:  # already registered (module reloaded): reuse the registered op
            op = getattr(torch.ops.colbert_fast, name).default
        ops.append(op)
    return tuple(ops)


_maxsim_fwd_op, _maxsim_bwd_op, _maxsim_packed_op, _gather_op, _packed_codes_op, _gather_codes_op = _register_ops()


class _MaxSimFunction(torch.autograd.Function):
    """Fused forward saving the argmax; backward from the argmax (O(B*N*Lq) memory)."""

    @staticmethod
    def forward(ctx, Q, D, q_mask, d_mask, d_lengths, floor):
        # A token whose floor won has argmax -1: no doc token receives its gradient (floor is a constant).
        scores, argmax = _maxsim_fwd_op(Q, D, q_mask, d_mask, d_lengths, floor, True)
        ctx.save_for_backward(Q, D, argmax)
        return scores

    @staticmethod
    def backward(ctx, grad):
        Q, D, argmax = ctx.saved_tensors
        need_dq, need_dd = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        deterministic = torch.are_deterministic_algorithms_enabled()
        dQ, dD = _maxsim_bwd_op(grad, Q, D, argmax, need_dq, need_dd, deterministic)
        return (dQ if need_dq else None), (dD if need_dd else None), None, None, None, None


def _too_wide(dim: int) -> bool:
    _, _, _, settings = _import_kernels()
    return dim > settings.MAX_DIM


# ---- backend interface (arguments arrive normalized, see colbert_fast/validation.py) ----------


def maxsim(Q, D, q_mask, d_mask, d_lengths, floor=None):
    if _too_wide(Q.shape[-1]):
        return torch_backend.maxsim(Q, D, q_mask, d_mask, d_lengths, floor)
    if torch.is_grad_enabled() and (Q.requires_grad or D.requires_grad):
        return _MaxSimFunction.apply(Q, D, q_mask, d_mask, d_lengths, floor)
    return _maxsim_fwd_op(Q, D, q_mask, d_mask, d_lengths, floor, False)[0]


def maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor=None):
    # max_len is not needed: each doc's own length bounds its loop inside the kernel.
    if _too_wide(Q.shape[-1]):
        return torch_backend.maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor)
    return _maxsim_packed_op(Q, embeddings, offsets, lengths, pids, q_mask, floor)


def gather(embeddings, offsets, lengths, pids, max_len):
    return _gather_op(embeddings, offsets, lengths, pids, max_len)


# ---- compressed stores (colbert_fast.compressed): decoded in registers inside the kernels -------


def supports_codes(device: torch.device) -> bool:
    return unavailable_reason(device) is None


def maxsim_packed_codes(Q, view, pids, q_mask, max_len, floor=None):
    if _too_wide(view.dim):
        return torch_backend.maxsim_packed_codes(Q, view, pids, q_mask, max_len, floor)
    return _packed_codes_op(
        Q, view.codes, view.scales, view.centroid_ids, view.centroids, view.bucket_weights, view.offsets,
        view.lengths, pids, q_mask, view.nbits, floor,
    )  # fmt: skip


def gather_codes(view, pids, max_len, dtype):
    return _gather_codes_op(
        view.codes, view.scales, view.centroid_ids, view.centroids, view.bucket_weights, view.offsets,
        view.lengths, pids, max_len, view.nbits, dtype,
    )  # fmt: skip
