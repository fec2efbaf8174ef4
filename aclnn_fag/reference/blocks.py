"""The block iterator: which tiles of a (batch, query tile) have work.

A tile is skipped when the kept set of its batch (a diagonal band, semantics.sparse) excludes
all of it, *full* (no mask) when the band covers it and no explicit mask applies or its mask
block is all zero, else *partial* with a boolean "masked" block. A tile the band cuts (the
diagonal of causal and band modes) is cut into row strips, halving down to
``BlockSizes.min_split`` rows, each strip's keys trimmed to the band's reach.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from ..semantics.sparse import BatchKeep, MaskReader

__all__ = ["BlockSizes", "default_block_sizes", "tiles", "query_blocks", "rows_without_keys",
           "split_rows"]

_INF = float("inf")


@dataclass(frozen=True)
class BlockSizes:
    """``q_rows``: rows per query tile *after* stacking the G query heads of a KV head
    (so a tile covers q_rows // G tokens); ``k``: keys per key tile; ``min_split``: the
    fewest rows a band-cut tile is split down to."""

    q_rows: int = 512
    k: int = 512
    min_split: int = 128

    def q_tokens(self, group: int) -> int:
        return max(8, self.q_rows // max(1, group))


def default_block_sizes() -> BlockSizes:
    """Defaults, overridable with ACLNN_FAG_BLOCK_Q / ACLNN_FAG_BLOCK_K / ACLNN_FAG_BLOCK_MIN."""
    return BlockSizes(q_rows=int(os.environ.get("ACLNN_FAG_BLOCK_Q", 512)),
                      k=int(os.environ.get("ACLNN_FAG_BLOCK_K", 512)),
                      min_split=int(os.environ.get("ACLNN_FAG_BLOCK_MIN", 128)))


def query_blocks(sq: int, q_tokens: int) -> Iterator[tuple]:
    for i0 in range(0, sq, q_tokens):
        yield i0, min(sq, i0 + q_tokens)


def tiles(keep: BatchKeep, mask: Optional[MaskReader], b: int, i0: int, i1: int, skv: int,
          blocks: BlockSizes, heads=None) -> Iterator[tuple]:
    """Yield (r0, r1, j0, j1, masked, key_tile) for each piece of query rows [i0, i1) with
    work: rows [i0 + r0, i0 + r1) meet keys [j0, j1) of the batch; ``masked`` is None for a
    full tile, else a bool array (True = excluded) [r1-r0, j1-j0], or [len(heads), ...] for
    a per-head mask. The pieces of one key tile ``key_tile = (kt0, kt1)`` come together."""
    lo, hi = keep.lo, keep.hi
    j_first = max(0, i0 + lo) if lo != -_INF else 0
    j_last = min(skv - 1, i1 - 1 + hi) if hi != _INF else skv - 1
    if j_last < j_first:
        return
    bk = blocks.k
    for j0 in range(int(j_first), int(j_last) + 1, bk):   # tiles start where the band starts
        key_tile = (j0, min(skv, j0 + bk))
        for piece in _split(keep, mask, b, i0, i0, i1, j0, key_tile[1],
                            split_rows(blocks, i1 - i0), heads):
            yield (*piece, key_tile)


def split_rows(blocks: BlockSizes, rows: int) -> int:
    """The fewest rows a band-cut piece of a ``rows``-row query tile is split down to:
    ``blocks.min_split``, but a tile of fewer than 2 * min_split rows (a short sequence) is
    still halved once when both halves keep 32 rows or more -- its diagonal tile would
    otherwise compute the whole masked half (measured: ~5 % of a T = 256 causal step)."""
    return min(blocks.min_split, max(32, (rows + 1) // 2))


def _split(keep, mask, b, i0, a0, a1, j0, j1, min_split, heads):
    """Pieces of rows [a0, a1) x keys [j0, j1): keys trimmed to the band's reach of these
    rows; rows halved (down to ``min_split``) while the band still cuts the piece."""
    lo, hi = keep.lo, keep.hi
    if lo != -_INF:
        j0 = max(j0, a0 + int(lo))
    if hi != _INF:
        j1 = min(j1, a1 + int(hi))
    if j1 <= j0:
        return
    band_full = j0 - (a1 - 1) >= lo and (j1 - 1) - a0 <= hi
    if not band_full and a1 - a0 >= 2 * min_split:
        am = (a0 + a1) // 2
        yield from _split(keep, mask, b, i0, a0, am, j0, j1, min_split, heads)
        yield from _split(keep, mask, b, i0, am, a1, j0, j1, min_split, heads)
        return
    masked = None
    if not band_full:
        masked = _band_mask(a1 - a0, j1 - j0, j0 - a0, lo, hi)
    if keep.uses_mask:
        explicit = mask.block(b, a0, a1, j0, j1, heads)
        if explicit.any():
            masked = explicit if masked is None else (explicit | masked)
    if masked is not None and masked.all():
        return
    yield a0 - i0, a1 - i0, j0, j1, masked


@functools.lru_cache(maxsize=64)
def _band_mask(rows: int, cols: int, offset: int, lo, hi) -> np.ndarray:
    """Read-only 'excluded' mask of a tile whose key j and row i differ by offset + c - r;
    the same few shapes recur along a diagonal, so they are cached."""
    d = np.arange(offset, offset + cols)[None, :] - np.arange(rows)[:, None]
    masked = (d > hi) if lo == -_INF else ((d < lo) | (d > hi))
    masked.flags.writeable = False
    return masked


def rows_without_keys(work_tiles, group: int, rows: int) -> int:
    """How many (head, row) pairs of a query tile have no kept key in any of its tiles."""
    has_key = np.zeros((group, rows), dtype=bool)
    for r0, r1, _, _, masked, _ in work_tiles:
        if masked is None:
            has_key[:, r0:r1] = True
        else:
            has_key[:, r0:r1] |= ~masked.all(axis=-1)
    return int(has_key.size - np.count_nonzero(has_key))
