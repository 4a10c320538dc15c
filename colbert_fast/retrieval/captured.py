"""A centroid search of fixed shapes, captured once and replayed per batch (GPU serving).

With static shapes (CentroidEngine(static_shapes=True), the default on CUDA) a search reads nothing
back, so the whole of it (centroid matmul, candidate pass, exact scoring, top k, certificate) can be
recorded as one CUDA graph: each batch is then a copy of its queries into the graph's input and one
graph launch, with no kernel launch overhead and no host round trip inside. On the CPU the same
object calls the search directly (there is no graph to record), so the plumbing is the same and is
tested here.

    engine = CentroidEngine(store.to("cuda"), build_engine(store))
    search = CapturedSearch(engine, batch=64, query_len=32, k=10, nprobe=64, ncandidates=256)
    top, rows, stats = search(Q, q_mask)      # Q [b <= 64, 32, dim]; results on the GPU

A batch of fewer queries is padded with fully masked queries (they probe nothing and return no
rows); results are cut back to the queries given. The outputs are fresh tensors (not the graph's
buffers, which the next call overwrites).
"""

from __future__ import annotations

import torch

from .engine import CentroidEngine


class CapturedSearch:
    """engine.search_on_device at fixed shapes, recorded as a CUDA graph on a CUDA store.

    Args:
        engine: a CentroidEngine with static_shapes (ValueError otherwise: a data-sized search
            reads sizes back and cannot be recorded).
        batch, query_len: the largest batch and the query length every call uses.
        k, nprobe, ncandidates: as for CentroidEngine.search (exact=False).
        allowed: None or a bool mask over doc rows [N] fixed for every call.
    """

    def __init__(
        self,
        engine: CentroidEngine,
        batch: int,
        query_len: int,
        k: int,
        nprobe: int,
        ncandidates: int,
        allowed: torch.Tensor | None = None,
    ):
        if not engine.static_shapes:
            raise ValueError("CapturedSearch needs CentroidEngine(..., static_shapes=True) (the default on CUDA)")
        for name, value in (("batch", batch), ("query_len", query_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.engine, self.batch, self.query_len = engine, batch, query_len
        self.settings = dict(k=k, nprobe=nprobe, ncandidates=ncandidates)
        device = engine.codes.device
        self.allowed = engine.allowed_mask(allowed, batch)
        self.Q = torch.zeros(batch, query_len, engine.codes.dim, device=device)
        self.q_mask = torch.zeros(batch, query_len, dtype=torch.bool, device=device)
        self.graph = None
        self.out = self._run()  # checks the settings (and, on CUDA, warms the kernels up)
        if device.type == "cuda":
            # Record on a side stream after a warm-up there (what torch.cuda.graph asks for).
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                self._run()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._run()

    def _run(self):
        return self.engine.search_on_device(self.Q, self.q_mask, **self.settings, allowed=self.allowed)

    def __call__(self, Q: torch.Tensor, q_mask: torch.Tensor | None = None):
        """(scores fp32 [b, k'], rows int64 [b, k'] (-1 = none), SearchStats), on the store's device."""
        want = f"[b <= {self.batch}, {self.query_len}, {self.engine.codes.dim}]"
        if (
            not isinstance(Q, torch.Tensor)
            or Q.dim() != 3
            or Q.shape[0] > self.batch
            or Q.shape[1:] != self.Q.shape[1:]
        ):
            shape = list(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
            raise ValueError(f"Q must be {want}, got {shape}")
        b = Q.shape[0]
        if q_mask is None:
            q_mask = torch.ones(Q.shape[:2], dtype=torch.bool)
        if not isinstance(q_mask, torch.Tensor) or q_mask.dtype != torch.bool or q_mask.shape != Q.shape[:2]:
            raise ValueError(f"q_mask must be a bool tensor {list(Q.shape[:2])}")
        self.Q[:b].copy_(Q)
        self.q_mask[:b].copy_(q_mask)
        self.Q[b:] = 0.0
        self.q_mask[b:] = False  # the padding queries: no valid token
        if self.graph is not None:
            self.graph.replay()
        else:
            self.out = self._run()
        top, rows, stats = self.out
        return top[:b].clone(), rows[:b].clone(), stats.apply(lambda t: t[:b].clone())
