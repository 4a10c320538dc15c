"""Triton kernels of colbert_fast, installed as colbert_fast.kernels.

(Never a top-level package: "kernels" is a real PyPI package that transformers may import. In a
source checkout, colbert_fast/kernels/__init__.py is a shim that loads this package under that
name; an installed copy maps it here through setup.py's package_dir.)

    maxsim.py         fused MaxSim forward: padded all-pairs and per-query, packed (pid -> rows)
    maxsim_bwd.py     backward from the saved argmax: dQ, dD (atomic or deterministic)
    gather.py         packed store -> padded batch + mask
    settings.py       block sizes, autotune configs, the variants the launchers can produce
    compile_check.py  AOT compile of every variant for sm_80 / sm_90 (`python -m colbert_fast.kernels.compile_check`)
    _launch.py        launches through torch.library.wrap_triton

The launchers take normalized tensors (colbert_fast/_checks.py); the torch ops and autograd
wiring live in colbert_fast/backends/triton_backend.py.
"""
