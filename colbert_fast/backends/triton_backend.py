"""Triton backend (kernels/): registered by the Triton kernels issue; not yet implemented."""

from __future__ import annotations

import torch

NAME = "triton"
SUPPORTS_BACKWARD = False


def unavailable_reason(device: torch.device) -> str | None:
    return "the Triton kernels are not part of this build yet"
