"""The centroid engine (colbert_fast.retrieval.engine) against exhaustive scoring of the same store.

Randomised over residual nbits 1/2/4 and dims 64/96/128, with empty docs, odd lengths, masked
query tokens and exact score ties (duplicated docs): every doc's bound is >= its exact score, a
certified answer equals exhaustive scoring, exact=True always does, and bad input raises.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import colbert_fast as cf
from colbert_fast import CompressedDocs, PackedDocs
from colbert_fast.retrieval.engine import CentroidEngine, best_k, build_engine, load_engine, save_engine

NBITS = (1, 2, 4)
DIMS = (64, 96, 128)


def clustered_store(nbits: int, dim: int, seed: int, num_docs: int = 60, noise: float = 0.05):
    """Docs drawn around two of 48 topic centres each (so centroids mean something), some empty, odd lengths,
    two docs duplicated (exact score ties); queries drawn from docs' tokens. Returns
    (store, engine, Q [8, 9, dim] with two masked tokens in query 0)."""
    g = torch.Generator().manual_seed(seed)
    topics = torch.nn.functional.normalize(torch.randn(48, dim, generator=g), dim=1)
    docs = []
    for i in range(num_docs):
        length = 0 if i % 17 == 5 else int(torch.randint(1, 24, (1,), generator=g)) | 1
        own = torch.randint(0, 48, (2,), generator=g)  # each doc is about two topics
        picks = topics[own[torch.randint(0, 2, (length,), generator=g)]]
        docs.append(torch.nn.functional.normalize(picks + noise * torch.randn(length, dim, generator=g), dim=1))
    docs[7], docs[31] = docs[3], docs[3]  # identical docs: identical codes, tied scores
    packed = PackedDocs.from_list(docs)
    store = CompressedDocs.from_packed(packed, "residual", nbits, num_centroids=48, seed=seed)
    engine = CentroidEngine(store, build_engine(store))
    owners = torch.tensor([i for i, d in enumerate(docs) if d.shape[0]])
    src = owners[torch.randint(0, owners.numel(), (8,), generator=g)]
    Q = torch.stack([docs[int(s)][torch.randint(0, docs[int(s)].shape[0], (9,), generator=g)] for s in src])
    Q = torch.nn.functional.normalize(Q + 0.02 * torch.randn(Q.shape, generator=g), dim=-1)
    q_mask = torch.ones(Q.shape[:2], dtype=torch.bool)
    q_mask[0, -2:] = False
    return store, engine, Q, q_mask


def exhaustive(store, Q, q_mask, k):
    rows = torch.arange(store.num_docs).expand(Q.shape[0], -1).contiguous()
    return best_k(cf.maxsim_packed(Q, store, rows, q_mask), rows, k)


def all_scores(store, Q, q_mask):
    rows = torch.arange(store.num_docs).expand(Q.shape[0], -1).contiguous()
    return cf.maxsim_packed(Q, store, rows, q_mask)


CASES = list(itertools.product(NBITS, DIMS))


@pytest.mark.parametrize("nbits,dim", CASES)
def test_every_bound_is_at_least_the_exact_score(nbits, dim):
    for seed, nprobe in itertools.product(range(3), (1, 3, 16)):
        store, engine, Q, q_mask = clustered_store(nbits, dim, seed, noise=0.05 + 0.3 * seed)
        # Unnormalised queries too: the bound must not rely on unit vectors.
        Q = Q * torch.linspace(0.5, 3.0, Q.shape[0])[:, None, None]
        bounds, _ = engine.doc_bounds(Q, q_mask, nprobe)
        exact = all_scores(store, Q, q_mask)
        gap = bounds - exact
        assert bool((gap >= 0).all()), f"bound below the exact score by {float(-gap.min())} (seed {seed})"


def test_bounds_are_tight_enough_to_prune_something():
    """A bound that is always +inf would pass the test above: on tight clusters some docs' bounds
    fall below the best score (so they can be left out)."""
    store, engine, Q, q_mask = clustered_store(4, 64, 0, noise=0.01)
    bounds, _ = engine.doc_bounds(Q, q_mask, 2)
    best = all_scores(store, Q, q_mask).max(dim=1).values
    assert bool((bounds < best[:, None]).any(dim=1).all())


@pytest.mark.parametrize("nbits,dim", CASES)
def test_certified_answers_equal_exhaustive_scoring(nbits, dim):
    certified_seen = 0
    for seed, (nprobe, ncand), k in itertools.product(range(2), ((1, 4), (2, 10), (4, 30)), (1, 5)):
        store, engine, Q, q_mask = clustered_store(nbits, dim, seed, noise=0.01)
        scores, rows, stats = engine.search(Q, q_mask, k, nprobe, ncand)
        ex_s, ex_r = exhaustive(store, Q, q_mask, k)
        for b in torch.nonzero(stats.certified).flatten().tolist():
            certified_seen += 1
            assert rows[b].tolist() == ex_r[b].tolist()
            torch.testing.assert_close(scores[b], ex_s[b], atol=1e-4 * Q.shape[1], rtol=0)
        assert bool(((stats.cells_scored >= 0) & (stats.cells_scored <= 1)).all())
    assert certified_seen > 0  # the property above was exercised


@pytest.mark.parametrize("nbits,dim", CASES)
def test_exact_search_always_equals_exhaustive_scoring(nbits, dim):
    for seed, (nprobe, ncand), k in itertools.product(range(2), ((1, 1), (3, 8)), (1, 4, 80)):
        store, engine, Q, q_mask = clustered_store(nbits, dim, seed, noise=0.3)
        scores, rows, stats = engine.search(Q, q_mask, k, nprobe, ncand, exact=True)
        ex_s, ex_r = exhaustive(store, Q, q_mask, k)
        assert bool(stats.certified.all())
        assert rows.tolist() == ex_r.tolist()  # ties (docs 3, 7, 31) in ascending row order
        torch.testing.assert_close(scores, ex_s, atol=1e-4 * Q.shape[1], rtol=0)
        assert bool(((stats.cells_scored > 0) & (stats.cells_scored <= 1)).all())


@pytest.mark.parametrize("block", (1, 2, 7))
def test_exact_search_is_exhaustive_whatever_its_first_round_scores(monkeypatch, block):
    """exact=True's first round scores `block` docs per query; the second must finish the job."""
    from colbert_fast.retrieval import engine as engine_module

    monkeypatch.setattr(engine_module, "_WIDEN_BLOCK", block)
    for nbits, seed in ((2, 0), (4, 1)):
        store, engine, Q, q_mask = clustered_store(nbits, 96, seed, noise=0.3)
        allowed = torch.rand(Q.shape[0], store.num_docs, generator=torch.Generator().manual_seed(seed)) < 0.8
        for k in (1, 4, 80):
            scores, rows, stats = engine.search(Q, q_mask, k, 1, 1, exact=True, allowed=allowed)
            all_s = all_scores(store, Q, q_mask).masked_fill(~allowed, float("-inf"))
            pids = torch.arange(store.num_docs).expand(Q.shape[0], -1).masked_fill(~allowed, -1)
            ex_s, ex_r = best_k(all_s, pids, k)
            assert bool(stats.certified.all())
            got = torch.full_like(ex_r, -1)
            got[:, : rows.shape[1]] = rows
            assert torch.equal(got, ex_r)  # the allowed docs' exhaustive top k, -1 past them


def test_exact_search_resolves_ties_by_row():
    store, engine, Q, q_mask = clustered_store(2, 64, 0)
    Q = torch.stack([store.doc(3)[:1]] * 2)  # doc 3's own token: docs 3, 7, 31 tie on top
    q_mask = torch.ones(Q.shape[:2], dtype=torch.bool)
    _, rows, _ = engine.search(Q, q_mask, 3, 1, 1, exact=True)
    ex_s, ex_r = exhaustive(store, Q, q_mask, 3)
    assert ex_s[0, 0] == ex_s[0, 1] == ex_s[0, 2]  # the three copies tie on top
    assert rows.tolist() == ex_r.tolist() == [[3, 7, 31]] * 2


def test_probing_every_centroid_certifies_and_scores_fewer_cells_when_pruned():
    store, engine, Q, q_mask = clustered_store(4, 64, 1, noise=0.01)
    _, _, all_probed = engine.search(Q, q_mask, 3, 10_000, 10_000)
    assert bool(all_probed.certified.all())
    _, _, narrow = engine.search(Q, q_mask, 3, 1, 5)
    assert bool((narrow.cells_scored <= 5 / store.num_docs + 1e-6).all())
    assert bool((narrow.cells_scored < all_probed.cells_scored).all())


def test_kth_score_and_bound_define_the_certificate():
    store, engine, Q, q_mask = clustered_store(2, 96, 0, noise=0.2)
    _, _, stats = engine.search(Q, q_mask, 5, 2, 6)
    expected = (stats.kth_score > stats.bound) | torch.isneginf(stats.bound)
    assert stats.certified.tolist() == expected.tolist()


def slow_candidates(engine, Q, q_mask, nprobe):
    """Steps 1-3 written out per query token and list entry: {query: {doc: approximate score}}."""
    ids, vals, theta = engine.probe(Q, nprobe)
    found = {}
    for b in range(Q.shape[0]):
        best = {}  # (doc, token) -> best probed centroid score
        for i in torch.nonzero(q_mask[b]).flatten().tolist():
            for c, v in zip(ids[b, i].tolist(), vals[b, i].tolist()):
                for d in engine.ivf_docs[engine.ivf_offsets[c] : engine.ivf_offsets[c + 1]].tolist():
                    best[d, i] = max(best.get((d, i), float("-inf")), v)
        docs = sorted({d for d, _ in best})
        valid = torch.nonzero(q_mask[b]).flatten().tolist()
        found[b] = {d: sum(best.get((d, i), float(theta[b, i])) for i in valid) for d in docs}
    return found


@pytest.mark.parametrize("nprobe", (1, 3, 48))
def test_candidates_and_survivors_match_a_written_out_pass(nprobe):
    """The dense pass against a loop over list entries: the same (query, doc) candidates, approximate
    scores equal to rounding, and the survivors are the best by approximate score, lower rows on ties."""
    store, engine, Q, q_mask = clustered_store(2, 64, 3, noise=0.2)
    cand = engine.candidates(Q, q_mask, nprobe)
    slow = slow_candidates(engine, Q, q_mask, nprobe)
    for b in range(Q.shape[0]):
        mine = cand.doc[cand.query == b]
        assert mine.tolist() == sorted(slow[b])
        want = torch.tensor([slow[b][d] for d in mine.tolist()])
        torch.testing.assert_close(cand.approx[cand.query == b], want, atol=1e-5, rtol=0)
    approx = torch.full((Q.shape[0], store.num_docs), float("-inf"))
    approx[cand.query, cand.doc] = cand.approx
    approx[:, 7] = approx[:, 3]  # force exact ties on the cut
    approx[:, 31] = approx[:, 3]
    for keep in (1, 2, 5, 1000):
        rows = engine._survivors(approx, keep)
        for b in range(Q.shape[0]):
            ranked = sorted((d for d in range(store.num_docs) if approx[b, d] > float("-inf")),
                            key=lambda d: (-float(approx[b, d]), d))  # fmt: skip
            assert rows[b][rows[b] >= 0].tolist() == sorted(ranked[:keep])


def test_the_torch_pass_in_one_query_groups_gives_the_engine_the_same_answer(monkeypatch):
    """Step 3 runs the C++ kernel on the CPU when built; without it (a build that predates the op)
    the torch pass takes over, in groups of queries (CENTROID_CELLS): one query per group gives the
    same bounds, candidates and search, bit for bit."""
    from colbert_fast.backends import cpu_backend, torch_backend

    store, engine, Q, q_mask = clustered_store(2, 96, 1, noise=0.2)
    allowed = torch.rand(Q.shape[0], store.num_docs, generator=torch.Generator().manual_seed(0)) < 0.7
    together = engine.doc_bounds(Q, q_mask, 3, allowed=allowed), engine.search(Q, q_mask, 4, 3, 6, allowed=allowed)
    monkeypatch.setattr(cpu_backend, "supports", lambda op, device: op != "centroid_interaction")
    monkeypatch.setattr(torch_backend, "CENTROID_CELLS", 1)
    calls = []
    real = torch_backend.centroid_interaction
    monkeypatch.setattr(torch_backend, "centroid_interaction", lambda *a: calls.append(1) or real(*a))
    apart = engine.doc_bounds(Q, q_mask, 3, allowed=allowed), engine.search(Q, q_mask, 4, 3, 6, allowed=allowed)
    assert calls  # the torch pass ran
    (b1, c1), (s1, r1, st1) = together
    (b2, c2), (s2, r2, st2) = apart
    assert torch.equal(b1, b2) and torch.equal(c1.doc, c2.doc) and torch.equal(c1.approx, c2.approx)
    assert torch.equal(s1, s2) and torch.equal(r1, r2) and torch.equal(st1.certified, st2.certified)


def test_engine_file_round_trip_and_tampering(tmp_path):
    store, _, _, _ = clustered_store(2, 64, 0)
    tensors = build_engine(store)
    save_engine(tmp_path / "engine.safetensors", tensors)
    loaded = load_engine(tmp_path / "engine.safetensors", store)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)
    other = CompressedDocs.from_packed(PackedDocs.from_list([torch.randn(3, 64)] * 4), "residual", 2, num_centroids=2)
    with pytest.raises(ValueError, match="must be"):  # another store: its shapes differ
        load_engine(tmp_path / "engine.safetensors", other)
    bad = dict(tensors, ivf_docs=tensors["ivf_docs"] + store.num_docs)
    save_engine(tmp_path / "bad.safetensors", bad)
    with pytest.raises(ValueError, match="outside"):
        load_engine(tmp_path / "bad.safetensors", store)


def test_inverted_lists_hold_each_doc_of_each_centroid_once():
    store, _, _, _ = clustered_store(2, 64, 2)
    t = build_engine(store)
    owner = torch.repeat_interleave(torch.arange(store.num_docs), store.lengths)
    for c in range(store.centroids.shape[0]):
        listed = t["ivf_docs"][t["ivf_offsets"][c] : t["ivf_offsets"][c + 1]].tolist()
        assert listed == sorted(set(owner[store.centroid_ids == c].tolist()))
    assert bool((t["doc_stats"][store.lengths == 0] == 0).all())


def test_bad_inputs_raise_clear_errors():
    store, engine, Q, q_mask = clustered_store(2, 64, 0)
    packed = PackedDocs.from_list([torch.randn(3, 64)])
    int8 = CompressedDocs.from_packed(packed, "int8", 8)
    for not_residual in (packed, int8):
        with pytest.raises(ValueError, match="residual store"):
            build_engine(not_residual)
        with pytest.raises(ValueError, match="residual store"):
            CentroidEngine(not_residual, build_engine(store))
    for name, kwargs in (("k", dict(k=0)), ("nprobe", dict(nprobe=0)), ("ncandidates", dict(ncandidates=0))):
        args = dict(k=3, nprobe=2, ncandidates=4) | kwargs
        with pytest.raises(ValueError, match=name):
            engine.search(Q, q_mask, **args)
    with pytest.raises(ValueError, match="Q must be"):
        engine.search(Q[..., :32], q_mask, 3, 2, 4)
    with pytest.raises(ValueError, match="q_mask"):
        engine.search(Q, q_mask[:, :3], 3, 2, 4)
