"""Drop-in scoring for colbert-ai and PyLate users, on colbert_fast's kernels.

    from colbert_fast import compat
    compat.patch_colbert()      # colbert-ai's colbert_score / colbert_score_packed now run here
    compat.patch_pylate()       # PyLate's colbert_scores / _pairwise / colbert_kd_scores too
    with compat.patched(): ...  # or only inside a block

The functions below have the libraries' exact signatures (plus keyword-only `strict` and, for
colbert-ai's, `backend`) and reproduce their numbers, quirks included, within the SPEC.md
tolerance rule; strict=True applies SPEC.md's semantics instead. See docs/compat.md.
They use only the public ops (colbert_fast.maxsim, maxsim_packed, gather), so they run on the
fastest backend available.
"""

from ._colbert_ai import colbert_score, colbert_score_packed
from ._patch import is_patched, patch_colbert, patch_pylate, patched, unpatch_colbert, unpatch_pylate
from ._pylate import colbert_kd_scores, colbert_scores, colbert_scores_pairwise

__all__ = [
    "colbert_kd_scores",
    "colbert_score",
    "colbert_score_packed",
    "colbert_scores",
    "colbert_scores_pairwise",
    "is_patched",
    "patch_colbert",
    "patch_pylate",
    "patched",
    "unpatch_colbert",
    "unpatch_pylate",
]
