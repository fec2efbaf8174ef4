"""The rules that read tensor data -- S6 (canonical compressed mask), S8 (8 equal statistic
copies), S9 (statistics in the device's layout) -- and the statistics-mismatch warning. Host
arrays are read in place, never copied whole; device-resident ones through a :class:`Sampler`
(a few small reads, at most ``DEVICE_SAMPLE_BYTES`` per call; docs/validation.md)."""

from __future__ import annotations

import functools
import math
import warnings
from types import SimpleNamespace

import numpy as np

from ..constants import BF16
from ..errors import SoftmaxStatsMismatchWarning, caller_stacklevel
from ..masks import COMPRESSED_SIZE, is_canonical_compressed, is_package_mask
from ..semantics.sparse import COMPRESSED_MODES, batch_keep
from ..softmax_layout import COPIES
from .arguments import is_device
from .checks import check

__all__ = ["STATS_LAYOUT_SAMPLES", "STATS_LAYOUT_MAX_SKV", "STATS_LAYOUT_KEY_CHUNK",
           "DEVICE_SAMPLE_BYTES", "Sampler", "fits", "warn_stats_mismatch"]

# S9: how many (row, head) samples are checked at most, and the longest KV sequence sampled
STATS_LAYOUT_SAMPLES = 8
STATS_LAYOUT_MAX_SKV = 65536
STATS_LAYOUT_KEY_CHUNK = 4096       # keys widened at once (host arrays)
# SoftmaxStatsMismatchWarning: how far (relative) max + log(sum) may fall below the recomputed
# log-sum-exp -- fp32 statistics of a bf16 forward agree to about 1e-6
STATS_MISMATCH_TOLERANCE = 1e-3
DEVICE_SAMPLE_BYTES = 16 << 10      # device bytes read per validated call, at most
_ROW_BYTES = 2048                   # one read of S6
_S8_RUN = 16                        # (token, head) entries per S8 read of a device array
_S8_CHUNK = 1 << 20                 # statistics elements compared at once (host arrays)
_F32, _U16, _ND = np.dtype(np.float32), np.dtype(np.uint16), np.ndarray


def _on_device(a) -> bool:
    return type(a) is not _ND and is_device(a)


# ---------------------------------------------------------------- S6
@check("S6_sample")
def _mask_sample(c):
    return (c.sparse_mode in COMPRESSED_MODES and _on_device(c.atten_mask)
            and not c.sampler.compressed_mask_is_canonical(c.atten_mask))


@check("S6")
def _mask_canonical(c):
    """The package's read-only mask (is_package_mask) is known canonical without a read."""
    if (c.sparse_mode not in COMPRESSED_MODES or _on_device(c.atten_mask)
            or is_package_mask(c.atten_mask)):
        return None
    m = c.atten_mask if c.atten_mask.ndim == 2 else c.atten_mask[0, 0]   # never a copy
    if is_canonical_compressed(m):
        return None
    hint = ""
    if _is_inverted_compressed(m):
        hint = (" -- it looks inverted (nonzero on and below the diagonal): in aclnn masks "
                "nonzero means MASKED, the opposite of a 'keep' mask")
    elif not m[:64, :64].any() and not any(m[r:r + 256].any() for r in range(0, len(m), 256)):
        hint = " -- it is all zero"
    return {"hint": hint}


def _is_inverted_compressed(m) -> bool:
    cols = np.arange(m.shape[1])
    for r0 in range(0, m.shape[0], 128):
        rows = np.arange(r0, min(r0 + 128, m.shape[0]))[:, None]
        if not np.array_equal(m[r0:r0 + 128] != 0, cols[None, :] <= rows):
            return False
    return True


# ---------------------------------------------------------------- S8
@check("S8")
def _copies_equal(c):
    for name in ("softmax_max", "softmax_sum"):
        stats = getattr(c, name)
        if stats.strides[2] == 0:
            continue
        sampled = _on_device(stats)
        if not (c.sampler.stats_copies_equal(stats) if sampled else _host_copies_equal(stats)):
            return {"name": name, "copies": COPIES,
                    "sampled": " (found in a sample of the device array)" if sampled else ""}
    return None


def _host_copies_equal(stats) -> bool:
    """Zero-stride axes read once, the rest in chunks of bounded size; NaN equals NaN."""
    if stats.flags.c_contiguous and stats.size <= _S8_CHUNK and stats.dtype == _F32:
        # the common case at once: every copy bitwise equal to the next one in its row (the
        # row boundaries, every 8th comparison, left out); anything else (-0.0 beside 0.0,
        # NaN payloads) is judged by the float comparisons below
        flat = stats.reshape(-1).view(np.uint32)
        differ = np.not_equal(flat[1:], flat[:-1])
        if np.count_nonzero(differ) == np.count_nonzero(differ[COPIES - 1::COPIES]):
            return True
    once = stats[tuple(slice(0, 1) if s == 0 and n > 1 else slice(None)
                       for n, s in zip(stats.shape, stats.strides))]
    step = max(1, _S8_CHUNK // max(1, once.shape[1] * COPIES))
    for r0 in range(0, once.shape[0], step):
        part = once[r0:r0 + step]
        first = part[..., :1]
        if not (part == first).all() and not np.array_equal(  # the common case first: no NaN
                part, np.broadcast_to(first, part.shape), equal_nan=True):
            return False
    return True


# ---------------------------------------------------------------- S9
def fits(m, l, lse) -> bool:
    """max + log(sum) equals ``lse`` within 1e-3 relative (never for a sum <= 0 or NaN, or an
    infinite lse)."""
    m, l = float(m), float(l)
    if not (l > 0 and math.isfinite(lse)):
        return False
    return abs(m + math.log(l) - lse) <= 1e-3 * max(1.0, abs(lse))


def _f32_beside(a, b) -> np.ndarray:
    """[a | b] along the last axis in float32 (bfloat16 widened by a 16-bit shift of its bits)."""
    d = a.shape[-1]
    bits = a.dtype == BF16 and b.dtype == BF16
    out = np.empty(a.shape[:-1] + (d + b.shape[-1],), np.uint32 if bits else np.float32)
    out[..., :d] = a.view(_U16) if bits else a
    out[..., d:] = b.view(_U16) if bits else b
    if bits:
        out <<= 16
    return out.view(np.float32)


def _lse(s, scale32) -> float:
    """The log-sum-exp of ``scale32 * s`` (scaled in place in float32 as on the device, summed
    in float64); NaN when the top score is not finite."""
    s *= scale32
    top = float(s.max())
    if not math.isfinite(top):
        return math.nan
    e = np.subtract(s, top, dtype=np.float64)
    np.exp(e, out=e)
    return top + math.log(float(e.sum()))


@check("S9")
def _stats_layout(c):
    """Rejected when every sampled (row, head) fits the token-major reading of the statistics
    (flat ((qStart + i)·N1 + h)·8) and none the device's (flat (qStart·N1 + h·Sq_b + i)·8); a
    reading fits when max + log(sum) is the row's log-sum-exp. The host rows recomputed are
    kept in ``c.samples`` [(b, i, h, lse, max, sum)] for the mismatch warning."""
    arrays = (c.query, c.query_rope, c.key, c.key_rope, c.atten_mask, c.softmax_max,
              c.softmax_sum)
    if all(type(a) is _ND for a in arrays):
        reader = HOST
    elif all(is_device(a) for a in arrays):
        reader = c.sampler
    else:
        return None       # host and device arrays mixed (a FagPlan's inputs): not sampled
    samples, rejected = _votes(c, reader)
    if reader is HOST:
        c.samples = samples
    return rejected


def _kept(masked, j0):
    """The keys of a row's band from ``j0`` that ``masked`` (bool) leaves, or None."""
    sel = np.flatnonzero(~masked)
    return sel + j0 if sel.size else None


def _host_kept_keys(mask, seqs, n1, b, h, i, skv, band):
    """The unmasked keys of row i within ``band``, the mask addressed as the kernel does."""
    if mask.ndim == 2:
        row = mask[i, :skv]
    elif mask.shape[:2] == (1, 1):
        row = mask[0, 0, i, :skv]
    else:
        per_head = mask.shape[1] != 1
        base = sum((n1 if per_head else 1) * seqs.sq[bb] * seqs.skv[bb] for bb in range(b))
        start = base + ((h * seqs.sq[b] + i) * skv if per_head else i * skv)
        row = mask[np.unravel_index(np.arange(start, start + skv, dtype=np.int64), mask.shape)]
    return _kept(row[band[0]:band[1]] != 0, band[0])


def _host_lse(q, qr, k, kr, row, scale32) -> float:
    """A row's log-sum-exp on host arrays, its keys widened STATS_LAYOUT_KEY_CHUNK at a time."""
    t, h, n2, keys = row
    step = STATS_LAYOUT_KEY_CHUNK
    if type(keys) is tuple:
        parts = [slice(j, min(j + step, keys[1])) for j in range(keys[0], keys[1], step)]
    else:
        parts = [keys[j:j + step] for j in range(0, len(keys), step)]
    query = _f32_beside(q[t, h], qr[t, h])
    s = [_f32_beside(k[p, n2], kr[p, n2]) @ query for p in parts]
    return _lse(s[0] if len(s) == 1 else np.concatenate(s), scale32)


# S9's reader of host arrays (a Sampler reads device arrays): every row affordable
HOST = SimpleNamespace(max_samples=STATS_LAYOUT_SAMPLES, sampled=False, item=np.ndarray.item,
                       affords=lambda keys, width: True, kept_keys=_host_kept_keys, lse=_host_lse)

# batch_keep of the sampled batches, remembered across calls (its arguments are ints, its
# result immutable): a training loop calls with the same lengths again and again
_batch_keep = functools.lru_cache(maxsize=1024)(batch_keep)


def _votes(c, reader):
    """(samples, rejected) of S9 through ``reader`` (docs/validation.md, "What S9 samples"):
    per batch the rows (0, N1 - 1), (Sq/2, N1/2), (Sq - 1, 0) the reader affords, until
    ``reader.max_samples`` are checked or the first one fits the device's reading. Rows whose
    readings agree are recomputed at the end, for the warning only."""
    q, qr, k, kr, mask, seqs = c.query, c.query_rope, c.key, c.key_rope, c.atten_mask, c.seqs
    n1, group = q.shape[1], q.shape[1] // k.shape[1]
    width = (q.shape[2] + qr.shape[2]) * k.itemsize      # bytes of one key (k and k_rope)
    scale32 = np.float32(c.scale_value)
    samples = []                  # (b, i, h, lse or the row still to recompute, max, sum)
    checked = device_fits = token_fits = same_rows = 0
    item, smax, ssum = reader.item, c.softmax_max, c.softmax_sum
    for b in range(seqs.batch):
        sq, skv = seqs.sq[b], seqs.skv[b]
        if sq <= 0 or skv <= 0 or skv > STATS_LAYOUT_MAX_SKV:
            continue
        qs, ks = seqs.q_starts[b], seqs.kv_starts[b]
        keep = _batch_keep(c.sparse_mode, b, sq, skv, c.pre_eff, c.next_eff, c.band_index)
        for i, h in ((0, n1 - 1), (sq // 2, n1 // 2), (sq - 1, 0)):
            j0 = 0 if keep.lo == -math.inf else max(0, i + keep.lo)
            j1 = skv if keep.hi == math.inf else min(skv, i + keep.hi + 1)
            if j1 <= j0 or not reader.affords(j1 - j0, width):
                continue
            dev_flat = (qs * n1 + h * sq + i) * COPIES
            tok_flat = ((qs + i) * n1 + h) * COPIES
            dm, dl = item(smax, dev_flat), item(ssum, dev_flat)
            tm, tl = item(smax, tok_flat), item(ssum, tok_flat)
            same = (dm == tm or (dm != dm and tm != tm)) and (dl == tl or (dl != dl and tl != tl))
            if same and (reader.sampled or same_rows >= STATS_LAYOUT_SAMPLES):
                continue
            keys = (j0, j1)
            if keep.uses_mask:
                keys = reader.kept_keys(mask, seqs, n1, b, h, i, skv, keys)
                if keys is None:
                    continue
            row = (qs + i, h, h // group,
                   (ks + keys[0], ks + keys[1]) if type(keys) is tuple else keys + ks)
            if same:
                same_rows += 1
                samples.append((b, i, h, row, dm, dl))
                continue
            lse = reader.lse(q, qr, k, kr, row, scale32)
            if not checked and fits(dm, dl, lse):
                return [(b, i, h, lse, dm, dl)], False
            samples.append((b, i, h, lse, dm, dl))
            checked += 1
            device_fits += fits(dm, dl, lse)
            token_fits += fits(tm, tl, lse)
            if checked >= reader.max_samples:
                break
        if checked >= reader.max_samples:
            break
    samples = [(b, i, h, reader.lse(q, qr, k, kr, x, scale32) if type(x) is tuple else x, m, l)
               for b, i, h, x, m, l in samples]
    return samples, checked and device_fits == 0 and token_fits == checked


# ---------------------------------------------------------------- device-resident inputs
class _Budget(Exception):
    """The next read would exceed the byte budget."""


class Sampler:
    """Bounded reads of device arrays for one validated call (``bytes_read`` counts them): S6
    three rows of the compressed mask, S8 three runs of entries of each statistic, S9 at most
    two rows whose kept keys fit the budget (docs/validation.md)."""

    max_samples = 2
    sampled = True

    def __init__(self, budget: int = DEVICE_SAMPLE_BYTES) -> None:
        self.budget = budget
        self.bytes_read = 0
        self._pending = 0               # bytes set aside for S9's rows (affords)

    def _raw(self, da, start: int, count: int) -> np.ndarray:
        """``count`` storage elements from element ``start`` of the view (one copy)."""
        nbytes = count * da.itemsize
        if self.bytes_read + nbytes > self.budget:
            raise _Budget()
        host = np.empty(count, da.dtype)
        da.buffer.copy_to_host(host.ctypes.data, nbytes, (da.offset + start) * da.itemsize)
        self.bytes_read += nbytes
        return host

    def strided(self, da, start: int, step: int, n: int) -> np.ndarray:
        """n > 0 elements at storage positions start + k * step (relative to the view's offset)."""
        if step == 0:
            return np.repeat(self._raw(da, start, 1), n)
        span = (n - 1) * step + 1
        if span * da.itemsize <= 2 * _ROW_BYTES:
            return self._raw(da, start, span)[::step]
        return np.concatenate([self._raw(da, start + k * step, 1) for k in range(n)])

    def compressed_mask_is_canonical(self, mask) -> bool:
        """Sampled S6: rows 0, 1023 and 2047 (or windows of them) equal the canonical rows."""
        rs, cs = mask.strides[-2], mask.strides[-1]     # a 4-D mask: its slice [0, 0]
        cols = np.arange(COMPRESSED_SIZE)
        for r in (0, COMPRESSED_SIZE // 2 - 1, COMPRESSED_SIZE - 1):
            if cs * mask.itemsize <= 1:
                c0, c1 = 0, COMPRESSED_SIZE
            else:                                    # a window around the diagonal
                half = max(1, _ROW_BYTES // (2 * max(1, cs) * mask.itemsize))
                c0, c1 = max(0, r - half), min(COMPRESSED_SIZE, r + half + 1)
            row = self.strided(mask, r * rs + c0 * cs, cs, c1 - c0)
            if not np.array_equal(row != 0, cols[c0:c1] > r):
                return False
        return True

    def stats_copies_equal(self, stats) -> bool:
        """Sampled S8: three runs of (token, head) entries have 8 equal copies."""
        t, n, _ = stats.shape
        s0, s1, s2 = stats.strides      # s2 != 0 (_copies_equal) and t * n != 0 (rule 22)
        entries = t * n
        # entry e = (token, head) starts at e * COPIES * s2: one read covers a run
        merged = (n == 1 or s1 == COPIES * s2) and (t == 1 or s0 == n * COPIES * s2)
        for e0 in sorted({0, max(0, entries // 2 - _S8_RUN // 2), max(0, entries - _S8_RUN)}):
            run = min(_S8_RUN, entries - e0)
            if merged and s2 == 1:
                first = (e0 // n) * s0 + (e0 % n) * s1
                vals = self._raw(stats, first, run * COPIES).reshape(run, COPIES)
            else:
                vals = np.stack([self.strided(stats, (e // n) * s0 + (e % n) * s1, s2, COPIES)
                                 for e in range(e0, e0 + min(run, 2))])
            if not np.array_equal(vals, np.broadcast_to(vals[:, :1], vals.shape), equal_nan=True):
                return False
        return True

    def affords(self, keys: int, width: int) -> bool:
        """Whether a row of ``keys`` keys (``width`` bytes each, its query row and statistics
        beside) still fits the budget; if so its bytes are set aside."""
        cost = keys * width + width + 64
        if self.bytes_read + self._pending + cost > self.budget:
            return False
        self._pending += cost
        return True

    def item(self, stats, flat: int):
        index = np.unravel_index(flat, stats.shape)
        return self._raw(stats, sum(int(i) * s for i, s in zip(index, stats.strides)), 1)[0]

    def kept_keys(self, mask, seqs, n1, b, h, i, skv, band):
        """The unmasked keys of row i within ``band`` (a 2-D mask; packed ragged 4-D masks
        are not sampled: None)."""
        if mask.ndim != 2:
            return None
        (j0, j1), (ms0, ms1) = band, mask.strides
        return _kept(self.strided(mask, i * ms0 + j0 * ms1, ms1, j1 - j0) != 0, j0)

    def lse(self, q, qr, k, kr, row, scale32) -> float:
        """The row's log-sum-exp (NaN when a read would exceed the budget)."""
        t, h, n2, keys = row
        a, e = keys if type(keys) is tuple else (int(keys[0]), int(keys[-1]) + 1)
        try:
            query = _f32_beside(*(self.strided(x, t * x.strides[0] + h * x.strides[1],
                                               x.strides[2], x.shape[2]) for x in (q, qr)))
            both = _f32_beside(self._rows(k, a, e - a, n2), self._rows(kr, a, e - a, n2))
        except _Budget:
            return math.nan
        return _lse((both if type(keys) is tuple else both[keys - a]) @ query, scale32)

    def _rows(self, a, t0: int, count: int, head: int) -> np.ndarray:
        """a[t0:t0+count, head] as a host [count, width] array (one read when the range is
        small, else row by row)."""
        s0, s1, s2 = a.strides
        width, start = a.shape[2], t0 * s0 + head * s1
        span = (count - 1) * s0 + (width - 1) * s2 + 1
        if span * a.itemsize <= min(self.budget - self.bytes_read, 4 * _ROW_BYTES):
            return np.lib.stride_tricks.as_strided(
                self._raw(a, start, span), (count, width), (s0 * a.itemsize, s2 * a.itemsize),
                writeable=False).copy()
        return np.stack([self.strided(a, start + r * s0, s2, width) for r in range(count)])


# ---------------------------------------------------------------- the mismatch warning
def warn_stats_mismatch(samples, scale_value) -> None:
    """SoftmaxStatsMismatchWarning when a sampled row's max + log(sum) is below its scores'
    log-sum-exp (probabilities summing to more than 1); above is fine (ring attention)."""
    isfinite = math.isfinite
    for b, i, h, lse, m, l in samples:
        if isfinite(m) and isfinite(l) and l > 0:
            stored = m + math.log(l)
            excess = lse - stored
            if not isfinite(lse) or excess <= STATS_MISMATCH_TOLERANCE * max(1.0, abs(lse)):
                continue
            ratio = f"{math.exp(excess):.3g}" if excess < 700 else f"e^{excess:.3g}"
            what = (f"max + log(sum) = {stored:.6g} is below the log-sum-exp {lse:.6g} of the "
                    f"row's scores (scale_value={scale_value:g}), so its probabilities would sum "
                    f"to {ratio}")
        else:
            what = f"max = {m:g}, sum = {l:g} cannot be a softmax's statistics"
        warnings.warn(f"softmax_max/softmax_sum do not match the scores: at batch {b}, head {h}, "
                      f"query row {i}: {what}; the gradients will be wrong. Were the statistics "
                      "computed with another scale_value, other inputs or another mask? "
                      "(docs/validation.md, Statistics that do not match the scores)",
                      SoftmaxStatsMismatchWarning, stacklevel=caller_stacklevel())
        return
