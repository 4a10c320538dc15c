"""Decoding a compressed store's rows inside a Triton kernel (colbert_fast.compressed).

The kernels that read a CompressedDocs (packed MaxSim in maxsim.py, the gather in gather.py) call
decoded_rows on a tile of token rows: the values exist only in registers.
"""

import triton
import triton.language as tl


@triton.jit
def decoded_rows(CODES, SCALES, CIDS, CENT, WEIGHTS, code_bytes, dim, r_row, row_ok, offs_d, d_ok,
                  CODEC: tl.constexpr, NBITS: tl.constexpr):  # fmt: skip
    """A compressed store's rows r_row, decoded in registers: fp32 [BLOCK_N, DIM_PAD].

    residual (CODEC 1): (centroids[id] + bucket_weights[field]) * scale, field k = the NBITS-wide
    bits at bit k * NBITS of the row's code bytes; int8 (CODEC 2): code * scale. The definition is
    colbert_fast/reference.py's (decode_residual, decode_int8), in the same order of operations.
    """
    ok = row_ok[:, None] & d_ok[None, :]
    scale = tl.load(SCALES + r_row, mask=row_ok, other=0.0).to(tl.float32)
    if CODEC == 2:
        raw = tl.load(CODES + r_row[:, None] * code_bytes + offs_d[None, :], mask=ok, other=0)
        vals = raw.to(tl.int8, bitcast=True).to(tl.float32)  # the bytes are signed int8 codes
    else:
        cid = tl.load(CIDS + r_row, mask=row_ok, other=0).to(tl.int64)
        cent = tl.load(CENT + cid[:, None] * dim + offs_d[None, :], mask=ok, other=0.0)
        bit = offs_d * NBITS
        byte = tl.load(CODES + r_row[:, None] * code_bytes + (bit // 8)[None, :], mask=ok, other=0).to(tl.int32)
        field = (byte >> (bit % 8)[None, :]) & ((1 << NBITS) - 1)
        vals = cent + tl.load(WEIGHTS + field, mask=ok, other=0.0)
    return vals * scale[:, None]
