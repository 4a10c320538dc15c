"""Backend registry and selection.

A backend is a module named <name>_backend in this package exposing:

    NAME: str
    SUPPORTS_BACKWARD: bool                                  maxsim has a backward
    BACKWARD_OPS: tuple[str, ...]                            (optional) every op with a backward;
                                                             default ("maxsim",) when SUPPORTS_BACKWARD
    unavailable_reason(device: torch.device) -> str | None   None when usable on that device
    maxsim(Q, D, q_mask, d_mask, d_lengths, floor) -> fp32 [B, N] or [B, K]
    maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor) -> fp32 [B, K]
    gather(embeddings, offsets, lengths, pids, max_len) -> (D [*pids.shape, max_len, dim], mask)
    centroid_interaction(probe_ids, probe_scores, floor, q_mask, list_offsets, list_docs, num_docs,
                         max_entries) -> (score, positive, hit)     (optional: cpu and torch have it)
    supports(op, device) -> bool                             (optional) whether this build has `op`
and, where it has compressed-store kernels (supports_codes(device) -> True):
    maxsim_packed_codes(Q, view, pids, q_mask, max_len, floor) -> fp32 [B, K]    view: CodesView
    gather_codes(view, pids, max_len, dtype) -> (D [*pids.shape, max_len, dim] in dtype, mask)

Arguments arrive validated and normalized (see colbert_fast/validation.py); max_len is a host int
(the longest doc that can occur), so no backend needs a device sync to size its work.
"""

from __future__ import annotations

import importlib

import torch

BACKENDS = ("cuda", "triton", "cpu", "torch")
# GPU kernels join "auto" only after the GPU check (bench/gpu_check.sh) has passed the conformance
# suite on a real card and its results are committed under bench/results/. Until then "auto" on
# CUDA tensors runs the plain torch backend: exact answers first. Forcing backend="cuda" or
# "triton" runs the (compile-checked, interpreter-tested) kernels.
GPU_VERIFIED: tuple[str, ...] = ()
# "auto" tries these in order for tensors on each device type.
AUTO_ORDER = {"cuda": (*GPU_VERIFIED, "torch"), "cpu": ("cpu", "torch")}


def load(name: str):
    if name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}_backend")


def unavailable_reason(name: str, device: torch.device) -> str | None:
    try:
        module = load(name)
    except ImportError as e:  # a backend whose dependency (triton, the extension) is missing
        return f"cannot import it: {e}"
    return module.unavailable_reason(device)


def _supports_codes(module, device: torch.device) -> bool:
    return bool(getattr(module, "supports_codes", lambda device: False)(device))


def _has_op(module, op: str, device: torch.device) -> bool:
    """Whether `module` implements `op` for `device` tensors: not every backend has every op
    (centroid_interaction: cpu and torch), and a build may predate an op (supports(op, device))."""
    if not hasattr(module, op):
        return False
    supports = getattr(module, "supports", None)
    return supports is None or bool(supports(op, device))


def has_backward(module, op: str = "maxsim") -> bool:
    """Whether `module`'s `op` (maxsim, maxsim_packed, gather, maxsim_packed_codes, gather_codes)
    lets gradients flow."""
    ops = getattr(module, "BACKWARD_OPS", ("maxsim",) if module.SUPPORTS_BACKWARD else ())
    return op in ops


def select(backend: str, device: torch.device, needs_grad: bool = False, codes: bool = False, op: str = "maxsim"):
    """The backend module to run on `device`; RuntimeError saying why when a forced one can't.

    needs_grad: an input of the call requires grad, so only a backend whose `op` has a backward
    qualifies: "auto" skips the others, a forced one raises (never a result silently detached).
    codes: the call scores or gathers a CompressedDocs (only backends with those kernels qualify).
    """
    if backend != "auto":
        module_reason = unavailable_reason(backend, device)
        if module_reason is not None:
            raise RuntimeError(f"backend {backend!r} is unavailable for {device} tensors: {module_reason}")
        module = load(backend)
        if needs_grad and not has_backward(module, op):
            raise RuntimeError(
                f"backend {backend!r} has no backward for {op}; inputs require grad: use backend='torch' or 'auto' "
                "(or torch.no_grad() when no gradient is wanted)"
            )
        if codes and not _supports_codes(module, device):
            raise RuntimeError(f"backend {backend!r} has no compressed-store kernels for {device} tensors")
        if not _has_op(module, op, device):
            raise RuntimeError(f"backend {backend!r} has no {op} for {device} tensors")
        return module
    for name in AUTO_ORDER.get(device.type, ("torch",)):
        if unavailable_reason(name, device) is None:
            module = load(name)
            if needs_grad and not has_backward(module, op):
                continue
            if codes and not _supports_codes(module, device):
                continue
            if not _has_op(module, op, device):
                continue
            return module
    return load("torch")


def selected(device: torch.device | str, backend: str = "auto", *, needs_grad: bool = False) -> str:
    """The name of the backend a call with `backend=` runs for tensors on `device`.

    What cf.maxsim would pick ("auto": the first usable backend of AUTO_ORDER, skipping those
    without a backward when needs_grad); a forced backend that cannot run raises RuntimeError,
    as the ops do. Example: selected("cpu") is "cpu" when the extension is built, else "torch".
    """
    return select(backend, torch.device(device), needs_grad).NAME


def available(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """{backend: None if usable on device else the reason it is not}."""
    device = torch.device(device)
    return {name: unavailable_reason(name, device) for name in BACKENDS}
