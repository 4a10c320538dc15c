"""Other libraries' MaxSim, as extra benchmark rows when they are importable.

Each adapter turns a Case into a zero-argument callable returning fp32 scores shaped like ours
([B, K] packed, [B, N] pairs), or raises Unsupported (the row is skipped with that note). Input
preparation a user of that library would do once (converting to its array type, building its
document list) happens outside the timed call; conversions it needs per call happen inside.
The runner checks every peer's scores against the oracle before timing it: a peer that disagrees
is flagged and not timed.

Nothing here is a dependency: a peer that is not installed is skipped with a note.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from . import baselines
from .workloads import Case


class Unsupported(Exception):
    """This peer has no entry point for this workload, device or dtype."""


def _gather_rows(case: Case, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query b's candidates as one contiguous packed block [T, dim] and their lengths (the layout
    ColBERT's decompression produces before colbert_score_packed)."""
    d = case.docs
    pids = case.pids[b]
    lens = d.lengths[pids]
    starts = d.offsets[pids]
    cu = torch.zeros(lens.numel() + 1, dtype=torch.int64, device=lens.device)
    torch.cumsum(lens, 0, out=cu[1:])
    total = int(cu[-1])
    owner = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens, output_size=total)
    rows = starts[owner] + torch.arange(total, device=lens.device) - cu[:-1][owner]
    return d.embeddings[rows], lens


def _padded(case: Case):
    """(D [B, K, Lmax, dim] or [N, Ld, dim], valid mask) as a padded-batch library expects."""
    if case.mode == "packed":
        d = case.docs
        return baselines.pad(d.embeddings, d.offsets, d.lengths, case.pids, case.pad_len)
    if case.d_lengths is None:
        return case.D, torch.ones(case.D.shape[:2], dtype=torch.bool, device=case.D.device)
    return case.D, torch.arange(case.D.shape[1], device=case.D.device) < case.d_lengths.unsqueeze(-1)


# ---- colbert-ai --------------------------------------------------------------------------------


def colbert_score(case: Case) -> Callable:
    from colbert.infra.config import ColBERTConfig
    from colbert.modeling.colbert import colbert_score as score

    if case.mode == "train":
        raise Unsupported("inference only")
    config = ColBERTConfig()

    def run():
        D, valid = _padded(case)
        if case.mode == "packed":  # one call per query over its padded candidates
            return torch.stack(
                [score(case.Q[b : b + 1], D[b], valid[b], config=config).float() for b in range(case.Q.shape[0])]
            )
        return torch.stack([score(case.Q[b : b + 1], D, valid, config=config).float() for b in range(case.Q.shape[0])])

    return run


def colbert_score_packed(case: Case) -> Callable:
    from colbert.infra.config import ColBERTConfig
    from colbert.modeling.colbert import ColBERT
    from colbert.modeling.colbert import colbert_score_packed as score

    if case.mode != "packed":
        raise Unsupported("packed rerank workloads only")
    config = ColBERTConfig()
    # The CPU path calls ColBERT.segmented_maxsim, which colbert-ai JIT-compiles when a model is
    # built; load it here (once, outside the timed region) as its own searcher would.
    if not hasattr(ColBERT, "segmented_maxsim"):
        ColBERT.try_load_torch_extensions(use_gpu=case.Q.is_cuda)

    def run():
        out = []
        for b in range(case.Q.shape[0]):
            rows, lens = _gather_rows(case, b)
            out.append(score(case.Q[b : b + 1], rows, lens, config=config).float())
        return torch.stack(out)

    return run


# ---- PyLate ------------------------------------------------------------------------------------


def pylate_colbert_scores(case: Case) -> Callable:
    from pylate.scores import colbert_scores

    if case.mode == "train":
        raise Unsupported("measured for inference only here")

    def run():
        D, valid = _padded(case)
        if case.mode == "packed":
            return torch.stack(
                [
                    colbert_scores(case.Q[b : b + 1], D[b], documents_mask=valid[b])[0].float()
                    for b in range(case.Q.shape[0])
                ]
            )
        return colbert_scores(case.Q, D, documents_mask=valid).float()

    return run


# ---- maxsim-cpu --------------------------------------------------------------------------------


def maxsim_cpu(case: Case) -> Callable:
    import maxsim_cpu as mc

    if case.device.type != "cpu":
        raise Unsupported("CPU only")
    if case.dtype != torch.float32:
        raise Unsupported("fp32 only")
    if case.mode == "train":
        raise Unsupported("inference only")
    if case.mode == "packed":
        docs = [[case.docs.doc(int(p)).numpy() for p in row] for row in case.pids.tolist()]
    else:
        lens = case.lengths_cpu.tolist()
        docs = [[case.D[i, : lens[i]].numpy() for i in range(len(lens))]] * case.Q.shape[0]
    queries = [q.numpy() for q in case.Q]

    def run():
        return torch.stack([torch.as_tensor(mc.maxsim_scores_variable(q, ds)).float() for q, ds in zip(queries, docs)])

    return run


# ---- flash-maxsim ------------------------------------------------------------------------------


def flash_maxsim(case: Case) -> Callable:
    import flash_maxsim as fm

    if case.device.type != "cuda":
        raise Unsupported("GPU only")
    if case.mode == "train":
        raise Unsupported("not wired up for training here")
    if case.mode == "packed":

        def run():
            out = []
            for b in range(case.Q.shape[0]):
                rows, lens = _gather_rows(case, b)
                cu = torch.zeros(lens.numel() + 1, dtype=torch.int32, device=lens.device)
                torch.cumsum(lens, 0, out=cu[1:])
                out.append(fm.flash_maxsim_packed(case.Q[b], rows, cu, case.pad_len).float())
            return torch.stack(out)

        return run

    def run_pairs():
        lengths = case.d_lengths.to(torch.int32) if case.d_lengths is not None else None
        return torch.stack([fm.flash_maxsim(case.Q[b], case.D, lengths).float() for b in range(case.Q.shape[0])])

    return run_pairs


# ---- late-interaction-kernels ------------------------------------------------------------------


def late_interaction_kernels(case: Case) -> Callable:
    lik = importlib.import_module("late_interaction_kernels")

    if case.device.type != "cuda":
        raise Unsupported("GPU only (Triton)")

    def run():
        D, valid = _padded(case)
        return lik.maxsim(case.Q, D, None, valid).float()

    return run


# ---- the same libraries with colbert_fast.compat's one-line patch in effect ---------------------


def _patched(adapter: Callable[[Case], Callable]) -> Callable[[Case], Callable]:
    """The library's own entry point as a user runs it after compat.patch_colbert() /
    patch_pylate(): the adapter binds the library's functions while the patch is in effect, so its
    timed calls run the drop-ins (the library's scores, quirks included); the patch is undone
    before timing, leaving the unpatched rows untouched. Side by side with the unpatched row,
    this is the speedup the patch gives."""

    def make(case: Case) -> Callable:
        from .. import compat

        with compat.patched(sentence_transformers=False):  # colbert-ai and PyLate rows only
            return adapter(case)

    return make


PEERS: dict[str, tuple[str, Callable[[Case], Callable]]] = {
    # name: (module to import, adapter)
    "colbert_score": ("colbert", colbert_score),
    "colbert_score+patched": ("colbert", _patched(colbert_score)),
    "colbert_score_packed": ("colbert", colbert_score_packed),
    "colbert_score_packed+patched": ("colbert", _patched(colbert_score_packed)),
    "pylate": ("pylate", pylate_colbert_scores),
    "pylate+patched": ("pylate", _patched(pylate_colbert_scores)),
    "maxsim-cpu": ("maxsim_cpu", maxsim_cpu),
    "flash-maxsim": ("flash_maxsim", flash_maxsim),
    "late-interaction-kernels": ("late_interaction_kernels", late_interaction_kernels),
}


def installed(name: str) -> str | None:
    """None when the peer's module imports, else the reason it does not."""
    module, _ = PEERS[name]
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 (a broken install raises more than ImportError)
        return f"not installed ({type(e).__name__}: {e})"[:200]
    return None


def adapter(name: str, case: Case) -> Callable:
    """The peer's callable for this case; raises Unsupported, or whatever the peer raises."""
    return PEERS[name][1](case)
