"""Attention masks the op takes (nonzero = masked; docs/sparse_modes.md, Masks): the compressed
mask of sparse modes 2/3/4/7/8, and band and causal ``[maxSq, maxSkv]`` masks of modes 0/1. A 2-D
mask of modes 0/1 is read top-left for every sequence, so these masks give every sequence of a
call the same band, counted from its first query row and first key."""

from __future__ import annotations

import numbers

import numpy as np
from .constants import INT32_MAX

__all__ = ["COMPRESSED_SIZE", "compressed_causal_mask", "is_canonical_compressed", "band_mask",
           "causal_mask", "is_package_mask"]

COMPRESSED_SIZE = 2048
# a [maxSq, maxSkv] mask larger than this is refused (it would take more than 4 GiB)
MAX_MASK_ELEMENTS = 1 << 32

# The package's canonical masks: immutable bytes (numpy cannot make a view of them
# writeable), one per dtype, built on first use.
_CANONICAL: dict = {}
_PACKAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.bool_))


def _canonical(dt: np.dtype):
    """(immutable bytes, read-only [2048, 2048] view of them) of the canonical mask."""
    entry = _CANONICAL.get(dt)
    if entry is None:
        raw = np.triu(np.ones((COMPRESSED_SIZE, COMPRESSED_SIZE), dtype=dt), 1).tobytes()
        view = np.frombuffer(raw, dtype=dt).reshape(COMPRESSED_SIZE, COMPRESSED_SIZE)
        entry = _CANONICAL.setdefault(dt, (raw, view))
    return entry


def compressed_causal_mask(dtype=np.uint8) -> np.ndarray:
    """The 2048x2048 mask sparse modes 2/3/4/7/8 require: 1 (masked) strictly above the
    diagonal. For uint8 and bool a **read-only** view of one immutable buffer the package owns
    (validation recognises it without reading it, ``is_package_mask``; ``.copy()`` it to
    write); other dtypes get a new writable array."""
    dt = np.dtype(dtype)
    if dt not in _PACKAGE_DTYPES:
        return np.triu(np.ones((COMPRESSED_SIZE, COMPRESSED_SIZE), dtype=dt), 1)
    return _canonical(dt)[1].view()


def is_package_mask(mask) -> bool:
    """True when the first 2048x2048 slice of ``mask`` is a read-only view of the package's
    canonical mask (same immutable buffer and strides): its content is known unread."""
    if not isinstance(mask, np.ndarray) or mask.dtype not in _PACKAGE_DTYPES:
        return False
    if mask.ndim == 4 and mask.shape[0] >= 1 and mask.shape[1] >= 1:
        mask = mask[0, 0]
    if mask.ndim != 2 or mask.shape != (COMPRESSED_SIZE, COMPRESSED_SIZE):
        return False
    entry = _CANONICAL.get(mask.dtype)
    if entry is None or mask.flags.writeable:
        return False
    raw, view = entry
    root = mask
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    # a 2048x2048 view with the canonical strides spans all of ``raw`` (exactly that many
    # bytes), so it starts at raw's first byte: its address needs no separate check
    return root is raw and mask.strides == view.strides


def is_canonical_compressed(mask: np.ndarray) -> bool:
    """True when the first 2048x2048 slice has the canonical content (nonzero iff y > x),
    compared in row chunks (small temporaries): byte for byte for bool/uint8 chunks holding
    0/1, else by the nonzero pattern."""
    m = mask.reshape(-1, COMPRESSED_SIZE, COMPRESSED_SIZE)[0] if mask.ndim == 4 else mask
    canon = _canonical(np.dtype(np.uint8))[1]
    raw = m.dtype in (np.dtype(np.uint8), np.dtype(np.bool_))
    chunk = 256
    for r0 in range(0, COMPRESSED_SIZE, chunk):
        part, want = m[r0:r0 + chunk], canon[r0:r0 + chunk]
        if raw and np.array_equal(part.view(np.uint8), want):
            continue
        if not np.array_equal(part != 0, want != 0):
            return False
    return True


def _int(name, value, minimum=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"parameter '{name}' must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"parameter '{name}' must be >= {minimum}, got {value}")
    return value


def band_mask(max_sq, max_skv, pre_tokens=INT32_MAX, next_tokens=INT32_MAX,
              dtype=np.uint8) -> np.ndarray:
    """The ``[max_sq, max_skv]`` mask of sparse modes 0/1 that masks every (i, j) outside the
    token band ``-pre_tokens <= j - i <= next_tokens`` (top-left origin, as mode 0 counts;
    docs/sparse_modes.md): pass it to mode 0 with the **same** tokens, or alone to mode 1.
    Tokens are clamped to 2^31 - 1 as the op clamps them (pre + next must stay > 0)."""
    max_sq = _int("max_sq", max_sq, 0)
    max_skv = _int("max_skv", max_skv, 0)
    pre = min(_int("pre_tokens", pre_tokens), INT32_MAX)
    nxt = min(_int("next_tokens", next_tokens), INT32_MAX)
    if pre + nxt <= 0:
        raise ValueError(f"pre_tokens + next_tokens must be > 0 (docs/validation.md, rule 28), "
                         f"got {pre} + {nxt}")
    if max_sq * max_skv > MAX_MASK_ELEMENTS:
        raise ValueError(f"parameters 'max_sq', 'max_skv': a [{max_sq}, {max_skv}] mask has "
                         f"more than {MAX_MASK_ELEMENTS} elements; use a compressed sparse mode "
                         "(2/3/4/7/8) for long sequences")
    d = np.arange(max_skv, dtype=np.int64)[None, :] - np.arange(max_sq, dtype=np.int64)[:, None]
    return ((d < -pre) | (d > nxt)).astype(dtype)


def causal_mask(max_sq, max_skv, dtype=np.uint8) -> np.ndarray:
    """The ``[max_sq, max_skv]`` causal mask of sparse modes 0/1: masked where j > i (top-left
    origin, the kept set of sparse mode 2): with ``sparse_mode=1``, or ``sparse_mode=0,
    pre_tokens=2**31 - 1, next_tokens=0``."""
    return band_mask(max_sq, max_skv, INT32_MAX, 0, dtype)
