"""How launchers call a kernel: through torch.library.wrap_triton where torch has it, inside a
device guard (device_guard) for the tensors' GPU.

Inside a torch.library.triton_op, wrap_triton makes the launch visible to torch.compile (it is
traced as a functional higher-order op); called eagerly it just launches. Older torch (< 2.6)
has no wrap_triton: the kernel is launched directly and the ops stay eager-only.

Under the Triton interpreter, wrap_triton hands back the interpreted kernel unchanged, and the
interpreter would try to read the data of the FakeTensors torch.compile traces the op bodies
with. There the launch is skipped for fake inputs: tracing only needs the output shapes, which
the launchers allocate before launching. (On a GPU the higher-order op handles fake tensors.)
"""

from __future__ import annotations

import contextlib

import torch

from . import settings

try:
    from torch.library import wrap_triton as _wrap_triton
except ImportError:  # torch < 2.6
    _wrap_triton = None


def _is_traced(x) -> bool:
    # FakeTensor, FunctionalTensor and the other tracing wrappers are tensor subclasses; the
    # tensors of a real call are plain (a Parameter's data is plain too).
    return isinstance(x, torch.Tensor) and type(x) not in (torch.Tensor, torch.nn.Parameter)


class _InterpretedLaunch:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            if any(_is_traced(a) for a in args):
                return None
            return launch(*args, **kwargs)

        return run


def device_guard(device: torch.device):
    """Launch on the tensors' GPU, not the current one: Triton launches on the current device
    (and its current stream), so tensors on cuda:1 with cuda:0 current would be read through the
    wrong device. A no-op for CPU tensors (the interpreter) and when the device is current."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def wrap(kernel):
    if settings.interpreting():
        return _InterpretedLaunch(kernel)
    return kernel if _wrap_triton is None else _wrap_triton(kernel)
