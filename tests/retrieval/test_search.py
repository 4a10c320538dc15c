"""Searcher: re-ranking and end-to-end retrieval against exhaustive MaxSim (colbert_fast.reference), the CLI."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("faiss")

from colbert_fast import cli, reference
from colbert_fast.retrieval.build import IndexConfig, build_index
from colbert_fast.retrieval.index import Index
from colbert_fast.retrieval.search import STAGES, Searcher
from colbert_fast.retrieval.tsv import load_run
from colbert_fast.testing import tiny_encoder, write_collection, write_queries

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
        IndexConfig(chunk_size=50, store="fp16"),  # fp16: scores compared with the reference on the same vectors
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
        IndexConfig(codec="pq", partitions=8, store="fp16"),
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
    rows = index.rows_of([pid for pid, _ in ranking])
    assert len(set(rows)) == len(rows), "no doc twice"
    scores = torch.tensor([s for _, s in ranking])
    torch.testing.assert_close(scores, exact_row[rows], atol=tol, rtol=0)
    assert (scores[:-1] >= scores[1:]).all(), "best first"
    kth_best = exact_row.sort(descending=True).values[len(ranking) - 1]
    assert exact_row[rows].min() >= kth_best - 2 * tol, "a better doc was left out"


@pytest.mark.parametrize("codec", ["flat", "pq"])
@pytest.mark.parametrize("k", [10, N_DOCS])
def test_search_equals_exhaustive_maxsim(world, pq_index, codec, k):
    """nprobe covering every partition and k' = every token vector: retrieval through faiss's
    candidates (score_all_if_covered off) is exhaustive MaxSim."""
    _, enc, flat_index, queries = world
    index = flat_index if codec == "flat" else pq_index
    searcher = Searcher(
        index,
        enc,
        device="cpu",
        nprobe=index.manifest["ivf"]["partitions"],
        neighbors_per_token=index.docs.num_tokens,
        score_all_if_covered=False,
    )
    exact, tol = exhaustive(enc, index, queries)
    for b, ranking in enumerate(searcher.search(queries, k=k)):
        check_ranking(ranking, exact[b], index, k, tol)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_exhaustive_mode_equals_the_reference(world, backend, monkeypatch):
    """Every doc scored by the packed kernel: the exact top k, on every backend, whatever the chunking."""
    from helpers import backend_or_skip

    import colbert_fast.retrieval.search as search_module

    backend_or_skip(backend, torch.device("cpu"))
    _, enc, index, queries = world
    exact, tol = exhaustive(enc, index, queries)
    monkeypatch.setattr(search_module, "EXHAUSTIVE_PAIRS_PER_CALL", 50)  # several chunks, odd sizes
    searcher = Searcher(index, enc, device="cpu", mode="exhaustive", backend=backend, load_ivf=False)
    for k in (1, 10, N_DOCS, N_DOCS + 5):
        for b, ranking in enumerate(searcher.search(queries, k=k, batch_size=4)):
            check_ranking(ranking, exact[b], index, k, tol)


def test_search_by_embeddings_needs_no_encoder(world):
    """A tensor, a tensor with q_mask, or a list of [Lq_i, dim] tensors: the same results as text, and
    no encoder is loaded."""
    root, enc, _, queries = world
    Q, q_mask = enc.encode_queries(queries)
    by_text = Searcher(root / "index", enc, device="cpu").search(queries, k=7)
    searcher = Searcher(root / "index", device="cpu")
    for mode in ("accurate", "fast", "exhaustive"):
        want = Searcher(root / "index", enc, device="cpu").search(queries, k=7, mode=mode)
        assert searcher.search(Q, k=7, q_mask=q_mask, mode=mode) == want
    ragged = [Q[b][q_mask[b]] for b in range(Q.shape[0])]
    assert searcher.search(ragged, k=7) == by_text
    assert searcher.search([r.numpy() for r in ragged], k=7, batch_size=2) == by_text
    assert searcher.rerank(Q[:1], [["3", "5", "7"]], q_mask=q_mask[:1]) == Searcher(
        root / "index", enc, device="cpu"
    ).rerank(queries[:1], [["3", "5", "7"]])
    assert searcher._encoder is None, "searching by embeddings loaded the encoder"
    assert searcher.search(queries[:1], k=3) == [by_text[0][:3]]  # text comes in: now it loads


def test_search_by_embeddings_in_a_fresh_process_imports_no_model(world, tmp_path):
    """Heavy imports happen where they are used: embeddings in, exhaustive out, no transformers, no faiss."""
    import subprocess
    import sys

    root, enc, _, queries = world
    Q, q_mask = enc.encode_queries(queries)
    torch.save((Q, q_mask), tmp_path / "q.pt")
    code = (
        "import sys, torch\n"
        "from colbert_fast.retrieval.search import Searcher\n"
        f"Q, m = torch.load({str(tmp_path / 'q.pt')!r})\n"
        f"r = Searcher({str(root / 'index')!r}, device='cpu').search(Q, k=5, q_mask=m, mode='exhaustive')\n"
        "assert len(r) == Q.shape[0] and all(len(x) == 5 for x in r)\n"
        "print(sorted(m for m in ('transformers', 'faiss', 'bm25s', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_bad_query_embeddings(world):
    root, enc, _, queries = world
    searcher = Searcher(root / "index", device="cpu")
    Q, q_mask = enc.encode_queries(queries[:2])
    with pytest.raises(ValueError, match=r"\[B, Lq, 128\] \(the index's dim\)"):
        searcher.search(Q[..., :16], k=3)
    bad = Q.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        searcher.search(bad, k=3)
    with pytest.raises(ValueError, match="q_mask must be bool"):
        searcher.search(Q, k=3, q_mask=q_mask.long())
    with pytest.raises(ValueError, match="q_mask goes with a query tensor"):
        searcher.search(list(Q), k=3, q_mask=q_mask)
    with pytest.raises(TypeError, match="floating point"):
        searcher.search(Q.long(), k=3)
    with pytest.raises(ValueError, match=r"queries\[1\] has dim 16"):
        searcher.search([Q[0], Q[1][:, :16]], k=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        searcher.search(Q, k=3, mode="fastest")
    with pytest.raises(ValueError, match="neighbors_per_token must be a positive int"):
        searcher.search(Q, k=3, neighbors_per_token=0)


def test_a_budget_that_covers_the_collection_scores_every_doc(world):
    """120 docs, queries of up to 32 tokens: the accurate budget (k' >= 1,000) could reach every doc,
    so every doc is scored, faiss is never opened, and the answer is the exhaustive one."""
    root, enc, _, queries = world
    searcher = Searcher(root / "index", enc, device="cpu")
    assert searcher.search(queries, k=10) == searcher.search(queries, k=10, mode="exhaustive")
    assert searcher._ivf is None
    assert searcher.docs_scored == 2 * len(queries) * N_DOCS


def test_defaults_are_tied_to_k(world):
    _, enc, index, _ = world
    searcher = Searcher(index, enc, device="cpu")
    partitions = index.manifest["ivf"]["partitions"]
    assert searcher.budget(10, "fast") == (min(10, partitions), 5)
    assert searcher.budget(100, "fast") == (min(10, partitions), 50)
    nprobe_10, neighbors_10 = searcher.budget(10)
    nprobe_100, neighbors_100 = searcher.budget(100)
    assert (nprobe_10, neighbors_10) == (min(10, partitions), 1000)
    assert (nprobe_100, neighbors_100) == (min(10, partitions), 2000)
    assert Searcher(index, enc, device="cpu", neighbors_per_token=3).budget(100)[1] == 3


def test_search_scores_are_exact_with_approximate_candidates(world):
    """With the fast budget (nprobe 10, k' = k/2) candidates are approximate but every score is exact."""
    _, enc, index, queries = world
    searcher = Searcher(index, enc, device="cpu", mode="fast", score_all_if_covered=False)
    exact, tol = exhaustive(enc, index, queries)
    results = searcher.search(queries, k=20)
    for b, ranking in enumerate(results):
        assert 0 < len(ranking) <= 20
        rows = index.rows_of([p for p, _ in ranking])
        torch.testing.assert_close(torch.tensor([s for _, s in ranking]), exact[b, rows], atol=tol, rtol=0)
    # the per-query candidate set is the union of the docs of the faiss token neighbours
    Q, q_mask = enc.encode_queries(queries[:1])
    cands = searcher.candidates(Q, q_mask, 5, 10)
    index.ivf.nprobe = 10
    _, tokens = index.ivf.search(Q[0].numpy(), 5)
    expected = sorted({int(index.token_to_doc[t]) for t in tokens.reshape(-1) if t >= 0})
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
        rows = index.rows_of([p for p, _ in ranking])
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
    searcher = Searcher(index, enc, device="cpu", score_all_if_covered=False)
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
        Searcher(root / "index", enc, device="cpu", load_ivf=False).search(queries, k=3, neighbors_per_token=1)
    other = tiny_encoder(tmp_path / "other", doc_maxlen=50)
    with pytest.raises(ValueError, match="doc_maxlen is 50, the index was built with 180"):
        Searcher(index, other, device="cpu")
    write_collection(tmp_path / "c.tsv", 10)
    anonymous = build_index(tmp_path / "c.tsv", tmp_path / "idx", enc, IndexConfig(), progress=False)
    unnamed = Searcher(anonymous, device="cpu")  # fine for query embeddings; text needs an encoder
    with pytest.raises(ValueError, match="names no checkpoint"):
        unnamed.search(queries[:1], k=1)


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
    assert ("example:" in out or "examples:" in out) and f"colbert-fast {command}" in out


def test_cli_centroid_engine_without_ivf(world, tmp_path, capsys):
    """`index --no-ivf` (residual store, no faiss IVF) then `search --mode centroid --exact`: the run
    equals exhaustive search; --candidates/--exact outside centroid mode are refused."""
    root, enc, _, queries = world
    common = ["--device", "cpu"]
    idx = str(tmp_path / "idx")
    argv = ["index", "--checkpoint", str(root / "model"), "--collection", str(root / "collection.tsv"), "--index", idx]
    assert cli.main([*argv, "--no-ivf", "--quiet", *common]) == 0
    assert "no IVF (centroid engine only)" in capsys.readouterr().out
    assert not any((tmp_path / "idx").glob("ivf-*"))
    search = ["search", "--index", idx, "--queries", str(root / "queries.tsv"), "--k", "5", *common]
    run_file = tmp_path / "run.tsv"
    assert cli.main([*search, "--output", str(run_file), "--mode", "centroid", "--exact", "--candidates", "5"]) == 0
    run = load_run(run_file)
    exhaustive = Searcher(idx, enc, device="cpu").search(queries, k=5, mode="exhaustive")
    assert [run[f"q{i}"] for i in range(6)] == [[p for p, _ in r] for r in exhaustive]
    with pytest.raises(SystemExit, match="centroid only"):
        cli.main([*search, "--output", str(tmp_path / "x.tsv"), "--mode", "exhaustive", "--exact"])
