"""The indexer: contents, manifest, atomic replacement, resuming after a crash, corrupt-index detection."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("faiss")

from colbert_fast import PackedDocs
from colbert_fast.files import sha256
from colbert_fast.retrieval import build
from colbert_fast.retrieval.build import IndexConfig, build_index, choose_partitions
from colbert_fast.retrieval.index import CorruptIndexError, Index
from colbert_fast.retrieval.tsv import read_collection
from colbert_fast.testing import tiny_encoder, write_collection

N_DOCS = 90
CFG = IndexConfig(chunk_size=32, batch_size=16, store="fp16")  # the fp16 store: compared bit for bit


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def built(enc, tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    texts = write_collection(root / "collection.tsv", N_DOCS, seed=3)
    index = build_index(root / "collection.tsv", root / "index", enc, CFG, progress=False)
    return root, texts, index


def test_store_holds_every_doc_in_order(enc, built):
    _, texts, index = built
    assert index.pids == [str(i) for i in range(N_DOCS)]
    docs = index.docs
    assert docs.dtype == torch.float16 and docs.num_docs == N_DOCS
    for i in (0, 17, N_DOCS - 1):  # each doc's rows: its own encoding, skiplist + padding dropped
        expected = enc.encode_docs([texts[i]])[0].half()
        torch.testing.assert_close(docs.doc(i), expected, atol=2e-3, rtol=0)
    assert torch.equal(
        index.token_to_doc, torch.repeat_interleave(torch.arange(N_DOCS, dtype=torch.int32), docs.lengths)
    )
    assert index.ivf.ntotal == docs.num_tokens
    # the streamed store is a valid safetensors file for the safetensors library too
    from safetensors.torch import load_file

    raw = load_file(str(index.path / index.manifest["files"]["docs"]["name"]))
    assert torch.equal(raw["embeddings"], docs.embeddings) and torch.equal(raw["lengths"], docs.lengths)


def test_manifest(built):
    root, _, index = built
    m = json.loads((root / "index" / "manifest.json").read_text())
    assert m["format"] == "colbert_fast.index/1"
    assert m["stats"] == {
        "num_docs": N_DOCS,
        "num_tokens": index.docs.num_tokens,
        "dim": 128,
        "dtype": "float16",
        "store": {"codec": "fp16", "bytes_per_token": 256},
    }
    assert set(m["versions"]) >= {"colbert_fast", "torch", "faiss", "transformers"}
    assert m["model"]["config"]["doc_maxlen"] == 180
    for info in m["files"].values():
        assert len(info["sha256"]) == 64 and (root / "index" / info["name"]).stat().st_size == info["bytes"]
    names = sorted(p.name for p in (root / "index").iterdir())
    assert len(names) == 4 and not any(n.startswith("partial-") for n in names), names


def test_partitions_and_codecs(enc, tmp_path):
    assert choose_partitions(10**6, 10**6) == 8192  # 8 * sqrt(1e6) = 8000 -> 8192
    assert choose_partitions(10**6, 100_000) == 2564  # capped at one cell per 39 training vectors
    assert choose_partitions(50, 50) == 1
    write_collection(tmp_path / "c.tsv", 40, seed=5)
    pq = build_index(
        tmp_path / "c.tsv", tmp_path / "pq", enc, IndexConfig(codec="pq", partitions=4, ivf=True), progress=False
    )
    assert pq.manifest["ivf"]["codec"] == "pq" and pq.manifest["ivf"]["pq_subvectors"] == 16
    assert type(pq.ivf).__name__ == "IndexIVFPQ" and pq.ivf.pq.M == 16 and pq.ivf.pq.nbits == 8
    flat = build_index(tmp_path / "c.tsv", tmp_path / "flat", enc, IndexConfig(ivf=True), progress=False)
    assert flat.manifest["ivf"]["codec"] == "flat", "a tiny collection falls back to exact IVF lists"
    with pytest.raises(ValueError, match="must divide"):
        build_index(
            tmp_path / "c.tsv",
            tmp_path / "bad",
            enc,
            IndexConfig(codec="pq", pq_subvectors=7, ivf=True),
            progress=False,
        )


def test_old_index_survives_a_crash_and_the_rerun_resumes(enc, tmp_path, monkeypatch):
    index_dir = tmp_path / "index"
    write_collection(tmp_path / "a.tsv", 40, seed=7)
    old = build_index(tmp_path / "a.tsv", index_dir, enc, CFG, progress=False)
    write_collection(tmp_path / "b.tsv", N_DOCS, seed=8, start=1000)

    def crash(chunk):
        if chunk == 1:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path / "b.tsv", index_dir, enc, CFG, progress=False, on_chunk=crash)
    survivor = Index.load(index_dir)  # verifies every checksum
    assert survivor.pids == old.pids
    assert torch.equal(survivor.docs.embeddings, old.docs.embeddings)
    partial = list(index_dir.glob("partial-*"))
    assert len(partial) == 1 and len(list(partial[0].glob("chunk-*.safetensors"))) == 2

    encoded = []
    real_encode = enc.encode_docs
    monkeypatch.setattr(enc, "encode_docs", lambda texts: encoded.extend(texts) or real_encode(texts))
    resumed = build_index(tmp_path / "b.tsv", index_dir, enc, CFG, progress=False)
    assert len(encoded) == N_DOCS - 2 * CFG.chunk_size, "only the unfinished chunk is encoded again"
    monkeypatch.undo()
    clean = build_index(tmp_path / "b.tsv", tmp_path / "clean", enc, CFG, progress=False, resume=False)
    assert resumed.pids == clean.pids == [str(1000 + i) for i in range(N_DOCS)]
    assert torch.equal(resumed.docs.embeddings, clean.docs.embeddings)
    assert torch.equal(resumed.docs.lengths, clean.docs.lengths)
    assert not list(index_dir.glob("partial-*"))
    assert len(list(index_dir.iterdir())) == 4, "the old generation's files are removed"


def test_crash_before_the_manifest_keeps_the_old_index(enc, tmp_path, monkeypatch):
    write_collection(tmp_path / "a.tsv", 30, seed=1)
    write_collection(tmp_path / "b.tsv", 30, seed=2, start=500)
    old = build_index(tmp_path / "a.tsv", tmp_path / "idx", enc, CFG, progress=False)
    (tmp_path / "idx" / "docs-notes.txt").write_text("a user's file in the index directory is never removed")

    def die(*args):
        raise OSError("disk full")

    monkeypatch.setattr(build, "write_manifest", die)
    with pytest.raises(OSError, match="disk full"):
        build_index(tmp_path / "b.tsv", tmp_path / "idx", enc, CFG, progress=False)
    monkeypatch.undo()
    assert Index.load(tmp_path / "idx").pids == old.pids
    new = build_index(tmp_path / "b.tsv", tmp_path / "idx", enc, CFG, progress=False)
    assert new.pids[0] == "500"
    assert len(list((tmp_path / "idx").iterdir())) == 5, "orphans of the failed build are cleaned up"
    assert (tmp_path / "idx" / "docs-notes.txt").exists()


def test_no_index_and_partial_only(enc, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        Index.load(tmp_path)
    write_collection(tmp_path / "c.tsv", 40, seed=1)

    def crash(chunk):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path / "c.tsv", tmp_path / "idx", enc, CFG, progress=False, on_chunk=crash)
    with pytest.raises(FileNotFoundError, match="resume"):
        Index.load(tmp_path / "idx")


# ---- corrupt and tampered indexes ------------------------------------------------------------


@pytest.fixture
def copy_of(built, tmp_path):
    import shutil

    root, _, _ = built
    shutil.copytree(root / "index", tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    return tmp_path / "index", manifest


@pytest.mark.parametrize("key", ["docs", "ivf", "ids"])
def test_truncated_file(copy_of, key):
    path, m = copy_of
    f = path / m["files"][key]["name"]
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CorruptIndexError, match="truncated"):
        Index.load(path)


@pytest.mark.parametrize("key", ["docs", "ivf", "ids"])
def test_tampered_file(copy_of, key):
    path, m = copy_of
    f = path / m["files"][key]["name"]
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    f.write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexError, match="sha256"):
        Index.load(path)


def test_bad_manifests(copy_of):
    path, m = copy_of
    mpath = path / "manifest.json"
    mpath.write_text(json.dumps(m)[:50])
    with pytest.raises(CorruptIndexError, match="corrupt"):
        Index.load(path)
    mpath.write_text(json.dumps({**m, "format": "something/9"}))
    with pytest.raises(CorruptIndexError, match="manifest"):
        Index.load(path)
    evil = json.loads(json.dumps(m))
    evil["files"]["docs"]["name"] = "../outside.safetensors"
    mpath.write_text(json.dumps(evil))
    with pytest.raises(CorruptIndexError, match="plain name"):
        Index.load(path)
    lying = json.loads(json.dumps(m))
    lying["stats"]["num_docs"] += 1
    mpath.write_text(json.dumps(lying))
    with pytest.raises(CorruptIndexError, match="inconsistent"):
        Index.load(path)
    (path / m["files"]["ids"]["name"]).unlink()
    mpath.write_text(json.dumps(m))
    with pytest.raises(CorruptIndexError, match="missing"):
        Index.load(path)


def test_a_store_from_elsewhere_is_rejected(copy_of):
    """A valid PackedDocs file swapped in with a matching manifest entry: shapes must still agree."""
    path, m = copy_of
    name = m["files"]["docs"]["name"]
    PackedDocs.from_list([torch.randn(3, 128).half()]).save(path / name)
    f = path / name
    m["files"]["docs"].update(bytes=f.stat().st_size, sha256=sha256(f))
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptIndexError, match="inconsistent"):
        Index.load(path)


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        ("0\tthe cat\n1 the dog\n", "2: expected 'pid<TAB>text'"),
        ("0\tthe cat\n0\tthe dog\n", "duplicate pid '0'"),
        ("\tthe cat\n", "empty pid"),
        ("\n\n", "no passages"),
    ],
)
def test_bad_collections(enc, tmp_path, content, message):
    (tmp_path / "c.tsv").write_text(content)
    with pytest.raises(ValueError, match=message):
        build_index(tmp_path / "c.tsv", tmp_path / "idx", enc, CFG, progress=False)
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_collection_titles_and_header(tmp_path):
    (tmp_path / "c.tsv").write_text("id\ttext\ttitle\nd1\tthe cat\tCats\nd2\tthe dog\t\n")
    assert read_collection(tmp_path / "c.tsv") == (["d1", "d2"], ["Cats | the cat", "the dog"])


def test_bad_configs():
    with pytest.raises(ValueError, match="codec"):
        IndexConfig(codec="hnsw")
    with pytest.raises(ValueError, match="chunk_size"):
        IndexConfig(chunk_size=0)
    with pytest.raises(ValueError, match="store must be one of"):
        IndexConfig(store="pq")
    with pytest.raises(ValueError, match="store_nbits must be 1, 2 or 4"):
        IndexConfig(store="residual", store_nbits=3)


def test_package_imports_without_faiss():
    """faiss is optional: the package and the pipeline modules import without it, and using it says why."""
    code = (
        "import sys; sys.modules['faiss'] = None\n"
        "import colbert_fast, colbert_fast.retrieval.build, colbert_fast.retrieval.search, colbert_fast.cli\n"
        "from colbert_fast.retrieval.index import require_faiss\n"
        "try:\n    require_faiss()\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ERR faiss is needed" in out and "faiss-cpu" in out


def test_the_default_store_is_residual_2bit():
    """Residual 2-bit met the quality bar on Cranfield (bench/results/cranfield): it is what an
    index gets unless it asks for another store, from Python and from the command line."""
    import argparse

    from colbert_fast.cli.arguments import add_build_arguments, index_config

    assert (IndexConfig().store, IndexConfig().store_nbits) == ("residual", 2)
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    cfg = index_config(parser.parse_args([]))
    assert (cfg.store, cfg.store_nbits, cfg.keep_fp16) == ("residual", 2, False)
    assert index_config(parser.parse_args(["--store", "fp16"])).store == "fp16"


def test_the_default_index_has_no_ivf_unless_its_store_needs_one():
    """The centroid engine is the default search of a residual index, which then needs no faiss IVF;
    fp16 and int8 stores (no centroids) get the IVF unless told otherwise, from Python and the CLI."""
    import argparse

    from colbert_fast.cli.arguments import add_build_arguments, index_config

    assert IndexConfig().ivf is False and IndexConfig(store="residual", store_nbits=4).ivf is False
    assert IndexConfig(store="fp16").ivf is True and IndexConfig(store="int8").ivf is True
    assert IndexConfig(ivf=True).ivf is True and IndexConfig(store="fp16", ivf=False).ivf is False
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    for argv, ivf in (
        ([], False),
        (["--ivf"], True),
        (["--store", "fp16"], True),
        (["--store", "int8", "--no-ivf"], False),
    ):
        assert index_config(parser.parse_args(argv)).ivf is ivf, argv


@pytest.mark.parametrize("store,nbits", [("residual", 2), ("int8", 8), ("residual", 1)])
def test_compressed_stores(enc, built, tmp_path, store, nbits):
    """store='residual'/'int8': the codes are the store (loaded as a CompressedDocs, scored from
    the codes); the fp16 file is gone unless keep_fp16; every score equals MaxSim over the decoded
    vectors; the manifest records codec, bits and bytes per token."""
    from colbert_fast import CompressedDocs, reference
    from colbert_fast.retrieval.search import Searcher

    root, texts, fp16 = built
    cfg = IndexConfig(chunk_size=32, batch_size=16, store=store, store_nbits=nbits if store == "residual" else 2)
    index = build_index(root / "collection.tsv", tmp_path / "idx", enc, cfg, progress=False)
    assert isinstance(index.docs, CompressedDocs) and index.docs.codec == store and index.docs.nbits == nbits
    info = index.manifest["stats"]["store"]
    assert info == {"codec": store, "nbits": nbits, "bytes_per_token": index.docs.bytes_per_token}
    names = {f.name for f in (tmp_path / "idx").iterdir()}
    assert not any(n.startswith("docs-") for n in names) and any(n.startswith("codes-") for n in names)
    again = Index.load(tmp_path / "idx")  # sha256 verified, loaded by the manifest's store codec
    assert isinstance(again.docs, CompressedDocs) and torch.equal(again.docs.codes, index.docs.codes)
    # same lengths and token rows as the fp16 store of the same collection
    assert torch.equal(again.docs.lengths, fp16.docs.lengths)
    queries = ["the cat and the dog", "blue river"]
    Q, q_mask = enc.encode_queries(queries)
    searcher = Searcher(again, enc, device="cpu", mode="exhaustive", load_ivf=False)
    ranking = searcher.search(queries, k=N_DOCS)
    dec = again.docs.decode()
    exact = reference.maxsim_packed(
        Q, dec.embeddings, dec.offsets, dec.lengths, torch.arange(N_DOCS).expand(2, -1), q_mask
    )
    for b, r in enumerate(ranking):
        got = torch.tensor([s for _, s in r])
        want = exact[b, again.rows_of([p for p, _ in r])]
        torch.testing.assert_close(got, want, atol=0.05, rtol=0)
    assert Searcher(again, enc, device="cpu").search(queries, k=5)  # the faiss path scores the codes too


def test_keep_fp16_beside_a_compressed_store(enc, built, tmp_path):
    root, _, fp16 = built
    cfg = IndexConfig(chunk_size=32, batch_size=16, store="int8", keep_fp16=True)
    index = build_index(root / "collection.tsv", tmp_path / "idx", enc, cfg, progress=False)
    kept = index.path / index.manifest["files"]["fp16"]["name"]
    assert torch.equal(PackedDocs.load(kept).embeddings, fp16.docs.embeddings)
    kept.write_bytes(kept.read_bytes()[:-10])
    with pytest.raises(CorruptIndexError, match="truncated"):
        Index.load(tmp_path / "idx")


def test_embeddings_in_are_packed_as_the_fp16_store_holds_them(tmp_path):
    """A list of docs (fp32, fp16, numpy, empty ones) packs straight to fp16: the same store as the
    same docs handed over as a PackedDocs; out-of-range values and bad lists raise before writing."""
    from colbert_fast.retrieval.build import as_packed, build_index_from_embeddings

    g = torch.Generator().manual_seed(0)
    docs = [torch.randn(n, 16, generator=g) for n in (5, 0, 9, 3)]
    mixed = [docs[0], docs[1].half(), docs[2].numpy(), docs[3]]
    packed = as_packed(mixed, torch.float16)
    assert packed.dtype == torch.float16 and packed.lengths.tolist() == [5, 0, 9, 3]
    assert torch.equal(packed.embeddings, torch.cat(docs).half())
    config = IndexConfig(store="fp16", ivf=False)
    a = build_index_from_embeddings(mixed, tmp_path / "a", config)
    b = build_index_from_embeddings(PackedDocs.from_list(docs), tmp_path / "b", config)
    assert torch.equal(a.docs.embeddings, b.docs.embeddings)
    with pytest.raises(ValueError, match="beyond fp16's range"):
        build_index_from_embeddings([docs[0] * 1e5], tmp_path / "c", config)
    with pytest.raises(ValueError, match="NaN or inf"):
        build_index_from_embeddings([torch.full((2, 16), float("nan"))], tmp_path / "c", config)
    with pytest.raises(ValueError, match=r"embeddings\[1\] must be a \[L, 16\] tensor, got \(2, 8\)"):
        build_index_from_embeddings([docs[0], torch.zeros(2, 8)], tmp_path / "c", config)
    with pytest.raises(TypeError, match=r"embeddings\[0\] must be floating point"):
        build_index_from_embeddings([torch.zeros(2, 16, dtype=torch.long)], tmp_path / "c", config)
    with pytest.raises(ValueError, match="empty collection"):
        build_index_from_embeddings([], tmp_path / "c", config)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").glob("manifest.json"))


def test_a_residual_build_shows_its_long_steps_when_asked(tmp_path, capsys):
    from colbert_fast.retrieval.build import build_index_from_embeddings

    g = torch.Generator().manual_seed(0)
    docs = [torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=1) for _ in range(30)]
    build_index_from_embeddings(docs, tmp_path / "quiet", IndexConfig(ivf=False))
    assert capsys.readouterr().err == ""
    build_index_from_embeddings(docs, tmp_path / "shown", IndexConfig(ivf=False), progress=True)
    err = capsys.readouterr().err
    assert "k-means" in err and "8/8" in err and "encoding" in err and "600/600" in err
