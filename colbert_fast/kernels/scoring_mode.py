"""The three scoring modes of a MaxSim call: where each doc's rows live.

The same names and values as `ScoringMode` in csrc/maxsim_args.h, which the CPU kernels read and
the CUDA kernels' params carry (csrc/cuda/maxsim_params.h), so a mode means one number everywhere.
They are Triton constexprs so the kernels can name them: import the name itself
(`from .scoring_mode import packed`; `mode == packed` in a kernel), never the module, because
Inductor copies a kernel's constexpr globals into the code it generates but not the modules it
reads attributes of. `.value` is the plain int a launcher passes.

    all_pairs   D [N, Ld, dim]: every query against every doc -> scores [B, N]
    per_query   D [B, K, Ld, dim]: query b against its own K docs -> scores [B, K]
    packed      a packed store's rows, candidates pids [B, K] -> scores [B, K]
"""

import triton.language as tl

all_pairs = tl.constexpr(0)
per_query = tl.constexpr(1)
packed = tl.constexpr(2)
