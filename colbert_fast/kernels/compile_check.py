"""AOT compile check: every kernel, for sm_80 and sm_90, over every constexpr combination the
launchers can produce (settings.variants), without a GPU.

    python -m colbert_fast.kernels.compile_check [--arch 80 90] [-j 2] [--json out.json]

Each variant is compiled with triton.compile(..., target=GPUTarget("cuda", arch, 32)) down to
PTX and cubin (Triton ships ptxas), and checked for: it compiles; the dot kernels emit tensor
core instructions (mma / wgmma: a silent fallback to FMA would be a 10x slowdown); the shared
memory it needs fits the arch; ptxas reports no register spills (spilled registers go to local
memory, a round trip through L1/L2 on every use: tests/backends/test_cuda_build.py holds the CUDA kernels
to the same rule). The ptxas report is Triton's own (TRITON_DUMP_PTXAS_LOG), with Triton's cache
bypassed (TRITON_ALWAYS_COMPILE) so that ptxas runs and reports every time. Integer arguments
get the specialisation the launchers' usual inputs get (16-aligned pointers, strides and dim;
shapes never specialised). Must run with TRITON_INTERPRET unset (the interpreter replaces the
kernels with Python functions).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor

DOT_KERNELS = ("all_pairs", "segmented", "bwd_dd_onehot")
# Token-row strides and dim: multiples of 16 elements for any usual embedding (dim 64/96/128), which
# is what lets the row loads vectorise. Mask and length strides are often 1: not specialised.
ROW_STRIDES = {"stride_qb", "stride_qt", "stride_db", "stride_dn", "stride_dk", "stride_dt", "stride_e", "dim"}
_DTYPE_NAMES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


def _kernel(name: str):
    from . import gather, maxsim, maxsim_bwd

    return {
        "all_pairs": maxsim._maxsim_all_pairs_kernel,
        "segmented": maxsim._maxsim_segmented_kernel,
        "bwd_dq": maxsim_bwd._maxsim_bwd_dq_kernel,
        "bwd_dd_atomic": maxsim_bwd._maxsim_bwd_dd_atomic_kernel,
        "bwd_dd_onehot": maxsim_bwd._maxsim_bwd_dd_onehot_kernel,
        "gather": gather._gather_kernel,
        "gather_codes": gather._gather_codes_kernel,
    }[name]


def _pointer_type(kernel: str, arg: str, data: str) -> str | None:
    """Triton type of a pointer argument, None if `arg` is not a pointer."""
    if arg in ("Q", "D", "EMB"):
        return f"*{data}"
    if arg == "DQ_PART":
        return "*fp32"
    if arg in ("QMASK", "DMASK", "MASK"):
        return "*u8"
    if arg in ("DLEN", "PIDS", "OFFSETS", "LENGTHS"):
        return "*i64"
    if arg == "ARGMAX":
        return "*i32"
    if arg == "CODES":
        return "*u8"
    if arg == "SCALES":
        return "*fp16"
    if arg == "CIDS":
        return "*i32"
    if arg in ("CENT", "WEIGHTS"):
        return "*fp32"
    if arg == "FLOOR":
        return "*fp32"
    if arg == "GRAD":
        return "*fp32"
    if arg == "OUT":
        return f"*{data}" if kernel in ("gather", "gather_codes") else "*fp32"
    if arg == "DD":
        return "*fp32" if kernel == "bwd_dd_atomic" else f"*{data}"
    return None


def parse_ptxas(log: str) -> dict | None:
    """{registers, spill_stores, spill_loads, stack} from a `ptxas -v` report (one kernel), or None."""
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    regs = re.search(r"Used (\d+) registers", log)
    if spills is None or regs is None:
        return None
    stack, stores, loads = (int(g) for g in spills.groups())
    return {"registers": int(regs.group(1)), "spill_stores": stores, "spill_loads": loads, "stack": stack}


def compile_variant(job: tuple) -> dict:
    """Compile one variant; returns a record (never raises: failures are reported)."""
    kernel, constexprs, num_warps, num_stages, dtype_name, arch = job
    # Read by Triton at compile time: print ptxas's resource report, and compile even when cached.
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernel(kernel)
    data = _DTYPE_NAMES[dtype_name]
    no_spec = set(getattr(fn, "do_not_specialize", ()) or ())
    no_spec |= {fn.arg_names[i] for i in no_spec if isinstance(i, int)}
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
            continue
        ptr = _pointer_type(kernel, arg, data)
        signature[arg] = ptr or "i32"
        if ptr is not None or arg in ROW_STRIDES and arg not in no_spec:
            attrs[(i,)] = [["tt.divisibility", 16]]
    record = {"kernel": kernel, "arch": arch, "dtype": data, "constexprs": constexprs, "num_warps": num_warps,
              "num_stages": num_stages}  # fmt: skip
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # Triton prints the ptxas report
            compiled = triton.compile(
                ASTSource(fn, signature, constexprs, attrs),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": num_warps, "num_stages": num_stages},
            )
    except Exception as e:  # noqa: BLE001  (any compiler error is a finding to report, not a crash)
        record.update(ok=False, error=f"{type(e).__name__}: {str(e)[-2000:]}", seconds=time.perf_counter() - start)
        return record
    ptx = compiled.asm["ptx"]
    record.update(
        ok=True,
        seconds=time.perf_counter() - start,
        shared=int(compiled.metadata.shared),
        wgmma="wgmma.mma_async" in ptx,
        mma="mma.sync.aligned" in ptx,
        ptxas=parse_ptxas(log.getvalue()),
    )
    return record


def jobs(archs) -> list[tuple]:
    from . import settings

    out = []
    for arch in archs:
        for kernel, constexprs, num_warps, num_stages, dtype in settings.variants(arch):
            out.append((kernel, constexprs, num_warps, num_stages, str(dtype), arch))
    return out


def problems(record: dict) -> list[str]:
    """What is wrong with one compiled variant (empty when it passes)."""
    from . import settings

    if not record["ok"]:
        return [f"does not compile: {record['error']}"]
    found = []
    if record["kernel"] in DOT_KERNELS and not (record["mma"] or record["wgmma"]):
        found.append("no mma/wgmma instruction in the PTX (tl.dot fell back to FMA)")
    limit = settings.SHARED_MEMORY_LIMIT[record["arch"]]
    if record["shared"] > limit:
        found.append(f"needs {record['shared']} B of shared memory, sm_{record['arch']} has {limit}")
    ptxas = record.get("ptxas")
    if ptxas is None:
        found.append("no ptxas resource report (registers, spills) was captured: cannot check for spills")
    elif ptxas["spill_stores"] or ptxas["spill_loads"]:
        found.append(
            f"register spills: {ptxas['spill_stores']} B stored, {ptxas['spill_loads']} B loaded "
            f"({ptxas['registers']} registers, {ptxas['stack']} B stack frame)"
        )
    return found


def run(archs=(80, 90), workers: int = 2) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("the compile check needs TRITON_INTERPRET unset (the interpreter replaces the kernels)")
    todo = jobs(archs)
    if workers <= 1:
        return [compile_variant(j) for j in todo]
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(compile_variant, todo, chunksize=4))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", help="write every record to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    records = run(tuple(args.arch), args.jobs)
    bad = [(r, p) for r in records for p in problems(r)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1, default=str)
    for r, p in bad:
        print(f"FAIL {r['kernel']} sm_{r['arch']} {r['dtype']} {r['constexprs']} warps={r['num_warps']}: {p}")
    max_shared = {a: max((r.get("shared", 0) for r in records if r["arch"] == a), default=0) for a in args.arch}
    max_regs = {a: max(((r.get("ptxas") or {}).get("registers", 0) for r in records if r["arch"] == a), default=0)
                for a in args.arch}  # fmt: skip
    print(f"{len(records)} variants compiled for sm_{'/sm_'.join(map(str, args.arch))} in "
          f"{time.perf_counter() - start:.0f}s; {len(bad)} problems; max shared memory {max_shared}; "
          f"max registers {max_regs}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
