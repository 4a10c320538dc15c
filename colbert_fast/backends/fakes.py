"""Fake (meta) implementations of the torch.ops.colbert_fast ops, so torch.compile and other
tracers can infer output shapes without running a kernel. They only describe outputs; every
device's real kernel is registered in C++ (csrc/torch). Shared by all backends that call these
ops: register() is idempotent and a no-op when the extension or the op is missing.
"""

from __future__ import annotations

import torch

_done: set = set()


def _maxsim_fake(Q, D, q_mask=None, d_mask=None, d_lengths=None, floor=None):
    # [N, Ld, dim] -> [B, N]; [B, K, Ld, dim] -> [B, K]
    return Q.new_empty((Q.shape[0], D.shape[-3]), dtype=torch.float32)


def _maxsim_packed_fake(Q, embeddings, offsets, lengths, pids, q_mask, max_len, floor=None):
    return Q.new_empty(tuple(pids.shape), dtype=torch.float32)


def _gather_fake(embeddings, offsets, lengths, pids, max_len):
    shape = tuple(pids.shape)
    out = embeddings.new_empty((*shape, max_len, embeddings.shape[-1]))
    return out, embeddings.new_empty((*shape, max_len), dtype=torch.bool)


def _maxsim_packed_codes_fake(Q, codes, scales, centroid_ids, centroids, bucket_weights, offsets, lengths, pids,
                              q_mask, max_len, nbits, floor=None):  # fmt: skip
    return Q.new_empty(tuple(pids.shape), dtype=torch.float32)


def _gather_codes_fake(codes, scales, centroid_ids, centroids, bucket_weights, offsets, lengths, pids, max_len,
                       nbits, dtype):  # fmt: skip
    dim = codes.shape[1] if nbits == 8 else centroids.shape[1]
    shape = tuple(pids.shape)
    return codes.new_empty((*shape, max_len, dim), dtype=dtype), codes.new_empty((*shape, max_len), dtype=torch.bool)


def _centroid_interaction_fake(probe_ids, probe_scores, floor, q_mask, list_offsets, list_docs, num_docs):
    shape = (probe_ids.shape[0], num_docs)
    new = probe_scores.new_empty
    return new(shape, dtype=torch.float32), new(shape, dtype=torch.float32), new(shape, dtype=torch.bool)


_FAKES = {
    "maxsim": _maxsim_fake,
    "maxsim_packed": _maxsim_packed_fake,
    "gather": _gather_fake,
    "maxsim_packed_codes": _maxsim_packed_codes_fake,
    "gather_codes": _gather_codes_fake,
    "centroid_interaction": _centroid_interaction_fake,
}


def register() -> None:
    """Register the fakes of the ops the loaded extension defines (once per process; the backends
    that call the ops run it as soon as they see the extension loaded, see compiled_ops.py)."""
    # torch >= 2.4 has register_fake; 2.2-2.3 called it impl_abstract; older torch: nothing to do.
    register_fake = getattr(torch.library, "register_fake", None) or getattr(torch.library, "impl_abstract", None)
    if register_fake is None or len(_done) == len(_FAKES):
        return
    for name, fn in _FAKES.items():
        if name in _done or not hasattr(torch.ops.colbert_fast, name):
            continue
        register_fake(f"colbert_fast::{name}")(fn)
        _done.add(name)
