"""Triton kernels of colbert_fast.

They live inside the package, never at the repository root: "kernels" is Hugging Face's
distribution, which transformers imports whenever it loads a model, and Python puts the working
directory first on sys.path, so a top-level kernels/ of ours would shadow it (see
tests/core/test_install_names.py).

    maxsim.py         fused MaxSim forward: padded all-pairs and per-query, packed (pid -> rows)
    maxsim_bwd.py     backward from the saved argmax: dQ, dD (atomic or deterministic)
    gather.py         packed store -> padded batch + mask
    settings.py       block sizes, autotune configs, the variants the launchers can produce
    compile_check.py  AOT compile of every variant for sm_80 / sm_90 (`python -m colbert_fast.kernels.compile_check`)
    launch.py         launches through torch.library.wrap_triton

The launchers take normalized tensors (colbert_fast/validation.py); the torch ops and autograd
wiring live in colbert_fast/backends/triton_backend.py.
"""
