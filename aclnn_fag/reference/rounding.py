"""Rounding points of the device (docs/semantics.md, "Backward"): fp32 -> bf16, ties away
from zero.

AscendC's ``RoundMode::CAST_ROUND`` rounds to nearest with ties away from zero
(ml_dtypes' cast rounds ties to even). On the bit pattern: add half an ulp of
bf16 (0x8000) to the magnitude and truncate the low 16 bits. Values stay float32
(exactly representable in bf16), so the following matmuls run in float32 as the
device's cube does on bf16 operands with fp32 accumulation.

NaN: bf16-derived NaNs (low 16 bits 0, as every NaN computed from bf16 inputs
on x86) stay NaN; +-inf stays inf; values that round past bf16's max become inf.
"""

from __future__ import annotations

import numpy as np
from ..constants import BF16

__all__ = ["round_bf16_away_inplace", "BF16", "load_into", "store_into"]

_HALF = np.uint32(0x8000)
_KEEP = np.uint32(0xFFFF0000)


def round_bf16_away_inplace(x: np.ndarray) -> np.ndarray:
    """Round a C-contiguous float32 array in place to bf16 values, ties away from zero."""
    if x.dtype != np.float32:
        raise TypeError("round_bf16_away_inplace needs float32")
    bits = x.view(np.uint32)
    np.add(bits, _HALF, out=bits)
    np.bitwise_and(bits, _KEEP, out=bits)
    return x


def load_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` converted to dst's dtype. bf16 -> float32 widens the bit pattern (a
    bf16 value is the upper half of the float32 with the same value): exact, and about twice
    as fast as the generic cast; other pairs are cast."""
    if src.dtype == BF16 and src.dtype.isnative and dst.dtype == np.float32:
        np.left_shift(src.view(np.uint16), 16, out=dst.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(dst, src, casting="unsafe")


def store_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for a bf16 ``dst`` and float32 ``src`` holding bf16 values already
    (rounded by ``round_bf16_away_inplace``: the low 16 bits are zero), by taking the upper
    half of each bit pattern -- exact for such values, several times faster than the generic
    cast; other pairs are cast."""
    if dst.dtype == BF16 and src.dtype == np.float32:
        np.right_shift(src.view(np.uint32), 16, out=dst.view(np.uint16), casting="unsafe")
    else:
        np.copyto(dst, src, casting="unsafe")
