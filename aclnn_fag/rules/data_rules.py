"""The rules that read tensor data -- S6 (canonical compressed mask), S8 (8 equal statistic
copies), S9 (statistics in the device's layout) -- and the statistics-mismatch warning.

Host arrays are read directly, never copied in proportion to their size (the mask slice in
row chunks, the statistics in bounded chunks, S9 a few sampled rows); device-resident arrays
(DeviceArray) through the call's bounded :class:`~.device_sample.Sampler`. The predicates
follow :mod:`.checks`' convention (nothing when the rule holds, else the message's fields).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from ..errors import SoftmaxStatsMismatchWarning, caller_stacklevel
from ..masks import is_canonical_compressed, is_package_mask
from ..semantics.sparse import COMPRESSED_MODES, batch_keep
from ..softmax_layout import COPIES
from .arguments import is_device
from .checks import check
from .row_lse import rows_lse

__all__ = ["STATS_LAYOUT_SAMPLES", "STATS_LAYOUT_MAX_SKV", "STATS_LAYOUT_KEY_CHUNK",
           "STATS_MISMATCH_TOLERANCE", "S8_SAMPLED", "fits", "warn_stats_mismatch"]

# S9: how many (row, head) samples are checked at most, and the longest KV sequence sampled.
STATS_LAYOUT_SAMPLES = 8
STATS_LAYOUT_MAX_SKV = 65536
STATS_LAYOUT_KEY_CHUNK = 4096
# SoftmaxStatsMismatchWarning: how far (relative) max + log(sum) may fall below the recomputed
# log-sum-exp -- fp32 statistics of a bf16 forward agree to about 1e-6
STATS_MISMATCH_TOLERANCE = 1e-3
S8_SAMPLED = " (found in a sample of the device array)"
_S8_CHUNK = 1 << 20          # S8: statistics elements compared per chunk (host arrays)
_F32 = np.dtype(np.float32)
_ND = np.ndarray


# ---------------------------------------------------------------- S6
def _on_device(a) -> bool:
    return type(a) is not _ND and is_device(a)


def _compressed_mask_checked(c) -> bool:
    return c.sparse_mode in COMPRESSED_MODES and not is_package_mask(c.atten_mask)


@check("S6_sample")
def _mask_sample(c):
    return (_on_device(c.atten_mask) and _compressed_mask_checked(c)
            and not c.sampler.compressed_mask_is_canonical(c.atten_mask))


@check("S6")
def _mask_canonical(c):
    if _on_device(c.atten_mask) or not _compressed_mask_checked(c):
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
        if _on_device(stats):
            if not c.sampler.stats_copies_equal(stats):
                return {"name": name, "copies": COPIES, "sampled": S8_SAMPLED}
        elif not _host_copies_equal(stats):
            return {"name": name, "copies": COPIES, "sampled": ""}
    return None


def _host_copies_equal(stats) -> bool:
    """Zero-stride axes are read once; the rest in chunks of bounded size."""
    if stats.flags.c_contiguous and stats.size <= _S8_CHUNK:     # the common case, at once
        if stats.dtype == _F32:
            # every copy bitwise equal to the next one within its row: the neighbours of
            # the flat array compared as 32-bit words, the row boundaries (every 8th
            # comparison) left out; anything else (a difference, -0.0 beside 0.0, NaN
            # payloads) is judged by the float comparison below
            flat = stats.reshape(-1).view(np.uint32)
            differ = np.not_equal(flat[1:], flat[:-1])
            if np.count_nonzero(differ) == np.count_nonzero(differ[COPIES - 1::COPIES]):
                return True
        rows = stats.reshape(-1, COPIES)
        if (rows == rows[:, :1]).all():
            return True
    part_all = stats[tuple(slice(0, 1) if s == 0 and n > 1 else slice(None)
                           for n, s in zip(stats.shape, stats.strides))]
    rows_per_chunk = max(1, _S8_CHUNK // max(1, part_all.shape[1] * COPIES))
    for r0 in range(0, part_all.shape[0], rows_per_chunk):
        part = part_all[r0:r0 + rows_per_chunk]
        if (part == part[..., :1]).all():       # the common case, cheaply: no NaN, all equal
            continue
        if not np.array_equal(part, np.broadcast_to(part[..., :1], part.shape), equal_nan=True):
            return False
    return True


# ---------------------------------------------------------------- S9
def fits(m, l, lse) -> bool:
    """max + log(sum) equals ``lse`` within 1e-3 relative; False for a sum <= 0 or NaN and a
    lse that is not finite -- and for an infinite or NaN max or sum, through the arithmetic
    (inf or NaN is never within the finite tolerance). The criterion of S9 on host arrays
    and on the device sample."""
    m, l = float(m), float(l)
    if not (l > 0 and math.isfinite(lse)):
        return False
    return abs(m + math.log(l) - lse) <= 1e-3 * max(1.0, abs(lse))


@check("S9")
def _stats_layout(c):
    """A few sampled (row, head) pairs of the statistics must describe the row's scores.

    For each sample the two readings of the [T1, N1, 8] arrays are taken: the device's
    (flat (qStart·N1 + h·Sq_b + i)·8) and the token-major one (flat ((qStart + i)·N1 + h)·8).
    A reading fits when max + log(sum) equals the row's log-sum-exp of scale·S over the kept
    keys within 1e-3 relative. Rejected: every checked sample fits the token-major reading
    and none fits the device's. Samples where the two readings coincide or the row has no
    kept key are skipped. Host arrays are read directly (:class:`HostReader`), device arrays
    through the call's bounded sampler; the rows recomputed on host arrays are kept in
    ``c.samples`` [(b, i, h, lse, max, sum)] for the mismatch warning."""
    nd = _ND
    if (type(c.query) is nd and type(c.key) is nd and type(c.query_rope) is nd
            and type(c.key_rope) is nd and type(c.softmax_max) is nd
            and type(c.softmax_sum) is nd and type(c.atten_mask) is nd):
        reader = HOST
    elif all(is_device(a) for a in (c.query, c.query_rope, c.key, c.key_rope, c.atten_mask,
                                     c.softmax_max, c.softmax_sum)):
        reader = c.sampler
    else:
        return None       # host and device arrays mixed (a FagPlan's inputs): not sampled
    samples, checked, device_fits, token_fits = _votes(c, reader)
    if reader is HOST:
        c.samples = samples
    return checked and device_fits == 0 and token_fits == checked


class HostReader:
    """S9's reads of host arrays: every sampled row is affordable, up to
    ``STATS_LAYOUT_SAMPLES`` rows are checked, their log-sum-exps recomputed together."""

    max_samples = STATS_LAYOUT_SAMPLES
    sampled = False

    @staticmethod
    def item(a, flat):
        return a.item(flat)                    # by flat C-order index

    @staticmethod
    def affords(keys: int, width: int) -> bool:
        return True

    @staticmethod
    def kept_keys(mask, seqs, n1, b, h, i, skv, band):
        j0, j1 = band
        sel = np.flatnonzero(~_mask_row(mask, seqs, n1, b, h, i, skv)[j0:j1])
        return sel + j0 if sel.size else None

    @staticmethod
    def lses(q, qr, k, kr, rows, scale32) -> list:
        return rows_lse(q, qr, k, kr, rows, scale32, STATS_LAYOUT_KEY_CHUNK)


HOST = HostReader()

# batch_keep of the sampled batches, remembered across calls (its arguments are ints, its
# result immutable): a training loop calls with the same lengths again and again
_batch_keep = functools.lru_cache(maxsize=1024)(batch_keep)


def _votes(c, reader):
    """(samples, checked, device_fits, token_fits) of S9 through ``reader`` (docs/validation.md,
    "What S9 samples"): in each batch the rows (0, N1 - 1), (Sq/2, N1/2), (Sq - 1, 0) the
    reader affords, until ``reader.max_samples`` are checked."""
    q, qr, k, kr, mask, seqs = c.query, c.query_rope, c.key, c.key_rope, c.atten_mask, c.seqs
    n1, group = q.shape[1], q.shape[1] // k.shape[1]
    width = (q.shape[2] + qr.shape[2]) * k.itemsize      # bytes of one key (k and k_rope)
    picked, rows, lses = [], [], []     # (b, i, h, dm, dl, tm, tl, same); lses rows; lse
    scale32 = np.float32(c.scale_value)
    checked = same_rows = 0
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
            picked.append((b, i, h, dm, dl, tm, tl, same))
            rows.append((qs + i, h, h // group,
                         (ks + keys[0], ks + keys[1]) if type(keys) is tuple else keys + ks))
            lses.append(None)
            if same:
                same_rows += 1
                continue
            if not checked:
                # the first checked row, recomputed at once: when its statistics fit the
                # device's reading the call can no longer be rejected, and they describe the
                # scores where checked -- done (the common case costs one row)
                lse = lses[-1] = reader.lses(q, qr, k, kr, rows[-1:], scale32)[0]
                if fits(dm, dl, lse):
                    return [(b, i, h, lse, dm, dl)], 1, 1, 0
            checked += 1
            if checked >= reader.max_samples:
                break
        if checked >= reader.max_samples:
            break
    rest = [r for r, lse in enumerate(lses) if lse is None]
    if rest:                    # every other sampled row, recomputed together
        for r, lse in zip(rest, reader.lses(q, qr, k, kr, [rows[r] for r in rest], scale32)):
            lses[r] = lse
    device_fits = token_fits = 0
    samples = []
    for (b, i, h, dm, dl, tm, tl, same), lse in zip(picked, lses):
        samples.append((b, i, h, lse, dm, dl))
        if not same:
            device_fits += fits(dm, dl, lse)
            token_fits += fits(tm, tl, lse)
    return samples, checked, device_fits, token_fits


def _mask_row(mask, seqs, n1, b, h, i, skv) -> np.ndarray:
    """Row i of batch b, head h of an explicit (modes 0/1/5) mask as the kernel addresses it:
    bool 'masked' [skv]; reads only those skv elements (no copy of the mask)."""
    if mask.ndim == 2:
        return mask[i, :skv] != 0
    d0, d1 = mask.shape[:2]
    if d0 == 1 and d1 == 1:
        return mask[0, 0, i, :skv] != 0
    per_head = d1 != 1
    base = sum((n1 if per_head else 1) * seqs.sq[bb] * seqs.skv[bb] for bb in range(b))
    start = base + ((h * seqs.sq[b] + i) * skv if per_head else i * skv)
    return mask[np.unravel_index(np.arange(start, start + skv, dtype=np.int64), mask.shape)] != 0


# ---------------------------------------------------------------- the mismatch warning
def warn_stats_mismatch(samples, scale_value) -> None:
    """SoftmaxStatsMismatchWarning when a sampled row's statistics give max + log(sum) below
    the log-sum-exp of the row's scaled scores: its probabilities exp(S - max) / sum would sum
    to more than 1, which no softmax does (a wrong scale_value, other inputs or another mask).
    A larger max + log(sum) is not reported: statistics over more keys than this call sees
    (context parallelism, ring attention) are legitimate."""
    isfinite = math.isfinite
    for b, i, h, lse, m, l in samples:
        if isfinite(m) and isfinite(l) and l > 0:
            if not isfinite(lse):
                continue
            stored = m + math.log(l)
            if lse - stored <= STATS_MISMATCH_TOLERANCE * max(1.0, abs(lse)):
                continue
            excess = lse - stored
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
