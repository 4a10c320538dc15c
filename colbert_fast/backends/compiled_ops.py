"""The entry points of the backends whose kernels live in the compiled extension (cpu, cuda).

Both call the same torch.ops.colbert_fast ops; the dispatcher picks the CPU or CUDA kernel from
the tensors' device, so the two backends differ only in when they are available.
"""

from __future__ import annotations

import torch

from .. import extension
from . import fakes


def missing_reason() -> str | None:
    """None when colbert_fast._C is loaded, else why not. Once it is loaded, the ops' fake
    kernels are registered (idempotent) before any backend here can be selected to call them."""
    reason = extension.missing_reason()
    if reason is None:
        fakes.register()
    return reason


def maxsim(Q, D, q_mask, d_mask, d_lengths, floor=None):
    return torch.ops.colbert_fast.maxsim(Q, D, q_mask, d_mask, d_lengths, floor)


def maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor=None):
    return torch.ops.colbert_fast.maxsim_packed(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor)


def gather(embeddings, offsets, lengths, pids, max_len):
    return torch.ops.colbert_fast.gather(embeddings, offsets, lengths, pids, max_len)


def maxsim_packed_codes(Q, view, pids, q_mask, max_len, floor=None):
    return torch.ops.colbert_fast.maxsim_packed_codes(
        Q, view.codes, view.scales, view.centroid_ids, view.centroids, view.bucket_weights, view.offsets,
        view.lengths, pids, q_mask, max_len, view.nbits, floor,
    )  # fmt: skip


def gather_codes(view, pids, max_len, dtype):
    return torch.ops.colbert_fast.gather_codes(
        view.codes, view.scales, view.centroid_ids, view.centroids, view.bucket_weights, view.offsets,
        view.lengths, pids, max_len, view.nbits, dtype,
    )  # fmt: skip


def centroid_interaction(probe_ids, probe_scores, floor, q_mask, list_offsets, list_docs, num_docs, max_entries=None):
    # max_entries only pads the torch version's expansion; the kernel reads nothing back anyway.
    return torch.ops.colbert_fast.centroid_interaction(
        probe_ids, probe_scores, floor, q_mask, list_offsets, list_docs, num_docs
    )
