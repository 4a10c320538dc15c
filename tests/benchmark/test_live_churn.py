"""bench/live_churn.py (issue 19) end to end at a tiny size: the churned index equals a fresh build
of its survivors (exhaustive top-100, bit-identical stores), and every row of the report is there.
A smoke test of the script, not a timing: the numbers are the benchmark's, run by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import live_churn  # noqa: E402  (bench/ is not a package)


@pytest.mark.slow  # 25 s on 2 cores at load average 3.5 (50 s at 8): two probe processes import torch
def test_live_churn_tiny(tmp_path):
    out = tmp_path / "live"
    argv = ["--docs", "200", "--cycles", "2", "--add", "20", "--delete", "10", "--queries", "8", "--centroids", "256"]
    results = live_churn.main([*argv, "--out", str(out), "--workdir", str(tmp_path), "--quiet"])
    assert results["verdict"]["top100_equal"] is True
    assert results["stores_equal"] is True
    assert results["comparison"]["centroid"]["overlap_mean"] > 0.9
    stats = results["stats"]["churned"]
    assert stats["docs"] == 200 + 2 * 20 - 2 * 10 == results["stats"]["fresh"]["docs"]
    assert results["peak_rss"]["churned"]["peak_rss_mb"] > 0 and results["add"]["docs_per_s"] > 0
    assert json.loads((out / "results.json").read_text())["verdict"] == results["verdict"]
    readme = (out / "README.md").read_text()
    for row in ("add throughput", "delete latency", "peak RSS", "bytes on disk per live token", "load average"):
        assert row in readme
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(live_churn.rows(results))
