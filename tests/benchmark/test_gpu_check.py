"""bench/gpu_check.sh on a CPU (DEVICE=cpu): the plumbing and the time budgeting of the GPU check,
so that the first lent GPU session gets answers instead of a script bug.

One dry run (~2-3 minutes on 2 cores) with a 180 s budget (generous: a loaded machine runs every
stage slower, and the stages asserted below must still get their turn): a stand-in build in the background
overlapping the Triton tests, a test stage cut at its limit by SIGINT (pytest still reports), the
core benchmark, a benchmark cut by the budget left (partial JSON turned into markdown), and a last
stage skipped for lack of time; the summary files after it, and nothing else, under $OUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check_summary  # noqa: E402  (bench/ is not a package)

TOTAL_S = 180
FILES = {
    "summary.json",
    "summary.md",
    "gpu_check.log",
    "tests.log",
    "bench_core.json",
    "bench_core.md",
    "bench_rest.json",
    "bench_rest.md",
}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = dict(os.environ)
    env.update(
        PYTHON=sys.executable,
        DEVICE="cpu",
        OUT=str(out),
        TOTAL_S=str(TOTAL_S),
        RESERVE_S="8",  # room for a loaded machine's slower teardown of the last stage
        GRACE_S="5",
        MIN_STAGE_S="15",
        BUILD_CMD="sleep 3",  # stands in for the build (minutes here): the overlap is what is checked
        TRITON_TESTS="tests/core/test_no_sync.py tests/backends/test_triton_launch.py",
        TRITON_K="triton or guard or bucket",
        # A stage that cannot finish in its 6 s cap, however fast the machine: it must be cut with
        # SIGINT and still report.
        CUDA_TESTS="tests/benchmark/slow_stage_for_gpu_check.py",
        CUDA_K="outlasts",
        CUDA_S="6",
        # Far more than the time left, however fast the machine: unbounded reps, so every row times
        # for its whole 2 s budget (dozens of rows): cut by the budget left, not by its cap.
        REST_ARGS="--workload R1,R2,R3,X1,X2,P1,T1 --dtype fp32,fp16,bf16 --sweep --no-compile --reps 100000000 "
        "--budget 2",
        REST_S="600",  # a cap beyond the whole budget: its limit is always the time left
        # The core benchmark without its codec rows: the dry run checks the plumbing, not the codecs.
        CORE_ARGS="--workload R1,R3,X1,X2,P1,T1 --dtype bf16 --no-compile --no-peers --reps 20 --budget 0.3 "
        "--codecs none",
        SUITE_TESTS="tests/core/test_reference.py",
        SUITE_K="",
    )
    env.pop("COLBERT_FAST_GIT_SHA", None)
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TOTAL_S + 120
    )
    wall = time.monotonic() - start
    summary = json.loads((out / "summary.json").read_text())
    return proc, wall, out, summary, {s["name"]: s for s in summary["stages"]}


def test_ends_inside_its_budget_with_the_named_files_only(dry_run):
    proc, wall, out, summary, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert wall <= TOTAL_S + 5, f"the check took {wall:.0f} s of a {TOTAL_S} s budget"
    assert summary["finished"] and summary["elapsed_s"] <= TOTAL_S
    assert {p.name for p in out.iterdir()} == FILES and all(p.is_file() for p in out.iterdir())
    assert "# GPU check: INCOMPLETE" in proc.stdout  # summary.md printed last (the tool keeps the tail)
    assert (out / "summary.md").read_text().startswith("# GPU check: INCOMPLETE")


def test_stages_in_order_and_the_build_overlaps_the_triton_tests(dry_run):
    *_, summary, stages = dry_run
    names = [s["name"] for s in summary["stages"]]
    assert names == ["env", "build", "triton", "cuda", "bench_core", "engine", "bench_rest", "suite"]
    assert stages["env"]["status"] == "ok"
    build, triton = stages["build"], stages["triton"]
    assert build["status"] == "ok" and "extension loads" in build["note"]
    assert build["started_s"] < triton["started_s"] + triton["seconds"]
    assert triton["started_s"] < build["started_s"] + build["seconds"]
    assert triton["status"] == "ok" and triton["tests"]["passed"] > 0 and not triton["failures"]


def test_a_stage_cut_at_its_limit_still_reports(dry_run):
    _, _, out, _, stages = dry_run
    cuda = stages["cuda"]
    assert cuda["status"] == "timeout" and cuda["limit_s"] == 6 and "cut at its 6 s limit" in cuda["note"]
    assert "unreadable" not in cuda["tests"]  # the JUnit XML was written on SIGINT
    log = (out / "tests.log").read_text()
    assert "===== cuda:" in log and "KeyboardInterrupt" in log.split("===== cuda:")[1]


def test_benchmarks_core_complete_rest_cut_by_the_budget(dry_run):
    _, _, out, _, stages = dry_run
    core = stages["bench_core"]
    assert core["status"] == "ok" and not core["bench"]["partial"] and not core["bench"]["problems"]
    assert core["bench"]["workloads"] == ["R1 bf16", "R3 bf16", "X1 bf16", "X2 bf16", "P1 bf16", "T1 bf16"]
    doc = json.loads((out / "bench_core.json").read_text())
    timed = [r for r in doc["rows"] if r["status"] == "ok"]
    assert timed and all(r["kernel_ms"] > 0 and r["median_ms"] > 0 for r in timed)
    assert "kernel ms" in (out / "bench_core.md").read_text()
    rest = stages["bench_rest"]
    # Its cap is 600 s; the limit came from the budget left, and the cut left a partial result.
    assert rest["status"] == "timeout" and rest["limit_s"] < 600 and rest["bench"]["partial"]
    assert (out / "bench_rest.md").read_text().startswith("PARTIAL")
    assert json.loads((out / "bench_rest.json").read_text())["partial"] is True
    suite = stages["suite"]
    assert suite["status"] == "skipped" and suite["note"].startswith("no time left")


def test_the_engine_stage_searches_e1_end_to_end(dry_run):
    _, _, out, _, stages = dry_run
    engine = stages["engine"]
    assert engine["status"] == "ok"
    (size,) = engine["engine"]["sizes"]  # folded into summary.json (8 files come back at most)
    res = size["backends"]["auto"]
    assert size["docs"] == 200 and "error" not in res and "problem" not in res
    assert res["recall_at_10"] > 0.9 and res["captured_qps"] > 0 and not res["recorded_as_graph"]  # CPU: no graph
    assert "## engine" in (out / "summary.md").read_text() and "| 200 |" in (out / "summary.md").read_text()


def test_summary_reads_junit_and_exit_codes(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite>'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2&#10;more"/></testcase>'
        '<testcase classname="tests.test_a" name="test_err"><error message="boom"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped message="needs cuda"/></testcase>'
        "<testcase/></testsuite></testsuites>"
    )
    counts, failures = gpu_check_summary.junit_counts(xml)
    assert counts == {"tests": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert failures == ["FAILURE tests.test_a::test_bad: assert 1 == 2", "ERROR tests.test_a::test_err: boom"]
    cut = tmp_path / "cut.xml"
    cut.write_text('<?xml version="1.0"?><testsuites><testsuite><testcase classname="a" na')
    assert "unreadable" in gpu_check_summary.junit_counts(cut)[0]
    assert [gpu_check_summary.status_of(rc) for rc in (0, 1, 2, 5, 124, 137)] == [
        "ok",
        "failed",
        "failed",
        "no tests",
        "timeout",
        "timeout",
    ]
    out = tmp_path / "out"
    main = gpu_check_summary.main
    assert main(["init", "--out", str(out), "--device", "cuda", "--budget", "520", "--sha", "abc"]) == 0
    main(["running", "--out", str(out), "--name", "triton", "--start", "3", "--limit", "200"])
    assert json.loads((out / "summary.json").read_text())["verdict"] == "INCOMPLETE"  # killed mid-stage
    main(["stage", "--out", str(out), "--name", "triton", "--rc", "0", "--start", "3", "--end", "50",
          "--limit", "200", "--junit", str(xml)])  # fmt: skip
    doc = json.loads((out / "summary.json").read_text())
    assert doc["stages"][0]["status"] == "failed"  # exit 0 but failures in the XML: not ok
    main(["finish", "--out", str(out), "--elapsed", "60"])
    doc = json.loads((out / "summary.json").read_text())
    assert doc["verdict"] == "FAILED" and "test_bad" in (out / "summary.md").read_text()
