"""Sharded index and search (colbert_fast.retrieval.sharded): 1 and 2 gloo ranks over 127.0.0.1 against the
single-process Searcher and exhaustive MaxSim, faults (a rank that raises, hangs or dies), rebuild alone.

Multi-rank tests spawn this file as a worker script (`python test_sharded.py SPEC`),
one process per rank, joined through a TCPStore this test process hosts on a port the OS picked (no
free-port race), exactly as torchrun's agent does. Every spawn has a bounded timeout.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("faiss")

from colbert_fast import reference  # noqa: E402
from colbert_fast.retrieval.build import IndexConfig, build_index  # noqa: E402
from colbert_fast.retrieval.index import CorruptIndexError  # noqa: E402
from colbert_fast.retrieval.search import Searcher  # noqa: E402
from colbert_fast.retrieval.sharded import (  # noqa: E402
    Cluster,
    ShardedIndex,
    ShardedSearcher,
    ShardError,
    build_sharded_index,
    merge_topk,
    shard_ranges,
)
from colbert_fast.testing import tiny_encoder, write_collection, write_queries  # noqa: E402

N_DOCS = 60
# batch_size=1: every doc is encoded alone, so the global index and the shards hold the very same
# vectors (length-sorted batches would pad differently and change low bits): exact comparison is fair.
CONFIG = IndexConfig(codec="flat", batch_size=1, chunk_size=40, store="fp16")  # shards compared with one fp16 store
EXHAUSTIVE = {"nprobe": 1 << 20, "neighbors_per_token": 1 << 20}  # every partition, every token vector (capped)
CANDIDATES = [["3", "30", "59", "3"], ["29", "30"], ["0", "1", "2", "58"], ["31"], ["10", "50"]]
SPAWN_TIMEOUT = 150  # seconds for one multi-process run, start-up included (loaded 2-core machine)


# ---- the worker (runs in the spawned processes) ------------------------------------------------------


def _worker(spec: dict) -> None:
    """One rank: optionally build the sharded index, then search and re-rank, then optionally faults."""
    from colbert_fast.retrieval.encoder import ColBERT

    cluster = Cluster.init("gloo", timeout=spec["timeout"])
    if spec.get("collective_fault"):
        _collective_fault(cluster, spec)
        os._exit(0)  # the process group is broken on purpose: no teardown
    out: dict = {"rank": cluster.rank, "world": cluster.world_size}
    if spec.get("build"):
        encoder = ColBERT.load(spec["model"])
        build_sharded_index(
            spec["collection"], spec["index"], encoder, CONFIG, cluster=cluster, checkpoint=spec["model"]
        )
        out["shards"] = sorted(p.name for p in Path(spec["index"]).glob("shard-*"))
    searcher = ShardedSearcher(spec["index"], cluster, **EXHAUSTIVE)
    queries = spec["queries"] if cluster.rank == 0 else None  # rank 0's queries are the ones used
    cands = CANDIDATES if cluster.rank == 0 else None
    out["exhaustive_k10"] = searcher.search(queries, k=10, batch_size=2)
    out["exhaustive_all"] = searcher.search(queries, k=N_DOCS)
    out["default_k20"] = ShardedSearcher(spec["index"], cluster).search(queries, k=20)
    out["rerank"] = searcher.rerank(queries, cands)
    out["rerank_k2"] = searcher.rerank(queries, cands, k=2)
    try:
        searcher.rerank(["x"], [["no-such-pid"]])
    except (KeyError, ShardError) as e:
        out["unknown_pid"] = f"{type(e).__name__}: {e}"
    try:
        searcher.search(queries, k=0)  # bad input on rank 0: every rank hears of it at once
    except (ValueError, ShardError) as e:
        out["bad_k"] = f"{type(e).__name__}: {e}"
    out["after_bad_k"] = searcher.search(queries, k=3)
    if spec.get("index1"):  # more ranks than shards: rank 1 serves nothing and answers empty lists
        out["one_shard"] = ShardedSearcher(spec["index1"], cluster, **EXHAUSTIVE).search(queries, k=10)
    if cluster.world_size > 1:  # serving: rank 1 loops in serve() while rank 0 makes calls, one of them bad
        if cluster.rank == 0:
            served = [searcher.search(queries, k=3)]
            with pytest.raises(ValueError):
                searcher.search(queries, k=-1)
            served.append(searcher.rerank(queries, CANDIDATES, k=2))
            searcher.stop()
            out["served"] = served
        else:
            searcher.serve()
            out["served"] = "returned"
    path = Path(spec["out"], f"rank{cluster.rank}.json")
    path.write_text(json.dumps(out))
    if spec.get("faults"):
        out["faults"] = {}
        _faults(cluster, spec, out["faults"], lambda: path.write_text(json.dumps(out)))
        os._exit(0)  # rank 1 died in the last fault: skip the process group teardown
    cluster.close()


def _faults(cluster: Cluster, spec: dict, out: dict, save) -> None:
    searcher = ShardedSearcher(spec["index"], cluster)
    queries = spec["queries"]
    real = searcher._local_search

    def fail_on_rank1(kind: str):
        def local(*args):
            if cluster.rank == 1:
                if kind == "raise":
                    raise MemoryError("injected failure")
                if kind == "hang":
                    time.sleep(spec["hang"])
                if kind == "die":
                    os._exit(3)
            return real(*args)

        searcher._local_search = local

    def attempt(name: str):
        t0 = time.monotonic()
        try:
            out[name] = {"result": searcher.search(queries, k=10), "report": vars(searcher.report)}
        except ShardError as e:
            out[name] = {"error": str(e), "failures": {str(r): v for r, v in e.failures.items()}}
        out[name]["seconds"] = time.monotonic() - t0
        save()  # rank 1 dies in the last attempt

    attempt("healthy")
    fail_on_rank1("raise")
    attempt("raise")
    searcher.allow_partial = True
    attempt("raise_partial")
    searcher.allow_partial = False
    fail_on_rank1("hang")
    cluster.timeout = spec["timeout_short"]  # rank 0 judges: it waits this long for a rank's answer
    attempt("hang")
    cluster.timeout = spec["timeout"]  # the late rank catches up within the normal timeout
    searcher._local_search = real
    attempt("after_hang")
    fail_on_rank1("die")
    cluster.timeout = spec["timeout_short"]
    attempt("die")


def _collective_fault(cluster: Cluster, spec: dict) -> None:
    """Rank 1 dies or stalls inside a collective, after its status said "ok" (issue 16, item 8):
    the status exchanges cannot see it; the collective's timeout and the blame round must."""
    searcher = ShardedSearcher(spec["index"], cluster)
    queries = spec["queries"] if cluster.rank == 0 else None
    out: dict = {"healthy": searcher.search(queries, k=5)}
    kind, where = spec["collective_fault"]
    real = getattr(cluster, where)

    def faulty(tensor):
        if cluster.rank == 1:
            if kind == "die":
                os._exit(3)
            time.sleep(spec["hang"])
        return real(tensor)

    setattr(cluster, where, faulty)
    cluster.timeout = spec["timeout_short"]
    t0 = time.monotonic()
    try:
        searcher.search(queries, k=5)
        out["fault"] = {"result": "no error"}
    except ShardError as e:
        out["fault"] = {"error": str(e), "failures": {str(r): v for r, v in e.failures.items()}}
    except Exception as e:  # the defect: a raw gloo RuntimeError naming no rank
        out["fault"] = {"raw": f"{type(e).__name__}: {e}"}
    out["fault"]["seconds"] = time.monotonic() - t0
    Path(spec["out"], f"rank{cluster.rank}.json").write_text(json.dumps(out))


# ---- spawning ------------------------------------------------------------------------------------------


def spawn(world: int, spec: dict, tmp: Path) -> tuple[dict[int, dict], list[int], str]:
    """Run `world` worker processes; return (rank -> output JSON, exit codes, combined stderr)."""
    store = torch.distributed.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=SPAWN_TIMEOUT)
    )
    outdir = tmp / f"ranks{world}-{time.monotonic_ns()}"
    outdir.mkdir()
    spec = {**spec, "out": str(outdir)}
    root = Path(__file__).resolve().parents[2]  # the repository: colbert_fast importable in the workers
    env_base = {
        **os.environ,
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(store.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",  # join the store this process hosts, as torchrun's agent's
        "GLOO_SOCKET_IFNAME": "lo",
        # The parent's thread count: fp32 kernels may round differently with another one, and the
        # exact comparison with the in-process searcher needs the very same encoder outputs.
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    logs = [outdir / f"log{r}.txt" for r in range(world)]  # files, not pipes: a full pipe blocks a rank
    procs = []
    for r in range(world):
        with open(logs[r], "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, json.dumps(spec)],
                    env={**env_base, "RANK": str(r), "LOCAL_RANK": str(r)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    codes = []
    deadline = time.monotonic() + SPAWN_TIMEOUT
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = {}
    for r in range(world):
        path = outdir / f"rank{r}.json"
        if path.exists():
            outputs[r] = json.loads(path.read_text())
    return outputs, codes, "\n".join(f"--- rank {r}:\n{path.read_text()}" for r, path in enumerate(logs))


# ---- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here and in every spawned rank: on a small, shared machine two threads per
    process spin-wait for each other (tens of times slower), and equal thread counts keep the fp32
    encoder outputs of this process and the ranks bit-identical."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    enc = tiny_encoder(root / "tiny")
    enc.save(root / "model")
    write_collection(root / "collection.tsv", N_DOCS, seed=21, hi=30)
    queries = write_queries(root / "queries.tsv", 5, seed=22)
    single = build_index(
        root / "collection.tsv", root / "single", enc, CONFIG, checkpoint=str(root / "model"), progress=False
    )
    return root, enc, single, queries


@pytest.fixture(scope="module")
def two_ranks(world):
    """2 gloo ranks: build a 2-shard index (each rank its shard), search and re-rank, then the faults."""
    root, enc, single, queries = world
    model = str(root / "model")
    build_sharded_index(root / "collection.tsv", root / "sharded1", enc, CONFIG, num_shards=1, checkpoint=model)
    spec = {
        "index1": str(root / "sharded1"),
        "build": True,
        "faults": True,
        "model": str(root / "model"),
        "collection": str(root / "collection.tsv"),
        "index": str(root / "sharded"),
        "queries": queries,
        "timeout": 60.0,
        "timeout_short": 4.0,
        "hang": 9.0,
    }
    outputs, codes, log = spawn(2, spec, root)
    assert codes == [0, 3], log  # rank 1 dies on purpose in the last fault
    assert outputs[0]["shards"] == outputs[1]["shards"] == ["shard-0000", "shard-0001"]
    sharded = ShardedIndex.load(root / "sharded")
    stores = [sharded.open_shard(s).docs.embeddings for s in range(2)]
    assert torch.equal(torch.cat(stores), single.docs.embeddings), "same vectors: a fair comparison"
    return sharded, outputs


@pytest.fixture(scope="module")
def one_rank(world, two_ranks):
    """1 gloo rank serving both shards of the same index."""
    root, _, _, queries = world
    spec = {"index": str(two_ranks[0].path), "queries": queries, "timeout": 60.0}
    outputs, codes, log = spawn(1, spec, root)
    assert codes == [0], log
    return outputs[0]


def exact_topk(enc, index, queries, k):
    """The oracle: exact MaxSim of every query against every doc, top k by (score desc, doc id asc)."""
    Q, q_mask = enc.encode_queries(queries)
    d = index.docs
    every = torch.arange(d.num_docs).expand(len(queries), -1)
    exact = reference.maxsim_packed(Q, d.embeddings, d.offsets, d.lengths, every, q_mask)
    low = reference.maxsim_packed(Q, d.embeddings, d.offsets, d.lengths, every, q_mask, upcast=False)
    return exact, reference.tolerance(exact, low, d.dtype, Q.shape[1])


def canonical(rankings, index):
    """Order each ranking by (score desc, doc id asc): the sharded merge's order; torch.topk's
    order among exactly equal scores is unspecified, so the single-process result is normalized."""
    out = []
    for r in rankings:
        rows = index.rows_of([p for p, _ in r])
        out.append([(p, s) for (p, s), _ in sorted(zip(r, rows), key=lambda t: (-t[0][1], t[1]))])
    return out


def as_tuples(rankings):
    return [[(p, s) for p, s in r] for r in rankings]


# ---- unit tests (in process) ------------------------------------------------------------------------------


def test_merge_topk_breaks_ties_by_id_and_pads():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.5, float("nan"), 0.0, 0.0, 0.0]])
    ids = torch.tensor([[4, 9, 2, 7, 5], [1, -1, -1, -1, -1]])
    s, i = merge_topk(scores, ids, 4)
    assert i.tolist() == [[2, 5, 9, 7], [1, -1, -1, -1]]
    assert s[0].tolist() == [3.0, 3.0, 3.0, 2.0]
    assert s[1, 1:].isinf().all()
    # merging per-shard top ks gives the top k of the union
    torch.manual_seed(0)
    sc = torch.randint(0, 5, (3, 40)).float()  # many ties
    ix = torch.randperm(120)[:40].expand(3, -1).clone()
    whole = merge_topk(sc, ix, 7)
    parts = [merge_topk(sc[:, a:b], ix[:, a:b], 7) for a, b in ((0, 13), (13, 29), (29, 40))]
    merged = merge_topk(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), 7)
    assert torch.equal(whole[0], merged[0]) and torch.equal(whole[1], merged[1])


def test_shard_ranges():
    assert shard_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_ranges(2, 2) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="non-empty"):
        shard_ranges(2, 3)
    with pytest.raises(ValueError, match="positive"):
        shard_ranges(5, 0)


def test_local_sharded_equals_single_process(world, tmp_path):
    """One process, three shards: exhaustive search and rerank equal the single-process Searcher exactly."""
    root, enc, single, queries = world
    sharded = build_sharded_index(root / "collection.tsv", tmp_path / "s3", enc, CONFIG, num_shards=3)
    assert [(s.doc_start, s.doc_end) for s in sharded.shards] == [(0, 20), (20, 40), (40, 60)]
    stores = [sharded.open_shard(s).docs.embeddings for s in range(3)]
    assert torch.equal(torch.cat(stores), single.docs.embeddings), "same vectors: a fair comparison"
    ours = ShardedSearcher(sharded, encoder=enc, **EXHAUSTIVE)
    theirs = Searcher(single, enc, device="cpu", **EXHAUSTIVE)
    for k in (7, N_DOCS):
        assert as_tuples(ours.search(queries, k=k)) == canonical(theirs.search(queries, k=k), single)
    split = ShardedSearcher(sharded, encoder=enc, split_candidates=True, **EXHAUSTIVE)
    assert split.search(queries, k=7) == ours.search(queries, k=7), "k'/3 still covers every token"
    cands = [["5", "21", "59", "5", "40"], ["0"], [], ["39", "20", "19"], ["58"]]
    assert ours.rerank(queries, cands) == canonical(theirs.rerank(queries, cands), single)
    with pytest.raises(KeyError, match="no-such"):
        ours.rerank(queries[:1], [["no-such"]])
    assert ours.search([], k=3) == []


def test_rebuild_one_shard_alone(world, two_ranks, tmp_path):
    """The index the 2 ranks built: damage shard 1, rebuild it alone in this one process."""
    root, enc, _, queries = world
    path = tmp_path / "s2"
    shutil.copytree(two_ranks[0].path, path)
    sharded = ShardedIndex.load(path)
    before = ShardedSearcher(sharded, encoder=enc).search(queries, k=10)
    # damage shard 1: the top-level manifest notices, by shard
    (path / "shard-0001" / "manifest.json").write_text("{}")
    with pytest.raises(CorruptIndexError, match="shard 1"):
        ShardedIndex.load(path).open_shard(1)
    with pytest.raises(ShardError, match=r"rank 0 \(shards \[0, 1\]\): CorruptIndexError: shard 1"):
        ShardedSearcher(path, encoder=enc)
    manifest0 = (path / "shard-0000" / "manifest.json").read_bytes()
    rebuilt = build_sharded_index(root / "collection.tsv", path, enc, CONFIG, shards=[1])
    assert (path / "shard-0000" / "manifest.json").read_bytes() == manifest0, "shard 0 untouched"
    assert ShardedSearcher(rebuilt, encoder=enc).search(queries, k=10) == before
    with pytest.raises(ValueError, match="outside"):
        build_sharded_index(root / "collection.tsv", path, enc, CONFIG, shards=[2])
    other = tmp_path / "other.tsv"
    write_collection(other, N_DOCS, seed=5)
    with pytest.raises(ValueError, match="not the collection"):
        build_sharded_index(other, path, enc, CONFIG, shards=[0])


# ---- multi-process tests (gloo over 127.0.0.1) ------------------------------------------------------------

# ---- multi-process tests (gloo over 127.0.0.1) ------------------------------------------------------------

RESULTS = ("exhaustive_k10", "exhaustive_all", "default_k20", "rerank", "rerank_k2", "after_bad_k")


def test_one_and_two_ranks_equal_single_process(world, two_ranks, one_rank):
    root, enc, single, queries = world
    sharded, outputs = two_ranks
    got = outputs[0]
    for key in RESULTS:
        assert outputs[1][key] == got[key], f"{key}: every rank returns the same rankings"
        assert one_rank[key] == got[key], f"{key}: 1 rank serving both shards == 2 ranks"
    assert "KeyError" in got["unknown_pid"] and "no-such-pid" in got["unknown_pid"]
    assert "ShardError" in outputs[1]["unknown_pid"] and "rank 0" in outputs[1]["unknown_pid"]
    assert got["bad_k"].startswith("ValueError: k must be") and outputs[1]["bad_k"].startswith("ShardError")
    assert got["after_bad_k"] == outputs[1]["after_bad_k"] == [r[:3] for r in got["exhaustive_k10"]]
    assert got["one_shard"] == outputs[1]["one_shard"] == got["exhaustive_k10"], "2 ranks, 1 shard"
    assert got["served"] == [got["after_bad_k"], got["rerank_k2"]] and outputs[1]["served"] == "returned"

    # exhaustive regime: equal to the single-process searcher (same pids, order and scores) ...
    theirs = Searcher(single, enc, device="cpu", **EXHAUSTIVE)
    assert as_tuples(got["exhaustive_k10"]) == canonical(theirs.search(queries, k=10), single)
    assert as_tuples(got["exhaustive_all"]) == canonical(theirs.search(queries, k=N_DOCS), single)
    # ... and to exact MaxSim over the whole collection (the oracle, within the tolerance rule)
    exact, tol = exact_topk(enc, single, queries, N_DOCS)
    for b, ranking in enumerate(got["exhaustive_all"]):
        rows = single.rows_of([p for p, _ in ranking])
        assert sorted(rows) == list(range(N_DOCS))
        torch.testing.assert_close(torch.tensor([s for _, s in ranking]), exact[b, rows], atol=tol, rtol=0)
        assert all(x[1] >= y[1] for x, y in zip(ranking, ranking[1:])), "best first"
    # rerank routes every pid to its shard's rank: exactly the single-process rerank
    assert as_tuples(got["rerank"]) == canonical(theirs.rerank(queries, CANDIDATES), single)
    assert as_tuples(got["rerank_k2"]) == [r[:2] for r in canonical(theirs.rerank(queries, CANDIDATES), single)]
    # default (approximate) regime: per-shard faiss candidates differ from one global faiss index,
    # but every score is the exact MaxSim of that doc
    for b, ranking in enumerate(got["default_k20"]):
        assert 0 < len(ranking) <= 20
        rows = single.rows_of([p for p, _ in ranking])
        torch.testing.assert_close(torch.tensor([s for _, s in ranking]), exact[b, rows], atol=tol, rtol=0)


def test_failing_hanging_and_dead_rank(world, two_ranks):
    _, _, _, queries = world
    sharded, outputs = two_ranks
    got = outputs[0]["faults"]
    assert "error" not in got["healthy"] and len(got["healthy"]["result"]) == len(queries)
    assert got["healthy"]["report"] == {"answered": [0, 1], "failed": {}}

    err = got["raise"]["error"]
    assert "rank 1 (shards [1])" in err and "MemoryError: injected failure" in err, err
    assert list(got["raise"]["failures"]) == ["1"]
    assert outputs[1]["faults"]["raise"]["error"] == err, "every rank raises the same error"

    partial = got["raise_partial"]
    assert "error" not in partial, partial
    assert partial["report"]["answered"] == [0]
    assert "MemoryError" in partial["report"]["failed"]["1"]
    ids0 = set(sharded.pids()[: sharded.shards[0].doc_end])
    assert all(p in ids0 for r in partial["result"] for p, _ in r), "only shard 0's docs"
    assert all(len(r) == 10 for r in partial["result"])
    assert outputs[1]["faults"]["raise_partial"]["result"] == partial["result"]

    hang = got["hang"]
    assert "rank 1 (shards [1]): no answer" in hang["error"], hang
    assert 3.5 < hang["seconds"] < 9.0, "reported after the timeout, not after the hang"
    assert got["after_hang"]["result"] == got["healthy"]["result"], "the late rank caught up"

    die = got["die"]
    assert "rank 1 (shards [1]): no answer" in die["error"], die
    assert die["seconds"] < 30


@pytest.mark.parametrize("fault", [("die", "all_gather"), ("stall", "all_gather")], ids=lambda f: f"{f[0]}-in-{f[1]}")
def test_a_rank_dying_or_stalling_inside_a_collective_is_named(world, two_ranks, fault):
    """Before: rank 0 got a raw gloo RuntimeError naming no rank (a death), or blocked for the process
    group's own timeout and then got one (a stall)."""
    root, _, _, queries = world
    spec = {
        "index": str(two_ranks[0].path),
        "queries": queries,
        "collective_fault": list(fault),
        "timeout": 60.0,
        "timeout_short": 3.0,
        "hang": 20.0,
    }
    outputs, codes, log = spawn(2, spec, root)
    got = outputs[0]
    assert len(got["healthy"]) == len(queries), log
    err = got["fault"]
    assert "error" in err, (err, log)
    assert "search failed on 1 rank(s): rank 1 (shards [1]): no answer in all_gather" in err["error"], err
    assert list(err["failures"]) == ["1"]
    assert err["seconds"] < 15, "the collective's timeout (3 s) plus the blame grace (3 s), not the hang"
    if fault[0] == "die":
        assert codes[1] == 3, log
    else:  # the late rank wakes into a broken collective and names itself, never a raw error
        late = outputs[1]["fault"]
        assert "error" in late and "rank 1 (shards [1])" in late["error"], (late, log)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))


# ---- the command line ------------------------------------------------------------------------------------


def test_cli_local_and_torchrun(world, two_ranks, tmp_path):
    """`colbert-fast sharded index|search|rerank` in one process, and search under torchrun with 2 ranks."""
    import socket

    from colbert_fast import cli

    root, _, _, queries = world
    index = str(tmp_path / "cli-index")
    common = ["--checkpoint", str(root / "model"), "--device", "cpu"]
    coll = str(root / "collection.tsv")
    assert cli.main(["sharded", "index", "--index", index, "--collection", coll, "--num-shards", "2", "--codec", "flat",
                     "--store", "fp16", "--batch-size", "1", "--quiet", *common]) == 0  # fmt: skip
    assert cli.main(["sharded", "index", "--index", index, "--collection", coll, "--shards", "0", "--codec", "flat",
                     "--store", "fp16", "--batch-size", "1", "--quiet", *common]) == 0  # fmt: skip
    qfile = str(root / "queries.tsv")
    local_run = tmp_path / "local.tsv"
    args = ["--queries", qfile, "--k", "15", "--nprobe", "100000", "--ncandidates", "100000"]
    assert cli.main(["sharded", "search", "--index", index, "--output", str(local_run), *args]) == 0
    ours = ShardedSearcher(index, **EXHAUSTIVE).search(queries, k=15)
    lines = local_run.read_text().splitlines()
    assert [ln.split("\t")[:2] for ln in lines] == [[f"q{b}", p] for b, r in enumerate(ours) for p, _ in r]
    cand = tmp_path / "cands.tsv"
    cand.write_text("".join(f"q{b}\t{p}\t{i + 1}\n" for b, c in enumerate(CANDIDATES) for i, p in enumerate(c)))
    rr = tmp_path / "rerank.tsv"
    assert cli.main(["sharded", "rerank", "--index", index, "--queries", qfile, "--run", str(cand), "--output",
                     str(rr)]) == 0  # fmt: skip
    want = ShardedSearcher(index, load_ivf=False).rerank(queries, CANDIDATES)
    assert [ln.split("\t")[1] for ln in rr.read_text().splitlines()] == [p for r in want for p, _ in r]

    # torchrun, 2 ranks on 127.0.0.1, over the index the 2-rank job built (same vectors as `index`)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist_run = tmp_path / "dist.tsv"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "colbert_fast", "sharded", "search", "--index", str(two_ranks[0].path),
           "--output", str(dist_run), "--dist-backend", "gloo", "--timeout", "60", *args]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=SPAWN_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dist_run.read_text() == local_run.read_text()


def test_failing_build_names_rank_and_shards(world, tmp_path):
    """A shard that cannot be built (PQ needs 256 training vectors; a shard has ~1,000 here but
    pq_bits=12 needs 4,096) fails the build with the rank, its shards and the reason; nothing is published."""
    root, enc, _, _ = world
    config = IndexConfig(codec="pq", pq_bits=12, batch_size=8, ivf=True)
    with pytest.raises(ShardError, match=r"building failed .* rank 0 \(shards \[0, 1\]\).*ValueError: PQ with 12 bits"):
        build_sharded_index(root / "collection.tsv", tmp_path / "bad", enc, config, num_shards=2)
    assert not (tmp_path / "bad" / "sharded.json").exists()


def test_a_sharded_index_needs_the_faiss_ivf(world, tmp_path):
    """Sharded search takes candidates from each shard's IVF: the default config has one, a config
    without (IndexConfig's default for a residual store) is refused before anything is read."""
    _, enc, _, _ = world
    with pytest.raises(ValueError, match="faiss IVF"):
        build_sharded_index(tmp_path / "no-such.tsv", tmp_path / "none", enc, IndexConfig(), num_shards=2)
    assert not (tmp_path / "none").exists()
