"""cf.centroid_interaction (PLAID's approximate pass over inverted lists) against the oracle.

Every backend that has the op (the C++ kernel, "cpu"; the torch pass, data-sized and padded with
max_entries) must give reference.centroid_interaction's answer bit for bit: both add the tokens in
order in fp32, and maxima are exact. Odd shapes, empty lists, no lists, masked and -inf tokens,
NaN and infinite scores, a doc split across threads, and every bad input the op names.
"""

from __future__ import annotations

import pytest
import torch
from helpers import backend_or_skip
from torch._subclasses.fake_tensor import FakeTensorMode

import colbert_fast as cf
from colbert_fast import reference
from colbert_fast.backends import torch_backend

BACKENDS = ("cpu", "torch")


def random_lists(C: int, N: int, max_len: int, g: torch.Generator):
    """C lists of distinct docs in [0, N), ascending, of random length (some empty): (offsets, docs)."""
    lists = []
    for _ in range(C):
        n = int(torch.randint(0, min(max_len, N) + 1, (1,), generator=g))
        lists.append(torch.sort(torch.randperm(N, generator=g)[:n]).values)
    lengths = torch.tensor([len(x) for x in lists], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    docs = torch.cat(lists) if lists else torch.zeros(0, dtype=torch.int64)
    return offsets, docs.to(torch.int64)


def random_case(B, Lq, P, C, N, seed=0, max_len=12):
    g = torch.Generator().manual_seed(seed)
    offsets, docs = random_lists(C, N, max_len, g)
    ids = torch.randint(0, max(C, 1), (B, Lq, P), generator=g) if C else torch.zeros(B, Lq, P, dtype=torch.int64)
    scores = torch.randn(B, Lq, P, generator=g)
    floor = torch.randn(B, Lq, generator=g) - 1.5
    q_mask = torch.rand(B, Lq, generator=g) < 0.8
    return ids, scores, floor, offsets, docs, N, q_mask


def longest_expansion(ids, offsets) -> int:
    """The most entries one token's lists hold together (what max_entries must cover)."""
    counts = offsets[ids + 1] - offsets[ids]
    return int(counts.sum(dim=2).max()) if counts.numel() else 0


def run(backend, case, **kwargs):
    ids, scores, floor, offsets, docs, N, q_mask = case
    backend_or_skip(backend, torch.device("cpu"))
    return cf.centroid_interaction(ids, scores, floor, offsets, docs, N, q_mask, backend=backend, **kwargs)


def assert_same(got, want):
    for name, a, b in zip(("score", "positive", "hit"), got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True), (name, a, b)


SHAPES = [  # B, Lq, P, C, N
    (1, 1, 1, 1, 1),
    (3, 5, 4, 9, 50),
    (2, 32, 7, 40, 333),
    (4, 3, 40, 40, 17),  # every list probed
    (2, 6, 3, 5, 1),  # one doc
    (0, 4, 2, 3, 10),  # no query
    (2, 0, 2, 3, 10),  # no token
    (2, 4, 0, 3, 10),  # no probe
    (2, 4, 2, 3, 0),  # no doc: the lists are empty
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_the_oracle(backend, shape):
    case = random_case(*shape, seed=sum(shape))
    want = reference.centroid_interaction(*case)
    assert_same(run(backend, case), want)
    if backend == "torch":  # padded: the same answer, with room to spare and with none
        need = longest_expansion(case[0], case[3])
        assert_same(run(backend, case, max_entries=need), want)
        assert_same(run(backend, case, max_entries=need + 5), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_lists_at_all(backend):
    empty = torch.zeros(2, 3, 0, dtype=torch.int64)
    case = (empty, torch.zeros(2, 3, 0), torch.tensor([[0.5, -1.0, 2.0], [-3.0, 0.0, 1.0]]),
            torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 4, None)  # fmt: skip
    score, positive, hit = run(backend, case)
    assert torch.equal(score, torch.tensor([[1.5] * 4, [-2.0] * 4]))  # the floors alone
    assert torch.equal(positive, torch.tensor([[2.5] * 4, [1.0] * 4]))
    assert not hit.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hand_worked_case(backend):
    # Lists: 0 -> docs {0, 2}, 1 -> {2, 3}, 2 -> {} (empty). Query token 0 probes lists 0 (0.9) and
    # 1 (0.4), floor 0.1; token 1 probes list 1 (-0.2) and 2 (5.0, empty), floor -0.5; token 2 is masked.
    offsets = torch.tensor([0, 2, 4, 4])
    docs = torch.tensor([0, 2, 2, 3])
    ids = torch.tensor([[[0, 1], [1, 2], [0, 1]]])
    scores = torch.tensor([[[0.9, 0.4], [-0.2, 5.0], [100.0, 100.0]]])
    floor = torch.tensor([[0.1, -0.5, 7.0]])
    q_mask = torch.tensor([[True, True, False]])
    score, positive, hit = run(backend, (ids, scores, floor, offsets, docs, 5, q_mask))
    # doc 0: 0.9 + max(-inf, -0.5); doc 1: 0.1 - 0.5; doc 2: 0.9 - 0.2; doc 3: 0.4 - 0.2; doc 4: 0.1 - 0.5
    assert torch.allclose(score, torch.tensor([[0.4, -0.4, 0.7, 0.2, -0.4]]))
    assert torch.allclose(positive, torch.tensor([[0.9, 0.1, 0.9, 0.4, 0.1]]))
    assert hit.tolist() == [[True, False, True, True, False]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_floor_and_non_finite_scores(backend):
    ids, scores, floor, offsets, docs, N, q_mask = random_case(3, 6, 4, 8, 40, seed=7)
    floor[0, :] = float("-inf")  # every list probed: a doc no list holds sums to -inf
    scores[1, 0, 0] = float("nan")
    floor[1, 3] = float("nan")
    scores[2, 1, 1] = float("inf")
    scores[2, 2, 0] = float("-inf")
    case = (ids, scores, floor, offsets, docs, N, q_mask)
    want = reference.centroid_interaction(*case)
    assert torch.isneginf(want[0][0]).any() and torch.isnan(want[0][1]).any()  # the case covers them
    assert_same(run(backend, case), want)


def test_the_kernel_gives_one_answer_on_any_number_of_threads():
    # 40,000 docs: the kernel splits them over threads (8,192 at least each); long lists cross the cut.
    case = random_case(3, 8, 6, 20, 40_000, seed=3, max_len=20_000)
    want = reference.centroid_interaction(*case)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 5):
            torch.set_num_threads(n)
            assert_same(run("cpu", case), want)
    finally:
        torch.set_num_threads(threads)


def test_the_torch_pass_in_any_grouping(monkeypatch):
    case = random_case(5, 4, 3, 10, 60, seed=11)
    want = reference.centroid_interaction(*case)
    monkeypatch.setattr(torch_backend, "CENTROID_CELLS", 1)  # one query per group
    assert_same(run("torch", case), want)
    monkeypatch.setattr(torch_backend, "CENTROID_ENTRIES", 1)
    assert_same(run("torch", case, max_entries=longest_expansion(case[0], case[3])), want)


def test_auto_runs_the_kernel_on_the_cpu_and_the_torch_pass_without_it(monkeypatch):
    backend_or_skip("cpu", torch.device("cpu"))
    from colbert_fast import backends
    from colbert_fast.backends import cpu_backend

    cpu = torch.device("cpu")
    assert backends.select("auto", cpu, op="centroid_interaction").NAME == "cpu"
    # A build that predates the op: "auto" falls back to torch, a forced "cpu" says what is missing.
    monkeypatch.setattr(cpu_backend, "supports", lambda op, device: op != "centroid_interaction")
    assert backends.select("auto", cpu, op="centroid_interaction").NAME == "torch"
    assert backends.select("auto", cpu, op="maxsim").NAME == "cpu"
    with pytest.raises(RuntimeError, match="backend 'cpu' has no centroid_interaction"):
        cf.centroid_interaction(*random_case(1, 2, 2, 3, 5)[:6], backend="cpu")


def test_fake_tensors_give_the_shapes():
    case = random_case(2, 3, 2, 4, 9, seed=1)
    for backend in BACKENDS:
        backend_or_skip(backend, torch.device("cpu"))
        with FakeTensorMode() as mode:
            fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in case]
            ids, scores, floor, offsets, docs, N, q_mask = fake
            kwargs = {"max_entries": 40} if backend == "torch" else {}
            out = cf.centroid_interaction(ids, scores, floor, offsets, docs, N, q_mask, backend=backend, **kwargs)
            assert [tuple(t.shape) for t in out] == [(2, 9)] * 3
            assert [t.dtype for t in out] == [torch.float32, torch.float32, torch.bool]


# ---- bad input --------------------------------------------------------------------------------------


def test_bad_shapes_and_types_are_named():
    ids, scores, floor, offsets, docs, N, q_mask = random_case(2, 3, 2, 4, 9, seed=2)
    call = cf.centroid_interaction
    with pytest.raises(ValueError, match="probe_ids must be int64"):
        call(ids.int(), scores, floor, offsets, docs, N)
    with pytest.raises(ValueError, match="probe_ids must be int64"):
        call(ids[0], scores, floor, offsets, docs, N)
    with pytest.raises(ValueError, match="probe_scores must be float32"):
        call(ids, scores.double(), floor, offsets, docs, N)
    with pytest.raises(ValueError, match="probe_scores must be float32"):
        call(ids, scores[:, :, :1], floor, offsets, docs, N)
    with pytest.raises(ValueError, match="floor must be float32"):
        call(ids, scores, floor[:, :2], offsets, docs, N)
    with pytest.raises(ValueError, match="list_offsets must be int64"):
        call(ids, scores, floor, offsets.int(), docs, N)
    with pytest.raises(ValueError, match="list_offsets must be int64"):
        call(ids, scores, floor, offsets[:0], docs, N)
    with pytest.raises(ValueError, match="list_docs must be int64"):
        call(ids, scores, floor, offsets, docs.int(), N)
    with pytest.raises(ValueError, match="num_docs must be an int"):
        call(ids, scores, floor, offsets, docs, -1)
    with pytest.raises(ValueError, match="num_docs must be an int"):
        call(ids, scores, floor, offsets, docs, 9.0)
    with pytest.raises(ValueError, match="q_mask must be a bool"):
        call(ids, scores, floor, offsets, docs, N, q_mask.int())
    with pytest.raises(ValueError, match="max_entries must be None or an int"):
        call(ids, scores, floor, offsets, docs, N, max_entries=-1)
    with pytest.raises(TypeError, match="probe_scores must be a tensor"):
        call(ids, scores.tolist(), floor, offsets, docs, N)
    with pytest.raises(ValueError, match="list_docs is on meta"):
        call(ids, scores, floor, offsets, docs.to("meta"), N)
    with pytest.raises(ValueError, match="backend must be"):
        call(ids, scores, floor, offsets, docs, N, backend="nope")


def test_the_kernel_rejects_bad_lists_and_probes():
    backend_or_skip("cpu", torch.device("cpu"))
    offsets, docs = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 0, 2])
    ids, scores, floor = torch.tensor([[[0, 1]]]), torch.ones(1, 1, 2), torch.zeros(1, 1)

    def call(offsets=offsets, docs=docs, ids=ids, N=4):
        return cf.centroid_interaction(ids, scores, floor, offsets, docs, N, backend="cpu")

    assert call()[2].tolist() == [[True, True, True, True]]
    with pytest.raises(IndexError, match=r"list_docs\[1\] = 4 is out of range"):
        call(docs=torch.tensor([1, 4, 0, 2]))
    with pytest.raises(IndexError, match=r"list_docs\[0\] = -1"):
        call(docs=torch.tensor([-1, 3, 0, 2]))
    with pytest.raises(IndexError, match="not above the entry before it"):
        call(docs=torch.tensor([3, 1, 0, 2]))  # out of order
    with pytest.raises(IndexError, match="not above the entry before it"):
        call(docs=torch.tensor([1, 1, 0, 2]))  # repeated
    with pytest.raises(IndexError, match="probe id 2 out of range for 2 lists"):
        call(ids=torch.tensor([[[0, 2]]]))
    with pytest.raises(IndexError, match="probe id -1"):
        call(ids=torch.tensor([[[-1, 0]]]))
    with pytest.raises(RuntimeError, match="list_offsets must run from 0 to 4"):
        call(offsets=torch.tensor([0, 2, 3]))
    with pytest.raises(RuntimeError, match="list_offsets must not decrease"):
        call(offsets=torch.tensor([0, 3, 2, 4]), ids=torch.tensor([[[0, 2]]]))
    with pytest.raises(IndexError, match="list_docs\\[0\\] = 1 is out of range for 1 docs"):
        call(N=1)
