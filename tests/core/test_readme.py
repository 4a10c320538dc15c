"""The README's code runs as written (it is the first thing a new user copies)."""

import importlib.util
import os
import re
from pathlib import Path

import pytest


def _blocks():
    text = (Path(__file__).parents[2] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 2


def test_readme_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for block in _blocks():
        if "compat." not in block:
            exec(compile(block, "README.md", "exec"), {})


@pytest.mark.peers
def test_readme_compat_example_runs():
    peers = [m for m in ("colbert", "pylate") if importlib.util.find_spec(m) is None]
    if peers:
        if os.environ.get("COLBERT_FAST_REQUIRE_PEERS") == "1":
            pytest.fail(f"COLBERT_FAST_REQUIRE_PEERS=1 but not installed: {peers}")
        pytest.skip(f"not installed: {peers} (make test-peers runs this in the peers' venv)")
    from colbert_fast import compat

    try:
        for block in _blocks():
            if "compat." in block:
                exec(compile(block, "README.md", "exec"), {})
        assert compat.is_patched("colbert") and compat.is_patched("pylate")
    finally:
        compat.unpatch_colbert()
        compat.unpatch_pylate()
