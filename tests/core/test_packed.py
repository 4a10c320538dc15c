"""PackedDocs: construction, offsets, files (safetensors + mmap), and damaged files."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import colbert_fast as cf


def _docs(dtype=torch.float16):
    g = torch.Generator().manual_seed(0)
    return cf.PackedDocs.from_list([torch.randn(n, 16, generator=g).to(dtype) for n in (3, 0, 7, 1)])


def test_offsets_and_properties():
    docs = _docs()
    assert docs.offsets.dtype == torch.int64 and docs.offsets.tolist() == [0, 3, 3, 10, 11]
    assert docs.lengths.tolist() == [3, 0, 7, 1]
    assert (docs.num_docs, docs.dim, docs.dtype, docs.num_tokens, docs.max_length) == (4, 16, torch.float16, 11, 7)
    assert docs.device == torch.device("cpu") and len(docs) == 4
    assert torch.equal(docs.doc(2), docs.embeddings[3:10])
    assert docs.doc(1).shape == (0, 16)
    with pytest.raises(IndexError):
        docs.doc(4)


def test_to_dtype_keeps_layout():
    docs = _docs().to(dtype=torch.float32)
    assert docs.dtype == torch.float32 and docs.offsets.tolist() == [0, 3, 3, 10, 11]
    same = docs.to("cpu")
    assert same is docs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_roundtrip(tmp_path, dtype, mmap):
    docs = _docs(dtype)
    path = tmp_path / "store.safetensors"
    docs.save(path)
    loaded = cf.PackedDocs.load(path, mmap=mmap)
    assert loaded.dtype == dtype
    assert torch.equal(loaded.embeddings, docs.embeddings)
    assert torch.equal(loaded.offsets, docs.offsets) and torch.equal(loaded.lengths, docs.lengths)
    pids = torch.tensor([[2, -1, 0, 3]])
    Q = torch.randn(1, 5, 16)
    assert torch.equal(cf.maxsim_packed(Q, loaded, pids), cf.maxsim_packed(Q, docs, pids))
    assert not list(tmp_path.glob("*.tmp*")), "save must not leave temp files behind"


def test_mmap_is_lazy_view_of_file(tmp_path):
    path = tmp_path / "store.safetensors"
    _docs().save(path)
    loaded = cf.PackedDocs.load(path, mmap=True)
    # The embeddings share one storage with the file mapping rather than a private copy of it.
    assert loaded.embeddings.untyped_storage().nbytes() == path.stat().st_size


def test_save_is_atomic_overwrite(tmp_path):
    path = tmp_path / "store.safetensors"
    _docs().save(path)
    bigger = cf.PackedDocs(torch.randn(20, 16, dtype=torch.float16), torch.tensor([20]))
    bigger.save(path)
    assert cf.PackedDocs.load(path).num_tokens == 20


def test_truncated_file(tmp_path):
    path = tmp_path / "store.safetensors"
    _docs().save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        cf.PackedDocs.load(path)
    path.write_bytes(raw[:5])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        cf.PackedDocs.load(path)


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(new) == n
    path.write_bytes(raw[:8] + new + raw[8 + n :])


def test_tampered_lengths_do_not_add_up(tmp_path):
    path = tmp_path / "store.safetensors"
    docs = _docs(torch.float32)
    docs.save(path)
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    begin, _ = header["lengths"]["data_offsets"]
    raw[8 + n + begin : 8 + n + begin + 8] = struct.pack("<q", 99)  # lengths[0] = 99
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="offsets do not add up"):
        cf.PackedDocs.load(path)


def test_not_our_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"embeddings": torch.zeros(2, 2), "lengths": torch.tensor([2])}, str(path))
    with pytest.raises(ValueError, match="not a colbert_fast PackedDocs file"):
        cf.PackedDocs.load(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match="corrupt header"):
        cf.PackedDocs.load(path)


def test_wrong_shape_in_header(tmp_path):
    path = tmp_path / "store.safetensors"
    _docs().save(path)

    def edit(h):
        h["embeddings"]["shape"] = [11, 15]

    _rewrite_header(path, edit)
    with pytest.raises(ValueError, match="size does not match shape"):
        cf.PackedDocs.load(path)


def test_file_is_standard_safetensors(tmp_path):
    from safetensors import safe_open

    docs = _docs(torch.bfloat16)
    path = tmp_path / "store.safetensors"
    docs.save(path)
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("embeddings"), docs.embeddings)
        assert torch.equal(f.get_tensor("lengths"), docs.lengths)


def test_write_store_streams_chunks_and_checks_them(tmp_path):
    from colbert_fast.packed import write_store

    docs = _docs(torch.float32)
    path = tmp_path / "store.safetensors"
    write_store(path, docs.lengths, [docs.embeddings[:4], docs.embeddings[4:]], 16, torch.float32)
    assert torch.equal(cf.PackedDocs.load(path).embeddings, docs.embeddings)
    with pytest.raises(ValueError, match="offsets do not add up"):
        write_store(path, docs.lengths, [docs.embeddings[:4]], 16, torch.float32)
    with pytest.raises(ValueError, match="expected"):
        write_store(path, docs.lengths, [docs.embeddings.half()], 16, torch.float32)
    assert torch.equal(cf.PackedDocs.load(path).embeddings, docs.embeddings), "a failed write keeps the old file"
    assert not list(tmp_path.glob("*.tmp*"))
