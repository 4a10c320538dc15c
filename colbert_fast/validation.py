"""Input validation for the public ops: every bad input gets a clear error naming the argument
and the shapes seen, before any backend runs. Backends receive normalized arguments:

    Q            D's dtype, last dim stride 1 (other strides arbitrary)
    D            last dim stride 1 (other strides arbitrary); never copied otherwise
    q_mask       None or bool [B, Lq] on Q's device
    d_mask       None or bool D.shape[:-1]
    d_lengths    None or int64 D.shape[:-2], 0 <= length <= Ld
    pids         int64 [B, K], -1 <= pid < num_docs
    floor        None or contiguous fp32 of the doc shape (D.shape[:-2], or pids' [B, K]), each
                 value -inf or finite

Value checks (pids, lengths and floor in range) never read a tensor on the host: each reduces to
one 0-dim bool on the data's device and hands it to `_require`, whose only verdict is
torch._assert_async. On CPU that raises at once and is re-raised as the IndexError /
ValueError with the offending value; on a GPU it is a queued device-side assert, so the scoring
hot path does not wait for the device (see `_require` for what a failure looks like there).
"""

from __future__ import annotations

import torch

from .compressed import CompressedDocs

# The store owns the dtypes (a PackedDocs checks its own at construction); the ops accept the same.
from .packed import PackedDocs, check_dtype


def _shape(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Copy only when the last dim is strided (kernels read rows as contiguous vectors)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _check_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: move them to one device")


def check_query(Q, dim: int | None = None, dim_name: str = "D") -> None:
    check_tensor("Q", Q)
    if Q.dim() != 3:
        raise ValueError(f"Q must be [B, Lq, dim], got shape {_shape(Q)}")
    check_dtype("Q", Q)
    if Q.shape[1] < 1:
        raise ValueError(f"Q must have Lq >= 1 query tokens, got shape {_shape(Q)}")
    if dim is not None and Q.shape[2] != dim:
        raise ValueError(f"dim mismatch: Q has shape {_shape(Q)} (dim {Q.shape[2]}) but {dim_name} has dim {dim}")


def check_q_mask(q_mask, Q: torch.Tensor):
    if q_mask is None:
        return None
    check_tensor("q_mask", q_mask)
    if _shape(q_mask) != _shape(Q)[:2]:
        raise ValueError(f"q_mask must be [B, Lq] = {_shape(Q)[:2]} for Q {_shape(Q)}, got shape {_shape(q_mask)}")
    if q_mask.dtype != torch.bool:
        raise TypeError(f"q_mask must be a bool tensor (True = real token), got dtype {q_mask.dtype}")
    _check_same_device("q_mask", q_mask, "Q", Q)
    return q_mask


def _require(ok: torch.Tensor, exc_type: type, message: str, detail) -> None:
    """Raise exc_type(detail()) unless the 0-dim bool tensor `ok` is True, without a host read.

    Why torch._assert_async and not `if not bool(ok)`: bool() waits for the device, and on a GPU
    that wait is several times the R1 kernel's cost (~10 us on an H200). _assert_async is the
    same check queued on the device's stream: nothing waits, and a failure is a device-side assert
    carrying `message` (printed by the kernel) that stops every later kernel on that device, so
    the scoring kernel never reads out of bounds. The price, as with PyTorch's own CUDA indexing:
    the error surfaces at the next synchronisation as "CUDA error: device-side assert triggered"
    and the CUDA context cannot be used afterwards. On CPU _assert_async checks at once and raises
    RuntimeError; that becomes the error of docs/spec.md, whose `detail()` may read the values (this is the
    failure path only). The same call on every device keeps the code path one: a CPU test that
    forbids host reads (tests/core/test_no_sync.py) covers what runs on the GPU.
    """
    message = message[:240]  # the CUDA kernel carries at most 255 characters
    if ok.device.type == "cpu":
        try:
            torch._assert_async(ok, message)
        except RuntimeError:
            raise exc_type(detail()) from None
    else:
        torch._assert_async(ok, f"colbert_fast: {message}")


def _check_lengths(name: str, lengths: torch.Tensor, limit: int | None, limit_desc: str) -> torch.Tensor:
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {lengths.dtype}")
    lengths = lengths.to(torch.int64)
    if lengths.numel():
        lo, hi = torch.aminmax(lengths)
        ok = lo >= 0 if limit is None else (lo >= 0) & (hi <= limit)
        shape = _shape(lengths)

        def detail() -> str:
            if int(lo) < 0:
                return f"{name} must be >= 0, got a length of {int(lo)} (shape {shape})"
            return f"{name} must be <= {limit_desc} = {limit}, got a length of {int(hi)} (shape {shape})"

        bounds = "[0, inf)" if limit is None else f"[0, {limit_desc} = {limit}]"
        _require(ok, ValueError, f"{name} must be in {bounds} (shape {shape})", detail)
    return lengths


def check_floor(floor, shape: tuple, device: torch.device, shape_desc: str):
    """floor: None, a float, or a tensor broadcastable to `shape` (one value per doc or slot).

    Returns None (no floor: the plain rule of docs/spec.md) or a contiguous fp32 tensor of `shape` on `device`.
    Each value must be -inf (no floor for that doc) or finite: a NaN or +inf floor has no
    meaning every backend could agree on.
    """
    if floor is None:
        return None
    if isinstance(floor, (int, float)) and not isinstance(floor, bool):
        value = float(floor)
        if value != value or value == float("inf"):
            raise ValueError(f"floor must be -inf or finite, got {value}")
        if value == float("-inf"):
            return None  # no floor anywhere: the plain rule, on the kernels' fast path
        return torch.full(shape, value, dtype=torch.float32, device=device)
    check_tensor("floor", floor)
    if floor.dtype == torch.bool or floor.is_complex():
        raise TypeError(f"floor must be a real number or a real tensor, got dtype {floor.dtype}")
    if floor.device != device:
        raise ValueError(f"floor is on {floor.device} but the docs are on {device}: move them to one device")
    try:
        floor = floor.detach().expand(shape)  # broadcasting to exactly `shape`, as a view
    except RuntimeError:
        raise ValueError(
            f"floor must broadcast to {shape_desc} {shape} (one value per doc), got shape {_shape(floor)}"
        ) from None
    floor = floor.to(torch.float32).contiguous()
    # One reduction: the max is NaN with a NaN anywhere and +inf with a +inf anywhere.
    if floor.numel():
        message = "floor must be -inf or finite everywhere, got NaN or +inf"
        _require(floor.max() < float("inf"), ValueError, message, lambda: message)
    return floor


def check_maxsim(Q, D, q_mask, d_mask, d_lengths, floor=None):
    """Validate and normalize maxsim's arguments; returns them in the form backends expect."""
    check_tensor("D", D)
    if D.dim() not in (3, 4):
        raise ValueError(f"D must be [N, Ld, dim] or [B, K, Ld, dim], got shape {_shape(D)}")
    check_dtype("D", D)
    check_query(Q, D.shape[-1])
    _check_same_device("D", D, "Q", Q)
    if D.dim() == 4 and D.shape[0] != Q.shape[0]:
        raise ValueError(f"D [B, K, Ld, dim] must have B = {Q.shape[0]} (Q's batch), got D shape {_shape(D)}")
    q_mask = check_q_mask(q_mask, Q)
    if d_mask is not None and d_lengths is not None:
        raise ValueError("give d_mask or d_lengths, not both")
    if d_mask is not None:
        check_tensor("d_mask", d_mask)
        if _shape(d_mask) != _shape(D)[:-1]:
            raise ValueError(f"d_mask must have D's shape without dim {_shape(D)[:-1]}, got shape {_shape(d_mask)}")
        if d_mask.dtype != torch.bool:
            raise TypeError(f"d_mask must be a bool tensor (True = real token), got dtype {d_mask.dtype}")
        _check_same_device("d_mask", d_mask, "D", D)
    if d_lengths is not None:
        check_tensor("d_lengths", d_lengths)
        if _shape(d_lengths) != _shape(D)[:-2]:
            raise ValueError(
                f"d_lengths must have D's shape without (Ld, dim) {_shape(D)[:-2]}, got shape {_shape(d_lengths)}"
            )
        _check_same_device("d_lengths", d_lengths, "D", D)
        d_lengths = _check_lengths("d_lengths", d_lengths, D.shape[-2], "Ld")
    floor = check_floor(floor, _shape(D)[:-2], D.device, "D's shape without (Ld, dim)")
    Q = last_dim_contiguous(Q.to(D.dtype))
    D = last_dim_contiguous(D)
    return Q, D, q_mask, d_mask, d_lengths, floor


def check_docs(docs) -> None:
    if not isinstance(docs, (PackedDocs, CompressedDocs)):
        raise TypeError(f"docs must be a colbert_fast.PackedDocs or CompressedDocs, got {type(docs).__name__}")
    docs.check_mapping()  # a memory-mapped store whose file shrank: an error, not SIGBUS


def _check_on_docs_device(name: str, t: torch.Tensor, docs) -> None:
    if t.device != docs.device:
        raise ValueError(f"{name} is on {t.device} but docs are on {docs.device}: move them to one device")


def check_pids(pids, docs, batch: int | None) -> torch.Tensor:
    """pids int [B, K] (or [K] when B == 1) in [-1, num_docs); returns int64 [B, K]."""
    check_tensor("pids", pids)
    if pids.dtype.is_floating_point or pids.dtype == torch.bool or pids.is_complex():
        raise TypeError(f"pids must be an integer tensor, got dtype {pids.dtype}")
    if pids.dim() == 1 and (batch is None or batch == 1):
        pids = pids.unsqueeze(0)
    if pids.dim() != 2 or (batch is not None and pids.shape[0] != batch):
        want = "[B, K]" if batch is None else f"[B, K] with B = {batch} (or [K] when B == 1)"
        raise ValueError(f"pids must be {want}, got shape {_shape(pids)}")
    _check_on_docs_device("pids", pids, docs)
    pids = pids.to(torch.int64)
    if pids.numel():
        lo, hi = torch.aminmax(pids)
        n, shape = docs.num_docs, _shape(pids)

        def detail() -> str:
            if int(lo) < -1:
                return f"pids must be >= -1 (-1 = empty slot), got {int(lo)} (pids shape {shape})"
            return f"pid {int(hi)} out of range: docs has {n} docs (pids shape {shape})"

        message = f"pids must be in [-1, {n}) (-1 = empty slot; docs has {n} docs, pids shape {shape})"
        _require((lo >= -1) & (hi < n), IndexError, message, detail)
    return pids


def check_packed(Q, docs, pids, q_mask, floor=None):
    check_docs(docs)
    check_query(Q, docs.dim, "docs")
    _check_on_docs_device("Q", Q, docs)
    q_mask = check_q_mask(q_mask, Q)
    pids = check_pids(pids, docs, Q.shape[0])
    floor = check_floor(floor, _shape(pids), docs.device, "pids' shape [B, K]")
    return last_dim_contiguous(Q.to(docs.dtype)), pids, q_mask, floor


def check_centroid_interaction(probe_ids, probe_scores, floor, list_offsets, list_docs, num_docs, q_mask, max_entries):
    """centroid_interaction's inputs: shapes, dtypes and devices (no values: reading them would cost
    a GPU a host sync). Returns q_mask, all True when None."""
    tensors = {"probe_ids": probe_ids, "probe_scores": probe_scores, "floor": floor,
               "list_offsets": list_offsets, "list_docs": list_docs}  # fmt: skip
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"centroid_interaction: {name} must be a tensor, got {type(t).__name__}")
    if probe_ids.dtype != torch.int64 or probe_ids.dim() != 3:
        raise ValueError(f"centroid_interaction: probe_ids must be int64 [B, Lq, P], got {probe_ids.dtype} "
                         f"{list(probe_ids.shape)}")  # fmt: skip
    B, Lq, P = probe_ids.shape
    if probe_scores.dtype != torch.float32 or probe_scores.shape != probe_ids.shape:
        raise ValueError(f"centroid_interaction: probe_scores must be float32 {list(probe_ids.shape)}, got "
                         f"{probe_scores.dtype} {list(probe_scores.shape)}")  # fmt: skip
    if floor.dtype != torch.float32 or tuple(floor.shape) != (B, Lq):
        raise ValueError(
            f"centroid_interaction: floor must be float32 [{B}, {Lq}], got {floor.dtype} {list(floor.shape)}"
        )
    if list_offsets.dtype != torch.int64 or list_offsets.dim() != 1 or list_offsets.numel() < 1:
        raise ValueError("centroid_interaction: list_offsets must be int64 [C + 1] (C >= 0 lists)")
    if list_docs.dtype != torch.int64 or list_docs.dim() != 1:
        raise ValueError(f"centroid_interaction: list_docs must be int64 [nnz], got {list_docs.dtype} "
                         f"{list(list_docs.shape)}")  # fmt: skip
    if not isinstance(num_docs, int) or isinstance(num_docs, bool) or num_docs < 0:
        raise ValueError(f"centroid_interaction: num_docs must be an int >= 0, got {num_docs!r}")
    for name, t in tensors.items():
        if t.device != probe_ids.device:
            raise ValueError(f"centroid_interaction: {name} is on {t.device}, probe_ids on {probe_ids.device}")
    device = probe_ids.device
    if q_mask is None:
        q_mask = torch.ones((B, Lq), dtype=torch.bool, device=device)
    elif not isinstance(q_mask, torch.Tensor) or q_mask.dtype != torch.bool or tuple(q_mask.shape) != (B, Lq):
        raise ValueError(f"centroid_interaction: q_mask must be a bool tensor [{B}, {Lq}]")
    elif q_mask.device != device:
        raise ValueError(f"centroid_interaction: q_mask is on {q_mask.device}, probe_ids on {device}")
    if max_entries is not None and (
        not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 0
    ):
        raise ValueError(f"centroid_interaction: max_entries must be None or an int >= 0, got {max_entries!r}")
    return q_mask
