"""Triton kernels of colbert_fast, installed as colbert_fast.kernels.

(Never a top-level package: "kernels" is a real PyPI package that transformers may import.)
"""
