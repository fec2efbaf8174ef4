"""The device's memory layout of ``softmax_max``/``softmax_sum`` -- declared ``[T1, N1, 8]``,
but per batch b one contiguous ``[N1, Sq_b, 8]`` block at flat offset ``qStart[b]*N1*8`` --
and converters to and from token-major arrays (docs/semantics.md, Softmax statistics).
"""

from __future__ import annotations

import numpy as np

from .seqlens import SeqInfo, checked_ends, seq_info

__all__ = ["COPIES", "device_stats_from_token_major", "token_major_from_device_stats",
           "device_stat_blocks"]

COPIES = 8


def device_stat_blocks(stats: np.ndarray, seqs: SeqInfo, batch: int):
    """View of batch ``batch``'s [N1, Sq_b, 8] block inside a [T1, N1, 8] stats array."""
    n1 = stats.shape[1]
    flat = np.ascontiguousarray(stats).reshape(-1)
    start, sq = seqs.q_starts[batch], seqs.sq[batch]
    return flat[start * n1 * COPIES:(start + sq) * n1 * COPIES].reshape(n1, sq, COPIES)


def _checked_info(actual_seq_qlen, t1) -> SeqInfo:
    ends = checked_ends("actual_seq_qlen", actual_seq_qlen, t1, "T (stats.shape[0])",
                        strip_padding=True)        # end-of-data padding entries are no batches
    return seq_info(ends, ends)


def device_stats_from_token_major(token_major, actual_seq_qlen) -> np.ndarray:
    """Token-major ``[T1, N1]`` (or ``[T1, N1, 1]``) statistics -> the device layout
    ``[T1, N1, 8]`` float32; rows after the last end stay 0."""
    tm = np.asarray(token_major)
    if tm.ndim == 3 and tm.shape[2] == 1:
        tm = tm[:, :, 0]
    if tm.ndim != 2:
        hint = (" -- [T, N, 8] statistics are already in the op's declared shape; "
                "token_major_from_device_stats reads them" if tm.ndim == 3 else "")
        raise ValueError(f"parameter 'token_major' must be [T, N] or [T, N, 1], got shape "
                         f"{tm.shape}{hint}")
    info = _checked_info(actual_seq_qlen, tm.shape[0])
    out = np.zeros(tm.shape + (COPIES,), dtype=np.float32)
    for b, (s, n) in enumerate(zip(info.q_starts, info.sq)):
        device_stat_blocks(out, info, b)[...] = tm[s:s + n].T[:, :, None]
    return out


def token_major_from_device_stats(stats, actual_seq_qlen) -> np.ndarray:
    """The device layout ``[T1, N1, 8]`` -> token-major ``[T1, N1]`` (copy 0, same dtype)."""
    st = np.asarray(stats)
    if st.ndim != 3 or st.shape[2] != COPIES:
        raise ValueError(f"parameter 'stats' must be [T, N, 8], got shape {st.shape}")
    st = np.ascontiguousarray(st)             # one copy at most, not one per batch
    info = _checked_info(actual_seq_qlen, st.shape[0])
    out = np.zeros(st.shape[:2], dtype=st.dtype)
    for b, (s, n) in enumerate(zip(info.q_starts, info.sq)):
        out[s:s + n] = device_stat_blocks(st, info, b)[:, :, 0].T
    return out
