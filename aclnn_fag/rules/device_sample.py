"""The data rules (S6, S8, S9) for device-resident inputs, on a bounded sample.

Shape, dtype and attribute rules never read tensor data, so they run unchanged on
:class:`aclnn_fag.acl.DeviceArray` inputs (and NPU tensors, which arrive as DeviceArrays over
the caller's memory). The three rules that look at data read back only a few small
ranges with ``aclrtMemcpy`` (device to host), at most ``DEVICE_SAMPLE_BYTES`` per call:

* S6 (canonical compressed mask): rows 0, 1023 and 2047 of the first 2048x2048 slice
  (2 KiB each for a contiguous uint8/bool mask; a window around the diagonal otherwise);
* S8 (8 equal statistic copies): three runs of 16 (token, head) entries of each array,
  at the start, the middle and the end (512 bytes each);
* S9 (token-major statistics): the rows S9 samples on host arrays (data_rules._votes) whose
  kept keys fit the remaining budget, at most two -- in practice the first rows of causal
  or band masks; rows that keep more keys are not sampled (a fully unmasked long sequence
  is not checked).

``check_data=False`` on the public calls skips all three (also for numpy inputs).
"""

from __future__ import annotations

import math

import numpy as np

from ..masks import COMPRESSED_SIZE
from ..softmax_layout import COPIES
from .row_lse import as_f32, segment_lse

__all__ = ["DEVICE_SAMPLE_BYTES", "Sampler"]

DEVICE_SAMPLE_BYTES = 16 << 10      # upper bound of device bytes read per validated call
_ROW_BYTES = 2048                   # one read of S6
_S8_RUN = 16                        # (token, head) entries per S8 read
_S9_SAMPLES = 2


class _Budget(Exception):
    """The next read would exceed the byte budget."""


class Sampler:
    """Bounded reads of device arrays for one validated call (``bytes_read`` counts them)."""

    def __init__(self, budget: int = DEVICE_SAMPLE_BYTES) -> None:
        self.budget = budget
        self.bytes_read = 0
        self._pending = 0               # bytes set aside for S9's rows (affords)

    # ------------------------------------------------------------------ reads
    def _raw(self, da, start: int, count: int) -> np.ndarray:
        """``count`` storage elements from element ``start`` of the view's storage (offset
        included) -- one device-to-host copy."""
        nbytes = count * da.itemsize
        if self.bytes_read + nbytes > self.budget:
            raise _Budget()
        host = np.empty(count, da.dtype)
        da.buffer.copy_to_host(host.ctypes.data, nbytes, (da.offset + start) * da.itemsize)
        self.bytes_read += nbytes
        return host

    def strided(self, da, start: int, step: int, n: int) -> np.ndarray:
        """n elements at storage positions start + k * step (relative to the view's offset)."""
        if n <= 0:
            return np.empty(0, da.dtype)
        if step == 0:
            return np.repeat(self._raw(da, start, 1), n)
        span = (n - 1) * step + 1
        if span * da.itemsize <= 2 * _ROW_BYTES:
            return self._raw(da, start, span)[::step]
        return np.concatenate([self._raw(da, start + k * step, 1) for k in range(n)])

    def element(self, da, index) -> object:
        pos = sum(i * s for i, s in zip(index, da.strides))
        return self._raw(da, pos, 1)[0]

    # ------------------------------------------------------------------ S6
    def compressed_mask_is_canonical(self, mask) -> bool:
        """Sampled S6: rows 0, 1023 and 2047 (or windows of them) equal the canonical rows."""
        rs, cs = mask.strides[-2], mask.strides[-1]
        base = 0                                     # first slice of a 4-D mask: index 0, 0
        cols = np.arange(COMPRESSED_SIZE)
        for r in (0, COMPRESSED_SIZE // 2 - 1, COMPRESSED_SIZE - 1):
            if cs * mask.itemsize <= 1:
                c0, c1 = 0, COMPRESSED_SIZE
            else:                                    # a window around the diagonal
                half = max(1, _ROW_BYTES // (2 * max(1, cs) * mask.itemsize))
                c0, c1 = max(0, r - half), min(COMPRESSED_SIZE, r + half + 1)
            row = self.strided(mask, base + r * rs + c0 * cs, cs, c1 - c0)
            if not np.array_equal(row != 0, cols[c0:c1] > r):
                return False
        return True

    # ------------------------------------------------------------------ S8
    def stats_copies_equal(self, stats) -> bool:
        """Sampled S8: three runs of (token, head) entries have 8 equal copies."""
        t, n, _ = stats.shape
        s0, s1, s2 = stats.strides
        if s2 == 0 or t * n == 0:
            return True
        entries = t * n
        merged = (s1 == COPIES * s2 and (n == 1 or s0 == n * s1)) or t == 1
        starts = sorted({0, max(0, entries // 2 - _S8_RUN // 2), max(0, entries - _S8_RUN)})
        for e0 in starts:
            run = min(_S8_RUN, entries - e0)
            if merged and s2 == 1:
                first = (e0 // n) * s0 + (e0 % n) * s1
                vals = self._raw(stats, first, run * COPIES).reshape(run, COPIES)
            else:
                rows = []
                for e in range(e0, e0 + min(run, 2)):
                    rows.append(self.strided(stats, (e // n) * s0 + (e % n) * s1, s2, COPIES))
                vals = np.stack(rows)
            if not np.array_equal(vals, np.broadcast_to(vals[:, :1], vals.shape), equal_nan=True):
                return False
        return True

    # ------------------------------------------------------------------ S9 (data_rules._votes)
    max_samples = _S9_SAMPLES
    sampled = True

    def affords(self, keys: int, width: int) -> bool:
        """Whether a row of ``keys`` keys (``width`` bytes each, its query row and statistics
        beside) still fits the budget; if so its bytes are set aside."""
        cost = keys * width + width + 64
        if self.bytes_read + self._pending + cost > self.budget:
            return False
        self._pending += cost
        return True

    def item(self, stats, flat: int):
        return self._flat(stats, flat)

    def kept_keys(self, mask, seqs, n1, b, h, i, skv, band):
        """The unmasked keys of row i within ``band`` (a 2-D mask; packed ragged 4-D masks
        are not sampled: None)."""
        if mask.ndim != 2:
            return None
        (j0, j1), (ms0, ms1) = band, mask.strides
        sel = np.flatnonzero(self.strided(mask, i * ms0 + j0 * ms1, ms1, j1 - j0) == 0)
        return sel + j0 if sel.size else None

    def lses(self, q, qr, k, kr, rows, scale32) -> list:
        """Each row's log-sum-exp (NaN when a read would exceed the budget)."""
        out = []
        for t, h, n2, keys in rows:
            try:
                out.append(self._row_lse(q, qr, k, kr, t, h, n2, keys, scale32))
            except _Budget:
                out.append(math.nan)
        return out

    def _row_lse(self, q, qr, k, kr, t, h, n2, keys, scale32) -> float:
        d, dr = q.shape[2], qr.shape[2]
        qv = self.strided(q, t * q.strides[0] + h * q.strides[1], q.strides[2], d)
        qrv = self.strided(qr, t * qr.strides[0] + h * qr.strides[1], qr.strides[2], dr)
        a, e = keys if type(keys) is tuple else (int(keys[0]), int(keys[-1]) + 1)
        kk, kkr = self._rows(k, a, e - a, n2, d), self._rows(kr, a, e - a, n2, dr)
        if type(keys) is not tuple:
            kk, kkr = kk[keys - a], kkr[keys - a]
        s = as_f32(kk) @ as_f32(qv) + as_f32(kkr) @ as_f32(qrv)
        s *= scale32
        return segment_lse(s, [s.size])[0]      # NaN: the top score is not finite

    def _flat(self, stats, flat: int):
        t, n, c = stats.shape
        idx = (flat // (n * c), (flat // c) % n, flat % c)
        return self.element(stats, idx)

    def _rows(self, a, t0: int, count: int, head: int, width: int) -> np.ndarray:
        """a[t0:t0+count, head, :width] as a host [count, width] array (one read when the
        range is small, else row by row)."""
        s0, s1, s2 = a.strides
        start = t0 * s0 + head * s1
        span = (count - 1) * s0 + (width - 1) * s2 + 1
        if span * a.itemsize <= self.budget - self.bytes_read and span * a.itemsize <= 4 * _ROW_BYTES:
            host = self._raw(a, start, span)
            return np.lib.stride_tricks.as_strided(
                host, (count, width), (s0 * a.itemsize, s2 * a.itemsize), writeable=False).copy()
        return np.stack([self.strided(a, start + r * s0, s2, width) for r in range(count)])

