"""AOT compile check of every Triton kernel for sm_80 and sm_90, without a GPU.

Runs colbert_fast.kernels.compile_check in a subprocess (the kernels must be compiled, not
interpreted, and this test session has TRITON_INTERPRET=1), over every constexpr combination
the launchers can produce (kernels.settings.variants: tuned, tiny-grid and fixed configs), on 2
worker processes. It asserts each variant compiles to PTX and cubin, the dot kernels use tensor
cores (mma / wgmma), the shared memory fits and ptxas reports no register spills. About 2-4
minutes on 2 cores (226 variants); CI has no GPU, so this is what keeps a kernel change from
breaking (or slowing) the GPU build unnoticed.
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
    kernels = {"all_pairs", "segmented", "bwd_dq", "bwd_dd_atomic", "bwd_dd_onehot", "gather", "gather_codes"}
    assert seen == {(k, a, d) for k in kernels for a in (80, 90) for d in ("fp32", "fp16", "bf16")}

    # ptxas reported registers and spills for every variant (the spill check saw them all).
    assert all(r.get("ptxas") for r in records if r["ok"]), "variants without a ptxas resource report"
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


INDUCTOR_REBUILD = """
import importlib.util, json, os, sys
from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code as closure
from colbert_fast.kernels import compile_check
out = {}
for name in ("all_pairs", "segmented", "bwd_dq", "bwd_dd_atomic", "bwd_dd_onehot", "gather"):
    kernel = compile_check._kernel(name)
    # What Inductor writes for a user-defined kernel: its imports, @triton.jit, then the kernel and
    # everything it references (helpers, constexpr globals) as source.
    path = os.path.join(sys.argv[1], name + ".py")
    with open(path, "w") as f:
        f.write("import triton\\nimport triton.language as tl\\n@triton.jit\\n" + closure(kernel))
    spec = importlib.util.spec_from_file_location("inductor_" + name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        out[name] = "ok" if getattr(module, kernel.__name__).src == kernel.src else "source differs"
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def test_inductor_can_load_the_kernel_modules_it_generates(tmp_path):
    """Inductor compiles a wrapped Triton kernel by copying its source and the globals it uses into
    a module of its own (torch._inductor's transitive-closure codegen). Run that same codegen for
    every kernel, without a GPU, and load each module: a global whose repr is not Python (a
    tl.constexpr(float("-inf")) became `tl.constexpr(-inf)`, NameError) fails here."""
    wrapper = pytest.importorskip("torch._inductor.codegen.wrapper")
    if not hasattr(wrapper, "user_defined_triton_kernel_transitive_closure_source_code"):
        pytest.skip("this torch has no transitive-closure codegen for user-defined Triton kernels")
    proc = subprocess.run(
        [sys.executable, "-c", INDUCTOR_REBUILD, str(tmp_path)],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == dict.fromkeys(results, "ok") and len(results) == 6, results
