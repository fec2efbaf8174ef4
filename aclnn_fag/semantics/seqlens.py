"""Cumulative sequence ends (actualSeqQLen / actualSeqKvLen) and what follows from them.

The op takes **cumulative end offsets** (a leading 0 reads as an empty first sequence): per-sequence
lengths [2, 2, 0, 2, 2] are passed as [2, 4, 4, 6, 8] (docs/semantics.md, "Sequence lengths").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SeqInfo", "seq_info", "lengths_to_cumulative", "cumulative_to_lengths",
           "per_sequence_hint", "ends_problem"]

PER_SEQUENCE_HINT = (" -- actual_seq_qlen/actual_seq_kvlen look like per-sequence lengths (they sum "
                     "to T); the op takes cumulative ends without a leading 0 "
                     "(aclnn_fag.seqlens.lengths_to_cumulative)")


def per_sequence_hint(ends, total=None) -> str:
    """' -- ...' when ``ends`` look like per-sequence lengths: with ``total`` (T) known, they
    sum to T and the last is not T; without it, they decrease somewhere."""
    if not ends or len(ends) < 2:
        return ""
    if total is not None:
        return PER_SEQUENCE_HINT if sum(ends) == total and ends[-1] != total else ""
    if any(b < a for a, b in zip(ends, ends[1:])) and min(ends) >= 0:
        return (" -- these look like per-sequence lengths, not cumulative ends "
                "(aclnn_fag.seqlens.lengths_to_cumulative converts lengths to ends)")
    return ""


def ends_problem(name: str, ends, total=None, total_name: str = "T") -> str:
    """What is wrong with cumulative ends ``ends`` (ints), or '' when nothing is: a negative
    entry, a decrease, or (with ``total`` = T) a last end past T. The public call (check S4 of
    docs/validation.md) and the helpers of aclnn_fag.seqlens / aclnn_fag.softmax_layout all
    report these with this text."""
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


def lengths_to_cumulative(lengths) -> np.ndarray:
    """Per-sequence lengths -> the cumulative ends the op takes (int64, no leading 0)."""
    arr = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise ValueError("lengths_to_cumulative: lengths must be >= 0")
    return np.cumsum(arr, dtype=np.int64)


def cumulative_to_lengths(ends) -> np.ndarray:
    """Cumulative ends (no leading 0) -> per-sequence lengths (int64)."""
    arr = np.asarray(ends, dtype=np.int64).reshape(-1)
    return np.diff(arr, prepend=np.int64(0))


@dataclass(frozen=True)
class SeqInfo:
    """Per-batch starts/lengths derived from the cumulative ends.

    ``batch`` is B of docs/semantics.md, "Sequence lengths": the raw count minus the trailing run
    (index >= 1) of batches whose query and key lengths are both 0.
    ``max_sq``/``max_skv`` are taken over all raw entries.
    """

    q_ends: tuple
    kv_ends: tuple
    q_starts: tuple
    kv_starts: tuple
    sq: tuple
    skv: tuple
    batch: int
    max_sq: int
    max_skv: int

    @property
    def batch_raw(self) -> int:
        return len(self.q_ends)

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
    return SeqInfo(q_ends=q_ends, kv_ends=kv_ends, q_starts=q_starts, kv_starts=kv_starts,
                   sq=sq, skv=skv, batch=batch,
                   max_sq=max(sq) if sq else 0, max_skv=max(skv) if skv else 0)
