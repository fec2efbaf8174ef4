"""Per-sequence lengths and the cumulative ends the op takes (docs/semantics.md, Sequence
lengths).

The op's ``actual_seq_qlen``/``actual_seq_kvlen`` hold **cumulative end offsets**: lengths
``[2, 2, 0, 2, 2]`` are passed as ``[2, 4, 4, 6, 8]``. These helpers check their input the
way the public call does and with the same messages: a list of integers (``TypeError``
otherwise, e.g. for floats), no negative entry, ends that never decrease (``ValueError``).

* ``lengths_to_cumulative(lengths)`` -> int64 ends;
* ``cumulative_to_lengths(ends)`` -> int64 lengths;
* ``max_lengths(q_ends, kv_ends=None)`` -> ``(maxSq, maxSkv)``, the last two dims of the
  ``[maxSq, maxSkv]`` mask of sparse modes 0/1 (``aclnn_fag.masks.band_mask``).

A leading 0 (flash-attn's ``cu_seqlens``) is accepted: the op reads it as an empty first
sequence (docs/semantics.md, The leading-0 form).
"""

from __future__ import annotations

import numpy as np

from .semantics.seqlens import ends_problem
from .validate import _check_int_list

__all__ = ["lengths_to_cumulative", "cumulative_to_lengths", "max_lengths"]


def _ends(name, ends) -> tuple:
    values = _check_int_list(name, ends)
    if values is None:
        raise TypeError(f"parameter '{name}' must be a 1-D sequence of integers, got None")
    problem = ends_problem(name, values)
    if problem:
        raise ValueError(f"parameter '{name}': {problem} (docs/validation.md, S4)")
    return values


def lengths_to_cumulative(lengths) -> np.ndarray:
    """Per-sequence lengths -> the cumulative ends the op takes (int64, no leading 0).

    ``[300, 0, 212]`` -> ``[300, 300, 512]``. Raises TypeError for anything but a 1-D
    sequence of integers and ValueError for a negative length."""
    values = _check_int_list("lengths", lengths)
    if values is None:
        raise TypeError("parameter 'lengths' must be a 1-D sequence of integers, got None")
    for i, x in enumerate(values):
        if x < 0:
            raise ValueError(f"parameter 'lengths' has a negative entry ({x} at index {i}): "
                             f"per-sequence lengths must be >= 0, got {list(values[:8])}")
    return np.cumsum(np.asarray(values, dtype=np.int64), dtype=np.int64)


def cumulative_to_lengths(ends) -> np.ndarray:
    """Cumulative ends -> per-sequence lengths (int64): ``[300, 300, 512]`` -> ``[300, 0, 212]``.

    Raises TypeError for anything but a 1-D sequence of integers and ValueError for ends that
    are negative or decrease (per-sequence lengths passed by mistake are named in the message)."""
    values = _ends("ends", ends)
    arr = np.asarray(values, dtype=np.int64)
    return np.diff(arr, prepend=np.int64(0))


def max_lengths(q_ends, kv_ends=None) -> tuple:
    """``(maxSq, maxSkv)`` of cumulative ends (``kv_ends`` defaults to ``q_ends``): the last
    two dims of the explicit mask of sparse modes 0/1."""
    q = cumulative_to_lengths(_ends("q_ends", q_ends))
    kv = q if kv_ends is None else cumulative_to_lengths(_ends("kv_ends", kv_ends))
    return int(q.max()), int(kv.max())
