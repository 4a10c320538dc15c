"""torch_backend.expand_lists, the list expansion of the torch centroid_interaction (the engine's
candidate stage), against a plain loop over the probes:
the data-sized form (exact entries) and the padded one (a budget, padding marked invalid), with
empty probes anywhere (first, last, in runs) and no probes at all."""

from __future__ import annotations

import pytest
import torch

from colbert_fast.backends import torch_backend


def _by_loop(starts, counts):
    probe_of, pos = [], []
    for j, (s, c) in enumerate(zip(starts.tolist(), counts.tolist())):
        probe_of += [j] * c
        pos += list(range(s, s + c))
    return torch.tensor(probe_of, dtype=torch.int64), torch.tensor(pos, dtype=torch.int64)


@pytest.mark.parametrize(
    "counts",
    [[3, 0, 2, 0, 0, 5], [0, 0, 4], [4, 0, 0], [0, 0, 0], [1], [7, 1, 1, 0, 2]],
)
def test_expand_matches_a_loop(counts):
    counts = torch.tensor(counts, dtype=torch.int64)
    starts = torch.tensor([11, 2, 40, 7, 0, 23, 5][: counts.numel()], dtype=torch.int64)
    want_probe, want_pos = _by_loop(starts, counts)
    probe_of, pos, valid = torch_backend.expand_lists(starts, counts, None)
    assert valid is None and torch.equal(probe_of, want_probe) and torch.equal(pos, want_pos)
    budget = int(counts.sum()) + 3
    probe_of, pos, valid = torch_backend.expand_lists(starts, counts, budget)
    n = int(counts.sum())
    assert valid.tolist() == [True] * n + [False] * 3
    assert torch.equal(probe_of[:n], want_probe) and torch.equal(pos[:n], want_pos)


def test_expand_of_no_probes():
    empty = torch.zeros(0, dtype=torch.int64)
    probe_of, pos, valid = torch_backend.expand_lists(empty, empty, None)
    assert probe_of.numel() == 0 and pos.numel() == 0 and valid is None
