"""A scoring mode is one number everywhere: ScoringMode in csrc/maxsim_args.h (the CPU kernels, and
the CUDA kernels' params) and colbert_fast/kernels/scoring_mode.py (Python, the Triton kernels)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("triton")

from colbert_fast.kernels import scoring_mode  # noqa: E402  (after importorskip)

HEADER = Path(__file__).resolve().parents[2] / "csrc" / "maxsim_args.h"


def test_python_and_cpp_scoring_modes_have_the_same_names_and_values():
    enum = re.search(r"enum class ScoringMode : int32_t \{(.*?)\};", HEADER.read_text(), re.S)
    assert enum, f"no ScoringMode enum in {HEADER}"
    cpp = {name: int(value) for name, value in re.findall(r"(\w+) = (\d+),", enum.group(1))}
    assert set(cpp) == {"all_pairs", "per_query", "packed"}, cpp
    assert {name: getattr(scoring_mode, name).value for name in cpp} == cpp
