"""CUDA backend (csrc/cuda): the tensor-core kernels issue fills this in; not yet implemented."""

from __future__ import annotations

import torch

NAME = "cuda"
SUPPORTS_BACKWARD = False


def unavailable_reason(device: torch.device) -> str | None:
    return "the CUDA kernels are not part of this build yet"
