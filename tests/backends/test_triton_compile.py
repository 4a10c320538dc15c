"""AOT compile check of every Triton kernel for sm_80 and sm_90, without a GPU.

Runs colbert_fast.kernels.compile_check in a subprocess (the kernels must be compiled, not
interpreted, and this test session has TRITON_INTERPRET=1), over every constexpr combination
the launchers can produce (kernels.settings.variants), on 2 worker processes. It asserts each
variant compiles to PTX and cubin, the dot kernels use tensor cores (mma / wgmma) and the shared
memory fits. About 2-4 minutes on 2 cores (170 variants); CI has no GPU, so this is what keeps
a kernel change from breaking the GPU build unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

import colbert_fast  # noqa: E402  (after importorskip)


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    # Make the same colbert_fast importable (source tree or installed) in the subprocess.
    root = str(Path(colbert_fast.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def test_every_kernel_variant_compiles_for_sm80_and_sm90(tmp_path):
    out = tmp_path / "records.json"
    cmd = [sys.executable, "-m", "colbert_fast.kernels.compile_check", "--arch", "80", "90",
           "-j", str(min(2, os.cpu_count() or 1)), "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=1800, check=False)
    crashed = f"compile check crashed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert out.exists(), crashed
    records = json.loads(out.read_text())

    # The sweep covered every kernel on both archs in every dtype.
    seen = {(r["kernel"], r["arch"], r["dtype"]) for r in records}
    kernels = {"all_pairs", "segmented", "bwd_dq", "bwd_dd_atomic", "bwd_dd_onehot", "gather"}
    assert seen == {(k, a, d) for k in kernels for a in (80, 90) for d in ("fp32", "fp16", "bf16")}

    failed = [r for r in records if not r["ok"]]
    assert not failed, "variants that do not compile:\n" + "\n".join(
        f"{r['kernel']} sm_{r['arch']} {r['dtype']} {r['constexprs']}: {r['error'][-500:]}" for r in failed[:5]
    )
    from colbert_fast.kernels import compile_check

    problems = [(r, p) for r in records for p in compile_check.problems(r)]
    assert not problems, "\n".join(
        f"{r['kernel']} sm_{r['arch']} {r['dtype']} {r['constexprs']} warps={r['num_warps']}: {p}"
        for r, p in problems[:10]
    )
    # Hopper: the 128-row fp16/bf16 tiles with 8 warps must take the warpgroup MMA path.
    hopper_big = [r for r in records if r["arch"] == 90 and r["kernel"] == "all_pairs" and r["dtype"] != "fp32"
                  and r["constexprs"]["BLOCK_M"] == 128 and r["num_warps"] == 8]  # fmt: skip
    assert hopper_big and all(r["wgmma"] for r in hopper_big), "128-row all-pairs tiles on sm_90 must use wgmma"
    assert proc.returncode == 0, proc.stdout[-2000:]
