"""CUDA backend: the kernels in csrc/cuda (tensor-core MaxSim, packed MaxSim, gather), reached
through torch.ops.colbert_fast. Forward only: inputs that require grad go to a backend with one."""

from __future__ import annotations

import torch

from .. import extension
from . import compiled_ops
from .compiled_ops import (  # noqa: F401  (the backend interface)
    gather,
    gather_codes,
    maxsim,
    maxsim_packed,
    maxsim_packed_codes,
)

NAME = "cuda"
SUPPORTS_BACKWARD = False


def unavailable_reason(device: torch.device) -> str | None:
    """None when the CUDA kernels can run on `device` tensors, else why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"it runs on CUDA tensors only, got {device} tensors"
    reason = compiled_ops.missing_reason()
    if reason is not None:
        return reason
    if not extension.build_info().get("with_cuda"):
        return (
            "colbert_fast._C was built without CUDA kernels (no nvcc/GPU at build time): rebuild with "
            "CUDA_HOME set and FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST"
        )
    for op in ("maxsim", "maxsim_packed", "gather"):
        if not extension.has_kernel(op, "CUDA"):
            return f"this build of colbert_fast._C has no CUDA kernel for colbert_fast::{op}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    return None


def supports_codes(device: torch.device) -> bool:
    """Whether this build has the compressed-store kernels for `device` tensors."""
    return unavailable_reason(device) is None and all(
        extension.has_kernel(op, "CUDA") for op in ("maxsim_packed_codes", "gather_codes")
    )
