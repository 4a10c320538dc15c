"""This process's place in a sharded job: rank, world, collectives, and the control plane.

Data moves by torch.distributed collectives (gloo on CPU, NCCL on GPU). Control moves through the
rendezvous store: before and after each collective step every rank posts its status and rank 0
publishes a verdict (Cluster.exchange), so a rank that raises, hangs or dies is named (rank and
shard) within `timeout` seconds instead of leaving the others blocked in a collective.

A rank can still die or stall inside a collective, after its status said "ok". So every
collective runs with a timeout (Work.wait), and a failing one (a timeout, or gloo's "connection
closed by peer") is diagnosed through the store: each rank that saw it fail says so; the ranks
that do not within a grace period are the ones that died or stalled (CollectiveError names them).
After that the process group cannot be trusted (a late rank may pair with a later collective):
the cluster is marked broken and every later collective raises at once; restart the job.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = ["Cluster", "CollectiveError", "ShardError", "error_text", "owned_shards", "raise_failures"]


class ShardError(RuntimeError):
    """Some rank failed or did not answer in time. `failures` maps rank -> reason."""

    def __init__(self, message: str, failures: dict[int, str] | None = None):
        super().__init__(message)
        self.failures = failures or {}


class CollectiveError(ShardError):
    """A collective failed or timed out; `failures` names the ranks that died or stalled in it (or
    this rank, when it arrived after the others gave up)."""


# Seconds the ranks that saw a collective fail wait for each other's word before naming the silent
# ones (at most the cluster's timeout).
BLAME_GRACE = 10.0


def owned_shards(num_shards: int, rank: int, world_size: int) -> list[int]:
    """Shard s is served (and built) by rank s % world_size."""
    return [s for s in range(num_shards) if s % world_size == rank]


@dataclasses.dataclass
class Cluster:
    """This process's place in the job.

    Build one with Cluster.init() under torchrun (or with RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT set), or Cluster.local() for a single process without torch.distributed.

    Attributes:
        rank, world_size: as torch.distributed numbers them.
        store: the control-plane key-value store (a prefix of the rendezvous store).
        backend: "gloo", "nccl", or None for a local cluster (no collectives needed).
        device: where this rank keeps its shards and scores (cuda:LOCAL_RANK with NCCL).
        timeout: seconds a rank may take for one step before it is reported as not answering.
    """

    rank: int
    world_size: int
    store: dist.Store
    backend: str | None
    device: torch.device
    timeout: float = 600.0
    _seq: int = 0
    _last_complete: str | None = None
    _collectives: int = 0
    broken: str | None = None  # why the process group can no longer be used (a collective failed)

    @classmethod
    def init(cls, backend: str | None = None, *, device: str | None = None, timeout: float = 600.0) -> Cluster:
        """Join the job via env:// rendezvous and start the process group.

        Args:
            backend: "gloo" or "nccl"; default nccl when CUDA is available, else gloo.
            device: default cuda:LOCAL_RANK with nccl, else cpu.
            timeout: seconds; also the process group's own collective timeout.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        if device is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu"
        device = torch.device(device)
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("the nccl backend needs a cuda device")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        span = datetime.timedelta(seconds=timeout)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=span))
        if not dist.is_initialized():
            dist.init_process_group(
                backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=world_size, timeout=span
            )
        return cls(rank, world_size, dist.PrefixStore("colbert_fast", store), backend, device, timeout)

    @classmethod
    def local(cls, device: str | None = None) -> Cluster:
        """A world of one process: no process group, an in-memory store."""
        return cls(0, 1, dist.HashStore(), None, torch.device(device or "cpu"))

    def close(self, timeout: float = 30.0) -> None:
        """Leave the job: every rank together, so no rank tears down a connection a peer still uses.

        When some rank does not arrive within `timeout` seconds (it died), the process group is left
        as it is: destroying it could block on, or abort over, the dead peer.
        """
        if self.backend is None or not dist.is_initialized():
            return
        saved, self.timeout = self.timeout, timeout
        try:
            _, status = self.exchange("closing", wait_for_zero=timeout)
        except ShardError:
            return
        finally:
            self.timeout = saved
        if all(v is not None for v in status.values()):
            # A rank that dies between the status exchange and here must not hang the others: the
            # barrier is waited on for `timeout` seconds at most, and the group is then left as it is.
            try:
                done = dist.barrier(async_op=True).wait(timeout=datetime.timedelta(seconds=timeout))
            except RuntimeError:
                return
            if done:
                dist.destroy_process_group()

    @property
    def comm_device(self) -> torch.device:
        """Collective tensors live here: the GPU for NCCL, the host for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ---- control plane -------------------------------------------------------------------------

    def exchange(self, mine: str, *, wait_for_zero: float | None = None) -> tuple[str, dict[int, str | None]]:
        """Post this rank's status; rank 0 collects every rank's (or None: no answer within timeout)
        and publishes them; every rank returns (tag, {rank: status}).

        Ranks other than 0 wait up to `wait_for_zero` seconds (default 2 * timeout + 30) for the
        verdict, then raise ShardError naming rank 0.
        """
        self._seq += 1
        tag = f"x{self._seq}"
        self.store.set(f"{tag}/{self.rank}", mine)
        if self.rank == 0:
            deadline = time.monotonic() + self.timeout
            status: dict[int, str | None] = {}
            for r in range(self.world_size):
                key = f"{tag}/{r}"
                try:
                    self.store.wait([key], datetime.timedelta(seconds=max(0.001, deadline - time.monotonic())))
                    status[r] = self.store.get(key).decode()
                except RuntimeError:  # the store's wait timeout (DistStoreError is a RuntimeError)
                    status[r] = None
            self.store.set(f"{tag}/verdict", json.dumps(status))
            if all(v is not None for v in status.values()):
                # Every rank posted this exchange, so each has read the previous verdict: drop it.
                if self._last_complete is not None:
                    last = self._last_complete
                    keys = [f"{last}/{r}" for r in range(self.world_size)] + [f"{last}/verdict"]
                    for key in keys + [f"{last}/data/{r}" for r in range(self.world_size)]:
                        self.store.delete_key(key)
                self._last_complete = tag
            return tag, status
        wait = wait_for_zero if wait_for_zero is not None else 2 * self.timeout + 30
        try:
            self.store.wait([f"{tag}/verdict"], datetime.timedelta(seconds=wait))
            raw = json.loads(self.store.get(f"{tag}/verdict").decode())
        except RuntimeError as e:
            raise ShardError(f"rank 0 did not answer within {wait:.0f} s ({e})", {0: "no answer"}) from None
        return tag, {int(r): v for r, v in raw.items()}

    def post(self, blob: bytes) -> None:
        """Leave data in the store under this rank and the next exchange (fetch reads it after that
        exchange; the exchange after it removes it)."""
        self.store.set(f"x{self._seq + 1}/data/{self.rank}", blob)

    def fetch(self, tag: str, rank: int) -> bytes:
        """What `rank` posted before the exchange that returned `tag`."""
        return self.store.get(f"{tag}/data/{rank}")

    # ---- collectives (identity in a world of one) -------------------------------------------------

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        t = tensor.to(self.comm_device).contiguous()
        self._collective("broadcast", lambda: dist.broadcast(t, src=0, async_op=True))
        return t

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.world_size == 1:
            return [tensor]
        t = tensor.to(self.comm_device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self._collective("all_gather", lambda: dist.all_gather(out, t, async_op=True))
        return out

    def _collective(self, what: str, start) -> None:
        """Run start() (an async collective) and wait at most `timeout` seconds for it; on failure
        raise CollectiveError naming the ranks that died or stalled in it (see the module doc)."""
        if self.broken is not None:
            raise CollectiveError(
                f"{what}: the process group is unusable since {self.broken}; restart the job",
                {self.rank: f"process group broken ({self.broken})"},
            )
        self._collectives += 1
        n = self._collectives
        try:
            if not start().wait(timeout=datetime.timedelta(seconds=self.timeout)):
                raise RuntimeError(f"timed out after {self.timeout:g} s")
        except RuntimeError as e:  # gloo/NCCL errors and timeouts (DistError is a RuntimeError)
            self.broken = f"{what} #{n} failed on rank {self.rank}"
            failures = self._blame(what, n, e)
            raise CollectiveError(f"{what} failed: {error_text(e)}", failures) from None

    def _blame(self, what: str, n: int, error: BaseException) -> dict[int, str]:
        """The ranks to name for collective `n` failing here with `error`: those that do not say
        within the grace period that they saw it fail too; this rank alone when every other did
        (it was the late one)."""
        key = f"collective{n}/failed"
        heard: set[int] = set()
        try:
            self.store.set(f"{key}/{self.rank}", error_text(error))
            deadline = time.monotonic() + min(self.timeout, BLAME_GRACE)
            for r in range(self.world_size):
                if r == self.rank:
                    continue
                try:
                    self.store.wait([f"{key}/{r}"], datetime.timedelta(seconds=max(0.001, deadline - time.monotonic())))
                    heard.add(r)
                except RuntimeError:
                    pass
        except RuntimeError as e:  # the store itself is gone: its host (rank 0 or the agent) died
            return {0: f"no answer in {what} (the rendezvous store is unreachable: {e})"}
        silent = {
            r: f"no answer in {what} (died or stalled in the collective)"
            for r in range(self.world_size)
            if r != self.rank and r not in heard
        }
        return silent or {self.rank: f"{what} failed here after the others gave up: {error_text(error)}"}


def error_text(e: BaseException) -> str:
    """One line for a status message: the exception and where it was raised (file:line)."""
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


def raise_failures(
    status: dict[int, str | None], what: str, shards_of: dict[int, list[int]], cause: BaseException | None = None
) -> None:
    """Raise ShardError naming every rank whose status is not "ok" (None: it did not answer in time)."""
    failures = {r: ("no answer (timed out or died)" if v is None else v) for r, v in status.items() if v != "ok"}
    if failures:
        lines = [f"rank {r} (shards {shards_of.get(r, [])}): {why}" for r, why in sorted(failures.items())]
        raise ShardError(f"{what} failed on {len(failures)} rank(s): " + "; ".join(lines), failures) from cause
