"""Cumulative sequence ends (lengths ``[2, 2, 0]`` are passed as ``[2, 4, 4]``) and what
follows from them (docs/semantics.md, Sequence lengths; docs/releases.md, End-of-data padding).
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .constants import INT64_MAX, INT64_MIN, LIMITS, MAX_INT_ARRAY_ENTRIES

__all__ = ["lengths_to_cumulative", "cumulative_to_lengths", "max_lengths", "int_list",
           "SeqInfo", "seq_info", "per_sequence_hint", "ends_problem", "checked_ends"]


def per_sequence_hint(ends, total=None) -> str:
    """' -- ...' when ``ends`` look like per-sequence lengths (summing to ``total``; or falling)."""
    if not ends or len(ends) < 2:
        return ""
    if total is not None:
        if sum(ends) != total or ends[-1] == total:
            return ""
        return (" -- actual_seq_qlen/actual_seq_kvlen look like per-sequence lengths (they sum "
                "to T); the op takes cumulative ends without a leading 0 "
                "(aclnn_fag.seqlens.lengths_to_cumulative)")
    if any(b < a for a, b in zip(ends, ends[1:])) and min(ends) >= 0:
        return (" -- these look like per-sequence lengths, not cumulative ends "
                "(aclnn_fag.seqlens.lengths_to_cumulative converts lengths to ends)")
    return ""


def ends_problem(name: str, ends, total=None, total_name: str = "T") -> str:
    """What is wrong with cumulative ends ``ends`` (ints), or '' when nothing is: a negative
    entry, a decrease, or (with ``total`` = T) a last end past T (S4 of docs/validation.md)."""
    if not ends:
        return f"{name} must have at least one entry"
    hint = per_sequence_hint(ends, total)
    shown = f"{list(ends[:8])}{'...' if len(ends) > 8 else ''}"
    for i, x in enumerate(ends):
        if x < 0:
            return (f"{name} has a negative entry ({x} at index {i}): it must hold cumulative "
                    f"ends, got {shown}{hint}")
        if i and x < ends[i - 1]:
            return (f"{name} must be non-decreasing cumulative ends (entry {i} = {x} < "
                    f"{ends[i - 1]}), got {shown}{hint}")
    if total is not None and ends[-1] > total:
        return (f"the last cumulative end {ends[-1]} of {name} exceeds {total_name} = {total} "
                f"(the kernel would read out of bounds); the last end must be T{hint}")
    return ""


@dataclass(frozen=True)
class SeqInfo:
    """Per-batch starts/lengths of the cumulative ends; ``batch`` is B (docs/semantics.md),
    ``max_sq``/``max_skv`` are taken over all raw entries."""

    q_starts: tuple
    kv_starts: tuple
    sq: tuple
    skv: tuple
    batch: int
    max_sq: int
    max_skv: int

    def batches(self):
        """Yield (b, q_start, sq, kv_start, skv) for b < batch."""
        for b in range(self.batch):
            yield b, self.q_starts[b], self.sq[b], self.kv_starts[b], self.skv[b]


def seq_info(actual_seq_qlen, actual_seq_kvlen) -> SeqInfo:
    """Build SeqInfo from the two cumulative-end sequences (already validated)."""
    q_ends = tuple(int(x) for x in actual_seq_qlen)
    kv_ends = tuple(int(x) for x in actual_seq_kvlen)
    q_starts = ((0,) + q_ends[:-1]) if q_ends else ()
    kv_starts = ((0,) + kv_ends[:-1]) if kv_ends else ()
    sq = tuple(e - s for s, e in zip(q_starts, q_ends))
    skv = tuple(e - s for s, e in zip(kv_starts, kv_ends))
    batch = min(len(q_ends), len(kv_ends))
    while batch > 1 and sq[batch - 1] == 0 and skv[batch - 1] == 0:
        batch -= 1
    return SeqInfo(q_starts, kv_starts, sq, skv, batch, max(sq, default=0), max(skv, default=0))


def int_list(name, value, required=False):
    """An int array argument (aclIntArray): None (TypeError when ``required``), or a 1-D
    sequence of int64 values (a list or tuple, a 1-D numpy array or a 1-D CPU torch tensor)."""
    if value is None:
        if required:
            raise TypeError(f"parameter '{name}' must be a 1-D sequence of integers, got None")
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise TypeError(f"parameter '{name}' is a torch tensor on {value.device.type!r}: "
                            "the sequence ends are read on the host; pass a list, a numpy array "
                            f"or a CPU tensor ({name}.cpu())")
        value = value.detach().numpy()
    is_array = isinstance(value, np.ndarray)
    if is_array and value.ndim != 1:
        raise TypeError(f"parameter '{name}' must be a 1-D sequence of integers, got a "
                        f"{value.ndim}-D array of shape {value.shape}")
    if not is_array and (not isinstance(value, Sequence)
                         or isinstance(value, (str, bytes, bytearray))):
        raise TypeError(f"parameter '{name}' must be a 1-D sequence of integers (list, tuple, "
                        f"1-D numpy array or CPU torch tensor) or None, got {type(value).__name__}")
    if len(value) > MAX_INT_ARRAY_ENTRIES:
        raise ValueError(f"parameter '{name}' has {len(value)} entries; at most "
                         f"{LIMITS['max_batch']} sequences are supported (aclnn_fag refuses "
                         f"to copy more than {MAX_INT_ARRAY_ENTRIES})")
    if is_array:
        if value.size and value.dtype.kind not in "iu":
            raise TypeError(f"parameter '{name}' must be a 1-D sequence of integers, got an "
                            f"array of dtype {value.dtype}")
        value = value.tolist()
    for i, x in enumerate(value):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
            raise TypeError(f"parameter '{name}' must be a 1-D sequence of integers; entry "
                            f"{i} is {type(x).__name__} {x!r}")
    out = tuple(int(x) for x in value)
    for x in out:
        if not INT64_MIN <= x <= INT64_MAX:
            raise ValueError(f"parameter '{name}' has {x}, which does not fit in int64")
    return out


def checked_ends(name, ends, total=None, total_name: str = "T", strip_padding=False) -> tuple:
    """Cumulative ends as ints (without their end-of-data padding when ``strip_padding``),
    checked as the public call checks them (S4; ``total``: T when known)."""
    values = int_list(name, ends, required=True)
    if strip_padding:
        values = without_padding(values)
    problem = ends_problem(name, values, total, total_name)
    if problem:
        raise ValueError(f"parameter '{name}': {problem} (docs/validation.md, S4)")
    return values


def lengths_to_cumulative(lengths) -> np.ndarray:
    """Per-sequence lengths -> the cumulative ends the op takes (int64, no leading 0):
    ``[300, 0, 212]`` -> ``[300, 300, 512]``."""
    values = int_list("lengths", lengths, required=True)
    for i, x in enumerate(values):
        if x < 0:
            raise ValueError(f"parameter 'lengths' has a negative entry ({x} at index {i}): "
                             f"per-sequence lengths must be >= 0, got {list(values[:8])}")
    return np.cumsum(np.asarray(values, dtype=np.int64), dtype=np.int64)


def cumulative_to_lengths(ends) -> np.ndarray:
    """Cumulative ends -> per-sequence lengths (int64): ``[300, 300, 512]`` -> ``[300, 0, 212]``."""
    return np.diff(np.asarray(checked_ends("ends", ends), dtype=np.int64), prepend=np.int64(0))


def max_lengths(q_ends, kv_ends=None) -> tuple:
    """``(maxSq, maxSkv)`` of cumulative ends (``kv_ends`` defaults to ``q_ends``): the last
    two dims of the explicit mask of sparse modes 0/1."""
    q = cumulative_to_lengths(checked_ends("q_ends", q_ends))
    kv = q if kv_ends is None else cumulative_to_lengths(checked_ends("kv_ends", kv_ends))
    return int(q.max()), int(kv.max())


# --------------------------------------------------------------------------- end-of-data padding
def padding_start(ends) -> int:
    """Where the end-of-data padding of ``ends`` starts: the index of a trailing run of 0
    entries that follows a positive end (``[2, 5, 9, 0, 0]`` -> 3), else ``len(ends)``."""
    n = len(ends)
    while n > 1 and ends[n - 1] == 0:
        n -= 1
    return n if n < len(ends) and ends[n - 1] > 0 else len(ends)


def without_padding(ends) -> tuple:
    """``ends`` without their end-of-data padding."""
    return tuple(ends[:padding_start(ends)])


def is_padded(ends) -> bool:
    return padding_start(ends) < len(ends)


def padding_problem(q_ends, kv_ends, t1: int, t2: int, release) -> str:
    """What a release that checks end-of-data padding (``release.eod_padding``) rejects, or
    '': both sides end short of T1/T2 but not both arrays end in padding."""
    if not release.eod_padding or not q_ends or not kv_ends:
        return ""
    q, kv = without_padding(q_ends), without_padding(kv_ends)
    if not (q and kv and t1 > q[-1] and t2 > kv[-1]):
        return ""
    padded = (is_padded(q_ends), is_padded(kv_ends))
    if all(padded):
        return ""
    side = ("actual_seq_kvlen" if padded[0] else "actual_seq_qlen") if any(padded) else "both"
    return (f"the query ends at {q[-1]} < T1 = {t1} and the keys at {kv[-1]} < T2 = {t2}, so CANN "
            f"{release.name} requires end-of-data padding: the last entries of both "
            f"actual_seq_qlen and actual_seq_kvlen must be 0 ({side} not padded)")


def with_device_padding(q_ends, kv_ends, t1: int, t2: int, release) -> tuple:
    """The ends the device is given: on a release that checks end-of-data padding, a 0 entry
    appended to both arrays when both sides end short of T1/T2 and neither is padded yet
    (so a call written for "last end below T" works on every release); else unchanged."""
    q, kv = tuple(q_ends), tuple(kv_ends)
    if (release.eod_padding and q and kv and not is_padded(q) and not is_padded(kv)
            and t1 > q[-1] and t2 > kv[-1]):
        return q + (0,), kv + (0,)
    return q, kv


def device_batch_count(q_ends, kv_ends, release) -> int:
    """B as the release counts it from the ends the device is given (rule 27's 4-D mask
    check): from 9.1 the trailing entries whose cumulative values are 0 are dropped; before,
    the trailing entries (index >= 1) whose query and key lengths are both 0."""
    n = min(len(q_ends), len(kv_ends))
    if release.batch_drops_zero_ends:
        while n > 0 and q_ends[n - 1] == 0 and kv_ends[n - 1] == 0:
            n -= 1
        return n
    while n > 1 and q_ends[n - 1] == q_ends[n - 2] and kv_ends[n - 1] == kv_ends[n - 2]:
        n -= 1
    return n
