"""bench/engine_scaling.py end to end at tiny sizes: every size gets the fixed and the default budget
for k = 10 and 100, the default equals the fixed one below 10k docs, and the report, its table and
its plot are written. A smoke test of the script, not a timing: the numbers are the benchmark's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import engine_scaling  # noqa: E402  (bench/ is not a package)


def test_engine_scaling_tiny(tmp_path):
    out = tmp_path / "out"
    argv = ["--e1-docs", "150,300", "--out", str(out), "--workdir", str(tmp_path / "work")]
    assert engine_scaling.main(argv) == 0
    results = json.loads((out / "scaling.json").read_text())
    assert [s["num_docs"] for s in results["sizes"]] == [150, 300]
    for size in results["sizes"]:
        rows = {(r["k"], r["budget"]): r for r in size["rows"]}
        assert set(rows) == {(k, b) for k in (10, 100) for b in ("fixed", "default")}
        for k in (10, 100):
            fixed, default = rows[(k, "fixed")], rows[(k, "default")]
            assert (fixed["nprobe"], fixed["ncandidates"]) == (default["nprobe"], default["ncandidates"])
            assert 0.0 <= default["recall"] <= 1.0 and default["p50_ms"] > 0
        assert size["exhaustive_ms_per_query"] > 0
        assert size["pass"]["torch_ms"] > 0 and size["pass"]["nprobe"] == rows[(10, "default")]["nprobe"]
        filters = size["filters"]
        assert [f["share"] for f in filters] == list(engine_scaling.FILTER_SHARES)
        assert all(f["whole_ms"] > 0 and f["engine_ms"] > 0 for f in filters)
        assert all(f["default_certified"] for f in filters if f["scored_whole"])
    table = (out / "scaling.md").read_text()
    assert table.count("| default |") == 4 and "load average" in table and "Filtered search" in table
    assert "The candidate pass alone" in table
    assert (out / "scaling.png").stat().st_size > 0
