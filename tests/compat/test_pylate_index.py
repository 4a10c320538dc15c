"""colbert_fast.retrieval.pylate_index.PyLateIndex (#19): PyLate's index interface on the live index.

Without PyLate (always): the interface on a small E1 collection (colbert_fast.testing) — adds,
removes, updates, the structure __call__ returns, removed ids never returned, subsets,
persistence, bad input — and its answers equal LiveIndex's exhaustive search of the same store.

With PyLate (@pytest.mark.peers, in the peers' venv): pylate.retrieve.ColBERT(index=ours) gives the
ranking PyLate computes itself. The index stores residual codes, so PyLate is handed the vectors
our store decodes to (LiveIndex's searcher.index.docs.decode()): a live index has no fp16 store
(IndexConfig(ivf=False) needs store="residual"). Two oracles:
  - pylate.rank.rerank over every doc (exact, PyLate's own scoring);
  - PyLate's retriever over its own Voyager index of those vectors, with k_token = every token
    vector, so Voyager's candidates are every doc and its rerank is exhaustive. Voyager's cosine
    space normalizes what it stores, and decoded vectors keep the original norm only to the fp16
    scale, so its scores may differ by at most Lq * max |1 - 1/|d||, which the check allows.
PyLate's PLAID needs fast-plaid, which pins torch 2.11 (the peers' venv has our torch): not here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import import_peer

from colbert_fast import reference
from colbert_fast.retrieval.live import LiveIndex
from colbert_fast.retrieval.pylate_index import PyLateIndex
from colbert_fast.testing import clustered_collection

DIM = 32
NUM_DOCS = 60
FIRST = 40  # docs in the first add (which trains the codebook); the rest come in a second add


@pytest.fixture(scope="module")
def e1():
    """E1 at 60 docs, dim 32: (per-doc fp32 numpy arrays, as PyLate's encode returns, queries [6, 32, dim])."""
    docs, Q, _ = clustered_collection(NUM_DOCS, num_queries=6, dim=DIM, seed=3)
    embs = [docs.embeddings[o : o + n].float().numpy() for o, n in zip(docs.offsets.tolist(), docs.lengths.tolist())]
    return embs, Q


def make(path, embs, ids=None, **kwargs) -> PyLateIndex:
    ids = list(range(len(embs))) if ids is None else ids
    index = PyLateIndex(index_folder=path, index_name="idx", override=True, device="cpu", **kwargs)
    index.add_documents(documents_ids=ids[:FIRST], documents_embeddings=embs[:FIRST])
    index.add_documents(documents_ids=ids[FIRST:], documents_embeddings=embs[FIRST:])
    return index


@pytest.fixture
def index(e1, tmp_path):
    return make(tmp_path, e1[0])


def truth(index: PyLateIndex, Q, k: int):
    """LiveIndex's exhaustive search of the same directory: [[(id, score)]]."""
    live = LiveIndex(index.live_path, device="cpu")
    return [[(p, s) for p, s in r] for r in live.search(list(Q), k=k, mode="exhaustive")]


def assert_same(results, expected, key=str):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert [key(r["id"]) for r in got] == [p for p, _ in want]
        np.testing.assert_allclose([r["score"] for r in got], [s for _, s in want], rtol=1e-5, atol=1e-4)


# ---- without PyLate -----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 10, NUM_DOCS + 5])
def test_call_returns_pylates_structure_and_the_exhaustive_top_k(index, e1, k):
    _, Q = e1
    results = index(list(Q.numpy()), k=k)
    assert isinstance(results, list) and len(results) == Q.shape[0]
    for r in results:
        assert isinstance(r, list) and len(r) == min(k, NUM_DOCS)
        for hit in r:
            assert set(hit) == {"id", "score"} and type(hit["id"]) is int and type(hit["score"]) is float
        scores = [hit["score"] for hit in r]
        assert scores == sorted(scores, reverse=True)
    assert_same(results, truth(index, Q, k))


def test_query_inputs_list_of_tensors_batch_tensor_and_one_query(index, e1):
    _, Q = e1
    want = index(list(Q.numpy()), k=5)
    assert index(list(Q), k=5) == want
    assert index(Q, k=5) == want
    assert index(Q.numpy(), k=5) == want
    assert index(Q.clone().requires_grad_(), k=5) == want  # straight from a model, not detached
    assert index(Q[2], k=5) == want[2:3]  # a [Lq, dim] array is one query, as in PyLate
    assert index(Q.numpy()[2], k=5) == want[2:3]
    shorter = index([Q[0, :20], Q[1]], k=5)  # queries of different lengths
    assert_same(shorter, [[(p, s) for p, s in r] for r in index.live.search([Q[0, :20], Q[1]], k=5, mode="exhaustive")])


def test_approximate_mode_and_budget_passthrough(e1, tmp_path):
    embs, Q = e1
    approx = make(tmp_path, embs, exact=False, nprobe=2, ncandidates=8)
    results = approx(Q, k=5)
    assert [len(r) for r in results] == [5] * Q.shape[0]
    exact = make(tmp_path / "exact", embs, nprobe=1, ncandidates=5)  # exact widens from a small budget
    assert_same(exact(Q, k=5), truth(exact, Q, 5))
    with pytest.raises(ValueError, match="ncandidates"):
        make(tmp_path / "bad", embs, ncandidates=0)(Q, k=5)


def test_removed_ids_are_never_returned(index, e1):
    _, Q = e1
    top = [r[0]["id"] for r in index(Q, k=1)]
    gone = sorted(set(top) | {0, 41})
    assert index.remove_documents(gone) is index
    assert len(index) == NUM_DOCS - len(gone)
    for r in index(Q, k=NUM_DOCS):
        assert len(r) == NUM_DOCS - len(gone)
        assert not set(gone) & {hit["id"] for hit in r}
    kept = next(i for i in range(NUM_DOCS) if i not in gone)
    for r in index(Q, k=3, subset=gone + [kept]):  # a subset naming removed ids: they stay out
        assert [hit["id"] for hit in r] == [kept]
    assert_same(index(Q, k=10), truth(index, Q, 10))
    with pytest.raises(KeyError, match="not in the index"):
        index.remove_documents([gone[0]])
    index.remove_documents([gone[0], "no-such-doc"], missing="ignore")
    assert len(index) == NUM_DOCS - len(gone)


def test_subset_global_per_query_unknown_and_empty(index, e1):
    _, Q = e1
    full = index(Q, k=NUM_DOCS)
    allowed = [3, 7, 11, 42, 59]
    for r, all_docs in zip(index(Q, k=3, subset=allowed + ["unknown"]), full):
        assert r == [hit for hit in all_docs if hit["id"] in allowed][:3]
    per_query = [[i, i + 1] for i in range(Q.shape[0])]
    for r, ids, all_docs in zip(index(Q, k=5, subset=per_query), per_query, full):
        assert r == [hit for hit in all_docs if hit["id"] in ids]
    assert index(Q, k=5, subset=[]) == [[] for _ in range(Q.shape[0])]
    with pytest.raises(ValueError, match="subset has 2 lists for 6 queries"):
        index(Q, k=5, subset=[[1], [2]])


def test_string_ids_stay_strings_and_int_ids_come_back_as_ints(e1, tmp_path):
    embs, Q = e1
    ids = [f"doc-{i}" for i in range(NUM_DOCS)]
    named = make(tmp_path / "named", embs, ids)
    results = named(Q, k=4)
    assert all(type(hit["id"]) is str for r in results for hit in r)
    assert_same(results, truth(named, Q, 4))
    # numpy ints (as from np.arange) are ints too
    numbered = make(tmp_path / "numbered", embs, list(np.arange(NUM_DOCS)))
    assert all(type(hit["id"]) is int for r in numbered(Q, k=4) for hit in r)
    # once a string id is added to an int-id index, every id comes back as stored (a string)
    numbered.remove_documents([0])
    numbered.add_documents(["extra"], [embs[0]])
    assert {type(hit["id"]) for r in numbered(Q, k=NUM_DOCS) for hit in r} == {str}


def test_a_new_index_on_the_same_folder_sees_the_docs_and_override_clears_it(index, e1, tmp_path):
    _, Q = e1
    index.remove_documents([5])
    want = index(Q, k=10)
    again = PyLateIndex(index_folder=tmp_path, index_name="idx", device="cpu")
    assert len(again) == NUM_DOCS - 1
    assert again(Q, k=10) == want
    assert again.get_documents_embeddings([[1]])[0][0].shape[1] == DIM
    cleared = PyLateIndex(index_folder=tmp_path, index_name="idx", override=True, device="cpu")
    assert len(cleared) == 0 and cleared.live is None
    with pytest.raises(ValueError, match="empty"):
        cleared(Q, k=3)


def test_a_reader_sees_what_another_index_object_writes(e1, tmp_path):
    embs, Q = e1
    reader = PyLateIndex(index_folder=tmp_path, index_name="idx", device="cpu")  # before any doc
    writer = PyLateIndex(index_folder=tmp_path, index_name="idx", device="cpu")
    writer.add_documents(list(range(FIRST)), embs[:FIRST])
    assert reader(Q, k=5) == writer(Q, k=5)
    writer.add_documents(list(range(FIRST, NUM_DOCS)), embs[FIRST:])
    top = writer(Q, k=1)[0][0]["id"]
    writer.remove_documents([top])
    assert len(reader(Q, k=NUM_DOCS)[0]) == NUM_DOCS - 1
    assert reader(Q, k=10) == writer(Q, k=10)


def test_later_adds_reuse_the_codebook_of_the_first(e1, tmp_path):
    embs, Q = e1
    first = PyLateIndex(index_folder=tmp_path, index_name="idx", override=True, device="cpu")
    first.add_documents(list(range(FIRST)), embs[:FIRST])
    book = first.live.searcher.index.docs.codebook
    first.add_documents(list(range(FIRST, NUM_DOCS)), embs[FIRST:])
    after = first.live.searcher.index.docs.codebook
    assert torch.equal(book.centroids, after.centroids) and torch.equal(book.bucket_weights, after.bucket_weights)
    # the same docs in one add (one codebook trained on all of them) is another index: the two-add
    # one still ranks exactly over its own store
    assert_same(first(Q, k=10), truth(first, Q, 10))


def test_update_documents_replaces_and_adds(index, e1):
    embs, Q = e1
    target = index(Q[:1], k=1)[0][0]["id"]
    # doc `target` takes the embeddings of a doc far down the ranking; a new id gets the old ones
    last = index(Q[:1], k=NUM_DOCS)[0][-1]["id"]
    index.update_documents([target, 1000], [embs[last], embs[target]])
    assert len(index) == NUM_DOCS + 1
    top = index(Q[:1], k=1)[0][0]
    assert top["id"] == 1000
    assert_same(index(Q, k=10), truth(index, Q, 10))


def test_get_documents_embeddings_are_the_decoded_store(index):
    got = index.get_documents_embeddings([[3, 41], [7]])
    store = index.live.searcher.index
    row = {p: n for n, p in enumerate(store.pids)}
    for group, ids in zip(got, [[3, 41], [7]]):
        for emb, i in zip(group, ids):
            assert isinstance(emb, np.ndarray) and emb.dtype == np.float32
            np.testing.assert_array_equal(emb, store.docs.doc(row[str(i)]).numpy())
    with pytest.raises(KeyError, match="not in the index"):
        index.get_documents_embeddings([["nope"]])


def test_tensor_and_batched_document_inputs(e1, tmp_path):
    embs, Q = e1
    as_tensors = make(tmp_path / "t", [torch.from_numpy(e).half() for e in embs])
    as_arrays = make(tmp_path / "a", [e.astype(np.float16) for e in embs])
    assert as_tensors(Q, k=10) == as_arrays(Q, k=10)
    same_length = PyLateIndex(index_folder=tmp_path, index_name="3d", override=True, device="cpu")
    batch = torch.stack([torch.from_numpy(e[:20]) for e in embs[:10]])  # [N, L, dim], as PyLate may pad
    same_length.add_documents([f"d{i}" for i in range(10)], batch)
    assert len(same_length) == 10
    one = PyLateIndex(index_folder=tmp_path, index_name="one", override=True, device="cpu")
    one.add_documents("only", embs[0])  # one id, one [L, dim] array (PyLate accepts both bare)
    assert [[hit["id"] for hit in r] for r in one(Q[:2], k=3)] == [["only"], ["only"]]


def test_bad_input_raises_clear_errors(index, e1, tmp_path):
    embs, Q = e1
    fresh = PyLateIndex(index_folder=tmp_path, index_name="fresh", override=True, device="cpu")
    with pytest.raises(ValueError, match="ids for"):
        fresh.add_documents([1, 2, 3], embs[:2])
    with pytest.raises(ValueError, match="at least one"):
        fresh.add_documents([], [])
    with pytest.raises(ValueError, match="empty"):
        fresh(Q, k=3)
    with pytest.raises(ValueError, match="ids for"):
        index.add_documents([100, 101], embs[:3])
    with pytest.raises(ValueError, match="dim"):
        index.add_documents([100], [np.ones((4, DIM + 1), dtype=np.float32)])
    with pytest.raises(ValueError, match="already in the index"):
        index.add_documents([3], [embs[3]])
    with pytest.raises(ValueError, match="dim"):
        index(torch.ones(2, 8, DIM + 1), k=3)
    with pytest.raises(ValueError, match="k must be"):
        index(Q, k=0)
    with pytest.raises(ValueError, match="documents_embeddings must be"):
        index.add_documents([100], np.ones((1, 2, 3, DIM), dtype=np.float32))
    with pytest.raises(ValueError, match="ids for"):
        index.update_documents([1, 2], embs[:1])
    assert len(index) == NUM_DOCS  # nothing changed


def test_pylate_style_end_to_end_dispatch(index, e1):
    """What pylate.retrieve.ColBERT does with an end-to-end index, without PyLate."""
    _, Q = e1
    assert index.is_end_to_end_index is True
    assert index(queries_embeddings=list(Q), k=4, subset=None) == index(Q, k=4)


# ---- with PyLate --------------------------------------------------------------------------------


def decoded_docs(index: PyLateIndex):
    """(ids, fp32 numpy [L, dim] per doc): the vectors our store scores, in its row order."""
    store = index.live.searcher.index
    packed = store.docs.decode()
    docs = [packed.embeddings[o : o + n].numpy() for o, n in zip(packed.offsets.tolist(), packed.lengths.tolist())]
    return [int(p) for p in store.pids], docs


def oracle(Q: torch.Tensor, docs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact, low) [B, N]: fp32 reference MaxSim of every query and doc over the decoded vectors,
    and the same over fp16-rounded operands (upcast=False), for docs/spec.md's tolerance rule for
    a compressed store (section 11: fp16 is its low dtype)."""
    D = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(d) for d in docs], batch_first=True)
    lengths = torch.tensor([len(d) for d in docs])
    exact = reference.maxsim(Q.float(), D, d_lengths=lengths)
    low = reference.maxsim(Q.half(), D.half(), d_lengths=lengths, upcast=False).float()
    return exact, low


def assert_parity(ours, theirs, scores, ids: list, lq: int, slack: float = 0.0):
    """Both sides' scores within docs/spec.md's tolerance of the reference over the decoded store
    (plus `slack`: what PyLate's index did to the vectors), and the same ranking up to near ties:
    where the ids at a rank differ, their reference scores differ by at most the two sides' measured
    errors (a scorer off by at most e can only swap docs whose true scores are within 2e)."""
    exact, low = scores
    col = {p: n for n, p in enumerate(ids)}
    for b, (o, t) in enumerate(zip(ours, theirs)):
        assert len(o) == len(t)
        tol = reference.tolerance(exact[b], low[b], torch.float16, lq)
        errors = []
        for side in (o, t):
            truth = exact[b, [col[h["id"]] for h in side]]
            err = (torch.tensor([h["score"] for h in side]) - truth).abs().max().item()
            assert err <= tol + slack, f"max error {err:.3g} > tolerance {tol:.3g} + {slack:.3g} against the oracle"
            errors.append(err)
        for rank_, (ho, ht) in enumerate(zip(o, t)):
            gap = abs(exact[b, col[ho["id"]]] - exact[b, col[ht["id"]]]).item()
            assert ho["id"] == ht["id"] or gap <= sum(errors) + 1e-6, (
                f"query {b} rank {rank_}: ours {ho}, PyLate {ht}, reference scores {gap:.3g} apart "
                f"(more than the errors {errors})"
            )


@pytest.mark.peers
@pytest.mark.parametrize("k", [1, 10, NUM_DOCS])
def test_pylate_retriever_through_our_index_equals_pylate_rerank_over_every_doc(e1, tmp_path, k):
    retrieve = import_peer("pylate.retrieve", "pip install pylate")
    rank = import_peer("pylate.rank", "pip install pylate")
    embs, Q = e1
    ours = make(tmp_path, embs)
    ours.remove_documents([4, 44])
    queries = list(Q.numpy())
    got = retrieve.ColBERT(index=ours).retrieve(queries_embeddings=queries, k=k)
    ids, docs = decoded_docs(ours)
    every_doc = rank.rerank([ids] * len(queries), queries, [docs] * len(queries))
    theirs = [r[:k] for r in every_doc]
    assert all(len(r) == min(k, len(ids)) for r in got)
    assert_parity(got, theirs, oracle(Q, docs), ids, Q.shape[1])
    # and with PyLate's subset argument
    allowed = [1, 2, 3, 50, 51]
    got = retrieve.ColBERT(index=ours).retrieve(queries_embeddings=queries, k=k, subset=allowed)
    for r, t in zip(got, every_doc):
        assert [h["id"] for h in r] == [h["id"] for h in t if h["id"] in allowed][:k]


@pytest.mark.peers
@pytest.mark.parametrize("k", [1, 10])
def test_pylate_retriever_through_our_index_equals_it_through_pylates_voyager(e1, tmp_path, k):
    retrieve = import_peer("pylate.retrieve", "pip install pylate")
    indexes = import_peer("pylate.indexes", "pip install pylate")
    import_peer("voyager", "pip install voyager")
    embs, Q = e1
    ours = make(tmp_path, embs)
    ours.remove_documents([4, 44])
    ids, docs = decoded_docs(ours)
    every_token = sum(len(d) for d in docs)  # Voyager's candidates: every doc (its rerank is exhaustive)
    voyager = indexes.Voyager(index_folder=str(tmp_path / "pylate"), index_name="voyager", override=True,
                              embedding_size=DIM, ef_search=every_token)  # fmt: skip
    voyager.add_documents(documents_ids=ids, documents_embeddings=docs)
    queries = list(Q.numpy())
    theirs = retrieve.ColBERT(index=voyager).retrieve(queries_embeddings=queries, k=k, k_token=every_token)
    got = retrieve.ColBERT(index=ours).retrieve(queries_embeddings=queries, k=k)
    norms = np.concatenate([np.linalg.norm(d, axis=1) for d in docs])
    slack = Q.shape[1] * float(np.abs(1.0 - 1.0 / norms).max())  # Voyager stores the vectors normalized
    assert_parity(got, theirs, oracle(Q, docs), ids, Q.shape[1], slack=slack)
