"""CPU backend: the compiled kernels in csrc/cpu, reached through torch.ops.colbert_fast."""

from __future__ import annotations

import torch

from .. import _ext

NAME = "cpu"
SUPPORTS_BACKWARD = False


def unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"it runs on CPU tensors only, got {device} tensors"
    reason = _ext.missing_reason()
    if reason is not None:
        return reason
    if not _ext.has_kernel("maxsim", "CPU"):
        return "this build of colbert_fast._C has no CPU MaxSim kernels yet"
    return None


def maxsim(Q, D, q_mask, d_mask, d_lengths):
    return torch.ops.colbert_fast.maxsim(Q, D, q_mask, d_mask, d_lengths)


def maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len):
    return torch.ops.colbert_fast.maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len)


def gather(embeddings, offsets, lengths, pids, max_len):
    return torch.ops.colbert_fast.gather(embeddings, offsets, lengths, pids, max_len)
