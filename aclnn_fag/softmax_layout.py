"""The device's memory layout of ``softmax_max``/``softmax_sum`` and converters to and from
token-major arrays (docs/semantics.md, Softmax statistics).

The op declares the statistics as ``[T1, N1, 8]`` float32, but the memory is **not
token-major**: the element for batch b, head h, local row i, copy k sits at flat index
``qStart[b]*N1*8 + (h*Sq_b + i)*8 + k`` -- per batch a contiguous ``[N1, Sq_b, 8]`` block,
8 identical copies. Rows after the last cumulative end are not touched by the op (zero here).

* ``device_stats_from_token_major(tm, ends)``: token-major ``[T1, N1]`` (or ``[T1, N1, 1]``)
  statistics into that layout;
* ``token_major_from_device_stats(stats, ends)``: back to ``[T1, N1]``;
* ``device_stat_blocks(stats, seqs, b)``: batch b's ``[N1, Sq_b, 8]`` block, a view.

``actual_seq_qlen`` is checked as the public call checks it (same messages): integers, no
negative entry, never decreasing, last end <= T.
"""

from __future__ import annotations

import numpy as np

from .seqlens import SeqInfo, ends_problem, int_list, seq_info

__all__ = ["COPIES", "device_stats_from_token_major", "token_major_from_device_stats",
           "device_stat_blocks"]

COPIES = 8


def _info(seqs) -> SeqInfo:
    return seqs if isinstance(seqs, SeqInfo) else seq_info(seqs, seqs)


def device_stat_blocks(stats: np.ndarray, seqs, batch: int):
    """View of batch ``batch``'s [N1, Sq_b, 8] block inside a [T1, N1, 8] stats array."""
    info = _info(seqs)
    n1 = stats.shape[1]
    flat = np.ascontiguousarray(stats).reshape(-1)
    start, sq = info.q_starts[batch], info.sq[batch]
    return flat[start * n1 * COPIES:(start + sq) * n1 * COPIES].reshape(n1, sq, COPIES)


def _to_device(token_major: np.ndarray, actual_seq_qlen) -> np.ndarray:
    """A token-major [T1, N1] array -> the device layout [T1, N1, 8] (float32)."""
    tm = np.asarray(token_major)
    if tm.ndim != 2:
        raise ValueError(f"token_major must be [T, N], got shape {tm.shape}")
    info = _info(actual_seq_qlen)
    t1, n1 = tm.shape
    if info.q_ends and info.q_ends[-1] > t1:
        raise ValueError(f"actual_seq_qlen ends at {info.q_ends[-1]} but T={t1}")
    flat = np.zeros(t1 * n1 * COPIES, dtype=np.float32)
    for b in range(info.batch_raw):
        s, n = info.q_starts[b], info.sq[b]
        if n <= 0:
            continue
        block = flat[s * n1 * COPIES:(s + n) * n1 * COPIES].reshape(n1, n, COPIES)
        block[...] = tm[s:s + n].T[:, :, None]
    return flat.reshape(t1, n1, COPIES)


def _to_token_major(stats: np.ndarray, actual_seq_qlen) -> np.ndarray:
    """The device layout [T1, N1, 8] -> a token-major [T1, N1] array (copy 0; float32)."""
    st = np.asarray(stats)
    if st.ndim != 3 or st.shape[2] != COPIES:
        raise ValueError(f"stats must be [T, N, 8], got shape {st.shape}")
    info = _info(actual_seq_qlen)
    t1, n1, _ = st.shape
    if info.q_ends and info.q_ends[-1] > t1:
        raise ValueError(f"actual_seq_qlen ends at {info.q_ends[-1]} but T={t1}")
    flat = np.ascontiguousarray(st).reshape(-1)
    out = np.zeros((t1, n1), dtype=st.dtype)
    for b in range(info.batch_raw):
        s, n = info.q_starts[b], info.sq[b]
        if n <= 0:
            continue
        block = flat[s * n1 * COPIES:(s + n) * n1 * COPIES].reshape(n1, n, COPIES)
        out[s:s + n] = block[:, :, 0].T
    return out


def _checked_ends(actual_seq_qlen, t1):
    if isinstance(actual_seq_qlen, SeqInfo):
        return actual_seq_qlen
    ends = int_list("actual_seq_qlen", actual_seq_qlen)
    if ends is None:
        raise TypeError("parameter 'actual_seq_qlen' must be a 1-D sequence of integers, got None")
    problem = ends_problem("actual_seq_qlen", ends, t1, "T (stats.shape[0])")
    if problem:
        raise ValueError(f"parameter 'actual_seq_qlen': {problem} (docs/validation.md, S4)")
    return ends


def device_stats_from_token_major(token_major, actual_seq_qlen) -> np.ndarray:
    """Token-major ``[T1, N1]`` (or ``[T1, N1, 1]``) statistics -> the device layout
    ``[T1, N1, 8]`` float32, ready for ``softmax_max``/``softmax_sum``.

    ``actual_seq_qlen``: the cumulative ends of the call. Rows after the last end stay 0.
    A log-sum-exp ``lse`` converts as ``softmax_max = device_stats_from_token_major(lse, ends)``
    with ``softmax_sum`` all ones (a ``(lse, 1)`` pair describes the same softmax)."""
    tm = np.asarray(token_major)
    if tm.ndim == 3 and tm.shape[2] == 1:
        tm = tm[:, :, 0]
    if tm.ndim != 2:
        raise ValueError(f"parameter 'token_major' must be [T, N] or [T, N, 1], got shape {tm.shape}"
                         + (" -- [T, N, 8] statistics are already in the op's declared shape; "
                            "token_major_from_device_stats reads them" if tm.ndim == 3 else ""))
    ends = _checked_ends(actual_seq_qlen, tm.shape[0])
    return _to_device(tm, ends)


def token_major_from_device_stats(stats, actual_seq_qlen) -> np.ndarray:
    """The device layout ``[T1, N1, 8]`` -> token-major ``[T1, N1]`` (copy 0, same dtype)."""
    st = np.asarray(stats)
    if st.ndim != 3 or st.shape[2] != COPIES:
        raise ValueError(f"parameter 'stats' must be [T, N, 8], got shape {st.shape}")
    ends = _checked_ends(actual_seq_qlen, st.shape[0])
    return _to_token_major(st, ends)
