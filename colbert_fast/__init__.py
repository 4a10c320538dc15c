"""colbert_fast: fused late-interaction (ColBERT MaxSim) scoring.

import colbert_fast as cf
scores = cf.maxsim(Q, D, q_mask, d_mask)                 # [B, N] or [B, K]
docs = cf.PackedDocs.from_list([d0, d1, ...])
scores = cf.maxsim_packed(Q, docs, pids)                  # [B, K], pid -1 -> -inf
D, d_mask = cf.gather(docs, pids)
small = cf.CompressedDocs.from_packed(docs, codec="residual", nbits=2)   # 38 B/token at dim 128
scores = cf.maxsim_packed(Q, small, pids)                 # scored from the codes
score, positive, hit = cf.centroid_interaction(ids, scores, floor, offsets, docs, N)  # PLAID's pass
cf.selected_backend("cpu")                                # which backend "auto" runs there

The layers of the package and who may import whom: docs/architecture.md.
"""

from .backends import available as available_backends
from .backends import selected as selected_backend
from .compressed import CompressedDocs
from .ops import centroid_interaction, gather, maxsim, maxsim_packed
from .packed import PackedDocs

__version__ = "0.1.0"
__all__ = [
    "maxsim",
    "maxsim_packed",
    "gather",
    "centroid_interaction",
    "PackedDocs",
    "CompressedDocs",
    "available_backends",
    "selected_backend",
    "__version__",
]
