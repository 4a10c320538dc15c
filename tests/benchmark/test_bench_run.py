"""The benchmark end to end on tiny CPU workloads: JSON fields, flagging, --compare (help and profile: tests/cli)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from colbert_fast import backends
from colbert_fast.benchmark import peers, report, runner
from colbert_fast.cli import main

FAST = ["--tiny", "--no-compile", "--reps", "3", "--budget", "0.05", "--no-plots"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--device", "cpu", "--workload", "R1,X1,T1", "--sweep", "--out", str(out), *FAST]) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_json_has_every_field(results):
    out, doc = results
    for key in report.TOP_FIELDS:
        assert key in doc, key
    assert doc["schema"] == report.SCHEMA
    assert doc["device"]["type"] == "cpu" and doc["device"]["threads"] == torch.get_num_threads()
    for key in ("torch", "triton", "colbert_fast", "cuda", "python"):
        assert key in doc["versions"]
    assert doc["versions"]["torch"] == torch.__version__
    assert "sha" in doc["git"]
    assert doc["peaks"]["copy_GBps"] > 0 and doc["peaks"]["matmul_TFLOPs"]["fp32"] > 0
    assert [w["name"] for w in doc["workloads"]] == ["R1", "X1", "T1", "S10", "S30", "S100"]
    assert all(w["size"] == "tiny" and w["scaled"] for w in doc["workloads"])
    assert any("threads" in n for n in doc["notes"]), "CPU runs state the thread count"
    for row in doc["rows"]:
        assert set(report.ROW_FIELDS) <= set(row), set(report.ROW_FIELDS) - set(row)
    timed = [r for r in doc["rows"] if r["status"] == "ok"]
    # the baseline and the torch backend run everywhere, on every workload (T1 included: it has a backward)
    for wl in ("R1", "X1", "T1", "S10", "S100"):
        assert {"baseline", "torch"} <= {r["impl"] for r in timed if r["workload"] == wl}
    for r in timed:
        assert r["reps"] >= 3 and r["warmup_ms"] > 0
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["useful_flops"] > 0 and r["padded_flops"] >= r["useful_flops"] and r["min_bytes"] > 0
        assert r["TFLOPs"] == pytest.approx(r["useful_flops"] / (r["median_ms"] * 1e-3) / 1e12)
        assert r["GBps"] == pytest.approx(r["min_bytes"] / (r["median_ms"] * 1e-3) / 1e9)
        assert 0 < r["frac_roofline"] and r["frac_peak_bw"] > 0 and r["frac_peak_flops"] > 0
        assert r["max_err"] <= r["tolerance"]
        assert r["speedup"] > 0
    ref = [r for r in timed if r["impl"] == "baseline"]
    assert all(r["speedup"] == 1.0 for r in ref)
    # every row that did not run says why
    for r in doc["rows"]:
        if r["status"] != "ok":
            assert r["note"], r
    with open(out / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(doc["rows"]) and rows[0]["git_sha"] == str(doc["git"]["sha"])
    assert "| baseline |" in (out / "bench.md").read_text()


def test_plots_or_a_note_saying_why_not(results, tmp_path):
    _, doc = results
    notes = report.write_plots(doc, tmp_path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert notes == ["plots skipped: matplotlib is not installed (pip install matplotlib)"]
        return
    assert (tmp_path / "latency_vs_docs.png").stat().st_size > 0
    assert (tmp_path / "roofline.png").stat().st_size > 0


def test_compare_reads_earlier_results(results, tmp_path, capsys):
    out, doc = results
    old = json.loads(json.dumps(doc))
    for r in old["rows"]:
        if r["median_ms"]:
            r["median_ms"] *= 2  # "then" was twice as slow
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    capsys.readouterr()
    assert main(["bench", "--results", str(out / "bench.json"), "--compare", str(old_path)]) == 0
    text = capsys.readouterr().out
    assert "now/then" in text and " 0.50 " in text
    cmp = report.compare(doc, [("old", old)])
    assert cmp and all(c["time_ratio"] == pytest.approx(0.5) for c in cmp)
    # other device: times are not compared, speedups still are
    old["device"]["name"] = "some other card"
    assert all(c["time_ratio"] is None and c["now_speedup"] for c in report.compare(doc, [("old", old)]))
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a colbert_fast benchmark result"):
        report.load(bad)


def test_compare_reads_a_folder_and_results_that_called_the_baseline_reference(results, tmp_path, capsys):
    """--compare DIR reads DIR/*.json; results written before the rename name the padded PyTorch row
    "reference" (kind "reference"): they are read as the baseline, so that row is compared too."""
    out, doc = results
    old = json.loads(json.dumps(doc))
    for r in old["rows"]:
        r["impl"] = {"baseline": "reference", "baseline+compile": "reference+compile"}.get(r["impl"], r["impl"])
        r["kind"] = "reference" if r["kind"] == "baseline" else r["kind"]
    folder = tmp_path / "earlier"
    folder.mkdir()
    (folder / "old.json").write_text(json.dumps(old))
    loaded = report.load(folder / "old.json")
    assert {r["impl"] for r in loaded["rows"] if r["kind"] == "baseline"} >= {"baseline"}
    assert not any(r["impl"].startswith("reference") for r in loaded["rows"])
    capsys.readouterr()
    assert main(["bench", "--results", str(out / "bench.json"), "--compare", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "old.json" in text and " baseline " in text


def test_wrong_or_crashing_peer_is_flagged_not_timed(monkeypatch):
    def off_by_one(case):
        return lambda: torch.ones(case.spec.B, case.spec.K)  # a score no real doc gives

    def unsupported(case):
        raise peers.Unsupported("does not do this")

    def crashes(case):
        def run():
            raise RuntimeError("boom")

        return run

    monkeypatch.setitem(peers.PEERS, "broken-peer", ("torch", off_by_one))
    monkeypatch.setitem(peers.PEERS, "partial-peer", ("torch", unsupported))
    monkeypatch.setitem(peers.PEERS, "crashing-peer", ("torch", crashes))
    opts = runner.Options(
        device=torch.device("cpu"),
        workloads=["R1"],
        dtypes=[torch.float32],
        size="tiny",
        impls=["broken-peer", "partial-peer", "crashing-peer"],
        reps=3,
        budget_s=0.01,
        compile=False,
        log=lambda m: None,
    )
    res = runner.run(opts)
    rows = {r["impl"]: r for r in res.rows}
    assert rows["broken-peer"]["status"] == "wrong" and rows["broken-peer"]["median_ms"] is None
    assert "disagrees with the reference" in rows["broken-peer"]["note"]
    assert rows["partial-peer"]["status"] == "skipped" and rows["partial-peer"]["note"] == "does not do this"
    assert rows["crashing-peer"]["status"] == "error" and "RuntimeError: boom" in rows["crashing-peer"]["note"]
    assert rows["baseline"]["status"] == "ok"


def test_every_available_backend_gets_a_row(monkeypatch):
    """New backends appear automatically: the rows follow backends.available(device)."""
    fake = {name: None for name in backends.BACKENDS}
    fake["cuda"] = "no GPU here"
    monkeypatch.setattr(backends, "available", lambda device: fake)
    opts = runner.Options(
        device=torch.device("cpu"), workloads=["R1"], dtypes=[torch.float32], size="tiny", peers=False, compile=False
    )
    impls = {i.name: i for i in runner.implementations(opts)}
    for name in backends.BACKENDS:
        assert name in impls
    assert impls["cuda"].skip == "no GPU here"
    assert impls["cpu"].skip is None and impls["torch"].skip is None


def test_unknown_backend_row_is_an_error():
    opts = runner.Options(
        device=torch.device("cpu"), workloads=["R1"], dtypes=[torch.float32], size="tiny", impls=["nope"]
    )
    with pytest.raises(ValueError, match="unknown --backend"):
        runner.implementations(opts)
