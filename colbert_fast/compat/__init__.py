"""Drop-in scoring for colbert-ai and PyLate users, on colbert_fast's kernels.

    from colbert_fast import compat
    compat.patch_colbert()      # colbert-ai's colbert_score / colbert_score_packed now run here
    compat.patch_pylate()       # PyLate's colbert_scores / _pairwise / colbert_kd_scores too
    compat.patch_sentence_transformers()  # sentence-transformers 6's maxsim family too
    with compat.patched(): ...  # or only inside a block

The functions below have the libraries' exact signatures (plus keyword-only `strict` and, for
colbert-ai's, `backend`) and reproduce their numbers, quirks included, within the tolerance
rule of docs/spec.md; strict=True applies docs/spec.md's semantics instead. See docs/compat.md.
They use only the public ops (colbert_fast.maxsim, maxsim_packed, gather), so they run on the
fastest backend available.

Every library quirk is one rule with a per-doc floor, which the kernels apply themselves (the
`floor` argument of the public ops), so a quirk costs nothing:

    score(q, d) = sum over counting query tokens i of max(floor_d, max over valid doc tokens j of <q_i, d_j>)

    docs/spec.md                       floor_d = -inf (a doc with no valid token scores 0)
    ColBERT's -9999 padding sentinel   floor_d = -9999 (in D's dtype) when d has a masked token
    colbert_score_packed on CPU        floor_d = 0 for every doc (its maxima start at 0)
    PyLate (sims * mask)               floor_d = 0 when d has a masked token (a masked token's
                                       similarity is 0, and 0 takes part in the max)
    sentence-transformers 6            floor_d = -inf (masked tokens excluded); a doc with no valid
                                       token is then set to -1e9 (a constant, not a floor)
"""

from .colbert_ai import colbert_score, colbert_score_packed
from .patching import (
    is_patched,
    patch_colbert,
    patch_pylate,
    patch_sentence_transformers,
    patched,
    unpatch_colbert,
    unpatch_pylate,
    unpatch_sentence_transformers,
)
from .pylate import colbert_kd_scores, colbert_scores, colbert_scores_pairwise
from .sentence_transformers import UnsupportedCallError
from .sentence_transformers import maxsim as st_maxsim
from .sentence_transformers import maxsim_pairwise as st_maxsim_pairwise
from .sentence_transformers import mean_maxsim as st_mean_maxsim
from .sentence_transformers import mean_maxsim_pairwise as st_mean_maxsim_pairwise

__all__ = [
    "UnsupportedCallError",
    "colbert_kd_scores",
    "colbert_score",
    "colbert_score_packed",
    "colbert_scores",
    "colbert_scores_pairwise",
    "is_patched",
    "patch_colbert",
    "patch_pylate",
    "patch_sentence_transformers",
    "patched",
    "st_maxsim",
    "st_maxsim_pairwise",
    "st_mean_maxsim",
    "st_mean_maxsim_pairwise",
    "unpatch_colbert",
    "unpatch_pylate",
    "unpatch_sentence_transformers",
]
