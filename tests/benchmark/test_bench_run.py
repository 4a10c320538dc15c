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
    assert doc["peaks"]["compute_TFLOPs"]["fp32"] > 0 and doc["peaks"]["compute_source"]["fp32"]
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
        # kernel-only time beside the per-call one (on CPU: the calls back to back)
        assert r["kernel_ms"] > 0 and r["kernel_warm_ms"] > 0 and r["kernel_method"] == "back-to-back", r
        assert r["kernel_frac_roofline"] > 0 and r["kernel_GBps"] > 0
        assert r["frac_gemm"] > 0
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


def _lazy_options(impls, workload="R1"):
    return runner.Options(
        device=torch.device("cpu"),
        workloads=[workload],
        dtypes=[torch.float32],
        size="tiny",
        impls=impls,
        reps=3,
        budget_s=0.01,
        compile=False,
        kernel_timing=False,
        log=lambda m: None,
    )


@pytest.mark.parametrize("workload", ["R1", "R3", "X1", "X2"])
@pytest.mark.parametrize("poisoned", [True, False])
def test_an_implementation_that_writes_nothing_is_flagged(monkeypatch, workload, poisoned):
    # torch.empty hands back freed memory, and the baseline's freed scores can sit there (seen on X1
    # here, and on R3 in CI even with the allocator poisoned: the row passed). The checked call's
    # new tensors read NaN whatever the allocator hands out, so the row fails with or without the
    # poisoning.
    def writes_nothing(case):
        return lambda: torch.empty(case.spec.B, case.spec.K)

    monkeypatch.setitem(peers.PEERS, "lazy-peer", ("torch", writes_nothing))
    if not poisoned:
        monkeypatch.setattr(runner, "poison_allocator", lambda *a, **k: None)
    rows = {r["impl"]: r for r in runner.run(_lazy_options(["lazy-peer"], workload)).rows}
    assert rows["baseline"]["status"] == "ok"
    assert rows["lazy-peer"]["status"] == "wrong" and rows["lazy-peer"]["median_ms"] is None, rows["lazy-peer"]


def test_every_score_is_checked_not_only_the_first_block(monkeypatch):
    """The check covers the whole grid: NaN (an unwritten score) anywhere fails, and the values are
    compared on rows and columns spread over the grid, the last ones included."""
    torch.manual_seed(0)
    case = runner.workloads.build("X1", "quick", torch.float32, "cpu")  # 16 queries x 250 docs
    exact, low, subset = runner.oracle(case)
    rows, cols = subset
    assert rows[0] == 0 and rows[-1] == case.spec.B - 1 and cols[0] == 0 and cols[-1] == case.spec.K - 1
    full = runner.baselines.case_fn(case)()
    assert runner.check(full, exact, low, subset, case)[0]
    unsampled = sorted(set(range(case.spec.B)) - set(rows.tolist()))
    assert unsampled, "the oracle samples some of X1's queries, not all of them"
    hole = full.clone()
    hole[unsampled[0], 3] = float("nan")  # one unwritten score, in a query the oracle does not sample
    ok, _, _, msg = runner.check(hole, exact, low, subset, case)
    assert not ok and "NaN in 1 of" in msg
    off = full.clone()
    off[:, -1] += 1.0  # the last candidate of every query wrong: the old first-block check missed it
    ok, _, _, msg = runner.check(off, exact, low, subset, case)
    assert not ok and "disagrees with the reference" in msg


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


def test_codec_rows_score_the_codes_and_count_their_bytes(monkeypatch):
    """Packed workloads get <backend>:<codec> rows: checked against the oracle over the decoded
    vectors, their bytes the codes'; a row that scores the float store instead is caught."""
    import colbert_fast as cf

    opts = _lazy_options(["cpu", "cpu:residual2", "torch:int8", "cpu:int8"], "R1")
    rows = {r["impl"]: r for r in runner.run(opts).rows}
    assert rows["cpu:residual2"]["status"] == "ok" and rows["torch:int8"]["status"] == "ok", rows
    assert rows["cpu:residual2"]["max_err"] <= rows["cpu:residual2"]["tolerance"]
    assert rows["cpu:residual2"]["min_bytes"] < rows["cpu:int8"]["min_bytes"] < rows["cpu"]["min_bytes"]
    x1 = {r["impl"] for r in runner.run(_lazy_options(["cpu:residual2"], "X1")).rows}
    assert "cpu:residual2" not in x1, "codec rows belong to packed workloads only"

    def scores_the_float_store(name, codec, case):
        return lambda: cf.maxsim_packed(case.Q, case.docs, case.pids, backend=name)

    monkeypatch.setattr(runner, "_codes_fn", scores_the_float_store)
    rows = {r["impl"]: r for r in runner.run(_lazy_options(["cpu:residual2"], "R1")).rows}
    assert rows["cpu:residual2"]["status"] == "wrong", rows["cpu:residual2"]


def test_unwritten_memory_reads_nan_inside_and_settings_come_back():
    """A freed block full of valid scores comes back NaN inside unwritten_reads_nan (integers at
    their maximum), and torch's deterministic settings are as they were afterwards."""
    from colbert_fast.benchmark import timing

    def settings():
        return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()

    before = settings()
    for _ in range(20):
        held = torch.full((64, 32), 1.5)
        del held
        with timing.unwritten_reads_nan():
            out = torch.empty(64, 32)
            ids = torch.empty(8, dtype=torch.int64)
            assert torch.isnan(out).all()
            assert (ids == torch.iinfo(torch.int64).max).all()
    assert settings() == before
    with pytest.raises(ValueError), timing.unwritten_reads_nan():
        raise ValueError("an implementation that crashes")
    assert settings() == before
