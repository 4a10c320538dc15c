"""CPU backend: the compiled kernels in csrc/cpu, reached through torch.ops.colbert_fast.

The SIMD path is chosen per call from what the CPU supports (AVX-512 with bf16 dot products,
AVX-512, AVX2, portable scalar); COLBERT_FAST_CPU_ISA=avx512_bf16|avx512|avx2|scalar forces one
and cpu_isa() says which one runs. Forward only: with inputs that require grad, "auto" falls
back to the torch backend.
"""

from __future__ import annotations

import torch

from .. import extension
from . import compiled_ops
from .compiled_ops import (  # noqa: F401  (the backend interface)
    centroid_interaction,
    gather,
    gather_codes,
    maxsim,
    maxsim_packed,
    maxsim_packed_codes,
)

NAME = "cpu"
SUPPORTS_BACKWARD = False


def unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"it runs on CPU tensors only, got {device} tensors"
    reason = compiled_ops.missing_reason()
    if reason is not None:
        return reason
    if not extension.has_kernel("maxsim", "CPU"):
        return "this build of colbert_fast._C has no CPU MaxSim kernels"
    return None


def supports(op: str, device: torch.device) -> bool:
    """Whether this build has `op`'s kernel for `device` (an extension older than the op has not)."""
    return extension.has_kernel(op, "CPU")


def cpu_isa() -> str:
    """The SIMD kernels the CPU ops use now: "avx512_bf16", "avx512", "avx2" or "scalar"."""
    ext = extension.extension()
    if ext is None:
        raise RuntimeError(extension.missing_reason())
    return ext.cpu_isa()


def supports_codes(device: torch.device) -> bool:
    """Whether this build has the compressed-store kernels for `device` tensors."""
    return unavailable_reason(device) is None and all(
        extension.has_kernel(op, "CPU") for op in ("maxsim_packed_codes", "gather_codes")
    )
