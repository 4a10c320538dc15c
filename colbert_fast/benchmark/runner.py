"""Run every implementation on every workload, side by side, and turn timings into physics.

Implementations (rows), per workload and dtype:
    baseline            the padded plain-PyTorch baseline (baselines.py), eager: speedup 1.0x
    baseline+compile    the same under torch.compile (compile time reported as warm-up)
    <backend>           every colbert_fast backend available on the device, through the public
                        API (cf.maxsim / cf.maxsim_packed with backend=...): new backends appear
                        here as soon as they are registered and report themselves available
    <peer>              peers.py, when importable

Every row's scores are first checked against the fp32 oracle (colbert_fast.reference) with
the tolerance rule of docs/spec.md, on a subset of queries and candidates small enough for the oracle; a
row that disagrees is flagged "wrong" and not timed.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import colbert_fast as cf

from .. import backends, reference
from . import baselines, peers, workloads
from .timing import CacheFlusher, measure

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
BASELINE = "baseline"
COMPILED = "baseline+compile"
# The oracle builds a [b, k, Lq, Ld] fp32 tensor: keep the checked subset under this many sims.
CHECK_ELEMENTS = 1 << 24


@dataclass
class Options:
    device: torch.device
    workloads: list[str]
    dtypes: list[torch.dtype]
    size: str  # "full" | "quick" | "tiny"
    impls: list[str] | None = None  # None: everything available; else names of rows to run
    reps: int = 20
    budget_s: float = 2.0  # time budget per row's timed repetitions
    compile: bool = True
    compile_budget_s: float | None = None  # total seconds torch.compile may take in this run
    peers: bool = True
    sweep: bool = False  # add the S<K> latency-vs-docs sweep (first dtype only)
    seed: int = 0
    log: Callable[[str], None] = print


@dataclass
class Impl:
    name: str
    kind: str  # "baseline" | "backend" | "peer"
    make: Callable[[workloads.Case], Callable[[], torch.Tensor]] | None
    skip: str | None = None  # reason this row is not run at all


@dataclass
class Results:
    device: dict
    peaks: dict
    workloads: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- implementations ---------------------------------------------------------------------------


def _backend_fn(name: str, case: workloads.Case) -> Callable[[], torch.Tensor]:
    if case.mode == "packed":
        return lambda: cf.maxsim_packed(case.Q, case.docs, case.pids, backend=name)
    if case.mode == "pairs":
        return lambda: cf.maxsim(case.Q, case.D, d_lengths=case.d_lengths, backend=name)
    if not backends.load(name).SUPPORTS_BACKWARD:
        raise peers.Unsupported(f"backend {name!r} has no backward")
    return _train_fn(lambda Q, D: cf.maxsim(Q, D, d_lengths=case.d_lengths, backend=name), case)


def _train_fn(score, case: workloads.Case) -> Callable[[], torch.Tensor]:
    """Forward + backward of a contrastive-style loss over the [B, N] scores."""
    Q = case.Q.detach().clone().requires_grad_(True)
    D = case.D.detach().clone().requires_grad_(True)

    def run():
        Q.grad = D.grad = None
        scores = score(Q, D)
        scores.sum().backward()
        return scores.detach()

    return run


def _baseline_make(compiled: bool):
    def make(case: workloads.Case):
        fn = baselines.compiled(case.mode) if compiled else None
        if case.mode == "train":
            impl = fn or baselines.pairs_scores
            return _train_fn(lambda Q, D: impl(Q, D, case.d_lengths), case)
        return baselines.case_fn(case, fn)

    return make


def implementations(opts: Options) -> list[Impl]:
    device = opts.device
    impls = [Impl(BASELINE, "baseline", _baseline_make(False))]
    if opts.compile:
        impls.append(Impl(COMPILED, "baseline", _baseline_make(True)))
    else:
        impls.append(Impl(COMPILED, "baseline", None, skip="torch.compile off (pass --compile)"))
    for name, reason in backends.available(device).items():
        if reason is None and name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            reason = "TRITON_INTERPRET=1: the interpreter is a correctness tool, not a benchmark"
        impls.append(Impl(name, "backend", functools.partial(_backend_fn, name), skip=reason))
    if opts.peers:
        for name in peers.PEERS:
            impls.append(Impl(name, "peer", functools.partial(peers.adapter, name), skip=peers.installed(name)))
    if opts.impls:
        known = {i.name for i in impls}
        unknown = [n for n in opts.impls if n not in known and n not in ("compiled",)]
        if unknown:
            raise ValueError(f"unknown --backend {unknown}; rows are: {sorted(known)}")
        want = set(opts.impls) | {BASELINE}  # the baseline always runs: speedups need it
        if "compiled" in opts.impls:
            want.add(COMPILED)
        impls = [i for i in impls if i.name in want]
    return impls


# ---- correctness -------------------------------------------------------------------------------


def _check_subset(case: workloads.Case) -> tuple[int, int]:
    s = case.spec
    per_pair = s.Lq * max(case.pad_len, 1)
    k = max(1, min(s.K, CHECK_ELEMENTS // per_pair))
    b = max(1, min(s.B, CHECK_ELEMENTS // (per_pair * k)))
    return b, k


def oracle(case: workloads.Case) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """fp32 oracle and same-low-dtype scores on the checked subset, and the subset (b, k)."""
    b, k = _check_subset(case)
    Q = case.Q[:b]
    if case.mode == "packed":
        d = case.docs
        pids = case.pids[:b, :k]
        # The oracle's own gather (shares no code with the backends), done once for both passes.
        D, mask = reference.gather(d.embeddings, d.offsets, d.lengths, pids)
        exact = reference.maxsim(Q, D, d_mask=mask).masked_fill(pids < 0, float("-inf"))
        low = reference.maxsim(Q, D, d_mask=mask, upcast=False).masked_fill(pids < 0, float("-inf"))
    else:
        lengths = None if case.d_lengths is None else case.d_lengths[:k]
        exact = reference.maxsim(Q, case.D[:k], d_lengths=lengths)
        low = reference.maxsim(Q, case.D[:k], d_lengths=lengths, upcast=False)
    return exact.cpu(), low.cpu(), (b, k)


def check(out: torch.Tensor, exact: torch.Tensor, low: torch.Tensor, subset, case) -> tuple[bool, float, float, str]:
    """(ok, max error, tolerance, message) for out [B, K] against the oracle on the subset."""
    b, k = subset
    want = (case.spec.B, case.spec.K)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return False, float("inf"), 0.0, f"returned {shape}, expected {want}"
    got = out[:b, :k].detach().float().cpu()
    tol = reference.tolerance(exact, low, case.dtype, case.spec.Lq)
    if torch.isnan(got).any():
        return False, float("nan"), tol, "NaN in scores"
    if (torch.isinf(got) != torch.isinf(exact)).any():
        return False, float("inf"), tol, "infinite scores where the oracle has finite ones (or vice versa)"
    finite = torch.isfinite(exact)
    err = float((got[finite] - exact[finite]).abs().max()) if finite.any() else 0.0
    ok = err <= tol
    return ok, err, tol, "" if ok else f"disagrees with the reference: max err {err:.3g} > tol {tol:.3g}"


# ---- the run -----------------------------------------------------------------------------------


def _metrics(row: dict, counts, peaks: dict, dtype_name: str) -> None:
    t = row["median_ms"] * 1e-3
    row["TFLOPs"] = counts.useful_flops / t / 1e12
    row["GBps"] = counts.min_bytes / t / 1e9
    peak_flops = peaks["matmul_TFLOPs"].get(dtype_name)
    peak_bw = peaks["copy_GBps"]
    row["frac_peak_flops"] = row["TFLOPs"] / peak_flops if peak_flops else None
    row["frac_peak_bw"] = row["GBps"] / peak_bw if peak_bw else None
    # The roofline floor: the longer of "all useful FLOPs at the GEMM rate" and "all bytes at copy rate".
    floors = [counts.min_bytes / (peak_bw * 1e9)] if peak_bw else []
    if peak_flops:
        floors.append(counts.useful_flops / (peak_flops * 1e12))
    row["frac_roofline"] = max(floors) / t if floors else None


def _new_row(case: workloads.Case, impl: Impl, dtype_name: str, counts) -> dict:
    return {
        "workload": case.name,
        "dtype": dtype_name,
        "impl": impl.name,
        "kind": impl.kind,
        "status": "ok",
        "note": "",
        "median_ms": None,
        "p20_ms": None,
        "p80_ms": None,
        "reps": 0,
        "warmup_ms": None,
        "useful_flops": counts.useful_flops,
        "padded_flops": counts.padded_flops,
        "min_bytes": counts.min_bytes,
        "TFLOPs": None,
        "GBps": None,
        "frac_peak_flops": None,
        "frac_peak_bw": None,
        "frac_roofline": None,
        "speedup": None,
        "peak_mem_bytes": None,
        "max_err": None,
        "tolerance": None,
        "docs_per_query": case.num_docs_per_query,
        "queries": case.spec.B,
    }


def run_case(case: workloads.Case, impls: list[Impl], opts: Options, peaks: dict, flush, state: dict) -> list[dict]:
    dtype_name = DTYPE_NAMES[case.dtype]
    counts = case.counts()
    exact, low, subset = oracle(case)
    rows = []
    for impl in impls:
        row = _new_row(case, impl, dtype_name, counts)
        rows.append(row)
        if impl.skip is not None:  # listed once in the notes; the table hides these rows
            row["status"], row["note"] = "unavailable", impl.skip
            continue
        # A compile cannot be interrupted, so stop before the one expected to overrun the budget.
        if (
            impl.name == COMPILED
            and opts.compile_budget_s is not None
            and (state["compile_s"] + state["compile_max_s"] > opts.compile_budget_s)
        ):
            row["status"] = "skipped"
            row["note"] = (
                f"torch.compile budget of {opts.compile_budget_s:.0f} s reached ({state['compile_s']:.0f} s "
                "spent compiling); raise --compile-budget"
            )
            continue
        try:
            fn = impl.make(case)
            t0 = time.perf_counter()
            with torch.no_grad() if case.mode != "train" else torch.enable_grad():
                out = fn()
            torch.cuda.synchronize() if case.device.type == "cuda" else None
            first_s = time.perf_counter() - t0
        except peers.Unsupported as e:
            row["status"], row["note"] = "skipped", str(e)
            continue
        except Exception as e:  # noqa: BLE001 (a crashing backend or peer is reported, not fatal to the run)
            row["status"], row["note"] = "error", f"{type(e).__name__}: {e}"[:300]
            opts.log(f"  {case.name} {dtype_name} {impl.name}: {row['note']}")
            if case.device.type == "cuda":  # e.g. out of memory: give the next row a clean allocator
                torch.cuda.empty_cache()
            continue
        if impl.name == COMPILED:
            state["compile_s"] += first_s
            state["compile_max_s"] = max(state["compile_max_s"], first_s)
        ok, err, tol, msg = check(out, exact, low, subset, case)
        row["max_err"], row["tolerance"] = err, tol
        if not ok:
            row["status"], row["note"] = "wrong", msg + " (not timed)"
            opts.log(f"  {case.name} {dtype_name} {impl.name}: WRONG: {msg}")
            continue
        del out
        grad_ctx = torch.enable_grad if case.mode == "train" else torch.no_grad
        try:
            with grad_ctx():  # the checked call above was the warm-up
                timing = measure(fn, case.device, reps=opts.reps, budget_s=opts.budget_s, flush=flush, warmup=False)
        except Exception as e:  # noqa: BLE001 (e.g. out of memory on a later call)
            row["status"], row["note"] = "error", f"while timing: {type(e).__name__}: {e}"[:300]
            opts.log(f"  {case.name} {dtype_name} {impl.name}: {row['note']}")
            if case.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        row["peak_mem_bytes"] = timing.peak_mem_bytes
        row["warmup_ms"] = first_s * 1e3  # the very first call: compilation and autotuning included
        row["median_ms"] = timing.median_ms
        row["p20_ms"], row["p80_ms"] = timing.quantile_ms(0.2), timing.quantile_ms(0.8)
        row["reps"] = len(timing.samples_ms)
        _metrics(row, counts, peaks, dtype_name)
    ref = next((r for r in rows if r["impl"] == BASELINE and r["median_ms"]), None)
    for r in rows:
        if ref and r["median_ms"]:
            r["speedup"] = ref["median_ms"] / r["median_ms"]
    return rows


def device_info(device: torch.device) -> dict:
    import platform

    info = {"type": device.type, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
        info["cpu_cores"] = os.cpu_count()
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            memory_bytes=props.total_memory,
            l2_bytes=getattr(props, "L2_cache_size", None),
        )
    else:
        info["name"] = info["cpu"]
    return info


def run(opts: Options, on_workload: Callable[[Results], None] | None = None) -> Results:
    """Run the suite; on_workload(results) is called after each workload (for partial writes)."""
    device = opts.device
    log = opts.log
    log(f"measuring the device's peaks on {device} ...")
    peaks = measure_peaks_for(opts)
    results = Results(device=device_info(device), peaks=peaks)
    impls = implementations(opts)
    flush = CacheFlusher(device)
    results.notes.append(
        f"timing: {'CUDA events' if device.type == 'cuda' else 'time.perf_counter'}, cache flushed before every "
        f"repetition ({flush.nbytes >> 20} MiB written); warm-up (first call, compile/autotune included) reported apart"
    )
    if device.type == "cpu":
        results.notes.append(f"CPU threads: {torch.get_num_threads()} (torch.get_num_threads())")
        load = _load_note()
        if load:
            results.notes.append(load)
    results.notes.append(
        "baseline = padded plain PyTorch (pad + einsum GEMM + masked max + fp32 sum) in the "
        "inputs' dtype; correctness is judged against colbert_fast.reference (fp32 oracle)"
    )
    for impl in impls:
        if impl.skip:
            results.notes.append(f"{impl.name}: not run: {impl.skip}")
    state = {"compile_s": 0.0, "compile_max_s": 0.0}
    store_cache: dict = {}
    for i, dtype in enumerate(opts.dtypes):
        names = list(opts.workloads) + (workloads.sweep_names(opts.size) if opts.sweep and i == 0 else [])
        for name in names:
            t0 = time.perf_counter()
            case = workloads.build(name, opts.size, dtype, device, opts.seed, store_cache)
            desc = case.describe() | {"dtype": DTYPE_NAMES[dtype], "setup_s": time.perf_counter() - t0}
            results.workloads.append(desc)
            log(
                f"{name} {DTYPE_NAMES[dtype]}: {case.spec.title}"
                + (f" [scaled: {desc['scaled']}]" if desc["scaled"] else "")
            )
            results.rows.extend(run_case(case, impls, opts, peaks, flush, state))
            del case
            if on_workload is not None:
                on_workload(results)
        store_cache.clear()
    return results


def _load_note() -> str | None:
    """A warning when other processes compete for the cores: with more runnable threads than
    cores, OpenMP's barriers wait for descheduled threads and small calls take 10-50x longer."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if load <= cores * 0.75:
        return None
    return (
        f"CPU contended: 1-minute load average {load:.1f} on {cores} cores; timings are inflated and "
        "bimodal (compare ratios within this run only, or rerun with --threads 1 or on an idle machine)"
    )


def measure_peaks_for(opts: Options) -> dict:
    from .peaks import measure_peaks

    return measure_peaks(opts.device, opts.dtypes, opts.size)
