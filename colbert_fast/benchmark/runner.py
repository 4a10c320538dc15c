"""Run every implementation on every workload, side by side, and turn timings into physics.

Implementations (rows), per workload and dtype:
    baseline            the padded plain-PyTorch baseline (baselines.py), eager: speedup 1.0x
    baseline+compile    the same under torch.compile (compile time reported as warm-up)
    <backend>           every colbert_fast backend available on the device, through the public
                        API (cf.maxsim / cf.maxsim_packed with backend=...): new backends appear
                        here as soon as they are registered and report themselves available
    <peer>              peers.py, when importable
    <backend>:<codec>   packed workloads scored from a compressed store of the same docs
                        (workloads.codes_store: residual2, int8, ...), by every backend with
                        compressed-store kernels; "torch:<codec>" decodes with PyTorch first
                        (decompress, then score: what engines without such kernels do). Checked
                        against the oracle over the decoded vectors; bytes are the codes'.

Every row's scores are first checked against the fp32 oracle (colbert_fast.reference) with
the tolerance rule of docs/spec.md: new tensors read NaN during the checked call
(timing.unwritten_reads_nan; the allocator's next blocks are poisoned too), every output element
must be written (no NaN anywhere in the [B, K] scores), and the values are compared on a sample
of queries and candidates spread over the whole grid (first, last and evenly between), as large
as the oracle's memory allows. A row that disagrees is flagged "wrong" and not timed.

Each timed row reports the per-call time (median_ms: what a user's call costs, Python dispatch
included) and the kernel-only time (kernel_ms: CUDA-graph replay on a GPU, timing.measure_kernel),
with throughput and fractions of the device's peaks for both.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import colbert_fast as cf

from .. import backends, reference
from . import baselines, counters, peers, workloads
from .timing import CacheFlusher, measure, measure_kernel, poison_allocator, unwritten_reads_nan

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
    kernel_timing: bool = True  # also time the device work alone (timing.measure_kernel)
    sweep: bool = False  # add the S<K> latency-vs-docs sweep (first dtype only)
    codecs: list[str] = field(default_factory=lambda: list(workloads.DEFAULT_CODECS))  # packed workloads
    seed: int = 0
    log: Callable[[str], None] = print


@dataclass
class Impl:
    name: str
    kind: str  # "baseline" | "backend" | "peer" | "codes"
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


def _codes_fn(name: str, codec: str, case: workloads.Case) -> Callable[[], torch.Tensor]:
    store = case.codes(codec)
    return lambda: cf.maxsim_packed(case.Q, store, case.pids, backend=name)


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
    for codec in opts.codecs:
        if codec not in workloads.CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose from {', '.join(workloads.CODECS)}")
        for name, reason in backends.available(device).items():
            if reason is None and not backends.load(name).supports_codes(device):
                reason = "no compressed-store kernels"
            if (
                reason is None
                and name == "triton"
                and device.type == "cpu"
                and os.environ.get("TRITON_INTERPRET") == "1"
            ):
                reason = "TRITON_INTERPRET=1: the interpreter is a correctness tool, not a benchmark"
            impls.append(Impl(f"{name}:{codec}", "codes", functools.partial(_codes_fn, name, codec), skip=reason))
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


def _spread(n: int, m: int) -> torch.Tensor:
    """m indices spread evenly over range(n), first and last included (all of them when m >= n)."""
    if m >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, m).round().long().unique()


def _check_subset(case: workloads.Case) -> tuple[torch.Tensor, torch.Tensor]:
    """(query rows, candidate columns) the oracle checks: spread over the whole [B, K] grid, at
    most CHECK_ELEMENTS similarities in all (the whole grid when it fits)."""
    s = case.spec
    per_pair = s.Lq * max(case.pad_len, 1)
    k = max(1, min(s.K, CHECK_ELEMENTS // per_pair))
    b = max(1, min(s.B, CHECK_ELEMENTS // (per_pair * k)))
    return _spread(s.B, b), _spread(s.K, k)


def codes_oracle(case: workloads.Case, store) -> tuple[torch.Tensor, torch.Tensor]:
    """A compressed store's oracle on the checked subset: reference MaxSim over the decoded vectors
    (reference.decode_*), fp32, and in fp16 (the low dtype of a compressed store's tolerance)."""
    rows, cols = _check_subset(case)
    Q = case.Q[rows.to(case.device)].float()
    pids = case.pids[rows.to(case.device)][:, cols.to(case.device)]
    picked = pids.clamp(min=0).reshape(-1).unique()
    starts, lens = store.offsets[picked], store.lengths[picked]
    token_rows = torch.cat([torch.arange(int(a), int(a) + int(n), device=case.device) for a, n in zip(starts, lens)])
    decoded = store.decode_rows(token_rows)
    local = torch.full((store.num_docs,), -1, dtype=torch.int64, device=case.device)
    local[picked] = torch.arange(picked.numel(), device=case.device)
    offsets = torch.zeros(picked.numel() + 1, dtype=torch.int64, device=case.device)
    offsets[1:] = torch.cumsum(lens, 0)
    sub = torch.where(pids >= 0, local[pids.clamp(min=0)], -1)
    D, mask = reference.gather(decoded, offsets, lens, sub)
    exact = reference.maxsim(Q, D, d_mask=mask).masked_fill(pids < 0, float("-inf"))
    low = reference.maxsim(Q.half(), D.half(), d_mask=mask, upcast=False).masked_fill(pids < 0, float("-inf"))
    return exact.cpu(), low.cpu()


def oracle(case: workloads.Case) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """fp32 oracle and same-low-dtype scores on the checked subset, and the subset (rows, cols)."""
    rows, cols = _check_subset(case)
    Q = case.Q[rows.to(case.device)]
    if case.mode == "packed":
        d = case.docs
        pids = case.pids[rows.to(case.device)][:, cols.to(case.device)]
        # The oracle's own gather (shares no code with the backends), done once for both passes.
        D, mask = reference.gather(d.embeddings, d.offsets, d.lengths, pids)
        exact = reference.maxsim(Q, D, d_mask=mask).masked_fill(pids < 0, float("-inf"))
        low = reference.maxsim(Q, D, d_mask=mask, upcast=False).masked_fill(pids < 0, float("-inf"))
    else:
        idx = cols.to(case.device)
        lengths = None if case.d_lengths is None else case.d_lengths[idx]
        exact = reference.maxsim(Q, case.D[idx], d_lengths=lengths)
        low = reference.maxsim(Q, case.D[idx], d_lengths=lengths, upcast=False)
    return exact.cpu(), low.cpu(), (rows, cols)


def check(
    out: torch.Tensor, exact: torch.Tensor, low: torch.Tensor, subset, case, low_dtype: torch.dtype | None = None
) -> tuple[bool, float, float, str]:
    """(ok, max error, tolerance, message) for out [B, K]: every element written (no NaN: the
    allocator was poisoned before the call), and the values on the subset against the oracle.
    low_dtype: the dtype `low` was computed in (default the workload's)."""
    rows, cols = subset
    want = (case.spec.B, case.spec.K)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return False, float("inf"), 0.0, f"returned {shape}, expected {want}"
    tol = reference.tolerance(exact, low, low_dtype or case.dtype, case.spec.Lq)
    unwritten = torch.isnan(out.detach()).sum()
    if int(unwritten):
        return False, float("nan"), tol, f"NaN in {int(unwritten)} of {out.numel()} scores (unwritten or computed NaN)"
    got = out.detach().float().cpu()[rows][:, cols]
    if (torch.isinf(got) != torch.isinf(exact)).any():
        return False, float("inf"), tol, "infinite scores where the oracle has finite ones (or vice versa)"
    finite = torch.isfinite(exact)
    err = float((got[finite] - exact[finite]).abs().max()) if finite.any() else 0.0
    ok = err <= tol
    return ok, err, tol, "" if ok else f"disagrees with the reference: max err {err:.3g} > tol {tol:.3g}"


# ---- the run -----------------------------------------------------------------------------------


def _roofline_floor_s(counts, peaks: dict, dtype_name: str) -> float | None:
    """The longer of "all useful FLOPs at the compute ceiling" and "all bytes at copy rate"."""
    peak_flops = peaks.get("compute_TFLOPs", peaks["matmul_TFLOPs"]).get(dtype_name)
    peak_bw = peaks["copy_GBps"]
    floors = [counts.min_bytes / (peak_bw * 1e9)] if peak_bw else []
    if peak_flops:
        floors.append(counts.useful_flops / (peak_flops * 1e12))
    return max(floors) if floors else None


def _metrics(row: dict, counts, peaks: dict, dtype_name: str) -> None:
    t = row["median_ms"] * 1e-3
    row["TFLOPs"] = counts.useful_flops / t / 1e12
    row["GBps"] = counts.min_bytes / t / 1e9
    peak_flops = peaks.get("compute_TFLOPs", peaks["matmul_TFLOPs"]).get(dtype_name)
    gemm = peaks["matmul_TFLOPs"].get(dtype_name)
    peak_bw = peaks["copy_GBps"]
    row["frac_peak_flops"] = row["TFLOPs"] / peak_flops if peak_flops else None
    row["frac_gemm"] = row["TFLOPs"] / gemm if gemm else None
    row["frac_peak_bw"] = row["GBps"] / peak_bw if peak_bw else None
    floor = _roofline_floor_s(counts, peaks, dtype_name)
    row["frac_roofline"] = floor / t if floor else None
    if row.get("kernel_ms"):
        tk = row["kernel_ms"] * 1e-3
        row["kernel_TFLOPs"] = counts.useful_flops / tk / 1e12
        row["kernel_GBps"] = counts.min_bytes / tk / 1e9
        row["kernel_frac_roofline"] = floor / tk if floor else None


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
        "frac_gemm": None,
        "frac_peak_bw": None,
        "frac_roofline": None,
        "kernel_ms": None,
        "kernel_warm_ms": None,
        "kernel_method": None,
        "kernel_TFLOPs": None,
        "kernel_GBps": None,
        "kernel_frac_roofline": None,
        "speedup": None,
        "peak_mem_bytes": None,
        "max_err": None,
        "tolerance": None,
        "docs_per_query": case.num_docs_per_query,
        "queries": case.spec.B,
    }


def run_case(case: workloads.Case, impls: list[Impl], opts: Options, peaks: dict, flush, state: dict) -> list[dict]:
    dtype_name = DTYPE_NAMES[case.dtype]
    case_counts = case.counts()
    case_oracle = oracle(case)
    codes_oracles: dict[str, tuple] = {}
    rows = []
    for impl in impls:
        counts, (exact, low, subset), low_dtype = case_counts, case_oracle, None
        if impl.kind == "codes":
            if case.mode != "packed" or case.dtype != opts.dtypes[0]:  # packed workloads, once per run
                continue
            codec = impl.name.split(":", 1)[1]
            store = case.codes(codec)
            if codec not in codes_oracles:
                codes_oracles[codec] = codes_oracle(case, store)
            exact, low = codes_oracles[codec]
            s = case.spec
            counts = counters.codes_counts(
                s.B, s.K, s.Lq, workloads.DIM, int(case.lengths_cpu.sum()), case.pad_len, store.bytes_per_token, 4
            )
            low_dtype = torch.float16
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
            # An output the call never writes must not inherit the last row's scores: poison the
            # blocks the allocator hands out next, so unwritten scores read NaN.
            poison_allocator(case.device, case.spec.B * case.spec.K * 4)
            t0 = time.perf_counter()
            with _nan_for_unwritten(impl, case), torch.no_grad() if case.mode != "train" else torch.enable_grad():
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
        ok, err, tol, msg = check(out, exact, low, subset, case, low_dtype)
        row["max_err"], row["tolerance"] = err, tol
        if not ok:
            row["status"], row["note"] = "wrong", msg + " (not timed)"
            opts.log(f"  {case.name} {dtype_name} {impl.name}: WRONG: {msg}")
            continue
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            out.detach().fill_(float("nan"))  # freed next: its block must not hand valid scores to a later row
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
        if opts.kernel_timing:
            # Graphs only for our backends and the baseline, never for training (autograd) or peers
            # (a peer may synchronise inside its call, which breaks a capture).
            graph = impl.kind != "peer" and case.mode != "train"
            try:
                with grad_ctx():
                    kt = measure_kernel(fn, case.device, timing.median_ms, flush, graph, budget_s=opts.budget_s)
                row["kernel_ms"], row["kernel_warm_ms"], row["kernel_method"] = kt.ms, kt.warm_ms, kt.method
            except Exception as e:  # noqa: BLE001 (the per-call timing stands; say why there is no kernel time)
                row["kernel_method"] = f"failed: {type(e).__name__}: {e}"[:200]
                if case.device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
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


def _nan_for_unwritten(impl, case) -> contextlib.AbstractContextManager:
    """NaN-filled torch.empty for the checked call (timing.unwritten_reads_nan), except where the
    deterministic mode it rides on would change the code being checked: a torch.compile row
    would recompile for the timed calls (dynamo guards on the mode), and a training row would
    take the Triton backward's deterministic kernel instead of the timed atomic one. Those rows
    keep the allocator poisoning alone."""
    if impl.name == COMPILED or case.mode == "train":
        return contextlib.nullcontext()
    return unwritten_reads_nan()


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
    if opts.kernel_timing:
        results.notes.append(
            "kernel ms: the device work of one call, host dispatch excluded: "
            + (
                "n calls captured in a CUDA graph and replayed (back to back between one pair of events where "
                "capture is not possible: the row's kernel_method says which)"
                if device.type == "cuda"
                else "n calls back to back (on CPU the call is the kernel)"
            )
            + "; cold caches: (n x (flush, call) - n x flush) / n"
        )
    if device.type == "cpu":
        src = peaks.get("compute_source", {})
        results.notes.append(
            "%peak = useful FLOP/s over this CPU's measured arithmetic ceiling ("
            + "; ".join(f"{k}: {v}" for k, v in src.items())
            + "), not torch.mm's rate (%GEMM)"
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
