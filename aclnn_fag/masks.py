"""Mask helpers: the compressed causal mask and hand-made kept matrices."""

from __future__ import annotations

import numpy as np

__all__ = ["COMPRESSED_SIZE", "compressed_causal_mask", "is_canonical_compressed",
           "is_package_mask"]

COMPRESSED_SIZE = 2048

# The package's own canonical masks: immutable bytes objects (numpy cannot make a view of
# them writeable), one per dtype, built on first use.
_CANONICAL: dict = {}
_PACKAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_))


def _canonical(dt: np.dtype):
    entry = _CANONICAL.get(dt)
    if entry is None:
        raw = np.triu(np.ones((COMPRESSED_SIZE, COMPRESSED_SIZE), dtype=dt), 1).tobytes()
        view = np.frombuffer(raw, dtype=dt).reshape(COMPRESSED_SIZE, COMPRESSED_SIZE)
        entry = _CANONICAL.setdefault(dt, (raw, view, view.__array_interface__["data"][0]))
    return entry


def compressed_causal_mask(dtype=np.uint8) -> np.ndarray:
    """The 2048x2048 mask sparse modes 2/3/4/7/8 require: 1 (masked) strictly above the diagonal.

    For uint8 and bool the result is a **read-only** view of one immutable buffer the package
    owns, so validation recognises it without reading its 4 MiB (``is_package_mask``); use
    ``.copy()`` for a writable array. Other dtypes get a new writable array."""
    dt = np.dtype(dtype)
    if dt not in _PACKAGE_DTYPES:
        return np.triu(np.ones((COMPRESSED_SIZE, COMPRESSED_SIZE), dtype=dt), 1)
    return _canonical(dt)[1].view()


def is_package_mask(mask) -> bool:
    """True when the first 2048x2048 slice of ``mask`` is a view of the package's own
    read-only canonical mask (same immutable buffer, same address and strides): its content
    is then known without reading it. Never true for an array the caller can write."""
    if not isinstance(mask, np.ndarray) or mask.dtype not in _PACKAGE_DTYPES:
        return False
    if mask.ndim == 4 and mask.shape[0] >= 1 and mask.shape[1] >= 1:
        mask = mask[0, 0]
    if mask.ndim != 2 or mask.shape != (COMPRESSED_SIZE, COMPRESSED_SIZE):
        return False
    entry = _CANONICAL.get(mask.dtype)
    if entry is None or mask.flags.writeable:
        return False
    raw, view, addr = entry
    root = mask
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    return (root is raw and mask.__array_interface__["data"][0] == addr
            and mask.strides == view.strides)


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
