"""Log-sum-exp of sampled score rows (the S9 check and the statistics-mismatch warning).

Shared by the host variant (``data_rules``) and the bounded device sample
(``device_sample``): float32 operands and scores, as the device computes them
(``scale * (q·k + qr·kr)``: the dot product rounded to float32, then scaled in float32), and the
reductions in float64. Several rows are gathered, widened and reduced together: checking a
few rows costs a few numpy operations and one matrix-vector product per row, not a Python
loop per row and per key chunk.
"""

from __future__ import annotations

import math
from itertools import accumulate

import numpy as np

from ..constants import BF16 as _BF16

__all__ = ["as_f32", "segment_lse", "rows_lse"]

_U16 = np.dtype(np.uint16)
# rows_lse: at most this many scores reduced at once (float64 temporaries of 512 KiB)
_LSE_GROUP = 1 << 16


def as_f32(a: np.ndarray) -> np.ndarray:
    """``a`` as float32 (a new array). bfloat16 is widened by moving its 16 bits to the top
    of a 32-bit word -- exactly its float32 value, without ml_dtypes' element-wise cast."""
    if a.dtype == _BF16:
        wide = a.view(np.uint16).astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    return a.astype(np.float32)


def segment_lse(scores: np.ndarray, counts: list) -> list:
    """Per segment of ``scores`` (consecutive runs of ``counts[r]`` > 0 entries): the
    log-sum-exp ``top + log(sum(exp(s - top)))`` in float64, NaN where the segment's
    maximum is not finite (a NaN or an infinite score)."""
    offsets = list(accumulate(counts[:-1], initial=0))
    top = np.maximum.reduceat(scores, offsets)
    tops = top.tolist()
    if all(map(math.isfinite, tops)):     # the common case: float64 differences in one pass
        s = np.subtract(scores, top.repeat(counts), dtype=np.float64)
        np.exp(s, out=s)
        sums = np.add.reduceat(s, offsets).tolist()
        return [t + math.log(x) for t, x in zip(tops, sums)]
    finite = [math.isfinite(x) for x in tops]
    s = scores.astype(np.float64)
    if all(finite):
        s -= top.repeat(counts)
        np.exp(s, out=s)
    else:
        top[~np.array(finite)] = 0.0          # these segments' results are replaced by NaN
        with np.errstate(over="ignore", invalid="ignore"):
            s -= top.repeat(counts)
            np.exp(s, out=s)
    sums = np.add.reduceat(s, offsets).tolist()
    return [t + math.log(x) if ok else math.nan for t, x, ok in zip(tops, sums, finite)]


def rows_lse(q, qr, k, kr, rows, scale32, chunk: int) -> list:
    """The log-sum-exp over the kept keys of ``scale32 * (q·k + qr·kr)`` of each row
    (``segment_lse``; NaN when the row's top score is not finite).

    ``rows``: [(query token, head, key head, keys)] with keys a (first, end) token range or
    an index array of key tokens, at least one key. When the keys to gather -- the ranges of
    one key head merged where they overlap or touch (``_union``: in the band modes a batch's
    sampled rows share most of their keys), each index array on its own -- number at most
    ``chunk``, they are gathered and widened in one go and each row's scores are one float32
    matrix-vector product over its keys. Otherwise keys are gathered ``chunk`` at a time (the
    rows' keys one after the other, a row split where a chunk ends). Either way the
    temporaries stay bounded by ``chunk`` keys and the scores are reduced ``_LSE_GROUP`` at
    a time; the scores of all rows are kept (float32, one per kept key)."""
    counts = [keys[1] - keys[0] if type(keys) is tuple else len(keys) for _, _, _, keys in rows]
    arrays = (q, qr, k, kr)
    if q.dtype == _BF16 and qr.dtype == _BF16 and k.dtype == _BF16 and kr.dtype == _BF16:
        arrays = (q.view(_U16), qr.view(_U16), k.view(_U16), kr.view(_U16))   # widened once
    if len(rows) == 1 and type(rows[0][3]) is tuple and counts[0] <= chunk:
        return [_range_row_lse(arrays, rows[0], counts[0], scale32)]
    scores = np.empty(sum(counts), np.float32)
    pieces, first, gathered = _union(rows)
    if gathered <= chunk:             # the common case: every key in one gather
        both = _widened(arrays, rows, pieces, gathered)
        f, o, dot = len(rows), 0, np.dot
        for r, n in enumerate(counts):          # each row's keys: one matrix-vector product
            g = f + first[r]
            dot(both[g:g + n], both[r], scores[o:o + n])
            o += n
        scores *= scale32
        return _reduced(scores, counts)
    pieces = []                       # (tokens, key head, row, score offset, count)
    fill = off = 0
    for r, (_, _, n2, keys) in enumerate(rows):
        n, j = counts[r], 0
        while j < n:
            take = min(n - j, chunk - fill)
            tokens = (slice(keys[0] + j, keys[0] + j + take) if type(keys) is tuple
                      else keys[j:j + take])
            pieces.append((tokens, n2, r, off + j, take))
            fill += take
            j += take
            if fill == chunk:
                _score(arrays, rows, pieces, scores)
                pieces, fill = [], 0
        off += n
    if pieces:
        _score(arrays, rows, pieces, scores)
    scores *= scale32
    return _reduced(scores, counts)


def _range_row_lse(arrays, row, n: int, scale32) -> float:
    """rows_lse of one row whose keys are a token range: the same widening, matrix-vector
    product and reduction as the general path (the same values), without its bookkeeping
    (S9 recomputes one such row on most calls)."""
    q, qr, k, kr = arrays
    t, h, n2, (a, e) = row
    d = q.shape[2]
    bits = q.dtype == _U16
    both = np.empty((1 + n, d + qr.shape[2]), np.uint32 if bits else np.float32)
    both[0, :d] = q[t, h]
    both[0, d:] = qr[t, h]
    both[1:, :d] = k[a:e, n2]
    both[1:, d:] = kr[a:e, n2]
    if bits:
        both <<= 16
        both = both.view(np.float32)
    scores = np.dot(both[1:], both[0])
    scores *= scale32
    return segment_lse(scores, [n])[0]


def _reduced(scores, counts) -> list:
    """segment_lse of the rows, a group of rows (<= _LSE_GROUP keys) at a time."""
    if len(scores) <= _LSE_GROUP:
        return segment_lse(scores, counts)
    out, g0, o0 = [], 0, 0
    while g0 < len(counts):
        g1, n = g0 + 1, counts[g0]
        while g1 < len(counts) and n + counts[g1] <= _LSE_GROUP:
            n += counts[g1]
            g1 += 1
        out += segment_lse(scores[o0:o0 + n], counts[g0:g1])
        g0, o0 = g1, o0 + n
    return out


def _union(rows):
    """The keys to gather: [(tokens, key head, count)] -- the (first, end) ranges of one key
    head merged where they overlap or touch, an index array on its own -- the total count,
    and per row the position of its first key among the gathered keys."""
    first = [0] * len(rows)
    pieces, spans, masked = [], [], []
    for r, (_, _, n2, keys) in enumerate(rows):
        if type(keys) is tuple:
            spans.append((n2, keys[0], keys[1], r))
        else:
            masked.append(r)
    spans.sort()
    total = 0
    head = a0 = e0 = None
    for n2, a, e, r in spans:
        if n2 != head or a > e0:          # a new piece (the previous one is complete)
            if head is not None:
                pieces.append((slice(a0, e0), head, e0 - a0))
                total += e0 - a0
            head, a0, e0 = n2, a, e
        elif e > e0:
            e0 = e
        first[r] = total + a - a0
    if head is not None:
        pieces.append((slice(a0, e0), head, e0 - a0))
        total += e0 - a0
    for r in masked:
        _, _, n2, keys = rows[r]
        first[r] = total
        pieces.append((keys, n2, len(keys)))
        total += len(keys)
    return pieces, first, total


def _widened(arrays, rows, pieces, gathered):
    """float32 [len(rows) + gathered, D + Dr]: the rows' query vectors (q beside qr), then
    the pieces' keys (k beside kr); bfloat16 bits are written into 32-bit words and moved to
    their top half in one pass (exactly the float32 values)."""
    q, qr, k, kr = arrays
    d = q.shape[2]
    bits = q.dtype == _U16
    both = np.empty((len(rows) + gathered, d + qr.shape[2]), np.uint32 if bits else np.float32)
    f = len(rows)
    if q.flags.c_contiguous and qr.flags.c_contiguous:    # one row index into [T*N, width]
        n = q.shape[1]
        at = [t * n + h for t, h, _, _ in rows]
        both[:f, :d] = q.reshape(-1, d).take(at, axis=0)
        both[:f, d:] = qr.reshape(-1, qr.shape[2]).take(at, axis=0)
    else:
        ts, hs = [t for t, _, _, _ in rows], [h for _, h, _, _ in rows]
        both[:f, :d] = q[ts, hs]
        both[:f, d:] = qr[ts, hs]
    for tokens, n2, n in pieces:
        both[f:f + n, :d] = k[tokens, n2]
        both[f:f + n, d:] = kr[tokens, n2]
        f += n
    if bits:
        both <<= 16
        return both.view(np.float32)
    return both


def _score(arrays, rows, pieces, scores) -> None:
    """The float32 dot products of the pieces' keys with their rows' query vectors: the
    query rows and the keys are stacked (q above k, qr above kr), the two stacks put side by
    side and widened to float32 in one go."""
    q, qr, k, kr = arrays
    left = np.concatenate([q[t:t + 1, h] for t, h, _, _ in rows]
                          + [k[tokens, n2] for tokens, n2, *_ in pieces])
    right = np.concatenate([qr[t:t + 1, h] for t, h, _, _ in rows]
                           + [kr[tokens, n2] for tokens, n2, *_ in pieces])
    if left.dtype == _U16:
        both = np.concatenate((left, right), axis=1, dtype=np.uint32)
        both <<= 16
        both = both.view(np.float32)
    else:
        both = np.concatenate((left, right), axis=1, dtype=np.float32)
    f = len(rows)
    for _, _, r, o, n in pieces:
        np.matmul(both[f:f + n], both[r], out=scores[o:o + n])
        f += n
