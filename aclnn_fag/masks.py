"""Mask helpers: the compressed causal mask and hand-made kept matrices."""

from __future__ import annotations

import numpy as np

__all__ = ["COMPRESSED_SIZE", "compressed_causal_mask", "is_canonical_compressed"]

COMPRESSED_SIZE = 2048


def compressed_causal_mask(dtype=np.uint8) -> np.ndarray:
    """The 2048x2048 mask sparse modes 2/3/4/7/8 require: 1 (masked) strictly above the diagonal."""
    return np.triu(np.ones((COMPRESSED_SIZE, COMPRESSED_SIZE), dtype=dtype), 1)


def is_canonical_compressed(mask: np.ndarray) -> bool:
    """True when the first 2048x2048 slice has the canonical content (nonzero iff y > x).

    Compared in row chunks, so the temporaries stay small (< 1 MiB)."""
    m = mask.reshape(-1, COMPRESSED_SIZE, COMPRESSED_SIZE)[0] if mask.ndim == 4 else mask
    cols = np.arange(COMPRESSED_SIZE)
    chunk = 128
    for r0 in range(0, COMPRESSED_SIZE, chunk):
        rows = np.arange(r0, r0 + chunk)[:, None]
        if not np.array_equal(m[r0:r0 + chunk] != 0, cols[None, :] > rows):
            return False
    return True
