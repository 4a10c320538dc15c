"""Searcher: re-ranking and end-to-end retrieval against exhaustive MaxSim (colbert_fast.reference), the CLI."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("faiss")

from pipeline_helpers import tiny_encoder, write_collection, write_queries

from colbert_fast import cli, reference
from colbert_fast.evaluate import load_run
from colbert_fast.index import Index, IndexConfig, build_index
from colbert_fast.search import STAGES, Searcher

N_DOCS = 120


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    enc = tiny_encoder(root / "tiny")
    enc.save(root / "model")
    write_collection(root / "collection.tsv", N_DOCS, seed=11)
    queries = write_queries(root / "queries.tsv", 6, seed=12)
    index = build_index(
        root / "collection.tsv",
        root / "index",
        enc,
        IndexConfig(chunk_size=50),
        checkpoint=str(root / "model"),
        progress=False,
    )
    return root, enc, index, queries


@pytest.fixture(scope="module")
def pq_index(world, tmp_path_factory):
    root, enc, _, _ = world
    return build_index(
        root / "collection.tsv",
        tmp_path_factory.mktemp("pq") / "index",
        enc,
        IndexConfig(codec="pq", partitions=8),
        progress=False,
    )


def exhaustive(enc, index: Index, queries: list[str]):
    """Exact MaxSim of every query against every doc (the oracle), and the tolerance rule's bound."""
    Q, q_mask = enc.encode_queries(queries)
    d = index.docs
    every = torch.arange(d.num_docs).expand(len(queries), -1)
    exact = reference.maxsim_packed(Q, d.embeddings, d.offsets, d.lengths, every, q_mask)
    low = reference.maxsim_packed(Q, d.embeddings, d.offsets, d.lengths, every, q_mask, upcast=False)
    return exact, reference.tolerance(exact, low, d.dtype, Q.shape[1])


def check_ranking(ranking, exact_row, index: Index, k: int, tol: float) -> None:
    """Scores equal the oracle's, best first, and the set is a true top k (up to ties within tol)."""
    assert len(ranking) == min(k, index.num_docs)
    rows = index.internal_ids([pid for pid, _ in ranking])
    assert len(set(rows)) == len(rows), "no doc twice"
    scores = torch.tensor([s for _, s in ranking])
    torch.testing.assert_close(scores, exact_row[rows], atol=tol, rtol=0)
    assert (scores[:-1] >= scores[1:]).all(), "best first"
    kth_best = exact_row.sort(descending=True).values[len(ranking) - 1]
    assert exact_row[rows].min() >= kth_best - 2 * tol, "a better doc was left out"


@pytest.mark.parametrize("codec", ["flat", "pq"])
@pytest.mark.parametrize("k", [10, N_DOCS])
def test_search_equals_exhaustive_maxsim(world, pq_index, codec, k):
    """nprobe covering every partition and k' = every token vector: retrieval is exhaustive MaxSim."""
    _, enc, flat_index, queries = world
    index = flat_index if codec == "flat" else pq_index
    searcher = Searcher(
        index, enc, device="cpu", nprobe=index.manifest["ivf"]["partitions"], ncandidates=index.docs.num_tokens
    )
    exact, tol = exhaustive(enc, index, queries)
    for b, ranking in enumerate(searcher.search(queries, k=k)):
        check_ranking(ranking, exact[b], index, k, tol)


def test_search_scores_are_exact_with_approximate_candidates(world):
    """With the defaults (nprobe 10, k' = k/2) candidates are approximate but every score is exact."""
    _, enc, index, queries = world
    searcher = Searcher(index, enc, device="cpu")
    exact, tol = exhaustive(enc, index, queries)
    results = searcher.search(queries, k=20)
    for b, ranking in enumerate(results):
        assert 0 < len(ranking) <= 20
        rows = index.internal_ids([p for p, _ in ranking])
        torch.testing.assert_close(torch.tensor([s for _, s in ranking]), exact[b, rows], atol=tol, rtol=0)
    # the per-query candidate set is the union of the docs of the faiss token neighbours
    Q, q_mask = enc.encode_queries(queries[:1])
    cands = searcher.candidates(Q, q_mask, 5)
    _, tokens = index.ivf.search(Q[0].numpy(), 5)
    expected = sorted({int(index.emb2pid[t]) for t in tokens.reshape(-1) if t >= 0})
    assert cands[0][cands[0] >= 0].tolist() == expected


def test_search_batches_agree(world):
    _, enc, index, queries = world
    searcher = Searcher(index, enc, device="cpu")
    one = searcher.search(queries, k=15, batch_size=1)
    many = searcher.search(queries, k=15, batch_size=4)
    for a, b in zip(one, many):
        assert [p for p, _ in a] == [p for p, _ in b]
        torch.testing.assert_close(torch.tensor([s for _, s in a]), torch.tensor([s for _, s in b]), atol=1e-3, rtol=0)


def test_rerank_equals_reference(world):
    _, enc, index, queries = world
    searcher = Searcher(index, enc, device="cpu", load_ivf=False)
    exact, tol = exhaustive(enc, index, queries)
    gen = torch.Generator().manual_seed(0)
    candidates = [
        [str(int(p)) for p in torch.randperm(N_DOCS, generator=gen)[: 5 + 13 * b]] for b in range(len(queries))
    ]
    results = searcher.rerank(queries, candidates)
    for b, (ranking, cands) in enumerate(zip(results, candidates)):
        assert sorted(p for p, _ in ranking) == sorted(cands)
        rows = index.internal_ids([p for p, _ in ranking])
        scores = torch.tensor([s for _, s in ranking])
        torch.testing.assert_close(scores, exact[b, rows], atol=tol, rtol=0)
        assert (scores[:-1] >= scores[1:]).all()
    twice = searcher.rerank(queries[:1], [candidates[0] + candidates[0][:3]])[0]
    assert twice == results[0], "a repeated candidate is scored once"
    top3 = searcher.rerank(queries[:2], candidates[:2], k=3)
    assert [r[:3] for r in results[:2]] == top3


def test_l2_similarity(world):
    """similarity='l2': sum over query tokens of max over doc tokens of -|q - d|^2, computed directly."""
    _, enc, index, queries = world
    l2 = copy.copy(enc)
    l2.config = dataclasses.replace(enc.config, similarity="l2")
    searcher = Searcher(index, l2, device="cpu", load_ivf=False)
    cands = [str(i) for i in range(0, N_DOCS, 7)]
    ranking = searcher.rerank(queries[:1], [cands])[0]
    Q, _ = enc.encode_queries(queries[:1])
    direct = {}
    for pid in cands:
        D = index.docs.doc(int(pid)).float()
        direct[pid] = float((-(torch.cdist(Q[0], D) ** 2)).amax(dim=1).sum())
    for pid, score in ranking:
        assert abs(score - direct[pid]) < 0.05, (pid, score, direct[pid])
    assert [p for p, _ in ranking] == sorted(direct, key=direct.get, reverse=True)


def test_timings(world):
    _, enc, index, queries = world
    searcher = Searcher(index, enc, device="cpu")
    searcher.search(queries, k=5)
    assert set(searcher.timings) == set(STAGES) and all(v > 0 for v in searcher.timings.values())
    searcher.reset_timings()
    assert sum(searcher.timings.values()) == 0


def test_loads_encoder_from_the_manifest(world):
    root, enc, _, queries = world
    searcher = Searcher(root / "index", device="cpu")
    a = searcher.search(queries[:2], k=5)
    b = Searcher(root / "index", enc, device="cpu").search(queries[:2], k=5)
    assert a == b


def test_bad_inputs(world, tmp_path):
    root, enc, index, queries = world
    searcher = Searcher(index, enc, device="cpu")
    with pytest.raises(TypeError, match="list of strings"):
        searcher.search("the cat", k=3)
    with pytest.raises(ValueError, match="nprobe must be a positive int"):
        Searcher(index, enc, device="cpu", nprobe=0)
    with pytest.raises(ValueError, match="k must be"):
        searcher.search(queries, k=0)
    with pytest.raises(ValueError, match="2 queries but 1"):
        searcher.rerank(queries[:2], [["1"]])
    with pytest.raises(KeyError, match="'nope' is not in the index"):
        searcher.rerank(queries[:1], [["1", "nope"]])
    assert searcher.rerank(queries[:1], [[]]) == [[]]
    with pytest.raises(RuntimeError, match="load_ivf=False"):
        Searcher(root / "index", enc, device="cpu", load_ivf=False).search(queries, k=3)
    other = tiny_encoder(tmp_path / "other", doc_maxlen=50)
    with pytest.raises(ValueError, match="doc_maxlen is 50, the index was built with 180"):
        Searcher(index, other, device="cpu")
    write_collection(tmp_path / "c.tsv", 10)
    anonymous = build_index(tmp_path / "c.tsv", tmp_path / "idx", enc, IndexConfig(), progress=False)
    with pytest.raises(ValueError, match="names no checkpoint"):
        Searcher(anonymous, device="cpu")


@pytest.mark.cuda
def test_gpu_store_matches_cpu(world):
    _, enc, index, queries = world
    cpu = Searcher(index, copy.deepcopy(enc), device="cpu").search(queries, k=10)
    gpu_searcher = Searcher(index, copy.deepcopy(enc), device="cuda")
    assert gpu_searcher.docs.device.type == "cuda"
    gpu = gpu_searcher.search(queries, k=10)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(torch.tensor([s for _, s in a]), torch.tensor([s for _, s in b]), atol=0.05, rtol=0)


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_end_to_end(world, tmp_path, capsys):
    root, enc, _, queries = world
    assert (
        cli.main(
            [
                "index",
                "--checkpoint",
                str(root / "model"),
                "--collection",
                str(root / "collection.tsv"),
                "--index",
                str(tmp_path / "idx"),
                "--device",
                "cpu",
                "--quiet",
                "--chunk-size",
                "40",
            ]
        )
        == 0
    )
    assert "indexed 120 docs" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "search",
                "--index",
                str(tmp_path / "idx"),
                "--queries",
                str(root / "queries.tsv"),
                "--output",
                str(tmp_path / "run.tsv"),
                "--k",
                "7",
                "--device",
                "cpu",
                "--timings",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "wrote 42 results for 6 queries" in out and "candidates" in out
    run = load_run(tmp_path / "run.tsv")
    expected = Searcher(tmp_path / "idx", enc, device="cpu").search(queries, k=7)
    assert [run[f"q{i}"] for i in range(6)] == [[p for p, _ in r] for r in expected]

    (tmp_path / "bm25.tsv").write_text(
        "".join(f"q{q}\t{p}\t{r}\n" for q in range(3) for r, p in enumerate([5, 9, 77, 3], 1))
    )
    assert (
        cli.main(
            [
                "rerank",
                "--index",
                str(tmp_path / "idx"),
                "--queries",
                str(root / "queries.tsv"),
                "--run",
                str(tmp_path / "bm25.tsv"),
                "--output",
                str(tmp_path / "rr.tsv"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "re-ranked 3 queries" in capsys.readouterr().out
    reranked = load_run(tmp_path / "rr.tsv")
    assert sorted(reranked["q0"]) == ["3", "5", "77", "9"]

    (tmp_path / "qrels.tsv").write_text("q0\t0\t" + run["q0"][0] + "\t1\nq1\t0\tmissing\t1\n")
    assert cli.main(["eval", "--qrels", str(tmp_path / "qrels.tsv"), "--run", str(tmp_path / "run.tsv"), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"MRR@10": 0.5' in out and '"queries": 2' in out


@pytest.mark.parametrize("command", ["index", "search", "rerank", "eval"])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"colbert-fast {command}" in out
