"""Timers that measure the kernel, not the cache or the compiler.

GPU: each repetition is bracketed by its own pair of CUDA events, after a write of a buffer at
least twice the L2 size (so no input is served from L2: 1,000 short docs fit in a 50 MB L2).
The first call (autotuning, JIT, torch.compile) is timed on its own and reported as warm-up.
CPU: time.perf_counter around each call, after writing a buffer twice the last-level cache size.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
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
