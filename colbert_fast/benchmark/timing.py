"""Timers that measure the kernel, not the cache or the compiler.

Per call (`measure`): what a user's call costs, Python dispatch included.
GPU: each repetition is bracketed by its own pair of CUDA events, after a write of a buffer at
least twice the L2 size (so no input is served from L2: 1,000 short docs fit in a 50 MB L2).
The first call (autotuning, JIT, torch.compile) is timed on its own and reported as warm-up.
CPU: time.perf_counter around each call, after writing a buffer twice the last-level cache size.

Kernel only (`measure_kernel`): what the device work of one call costs, with the host's dispatch
out of the picture. GPU: n calls captured in one CUDA graph and replayed (no launch gaps); where
capture fails (a call that synchronises, say), n calls issued back to back between one pair of
events. Cold caches as above: graphs (or batches) of n x (flush, call) and of n x flush alone are
timed, and the difference divided by n; the same n calls without flushes give the warm-cache
time. CPU: the same batches timed with perf_counter (there the call is the kernel: the numbers
mostly repeat the per-call ones).

`unwritten_reads_nan` makes every torch.empty inside it come back NaN-filled (torch's deterministic
mode), and `poison_allocator` fills the blocks the allocator hands out next with NaN for memory
taken around torch's factories: an implementation that leaves part of its output unwritten
cannot pass the correctness check on a freed buffer that still holds the baseline's scores.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    samples_ms: list[float]
    warmup_ms: float  # the first call, compilation/autotuning included
    peak_mem_bytes: int | None = None  # extra memory at the peak of the timed calls (see peak_memory_bytes)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    def quantile_ms(self, q: float) -> float:
        """Linear-interpolated quantile (q in [0, 1]) of the samples."""
        xs = sorted(self.samples_ms)
        if len(xs) == 1:
            return xs[0]
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or 50 << 20)
    for index in (3, 2):
        path = f"/sys/devices/system/cpu/cpu0/cache/index{index}/size"
        try:
            with open(path) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        return int(text.rstrip("KMG")) * mult
    return 32 << 20


class CacheFlusher:
    """Writes a buffer >= 2x the last-level cache, evicting whatever the previous call left."""

    def __init__(self, device: torch.device):
        self.nbytes = 2 * last_level_cache_bytes(device)
        # Touch every page now, so the first flush inside a peak-memory window allocates nothing.
        self.buffer = torch.zeros(self.nbytes // 4, dtype=torch.float32, device=device)

    def __call__(self) -> None:
        self.buffer.fill_(1.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object],
    device: torch.device,
    reps: int = 20,
    budget_s: float = 2.0,
    min_reps: int = 3,
    flush: CacheFlusher | None = None,
    warmup: bool = True,
) -> Timing:
    """Time fn: one warm-up call (skip it with warmup=False when the caller made it), then up to
    `reps` timed calls within about `budget_s` seconds (at least `min_reps`). Each timed call
    starts from a flushed cache when `flush` is given. The peak memory of the timed calls is
    recorded on the way (the flush buffer and events allocate nothing new)."""
    device = torch.device(device)
    sync(device)
    warmup_ms = 0.0
    if warmup:
        t0 = time.perf_counter()
        fn()
        sync(device)
        warmup_ms = (time.perf_counter() - t0) * 1e3
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            pairs = []
            for i in range(reps):
                if flush is not None:
                    flush()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                pairs.append((start, end))
                # Check the clock only every few reps: a host sync per rep would serialise the queue.
                if i + 1 >= min_reps and (i + 1) % 5 == 0:
                    torch.cuda.synchronize(device)
                    if time.perf_counter() > deadline:
                        break
            torch.cuda.synchronize(device)
            samples = [s.elapsed_time(e) for s, e in pairs]
        else:
            for i in range(reps):
                if flush is not None:
                    flush()
                t = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t) * 1e3)
                if i + 1 >= min_reps and time.perf_counter() > deadline:
                    break
    return Timing(samples, warmup_ms, mem.peak_bytes)


# ---- kernel only -------------------------------------------------------------------------------


@dataclass
class KernelTiming:
    ms: float  # per call, device work only, cold caches when a flush was given
    warm_ms: float  # per call, back to back with no flush (inputs may sit in L2/LLC)
    method: str  # "cuda graph" or "back-to-back" (with the reason capture was not used)
    calls: int  # calls per timed batch


def _batch_timer(device: torch.device):
    """time(run) -> ms of one run() on the device (events on a GPU, perf_counter on CPU)."""
    if device.type == "cuda":

        def time_cuda(run) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return time_cuda

    def time_cpu(run) -> float:
        t = time.perf_counter()
        run()
        return (time.perf_counter() - t) * 1e3

    return time_cpu


def _capture(run, device: torch.device):
    """run captured in a CUDA graph; returns graph.replay. Raises where run cannot be captured."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # capture needs a warmed-up side stream (lazy inits, workspaces)
        run()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def measure_kernel(
    fn: Callable[[], object],
    device: torch.device,
    per_call_ms: float,
    flush: CacheFlusher | None = None,
    graph: bool = True,
    budget_s: float = 1.0,
    target_ms: float = 2.0,
    max_calls: int = 64,
) -> KernelTiming:
    """Kernel-only time of fn (already warmed up: the first call compiled and tuned it).

    per_call_ms (from `measure`) sizes the batch: about target_ms of work, at most max_calls
    calls. graph=False skips CUDA-graph capture (calls that synchronise, autograd)."""
    device = torch.device(device)
    n = max(1, min(max_calls, round(target_ms / max(per_call_ms, 1e-3))))
    timer = _batch_timer(device)

    def calls():
        for _ in range(n):
            fn()

    def flushes():
        for _ in range(n):
            flush()

    def both():
        for _ in range(n):
            flush()
            fn()

    runs = {"calls": calls}
    if flush is not None:
        runs.update(flushes=flushes, both=both)
    method = "back-to-back"
    if device.type == "cuda" and graph:
        try:
            runs = {name: _capture(run, device) for name, run in runs.items()}
            method = "cuda graph"
        except Exception as e:  # noqa: BLE001 (any capture failure: fall back, and say why)
            torch.cuda.synchronize(device)
            method = f"back-to-back (graph capture failed: {type(e).__name__}: {str(e)[:80]})"
    elif device.type == "cuda":
        method = "back-to-back (no graph for this row)"
    samples: dict = {name: [] for name in runs}
    deadline = time.perf_counter() + budget_s
    for rep in range(20):
        for name, run in runs.items():
            samples[name].append(timer(run))
        if rep >= 2 and time.perf_counter() > deadline:
            break
    med = {name: statistics.median(xs) / n for name, xs in samples.items()}
    cold = med["both"] - med["flushes"] if flush is not None else med["calls"]
    # The difference of two medians can dip below the warm time by noise; the warm time is the floor.
    return KernelTiming(max(cold, med["calls"]), med["calls"], method, n)


@contextlib.contextmanager
def unwritten_reads_nan() -> Iterator[None]:
    """Inside: torch.empty and its kin hand back NaN (integers: their maximum), whatever the freed
    block held. Poisoning the allocator alone was a guess at which block comes next, and glibc
    guessed otherwise once (a lazy peer's unwritten output held the right scores in CI). Torch's
    deterministic mode, warnings only (no op is refused), fills every new tensor; the previous
    settings come back on exit."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():  # "op X has no deterministic version": not our question here
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = was_fill


def poison_allocator(device: torch.device, nbytes: int, copies: int = 8) -> None:
    """Fill the blocks the allocator will hand out next for an nbytes tensor with NaN, then free them.

    Both allocators reuse the most fitting freed block for a same-size request (the CUDA caching
    allocator by best fit, glibc's malloc last-in first-out): `copies` NaN-filled tensors of that
    size take the blocks a later request would get (a freed output of the baseline among them)
    and hand them back poisoned."""
    n = max(1, -(-nbytes // 4))
    bufs = [torch.full((n,), float("nan"), dtype=torch.float32, device=device) for _ in range(copies)]
    del bufs


# ---- peak memory -------------------------------------------------------------------------------


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM (peak resident set) to the current RSS when 5 is written to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Extra memory the code inside the block needs at its peak, beyond what was allocated before.

    GPU: the caching allocator's peak (exact). CPU: growth of the process's peak resident set
    (an estimate: memory the allocator reuses from earlier frees is not seen). peak_bytes is None
    where it cannot be measured.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self._base = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.name == "posix" and _reset_peak_rss():
            self._base = _read_status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self._base is None:
            return False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
        else:
            peak = _read_status_kb("VmHWM")
            self.peak_bytes = None if peak is None else max(0, peak - self._base) * 1024
        return False


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Extra memory one call of fn needs at its peak (see PeakMemory)."""
    with PeakMemory(device) as mem:
        fn()
    return mem.peak_bytes
