"""Kept sets per sparse mode (docs/sparse_modes.md): per batch, a band ``lo <= j - i <= hi``,
intersected for modes 0/1/5 with the explicit mask (the compressed modes' mask adds nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ..seqlens import SeqInfo
from ..constants import INT32_MAX

__all__ = ["COMPRESSED_MODES", "normalize_tokens", "band_index", "BatchKeep", "batch_keep",
           "MaskReader"]

COMPRESSED_MODES = (2, 3, 4, 7, 8)
_INF = float("inf")


def normalize_tokens(sparse_mode: int, pre_tokens: int, next_tokens: int) -> tuple:
    """pre/next after the op's normalisation: clamp to INT32_MAX; modes 2/3 -> (INT32_MAX, 0);
    mode 1 -> (INT32_MAX, INT32_MAX)."""
    if sparse_mode in (2, 3):
        return INT32_MAX, 0
    if sparse_mode == 1:
        return INT32_MAX, INT32_MAX
    return min(int(pre_tokens), INT32_MAX), min(int(next_tokens), INT32_MAX)


def band_index(sparse_mode: int, seqs: SeqInfo) -> int:
    """bandIdx of modes 7 (last b < B with Sq_b != 0) and 8 (first such b); 0 if none; -1
    for the other modes."""
    if sparse_mode not in (7, 8):
        return -1
    nonempty = [b for b in range(seqs.batch) if seqs.sq[b] != 0]
    if not nonempty:
        return 0
    return nonempty[-1] if sparse_mode == 7 else nonempty[0]


@dataclass(frozen=True)
class BatchKeep:
    """kept(i, j) = lo <= j - i <= hi (and mask == 0 when ``uses_mask``), local indices."""

    lo: float
    hi: float
    uses_mask: bool


def batch_keep(sparse_mode: int, b: int, sq: int, skv: int, pre: int, nxt: int,
               band_idx: int) -> BatchKeep:
    """The band and mask use of batch b (tokens already normalised)."""
    delta = skv - sq
    mode = sparse_mode
    if mode in (7, 8):      # the band batch as mode 4, the others causal (7: bottom-right)
        mode = 4 if b == band_idx else (3 if sparse_mode == 7 else 2)
    if mode in (0, 5):
        return BatchKeep(-pre, nxt, True)
    if mode == 1:
        return BatchKeep(-_INF, _INF, True)
    if mode == 2:
        return BatchKeep(-_INF, 0, False)
    if mode == 3:
        return BatchKeep(-_INF, delta, False)
    if mode == 4:
        return BatchKeep(delta - pre, delta + nxt, False)
    raise ValueError(f"sparse_mode {sparse_mode} has no kept set")


class MaskReader:
    """Reads the explicit mask of modes 0/1/5 as the kernel does: 2-D and [1, 1, ..] masks
    top-left, [B, 1|N1, ..] masks as packed ragged Sq_b x Skv_b (x N1) blocks."""

    def __init__(self, mask: np.ndarray, seqs: SeqInfo, n1: int):
        self.per_head, self._offsets, self._seqs, self._n1 = False, [], seqs, n1
        self._top_left = self._flat = None
        if mask.ndim == 2 or (mask.ndim == 4 and mask.shape[0] == 1 and mask.shape[1] == 1):
            self._top_left = mask.reshape(mask.shape[-2], mask.shape[-1])
            return
        self.per_head = mask.shape[1] != 1
        self._flat = mask.reshape(-1)
        heads = n1 if self.per_head else 1
        off = 0
        for b in range(seqs.batch):
            self._offsets.append(off)
            off += heads * seqs.sq[b] * seqs.skv[b]

    def block(self, b: int, i0: int, i1: int, j0: int, j1: int, heads=None) -> np.ndarray:
        """Boolean 'masked' block: [i1-i0, j1-j0], or [len(heads), i1-i0, j1-j0] when per-head."""
        if self._top_left is not None:
            return self._top_left[i0:i1, j0:j1] != 0
        sq, skv = self._seqs.sq[b], self._seqs.skv[b]
        base = self._offsets[b]
        if self.per_head:
            full = self._flat[base:base + self._n1 * sq * skv].reshape(self._n1, sq, skv)
            hs = range(self._n1) if heads is None else heads
            return full[list(hs), i0:i1, j0:j1] != 0
        full = self._flat[base:base + sq * skv].reshape(sq, skv)
        return full[i0:i1, j0:j1] != 0
