"""The live index (retrieval/live.py): embeddings in, add / delete / update / compact, and no drift:
after any sequence of changes it searches exactly like a fresh build of the surviving docs (same
order, same codebook), in every store kind."""

from __future__ import annotations

import json
import random

import pytest
import torch

from colbert_fast.retrieval.build import IndexConfig
from colbert_fast.retrieval.index import CorruptIndexError, Index
from colbert_fast.retrieval.live import MAX_SEGMENTS, LiveIndex, index_stats
from colbert_fast.testing import clustered_collection

DIM = 64


@pytest.fixture(scope="module")
def corpus():
    """160 clustered docs (dim 64) with ids d0..d159, 5 queries, and doc 7 made empty."""
    packed, Q, _ = clustered_collection(160, num_queries=5, seed=11, dim=DIM)
    docs = [packed.doc(i).float() for i in range(packed.num_docs)]
    docs[7] = torch.zeros(0, DIM)
    return {f"d{i}": d for i, d in enumerate(docs)}, Q


def ids_range(a, b):
    return [f"d{i}" for i in range(a, b)]


def fresh_twin(tmp_path, live: LiveIndex, embeddings: dict, config: IndexConfig | None = None) -> LiveIndex:
    """A fresh build of `live`'s surviving docs in its order, with its codebook (if residual)."""
    index = live.searcher.index
    pids = list(index.pids)
    book = index.docs.codebook if hasattr(index.docs, "codebook") else None
    return LiveIndex.create(tmp_path / "fresh", [embeddings[p] for p in pids], pids, config=config, codebook=book,
                            device="cpu")  # fmt: skip


def assert_same_results(a: LiveIndex, b: LiveIndex, Q, k: int, **kw) -> None:
    for x, y in zip(a.search(Q, k, **kw), b.search(Q, k, **kw)):
        assert [p for p, _ in x] == [p for p, _ in y]
        torch.testing.assert_close(torch.tensor([s for _, s in x]), torch.tensor([s for _, s in y]), atol=1e-4 * 32,
                                   rtol=0)  # fmt: skip


def churn(live: LiveIndex, embeddings: dict, seed: int, cycles: int, start: int) -> int:
    """Cycles of: add 12 new docs, delete 6 random live ones, update 2. Returns the next unused doc number."""
    rng = random.Random(seed)
    nxt = start
    for _ in range(cycles):
        new = ids_range(nxt, nxt + 12)
        nxt += 12
        live.add(new, [embeddings[p] for p in new])
        alive = list(live.searcher.index.pids)
        live.delete(rng.sample(alive, 6))
        alive = list(live.searcher.index.pids)  # a LiveIndex searches its own last write
        changed = rng.sample(alive, 2)
        for p in changed:  # new vectors under the same id: another doc's
            embeddings[p] = embeddings[rng.choice(list(embeddings))]
        live.update(changed, [embeddings[p] for p in changed])
    return nxt


@pytest.mark.parametrize(
    "config",
    [
        IndexConfig(ivf=False),  # residual 2-bit, the default
        IndexConfig(ivf=False, store="residual", store_nbits=1),
        IndexConfig(ivf=False, store="int8"),
        IndexConfig(ivf=False, store="fp16"),
    ],
    ids=["residual2", "residual1", "int8", "fp16"],
)
def test_churn_then_search_equals_a_fresh_build_of_the_survivors(corpus, tmp_path, config):
    embeddings, Q = corpus
    embeddings = dict(embeddings)
    live = LiveIndex.create(tmp_path / "live", [embeddings[p] for p in ids_range(0, 60)], ids_range(0, 60),
                            config=config, device="cpu")  # fmt: skip
    churn(live, embeddings, seed=1, cycles=5, start=60)
    fresh = fresh_twin(tmp_path, live, embeddings, config)
    assert list(live.searcher.index.pids) == list(fresh.searcher.index.pids)
    assert_same_results(live, fresh, Q, 40, mode="exhaustive")
    if config.store == "residual":  # the engine over merged segments is the engine of a fresh build
        assert_same_results(live, fresh, Q, 10, mode="centroid", nprobe=4, ncandidates=12)
        assert_same_results(live, fresh, Q, 10, mode="centroid", nprobe=2, ncandidates=10, exact=True)
        mine, theirs = live.searcher.index.engine, fresh.searcher.index.engine
        for name in ("ivf_offsets", "ivf_docs", "doc_stats"):
            assert torch.equal(mine[name], theirs[name]), name
    # and again after compaction (one segment, space reclaimed)
    live.compact()
    stats = live.stats()
    assert stats["segments"] == 1 and stats["deleted_docs"] == 0 and stats["docs"] == fresh.stats()["docs"]
    assert_same_results(live, fresh, Q, 40, mode="exhaustive")


def test_deleted_docs_are_never_returned_and_updates_replace(corpus, tmp_path):
    embeddings, Q = corpus
    live = LiveIndex.create(tmp_path / "live", [embeddings[p] for p in ids_range(0, 50)], ids_range(0, 50),
                            device="cpu", auto_compact=False)  # fmt: skip
    before = live.search(Q, 5, mode="exhaustive")
    top = sorted({r[0][0] for r in before})
    live.delete(top)
    after = live.search(Q, 50, mode="exhaustive")
    assert not {p for r in after for p, _ in r} & set(top)
    assert all(len(r) == 50 - len(top) for r in after)
    # the deleted ids come back as other docs' vectors: the best doc of query 0 under its new id
    target = before[0][0][0]
    live.add([target], [embeddings[target]])
    assert live.search(Q[:1], 1, mode="exhaustive")[0][0][0] == target
    other = next(p for p in ids_range(10, 50) if p not in top)
    live.update([target], [embeddings[other]])
    scores = dict(live.search(Q[:1], 50, mode="exhaustive")[0])
    assert scores[target] == pytest.approx(scores[other], abs=1e-5)


def test_filtered_search_only_returns_allowed_live_ids(corpus, tmp_path):
    embeddings, Q = corpus
    live = LiveIndex.create(tmp_path / "live", [embeddings[p] for p in ids_range(0, 80)], ids_range(0, 80),
                            device="cpu")  # fmt: skip
    live.delete(["d3", "d4"])
    allowed = ids_range(0, 30)[::3]  # d3 among them, but deleted: never returned, not an error
    allowed = [p for p in allowed if p != "d3"]
    everything = live.search(Q, 80, mode="exhaustive")
    for mode, kw in (("exhaustive", {}), ("centroid", {"exact": True})):
        found = live.search(Q, 4, mode=mode, allowed=allowed, **kw)
        for f, full in zip(found, everything):
            want = [(p, s) for p, s in full if p in allowed][:4]
            assert [p for p, _ in f] == [p for p, _ in want]
    with pytest.raises(KeyError, match="d3"):
        live.search(Q, 4, allowed=["d3"])  # deleted: as unknown as any id never added


def test_any_dim_and_patch_like_vectors(tmp_path):
    """Embeddings of any dim and distribution (ColPali-like: 1030 patch vectors of dim 128, here fewer
    and unnormalised) index and search exactly in exhaustive mode."""
    g = torch.Generator().manual_seed(5)
    pages = [torch.randn(int(n), 96, generator=g) for n in torch.randint(40, 90, (30,), generator=g)]
    live = LiveIndex.create(tmp_path / "pages", pages[:20], ids_range(0, 20), config=IndexConfig(ivf=False,
                            store="fp16"), device="cpu")  # fmt: skip
    live.add(ids_range(20, 30), pages[20:])
    q = torch.randn(2, 7, 96, generator=g)
    got = live.search(q, 30, mode="exhaustive")
    ref = torch.stack([(q @ p.half().float().T).amax(dim=2).sum(dim=1) for p in pages], dim=1)  # [2, 30]
    for b in range(2):
        order = torch.argsort(ref[b], descending=True, stable=True)
        assert [p for p, _ in got[b]] == [f"d{int(i)}" for i in order]
        torch.testing.assert_close(torch.tensor([s for _, s in got[b]]), ref[b][order], atol=1e-3, rtol=1e-4)


def test_auto_compaction_keeps_segments_and_dead_space_bounded(corpus, tmp_path):
    embeddings, _ = corpus
    live = LiveIndex.create(tmp_path / "live", [embeddings[p] for p in ids_range(0, 20)], ids_range(0, 20),
                            device="cpu")  # fmt: skip
    for i in range(MAX_SEGMENTS + 2):
        new = ids_range(20 + 5 * i, 25 + 5 * i)
        live.add(new, [embeddings[p] for p in new])
        assert live.stats()["segments"] <= MAX_SEGMENTS
    live.delete(ids_range(0, 12))
    stats = live.stats()
    assert stats["deleted_docs"] <= 0.2 * stats["stored_docs"]
    names = {p.name for p in (tmp_path / "live").iterdir()} - {"manifest.json", ".lock"}
    manifest = json.loads((tmp_path / "live" / "manifest.json").read_text())
    assert names == {info["name"] for info in manifest["files"].values()}  # nothing left over


def test_stats_and_generations(corpus, tmp_path):
    embeddings, _ = corpus
    live = LiveIndex.create(tmp_path / "live", [embeddings[p] for p in ids_range(0, 30)], ids_range(0, 30),
                            device="cpu", auto_compact=False)  # fmt: skip
    assert live.generation == 0 and len(live) == 30
    live.add(ids_range(30, 40), [embeddings[p] for p in ids_range(30, 40)])
    live.delete(["d1", "d2", "d35"])
    stats = index_stats(tmp_path / "live")
    tokens = sum(embeddings[p].shape[0] for p in ids_range(0, 40) if p not in ("d1", "d2", "d35"))
    assert stats["generation"] == 2 and stats["docs"] == 37 and stats["tokens"] == tokens
    assert stats["segments"] == 2 and stats["stored_docs"] == 40 and stats["deleted_docs"] == 3
    assert stats["bytes_on_disk"] == sum(p.stat().st_size for p in (tmp_path / "live").iterdir() if p.is_file())
    assert live.generation == 2 and len(live) == 37
    assert live.delete(["nope"], missing="ignore")["deleted"] == 0 and live.stats()["generation"] == 2


def test_a_reader_keeps_its_generation_until_refresh(corpus, tmp_path):
    embeddings, Q = corpus
    writer = LiveIndex.create(tmp_path / "live", [embeddings[p] for p in ids_range(0, 30)], ids_range(0, 30),
                              device="cpu")  # fmt: skip
    reader = LiveIndex(tmp_path / "live", device="cpu")
    before = reader.search(Q, 30, mode="exhaustive")
    writer.add(ids_range(30, 45), [embeddings[p] for p in ids_range(30, 45)])
    writer.delete(["d0", "d1"])
    writer.compact()  # removes every file the reader's generation was made of
    assert reader.search(Q, 30, mode="exhaustive") == before and reader.generation == 0
    assert reader.refresh() and reader.generation == writer.generation
    assert len(reader) == 43 and not reader.refresh()


def test_an_index_with_a_faiss_ivf_is_not_changed_in_place(corpus, tmp_path):
    pytest.importorskip("faiss")
    from colbert_fast.retrieval.build import build_index_from_embeddings

    embeddings, _ = corpus
    build_index_from_embeddings([embeddings[p] for p in ids_range(0, 40)], tmp_path / "paper", IndexConfig(ivf=True),
                                ids=ids_range(0, 40))  # fmt: skip
    before = (tmp_path / "paper" / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="faiss IVF"):
        LiveIndex(tmp_path / "paper").add(["x"], [embeddings["d50"]])
    assert (tmp_path / "paper" / "manifest.json").read_bytes() == before


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda ix, e: ix.add(["d1"], [e["d50"]]), ValueError, "already in the index"),
        (lambda ix, e: ix.add(["x", "x"], [e["d50"], e["d51"]]), ValueError, "repeat"),
        (lambda ix, e: ix.add(["x"], [e["d50"], e["d51"]]), ValueError, "1 ids for 2"),
        (lambda ix, e: ix.add([], []), ValueError, "at least one"),
        (lambda ix, e: ix.add(["x"], [torch.randn(5, DIM + 1)]), ValueError, "dim"),
        (lambda ix, e: ix.add(["x"], [torch.ones(5, DIM, dtype=torch.int32)]), TypeError, "floating point"),
        (lambda ix, e: ix.add(["x"], [torch.full((5, DIM), float("nan"))]), ValueError, "NaN"),
        (lambda ix, e: ix.add(["x"], [torch.full((5, DIM), float("inf"))]), ValueError, "inf"),
        (lambda ix, e: ix.add(["x"], torch.randn(1, 5, DIM)), TypeError, "list"),
        (lambda ix, e: ix.add([" x"], [e["d50"]]), ValueError, "whitespace"),
        (lambda ix, e: ix.delete(["d1", "nope"]), KeyError, "nope"),
        (lambda ix, e: ix.delete("d1"), TypeError, "list of ids"),
        (lambda ix, e: ix.delete(["d1"], missing="maybe"), ValueError, "missing"),
        (lambda ix, e: ix.update(["nope"], [e["d50"]]), KeyError, "nope"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(corpus, tmp_path, call, error, match):
    embeddings, Q = corpus
    path = tmp_path / "live"
    live = LiveIndex.create(path, [embeddings[p] for p in ids_range(0, 30)], ids_range(0, 30), device="cpu")
    listing = sorted(p.name for p in path.iterdir())
    manifest = (path / "manifest.json").read_bytes()
    with pytest.raises(error, match=match):
        call(live, embeddings)
    assert sorted(p.name for p in path.iterdir()) == listing and (path / "manifest.json").read_bytes() == manifest
    assert len(LiveIndex(path, device="cpu").search(Q, 40, mode="exhaustive")[0]) == 30


def test_tampered_tombstones_are_caught(corpus, tmp_path):
    embeddings, _ = corpus
    path = tmp_path / "live"
    live = LiveIndex.create(path, [embeddings[p] for p in ids_range(0, 30)], ids_range(0, 30), device="cpu")
    live.delete(["d2"])
    manifest = json.loads((path / "manifest.json").read_text())
    tomb = path / manifest["files"]["tombstones"]["name"]
    store = manifest["files"]["docs"]["name"]
    size = tomb.stat().st_size
    tomb.write_text(json.dumps({store: [99]}, separators=(",", ":")).ljust(size))  # out of range, same size
    with pytest.raises(CorruptIndexError, match="sha256"):
        Index.load(path)
    with pytest.raises(CorruptIndexError, match="unique rows in range"):
        Index.load(path, verify=False)
