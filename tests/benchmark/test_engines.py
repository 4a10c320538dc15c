"""The end-to-end workload family (colbert_fast/benchmark/engines.py, `colbert-fast bench --workload
E1,E2`) on a tiny E1: colbert_fast's own modes through the subprocess protocol, a fake peer driver
(tests/benchmark/fake_engine_driver.py, exact MaxSim run with this interpreter) standing in for
fast-plaid and xtr-warp-rs, and the "not installed" rows of a peer whose interpreter is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import colbert_fast
from colbert_fast.benchmark import engines
from colbert_fast.cli import bench_engines
from colbert_fast.testing import clustered_collection

FAKE = Path(__file__).resolve().parent / "fake_engine_driver.py"
ROOT = str(Path(colbert_fast.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def tiny():
    docs, Q, _ = clustered_collection(300, num_queries=6)
    return engines.Collection("E1-tiny", docs, Q, torch.ones(Q.shape[:2], dtype=torch.bool))


def fake_engine(python=sys.executable) -> engines.SubprocessEngine:
    return engines.SubprocessEngine(
        "fake-peer",
        [python, str(FAKE)],
        "fake",
        [("exact", {}), ("shift1", {"shift": 1})],
        env={"PYTHONPATH": ROOT},
    )


def test_exhaustive_topk_is_maxsim_over_every_doc(tiny):
    truth = engines.exhaustive_topk(tiny, 20, pairs_per_call=64)  # several chunks
    for b in range(tiny.Q.shape[0]):
        q = tiny.Q[b].half().float()
        scores = torch.stack(
            [
                (q @ d.float().T).max(dim=1).values.sum()
                for d in torch.split(tiny.docs.embeddings, tiny.docs.lengths.tolist())
            ]
        )
        expected = torch.topk(scores, 20)
        got = scores[truth[b]]
        assert torch.allclose(got, expected.values, atol=1e-3), b  # the same scores (ties may swap)


def test_fake_peer_protocol_recall_and_rows(tiny, tmp_path):
    quality_runs = []

    def quality(run):
        quality_runs.append(run)
        return {"nDCG@10": 0.5}

    tiny.quality = quality
    try:
        doc = engines.run([tiny], [fake_engine()], tmp_path / "out", tmp_path / "work", threads=(1, 2))
    finally:
        tiny.quality = None
    rows = {(r["setting"], r["threads"]): r for r in doc["rows"]}
    assert set(rows) == {("exact", 1), ("exact", 2), ("shift1", 1), ("shift1", 2)}
    for (setting, _), r in rows.items():
        assert r["status"] == "ok", r
        assert r["recall@10"] == pytest.approx(1.0 if setting == "exact" else 0.9)
        assert r["recall@100"] == pytest.approx(1.0 if setting == "exact" else 0.99)
        assert r["build_s"] > 0 and r["bytes_per_token"] > 0 and r["build_rss_mb"] > 0 and r["search_rss_mb"] > 0
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] and r["batch_qps"] > 0 and r["load_s"] >= 0
        assert r["latency_queries"] == 6 and r["nDCG@10"] == 0.5
        assert r["cells_fraction"] is None  # the fake reports none
    assert set(quality_runs[0]) == set(tiny.qids) and all(len(v) == 100 for v in quality_runs[0].values())
    # the threads reach the subprocess's spec and environment
    spec = json.loads((tmp_path / "work" / "E1-tiny" / "fake-peer" / "search_t2.spec.json").read_text())
    assert spec["threads"] == 2 and spec["k"] == 100
    out = tmp_path / "out"
    assert (out / "engines.png").stat().st_size > 0
    saved = json.loads((out / "engines.json").read_text())
    assert saved["load_before"] and saved["load_after"] and saved["git"]["sha"]
    md = (out / "engines.md").read_text()
    assert "| fake-peer | shift1 | 1 | 0.900 | 0.990 |" in md and "load average" in md
    # the report re-renders from the JSON alone (a run stopped part-way)
    (out / "engines.md").unlink()
    assert engines.rewrite(out, note="re-rendered")["notes"] == ["re-rendered"]
    assert "- re-rendered" in (out / "engines.md").read_text()
    # a second run reuses the index it built (same embeddings, same build settings)
    again = engines.run([tiny], [fake_engine()], tmp_path / "out2", tmp_path / "work", threads=(1,))
    assert all(r["note"].startswith("index reused") for r in again["rows"])


def test_missing_peer_rows_say_not_installed(tiny, tmp_path):
    peers = engines.peer_engines(tmp_path / "no-venv" / "bin" / "python")
    doc = engines.run(
        [tiny], [*peers, fake_engine(str(tmp_path / "nope"))], tmp_path / "out", tmp_path / "w", threads=(1,)
    )
    assert {r["engine"] for r in doc["rows"]} == {"fast-plaid", "xtr-warp", "fake-peer"}
    assert all(r["status"] == "not installed" for r in doc["rows"])
    assert "not installed" in (tmp_path / "out" / "engines.md").read_text()


def test_a_failing_driver_is_an_error_row_not_a_crash(tiny, tmp_path):
    broken = engines.SubprocessEngine("broken", [sys.executable, "-c", "import sys; sys.exit(3)"], "x", [("s", {})])
    doc = engines.run([tiny], [broken], tmp_path / "out", tmp_path / "w", threads=(1,))
    assert [r["status"] for r in doc["rows"]] == ["error"] and "exited 3" in doc["rows"][0]["note"]


def test_cli_runs_colbert_fast_modes_on_tiny_e1(tmp_path, capsys, monkeypatch):
    from colbert_fast.cli import main

    monkeypatch.chdir(tmp_path)  # relative --out and --engines-workdir, as a user types them

    cf = [
        {
            "name": "colbert_fast",
            "index": {"partitions": 16, "store": "fp16"},  # fp16: exhaustive recall is exactly 1
            "settings": [["exhaustive", {"mode": "exhaustive"}], ["accurate", {"mode": "accurate"}]],
        }
    ]
    rc = main(
        [
            "bench",
            "--workload",
            "E1",
            "--e1-docs",
            "300",
            "--engine-threads",
            "1",
            "--latency-queries",
            "4",
            "--engines-python",
            str(tmp_path / "absent" / "python"),
            "--cf-engines",
            json.dumps(cf),
            "--out",
            "out",
            "--engines-workdir",
            "work",
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "engines.json").read_text())
    cf_rows = {r["setting"]: r for r in doc["rows"] if r["engine"] == "colbert_fast"}
    assert set(cf_rows) == {"exhaustive", "accurate"}
    assert cf_rows["exhaustive"]["recall@10"] == 1.0 and cf_rows["exhaustive"]["recall@100"] == 1.0
    assert cf_rows["exhaustive"]["cells_fraction"] == pytest.approx(1.0)
    assert cf_rows["accurate"]["recall@10"] >= 0.95
    assert {r["status"] for r in doc["rows"] if r["engine"] != "colbert_fast"} == {"not installed"}
    assert "E1-300" in capsys.readouterr().out


def test_e_workloads_run_only_when_named():
    from colbert_fast.benchmark.workloads import WORKLOADS
    from colbert_fast.cli import bench

    assert not set(bench.E2E_WORKLOADS) & set(WORKLOADS)
    import argparse

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    assert "E1" not in p.parse_args([]).workload.split(",")


def test_colbert_fast_settings_plug_in_as_data():
    """A new search mode (e.g. the centroid engine) is one more (label, kwargs) setting."""
    spec = [
        {
            "name": "colbert_fast residual",
            "index": {"store": "residual"},
            "settings": [["centroid", {"mode": "centroid", "nprobe": 4}]],
        }
    ]
    (e,) = bench_engines.colbert_fast_engines(spec)
    assert e.name == "colbert_fast residual" and e.build == {"store": "residual"}
    assert e.settings == [("centroid", {"mode": "centroid", "nprobe": 4})]
    assert e.available() is None


def test_the_driver_reads_docs_in_chunks_and_queries_alone(tmp_path):
    """engine_driver.read_docs equals safetensors' own split of the file (fp32 copies, chunks that end
    at doc boundaries, a doc longer than a chunk read whole), and read_queries drops masked tokens."""
    from safetensors.torch import save_file

    from colbert_fast.benchmark import engine_driver

    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 1, 9, 2, 5, 1])
    emb = torch.randn(int(lengths.sum()), 8, generator=g).half()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    path = tmp_path / "e.safetensors"
    save_file({"doc_embeddings": emb, "doc_lengths": lengths, "queries": torch.randn(2, 3, 8, generator=g),
               "query_mask": mask}, str(path))  # fmt: skip
    want = [d.float() for d in torch.split(emb, lengths.tolist())]
    for chunk in (1, 4, 6, 1 << 20):
        docs = engine_driver.read_docs(path, chunk_tokens=chunk)
        assert len(docs) == len(want)
        assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(docs, want))
    queries = engine_driver.read_queries(path)
    assert [q.shape[0] for q in queries] == [2, 1]
    save_file({"doc_embeddings": emb.float(), "doc_lengths": lengths}, str(tmp_path / "f.safetensors"))
    with pytest.raises(ValueError, match="F16"):
        engine_driver.read_docs(tmp_path / "f.safetensors")
