"""How launchers call a kernel: through torch.library.wrap_triton where torch has it.

Inside a torch.library.triton_op, wrap_triton makes the launch visible to torch.compile (it is
traced as a functional higher-order op); called eagerly it just launches. Older torch (< 2.6)
has no wrap_triton: the kernel is launched directly and the ops stay eager-only.
"""

from __future__ import annotations

try:
    from torch.library import wrap_triton as _wrap_triton
except ImportError:  # torch < 2.6
    _wrap_triton = None


def wrap(kernel):
    return kernel if _wrap_triton is None else _wrap_triton(kernel)
