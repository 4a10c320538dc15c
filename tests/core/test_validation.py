"""Every bad input in docs/spec.md (section 8) raises the named error type with a message naming the argument
and the shapes seen. Validation runs before any backend, so these hold for every backend."""

from __future__ import annotations

import pytest
import torch

import colbert_fast as cf


@pytest.fixture
def qd():
    return torch.randn(2, 4, 8), torch.randn(3, 5, 8)


@pytest.fixture
def docs():
    return cf.PackedDocs(torch.randn(10, 8), torch.tensor([3, 0, 7]))


def test_q_wrong_rank(qd):
    _, D = qd
    with pytest.raises(ValueError, match=r"Q must be \[B, Lq, dim\], got shape \(4, 8\)"):
        cf.maxsim(torch.randn(4, 8), D)


def test_d_wrong_rank(qd):
    Q, _ = qd
    with pytest.raises(ValueError, match=r"D must be .* got shape \(5, 8\)"):
        cf.maxsim(Q, torch.randn(5, 8))


def test_dim_mismatch(qd):
    Q, _ = qd
    with pytest.raises(ValueError, match=r"dim mismatch: Q has shape \(2, 4, 8\).*D has dim 16"):
        cf.maxsim(Q, torch.randn(3, 5, 16))


def test_per_query_batch_mismatch(qd):
    Q, _ = qd
    with pytest.raises(ValueError, match=r"B = 2 .* got D shape \(3, 4, 5, 8\)"):
        cf.maxsim(Q, torch.randn(3, 4, 5, 8))


def test_q_mask_shape(qd):
    Q, D = qd
    with pytest.raises(ValueError, match=r"q_mask must be \[B, Lq\] = \(2, 4\).*got shape \(2, 5\)"):
        cf.maxsim(Q, D, torch.ones(2, 5, dtype=torch.bool))


def test_q_mask_dtype(qd):
    Q, D = qd
    with pytest.raises(TypeError, match="q_mask must be a bool tensor"):
        cf.maxsim(Q, D, torch.ones(2, 4))


def test_d_mask_shape(qd):
    Q, D = qd
    with pytest.raises(ValueError, match=r"d_mask must have D's shape without dim \(3, 5\), got shape \(3, 4\)"):
        cf.maxsim(Q, D, d_mask=torch.ones(3, 4, dtype=torch.bool))


def test_d_mask_dtype(qd):
    Q, D = qd
    with pytest.raises(TypeError, match="d_mask must be a bool tensor"):
        cf.maxsim(Q, D, d_mask=torch.ones(3, 5, dtype=torch.int32))


def test_d_lengths_shape(qd):
    Q, D = qd
    with pytest.raises(ValueError, match=r"d_lengths must have D's shape without \(Ld, dim\) \(3,\), got shape \(2,\)"):
        cf.maxsim(Q, D, d_lengths=torch.tensor([1, 2]))


def test_d_lengths_float(qd):
    Q, D = qd
    with pytest.raises(TypeError, match="d_lengths must be an integer tensor"):
        cf.maxsim(Q, D, d_lengths=torch.tensor([1.0, 2.0, 3.0]))


def test_negative_lengths(qd):
    Q, D = qd
    with pytest.raises(ValueError, match=r"d_lengths must be >= 0, got a length of -1"):
        cf.maxsim(Q, D, d_lengths=torch.tensor([1, -1, 3]))


def test_lengths_longer_than_ld(qd):
    Q, D = qd
    with pytest.raises(ValueError, match=r"d_lengths must be <= Ld = 5, got a length of 6"):
        cf.maxsim(Q, D, d_lengths=torch.tensor([1, 6, 3]))


def test_mask_and_lengths_together(qd):
    Q, D = qd
    with pytest.raises(ValueError, match="d_mask or d_lengths, not both"):
        cf.maxsim(Q, D, d_mask=torch.ones(3, 5, dtype=torch.bool), d_lengths=torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.int8])
def test_unsupported_dtype(qd, dtype):
    Q, D = qd
    with pytest.raises(TypeError, match=rf"D has dtype {dtype}; supported"):
        cf.maxsim(Q, D.to(dtype))
    with pytest.raises(TypeError, match=rf"Q has dtype {dtype}; supported"):
        cf.maxsim(Q.to(dtype), D)


def test_not_a_tensor(qd):
    Q, D = qd
    with pytest.raises(TypeError, match="D must be a torch.Tensor, got list"):
        cf.maxsim(Q, [[1.0]])


def test_empty_query(qd):
    _, D = qd
    with pytest.raises(ValueError, match=r"Lq >= 1"):
        cf.maxsim(torch.randn(2, 0, 8), D)


def test_different_devices(qd):
    Q, D = qd
    with pytest.raises(ValueError, match=r"D is on meta but Q is on cpu"):
        cf.maxsim(Q, D.to("meta"))


def test_unknown_backend(qd):
    Q, D = qd
    with pytest.raises(ValueError, match=r"backend must be 'auto' or one of"):
        cf.maxsim(Q, D, backend="tpu")


def test_forced_unavailable_backend_says_why(qd):
    Q, D = qd
    # No backend runs CUDA kernels on CPU tensors: the error names the backend and the reason.
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is unavailable for cpu tensors: "):
        cf.maxsim(Q, D, backend="cuda")


def test_pids_float(docs):
    with pytest.raises(TypeError, match="pids must be an integer tensor, got dtype torch.float32"):
        cf.maxsim_packed(torch.randn(1, 4, 8), docs, torch.tensor([0.0, 1.0]))


def test_pid_too_large(docs):
    with pytest.raises(IndexError, match=r"pid 3 out of range: docs has 3 docs"):
        cf.maxsim_packed(torch.randn(1, 4, 8), docs, torch.tensor([0, 3]))


def test_pid_below_minus_one(docs):
    with pytest.raises(IndexError, match=r"pids must be >= -1 .* got -2"):
        cf.maxsim_packed(torch.randn(1, 4, 8), docs, torch.tensor([0, -2]))
    with pytest.raises(IndexError, match=r"got -5"):
        cf.gather(docs, torch.tensor([[-5]]))


def test_pids_batch_mismatch(docs):
    with pytest.raises(ValueError, match=r"pids must be \[B, K\] with B = 2 .* got shape \(3, 1\)"):
        cf.maxsim_packed(torch.randn(2, 4, 8), docs, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        cf.maxsim_packed(torch.randn(2, 4, 8), docs, torch.zeros(4, dtype=torch.long))


def test_packed_dim_mismatch(docs):
    with pytest.raises(ValueError, match=r"dim mismatch: Q has shape \(1, 4, 16\).*docs has dim 8"):
        cf.maxsim_packed(torch.randn(1, 4, 16), docs, torch.tensor([0]))


def test_docs_not_packed():
    with pytest.raises(TypeError, match="docs must be a colbert_fast.PackedDocs or CompressedDocs, got Tensor"):
        cf.maxsim_packed(torch.randn(1, 4, 8), torch.randn(3, 8), torch.tensor([0]))


def test_packed_offsets_do_not_add_up():
    with pytest.raises(ValueError, match=r"offsets do not add up: lengths sum to 9 rows but embeddings has 10 rows"):
        cf.PackedDocs(torch.randn(10, 8), torch.tensor([3, 6]))


def test_packed_negative_lengths():
    with pytest.raises(ValueError, match=r"lengths must be >= 0, got lengths\[1\] = -2"):
        cf.PackedDocs(torch.randn(1, 8), torch.tensor([3, -2]))


def test_packed_bad_embeddings():
    with pytest.raises(ValueError, match=r"embeddings must be \[T, dim\], got shape \(2, 3, 8\)"):
        cf.PackedDocs(torch.randn(2, 3, 8), torch.tensor([2]))
    with pytest.raises(TypeError, match="embeddings has dtype torch.float64"):
        cf.PackedDocs(torch.randn(2, 8, dtype=torch.float64), torch.tensor([2]))
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        cf.PackedDocs(torch.randn(2, 8), torch.tensor([2.0]))


def test_from_list_mismatched_docs():
    with pytest.raises(ValueError, match=r"docs\[1\] has shape \(2, 4\).*docs\[0\] has dim 8"):
        cf.PackedDocs.from_list([torch.randn(3, 8), torch.randn(2, 4)])


def test_floor_shape(qd, docs):
    Q, D = qd
    with pytest.raises(
        ValueError, match=r"floor must broadcast to D's shape without \(Ld, dim\) \(3,\).*got shape \(4,\)"
    ):
        cf.maxsim(Q, D, floor=torch.zeros(4))
    with pytest.raises(ValueError, match=r"floor must broadcast to pids' shape \[B, K\] \(1, 2\).*got shape \(3,\)"):
        cf.maxsim_packed(torch.randn(1, 4, 8), docs, torch.tensor([0, 2]), floor=torch.zeros(3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_floor_nan_or_plus_inf(qd, bad):
    Q, D = qd
    with pytest.raises(ValueError, match="floor must be -inf or finite"):
        cf.maxsim(Q, D, floor=bad)
    with pytest.raises(ValueError, match="floor must be -inf or finite everywhere"):
        cf.maxsim(Q, D, floor=torch.tensor([0.0, bad, -1.0]))


def test_floor_dtype(qd):
    Q, D = qd
    with pytest.raises(TypeError, match="floor must be a real number or a real tensor, got dtype torch.bool"):
        cf.maxsim(Q, D, floor=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="floor must be a torch.Tensor, got str"):
        cf.maxsim(Q, D, floor="0")


def test_floor_on_the_kernel_ops_directly(qd):
    # torch.ops.colbert_fast.* may be called without the Python checks: the C++ glue checks too.
    pytest.importorskip("colbert_fast._C")
    Q, D = qd
    with pytest.raises(RuntimeError, match=r"floor must have shape \[3\]"):
        torch.ops.colbert_fast.maxsim(Q, D, None, None, None, torch.zeros(2))
    with pytest.raises(TypeError, match="floor must be float32"):
        torch.ops.colbert_fast.maxsim(Q, D, None, None, None, torch.zeros(3, dtype=torch.float64))
