"""The command layer: one module per subcommand in colbert_fast/cli/, `python -m colbert_fast` from
any directory, help everywhere, nothing read from the working directory unless named, profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import colbert_fast.cli as cli
from colbert_fast.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]
# the parser and the shared arguments, and the end-to-end half of `bench` (E1, E2): no subcommand of their own
SHARED_MODULES = {"__init__", "arguments", "bench_engines"}


def test_one_module_per_subcommand():
    here = Path(cli.__file__).parent
    modules = {p.stem for p in here.glob("*.py")} - SHARED_MODULES
    assert set(COMMANDS) == modules
    assert all(target == f"colbert_fast.cli.{name}" for name, target in COMMANDS.items())
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: colbert-fast {command}" in capsys.readouterr().out


def test_python_dash_m_runs_from_an_empty_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "colbert_fast", "env", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["colbert_fast"]


def test_compare_needs_the_files_named(tmp_path, monkeypatch, capsys):
    """--compare no longer falls back to bench/results/*.json in the working directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["bench", "--results", "missing.json", "--compare"])
    assert e.value.code == 2
    assert "--compare" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"], ["profile", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: colbert-fast" in text
    if "bench" in argv:
        for opt in ("--device", "--workload", "--dtype", "--backend", "--quick", "--out", "--compare"):
            assert opt in text


def test_profile_writes_trace_and_ncu_command(tmp_path, capsys):
    assert (
        main(
            [
                "profile",
                "--device",
                "cpu",
                "--workload",
                "R1",
                "--tiny",
                "--backend",
                "torch",
                "--reps",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    traces = list(tmp_path.glob("trace_R1_*.json"))
    assert traces and json.loads(traces[0].read_text())["traceEvents"]
    assert "baseline.bmm" in text and "colbert_fast.torch.maxsim_packed" in text
    assert "ncu --set full --nvtx --nvtx-include colbert_fast.torch.maxsim_packed/" in text
