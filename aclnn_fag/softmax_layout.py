"""Converters between the device's softmax-statistics layout and token-major arrays
(docs/semantics.md, Softmax statistics).

The op declares ``softmax_max``/``softmax_sum`` as ``[T1, N1, 8]`` float32, but stores them per
batch as contiguous ``[N1, Sq_b, 8]`` blocks (8 equal copies). ``device_stats_from_token_major``
turns token-major ``[T1, N1]`` statistics (or ``[T1, N1, 1]``) into that layout;
``token_major_from_device_stats`` goes back. ``actual_seq_qlen`` is checked as the public call
checks it (same messages): integers, no negative entry, never decreasing, last end <= T.
"""

from __future__ import annotations

import numpy as np

from .semantics import softmax_layout as _layout
from .semantics.seqlens import SeqInfo, ends_problem
from .semantics.softmax_layout import COPIES
from .validate import _check_int_list

__all__ = ["COPIES", "device_stats_from_token_major", "token_major_from_device_stats"]


def _checked_ends(actual_seq_qlen, t1):
    if isinstance(actual_seq_qlen, SeqInfo):
        return actual_seq_qlen
    ends = _check_int_list("actual_seq_qlen", actual_seq_qlen)
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
    return _layout.device_stats_from_token_major(tm, ends)


def token_major_from_device_stats(stats, actual_seq_qlen) -> np.ndarray:
    """The device layout ``[T1, N1, 8]`` -> token-major ``[T1, N1]`` (copy 0, same dtype)."""
    st = np.asarray(stats)
    if st.ndim != 3 or st.shape[2] != COPIES:
        raise ValueError(f"parameter 'stats' must be [T, N, 8], got shape {st.shape}")
    ends = _checked_ends(actual_seq_qlen, st.shape[0])
    return _layout.token_major_from_device_stats(st, ends)
