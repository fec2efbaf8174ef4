"""Cumulative sequence ends (actualSeqQLen / actualSeqKvLen) and what follows from them.

The op takes **cumulative end offsets without a leading 0**: per-sequence
lengths [2, 2, 0, 2, 2] are passed as [2, 4, 4, 6, 8] (docs/semantics.md, "Sequence lengths").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SeqInfo", "seq_info", "lengths_to_cumulative", "cumulative_to_lengths"]


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
