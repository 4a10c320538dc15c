"""Per-stage wall-clock timers for the searchers and the evaluation protocol.

A stage's time is what a caller waits for: on a CUDA device the timer synchronizes before and
after the stage, so queued kernels are charged to the stage that launched them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import torch

__all__ = ["StageTimer"]


class StageTimer:
    """Seconds accumulated per named stage.

    Args:
        stages: the stage names, in report order (all start at 0; other names may be added).
        device: synchronize this CUDA device around every stage (None or a CPU device: no sync).

    Example:
        >>> timer = StageTimer(("encode", "score"))
        >>> with timer.stage("encode"):
        ...     ...
        >>> timer.seconds        # {"encode": 0.0012, "score": 0.0}
    """

    def __init__(self, stages: Sequence[str], device: torch.device | str | None = None):
        self.stages = tuple(stages)
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = dict.fromkeys(self.stages, 0.0)

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.stages, 0.0)

    def per_query_ms(self, n: int) -> dict[str, float]:
        """Milliseconds per query for each stage, plus "total"."""
        out = {s: 1000.0 * v / max(n, 1) for s, v in self.seconds.items()}
        out["total"] = sum(out.values())
        return out
