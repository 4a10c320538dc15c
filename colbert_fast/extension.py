"""Lazy loading of the compiled extension colbert_fast._C.

The package imports and runs without it (the torch backend). When a backend needs it and it is
missing or was built for another torch/CUDA, the error says exactly that and how to rebuild.
The ops' shape-only (fake) kernels, which torch.compile needs, are registered by the backends
that call the ops (backends/compiled_ops.py): this module knows nothing of backends.
"""

from __future__ import annotations

import functools

import torch

REBUILD_HINT = "rebuild it with `pip install --no-build-isolation -e .` (or `make build`) in the source tree"


@functools.lru_cache(maxsize=None)
def _load():
    try:
        from . import _C  # noqa: F401  (importing registers the torch.ops.colbert_fast ops)
    except ImportError as e:
        msg = str(e)
        if "undefined symbol" in msg or "version" in msg.lower():
            return None, (
                f"colbert_fast._C was built for a different torch/CUDA than the installed torch "
                f"{torch.__version__} ({msg}); {REBUILD_HINT}"
            )
        return None, f"colbert_fast._C is not built ({msg}); {REBUILD_HINT}"
    built_for = _C.torch_version()
    if built_for.split("+")[0] != torch.__version__.split("+")[0]:
        return None, (
            f"colbert_fast._C was built for torch {built_for} but torch {torch.__version__} is installed; "
            f"{REBUILD_HINT}"
        )
    return _C, None


def extension():
    """The loaded _C module, or None."""
    return _load()[0]


def missing_reason() -> str | None:
    """None when the extension is loaded, else why it is not."""
    return _load()[1]


def has_op(name: str) -> bool:
    """Whether torch.ops.colbert_fast.<name> is registered by the loaded extension."""
    if extension() is None:
        return False
    return hasattr(torch.ops.colbert_fast, name)


def has_kernel(name: str, dispatch_key: str) -> bool:
    """Whether torch.ops.colbert_fast.<name> has a kernel for dispatch_key ("CPU", "CUDA")."""
    if not has_op(name):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"colbert_fast::{name}", dispatch_key)


def build_info() -> dict:
    ext = extension()
    if ext is None:
        return {"built": False, "reason": missing_reason()}
    return {
        "built": True,
        "torch_version": ext.torch_version(),
        "with_cuda": ext.with_cuda(),
        "cuda_version": ext.cuda_version(),
        "cpu_isa": ext.cpu_isa() if hasattr(ext, "cpu_isa") else None,
        "with_openmp": ext.with_openmp() if hasattr(ext, "with_openmp") else None,
    }
