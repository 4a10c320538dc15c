"""Swap colbert_fast's drop-ins into an installed colbert-ai / PyLate / sentence-transformers 6 at run time, and back.

Libraries import these functions by name (`from colbert.modeling.colbert import colbert_score`
in colbert.search.index_storage; `from ..scores import colbert_scores` in pylate.rank), so
replacing the defining module's attribute is not enough: every loaded module of the library that
holds the original function object gets the wrapper, and so do default arguments that captured
it (pylate.losses.Distillation's score_metric=colbert_kd_scores). sentence-transformers imports
maxsim / maxsim_pairwise by name in sentence_transformers.util, .multi_vector_encoder and its
scoring.colbert module; SimilarityFunction.to_similarity_fn reads them at call time. Modules imported after the
patch pick the wrapper up from the defining module. Undo restores every place that holds a
wrapper, so it also covers modules imported while patched. Not thread-safe: patch at start-up.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import sys
import types

import torch

import colbert_fast

from . import colbert_ai, pylate
from . import sentence_transformers as st_compat

_TARGETS = {
    "colbert": ("colbert.modeling.colbert", ("colbert_score", "colbert_score_packed")),
    "pylate": ("pylate.scores.colbert", ("colbert_scores", "colbert_scores_pairwise", "colbert_kd_scores")),
    "sentence_transformers": (
        "sentence_transformers.util.similarity",
        ("maxsim", "maxsim_pairwise", "mean_maxsim", "mean_maxsim_pairwise"),
    ),
}
_PIP = {"colbert": "colbert-ai", "pylate": "pylate", "sentence_transformers": "'sentence-transformers>=6'"}
_MARK = "__colbert_fast_original__"


def _import(lib: str) -> types.ModuleType:
    module_name = _TARGETS[lib][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"patch_{lib}() needs {module_name}, which failed to import ({e}); pip install {_PIP[lib]}"
        ) from e
    missing = [n for n in _TARGETS[lib][1] if not hasattr(module, n)]
    if missing:  # e.g. sentence-transformers 5, which has no multi-vector scoring
        raise ImportError(f"patch_{lib}(): {module_name} has no {', '.join(missing)}; pip install {_PIP[lib]}")
    return module


def _has_kernels(device: torch.device) -> bool:
    """Whether backend "auto" picks a colbert_fast kernel backend (not the plain-PyTorch one) on
    `device`. Without one, the patched functions call the library's own code: a patch never slows
    it down. (On CUDA tensors "auto" takes the GPU kernels only once they are verified on a GPU.)"""
    return colbert_fast.selected_backend(device) != "torch"


def _device_of(x) -> torch.device:
    if isinstance(x, torch.Tensor):
        return x.device
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], torch.Tensor):
        return x[0].device
    return torch.device("cpu")  # numpy arrays and nested lists become CPU tensors


def _colbert_wrapper(name: str, original, require_kernels: bool):
    ours = getattr(colbert_ai, name)
    signature = inspect.signature(original)  # keeps colbert-ai's names and its default config

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        config = bound.args[3]
        use_gpu, _ = colbert_ai.read_config(config)
        if require_kernels and not _has_kernels(torch.device("cuda") if use_gpu else _device_of(bound.args[1])):
            return original(*args, **kwargs)
        return ours(*bound.args)

    return wrapper


def _pylate_wrapper(name: str, original, require_kernels: bool):
    ours = getattr(pylate, name)
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        backend = bound.arguments.pop("backend", None)
        resolved = (backend or os.environ.get("PYLATE_SCORES_BACKEND", "auto")).lower()
        if resolved != "auto":  # the caller chose one of PyLate's own backends: honour it
            return original(*args, **kwargs)
        if require_kernels and not _has_kernels(_device_of(bound.arguments["documents_embeddings"])):
            return original(*args, **kwargs)
        try:
            return ours(*bound.args, **bound.kwargs)
        except pylate.NonBinaryMaskError:  # weights, not a mask: only PyLate's own code means that
            return original(*args, **kwargs)

    return wrapper


def _st_wrapper(name: str, original, require_kernels: bool):
    ours = getattr(st_compat, name)
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():  # ours syncs on the masks: leave traced code to ST6's own
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if require_kernels:
            device = bound.arguments["device"]
            device = torch.device(device) if device is not None else None
            a, b = bound.arguments["a"], bound.arguments["b"]
            device = device or st_compat._device_of(b) or st_compat._device_of(a) or torch.device("cpu")
            if not _has_kernels(device):
                return original(*args, **kwargs)
        try:
            return ours(*bound.args)
        except st_compat.UnsupportedCallError:  # query-mask weights and the like: only ST6 means that
            return original(*args, **kwargs)

    return wrapper


_WRAPPERS = {"colbert": _colbert_wrapper, "pylate": _pylate_wrapper, "sentence_transformers": _st_wrapper}


def _library_modules(lib: str):
    return [m for n, m in list(sys.modules.items()) if m is not None and (n == lib or n.startswith(lib + "."))]


def _swap(lib: str, old, new) -> None:
    """Replace `old` by `new` in module globals and function/class-init defaults across the library."""
    for module in _library_modules(lib):
        for attr, value in list(vars(module).items()):
            if value is old:
                setattr(module, attr, new)
            funcs = [value]
            owner = getattr(value, "__module__", None) or ""
            if isinstance(value, type) and (owner == lib or owner.startswith(lib + ".")):
                funcs = [v for v in vars(value).values() if isinstance(v, types.FunctionType)]
            for f in funcs:
                if isinstance(f, types.FunctionType) and f.__defaults__ and any(d is old for d in f.__defaults__):
                    f.__defaults__ = tuple(new if d is old else d for d in f.__defaults__)
                if (
                    isinstance(f, types.FunctionType)
                    and f.__kwdefaults__
                    and any(d is old for d in f.__kwdefaults__.values())
                ):
                    f.__kwdefaults__ = {k: (new if d is old else d) for k, d in f.__kwdefaults__.items()}


def _patch(lib: str, require_kernels: bool = True) -> None:
    module = _import(lib)
    make = _WRAPPERS[lib]
    for name in _TARGETS[lib][1]:
        current = getattr(module, name)
        if hasattr(current, _MARK):
            continue  # already patched
        wrapper = make(name, current, require_kernels)
        setattr(wrapper, _MARK, current)
        _swap(lib, current, wrapper)


def _unpatch(lib: str) -> None:
    module = sys.modules.get(_TARGETS[lib][0])
    if module is None:
        return
    for name in _TARGETS[lib][1]:
        current = getattr(module, name, None)
        original = getattr(current, _MARK, None)
        if original is not None:
            _swap(lib, current, original)


def is_patched(lib: str) -> bool:
    """Whether patch_colbert() ("colbert") / patch_pylate() ("pylate") /
    patch_sentence_transformers() ("sentence_transformers") is in effect."""
    module = sys.modules.get(_TARGETS[lib][0])
    # getattr with a default: sentence-transformers 5 has a similarity module but no maxsim
    return module is not None and all(hasattr(getattr(module, n, None), _MARK) for n in _TARGETS[lib][1])


def patch_colbert(*, require_kernels: bool = True) -> None:
    """Route colbert-ai's colbert_score and colbert_score_packed through colbert_fast.

    Same scores and rankings (quirks kept, see colbert_fast.compat.colbert_score). With
    require_kernels (default), a call whose device has no colbert_fast kernel backend (only the
    plain-PyTorch one, which is no faster than colbert-ai) runs colbert-ai's own code. Idempotent
    (a second call changes nothing). Raises ImportError if colbert-ai is not installed.
    """
    _patch("colbert", require_kernels)


def unpatch_colbert() -> None:
    """Undo patch_colbert(); a no-op when it is not in effect."""
    _unpatch("colbert")


def patch_pylate(*, require_kernels: bool = True) -> None:
    """Route PyLate's colbert_scores, colbert_scores_pairwise and colbert_kd_scores through colbert_fast.

    Calls with backend=None/"auto" (and PYLATE_SCORES_BACKEND unset or "auto") use colbert_fast;
    an explicit PyLate backend ("torch", "flash", "lik") still runs PyLate's. require_kernels: as
    for patch_colbert. Idempotent. Raises ImportError if PyLate is not installed.
    """
    _patch("pylate", require_kernels)


def unpatch_pylate() -> None:
    """Undo patch_pylate(); a no-op when it is not in effect."""
    _unpatch("pylate")


def patch_sentence_transformers(*, require_kernels: bool = True) -> None:
    """Route sentence-transformers 6's maxsim, maxsim_pairwise, mean_maxsim and mean_maxsim_pairwise
    (sentence_transformers.util.similarity, and wherever they were imported by name) through colbert_fast.

    Calls the drop-ins cannot reproduce exactly (query-mask weights other than 0/1, float64, mixed
    dtypes, sparse input; see colbert_fast.compat.sentence_transformers) and calls under
    torch.compile run ST6's own code. require_kernels: as for patch_colbert. Idempotent. Raises
    ImportError if sentence-transformers >= 6 is not installed. A MultiVectorEncoder keeps the
    function its similarity_fn_name resolved to: set the name (or create the model) after patching.
    A model created with use_kernels=True scores with ST6's _MaxSimScorer (hub kernels), not patched.
    """
    _patch("sentence_transformers", require_kernels)


def unpatch_sentence_transformers() -> None:
    """Undo patch_sentence_transformers(); a no-op when it is not in effect."""
    _unpatch("sentence_transformers")


@contextlib.contextmanager
def patched(
    colbert: bool | None = None,
    pylate: bool | None = None,
    sentence_transformers: bool | None = None,
    *,
    require_kernels: bool = True,
):
    """Patch inside a `with` block and restore on exit (what was patched before stays patched).

    None (default) patches the library if it is installed; True requires it (ImportError if
    missing); False leaves it alone. require_kernels: as for patch_colbert.
    """
    done = []
    try:
        for lib, want in (
            ("colbert", colbert),
            ("pylate", pylate),
            ("sentence_transformers", sentence_transformers),
        ):
            if want is False or is_patched(lib):
                continue
            try:
                _patch(lib, require_kernels)
            except ImportError:
                if want:
                    raise
                continue
            done.append(lib)
        yield
    finally:
        for lib in reversed(done):
            _unpatch(lib)
