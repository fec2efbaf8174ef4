"""The device's memory layout of softmaxMax / softmaxSum (docs/semantics.md, "Softmax statistics").

Declared shape [T1, N1, 8], float32, but the memory is **not token-major**:
the element for batch b, head h, local row i, copy k sits at flat index
``qStart[b]*N1*8 + (h*Sq_b + i)*8 + k`` -- per batch a contiguous
[N1, Sq_b, 8] block, 8 identical copies. Rows after the last cumulative end
are not touched by the op (zero here).
"""

from __future__ import annotations

import numpy as np

from .seqlens import SeqInfo, seq_info

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


def device_stats_from_token_major(token_major: np.ndarray, actual_seq_qlen) -> np.ndarray:
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


def token_major_from_device_stats(stats: np.ndarray, actual_seq_qlen) -> np.ndarray:
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
