"""Mask helpers: the compressed causal mask and hand-made kept matrices."""

from __future__ import annotations

import numpy as np

__all__ = ["COMPRESSED_SIZE", "compressed_causal_mask", "is_canonical_compressed"]

COMPRESSED_SIZE = 2048


def compressed_causal_mask(dtype=np.uint8) -> np.ndarray:
    """The 2048x2048 mask sparse modes 2/3/4/7/8 require: 1 (masked) strictly above the diagonal."""
    return np.triu(np.ones((COMPRESSED_SIZE, COMPRESSED_SIZE), dtype=dtype), 1)


_CANONICAL_U8 = None


def _canonical_u8() -> np.ndarray:
    """The canonical mask as read-only uint8 0/1 (built once, 4 MiB)."""
    global _CANONICAL_U8
    if _CANONICAL_U8 is None:
        m = compressed_causal_mask(np.uint8)
        m.flags.writeable = False
        _CANONICAL_U8 = m
    return _CANONICAL_U8


def is_canonical_compressed(mask: np.ndarray) -> bool:
    """True when the first 2048x2048 slice has the canonical content (nonzero iff y > x).

    Compared in row chunks, so the temporaries stay small (< 1 MiB). A bool/uint8 chunk
    holding exactly 0/1 is compared byte for byte with the canonical mask (the common case);
    any other chunk by its nonzero pattern."""
    m = mask.reshape(-1, COMPRESSED_SIZE, COMPRESSED_SIZE)[0] if mask.ndim == 4 else mask
    canon = _canonical_u8()
    raw = m.dtype in (np.dtype(np.uint8), np.dtype(np.bool_))
    chunk = 256
    for r0 in range(0, COMPRESSED_SIZE, chunk):
        part, want = m[r0:r0 + chunk], canon[r0:r0 + chunk]
        if raw and np.array_equal(part.view(np.uint8), want):
            continue
        if not np.array_equal(part != 0, want != 0):
            return False
    return True
