"""NumPy forward of the op (docs/semantics.md, "Forward"), tiled, with online softmax.

attention_out [T1, N1, Dv] and softmaxMax / softmaxSum [T1, N1, 8] in the device's layout
(per batch a [N1, Sq_b, 8] block). Per query tile the running max m, sum l and output acc
are updated key tile by key tile: m' = max(m, rowmax S); l' = l·e^(m−m') + Σ e^(S−m');
acc' = acc·e^(m−m') + P·V. Precision "device": P rounded to bf16 (ties away from zero)
before P·V (l sums the unrounded P), the output rounded at the end; "fp32"/"fp64": no
rounding. A row with no kept key stores max = -FLT_MAX, sum = FLT_MAX and output 0 (the
device's invalid lines) and warns.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..call import FagForward, FwdCall
from ..constants import FLT_MAX
from ..errors import FullyMaskedRowWarning
from ..softmax_layout import COPIES
from .blocks import BlockSizes, default_block_sizes, query_blocks, tiles
from .common import (NEG, KeySide, apply_mask, batch_heads, call_progress, gather_concat,
                     kernel_setup, row_max, row_part, row_sum, rows_2d, scatter_heads, scratch)
from .rounding import BF16, round_bf16_away_inplace

__all__ = ["attention_forward"]


def attention_forward(call: FwdCall, precision: str = "device",
                      blocks: BlockSizes | None = None, progress=None) -> FagForward:
    """Attention output and softmax statistics for a validated call. ``progress``: report
    progress on stderr when the call is long (``common.call_progress``)."""
    blocks = blocks or default_block_sizes()
    setup = kernel_setup(call, precision, blocks.q_tokens)
    work = setup.work
    q, v = call.query, call.value
    t1, n1, d_qk, dv = q.shape[0], q.shape[1], q.shape[2] + call.query_rope.shape[2], v.shape[2]
    out = np.zeros((t1, n1, dv), dtype=BF16 if setup.device else work)
    stats = [np.zeros((t1, n1, COPIES), dtype=work) for _ in range(2)]      # max, sum
    fully_masked = 0
    bar = call_progress(call, setup, "forward", progress)
    itemsize = np.dtype(work).itemsize

    def per_head_bytes(skv):          # the key side of one KV head
        return skv * (d_qk + dv) * itemsize

    with scratch() as buffers:
        for step in batch_heads(call, setup, blocks, per_head_bytes):
            fully_masked += _batch_heads_forward(call, setup, blocks, step, out, stats,
                                                 buffers, bar)
    bar.close()
    if fully_masked:
        warnings.warn(f"{fully_masked} (row, head) pairs have no kept key: the docs call this "
                      "unsupported; stored as the device's invalid lines (max = -FLT_MAX, "
                      "sum = FLT_MAX, output 0)", FullyMaskedRowWarning, stacklevel=3)
    return FagForward(out, *stats)


def _batch_heads_forward(call, setup, blocks, step, out, stats, buffers, bar) -> int:
    """One (batch, group of H KV heads) of the forward: every tile is [H, G*rows, C], the
    matmuls batched; returns the count of (row, head) pairs with no kept key."""
    work, device, scale, group, bq, mask = setup
    q, qr, k, kr, v = call.query, call.query_rope, call.key, call.key_rope, call.value
    n1, dv = q.shape[1], v.shape[2]
    b, qs, sq, ks, skv, keep, n2, hs, per_head = step
    fully_masked = 0
    nh = n2.stop - n2.start
    # per batch a [N1, Sq_b, 8] block
    max_block, sum_block = (x[qs:qs + sq].reshape(n1, sq, COPIES) for x in stats)
    key_side = KeySide(k, kr, v, slice(ks, ks + skv), n2, work, False, buffers)
    for i0, i1 in query_blocks(sq, bq):
        rows = slice(qs + i0, qs + i1)
        q_scaled = gather_concat((q, qr), rows, hs, work, 0, buffers, "queries")
        q_scaled = q_scaled.reshape(nh, -1, q_scaled.shape[-1])
        q_scaled *= scale                                   # scale·[Q | Qr]
        m = l = acc = None      # the running state: the first tile over every row gives it
        for r0, r1, j0, j1, masked, key_tile in tiles(keep, mask, b, i0, i1, skv, blocks,
                                                      per_head):
            k_tile, v_tile = key_side.get(key_tile, j0, j1)
            q_rows = rows_2d(q_scaled, group, r0, r1)
            s = np.matmul(q_rows, k_tile.swapaxes(-1, -2),
                          out=buffers.take("scores", q_rows.shape[:2] + (j1 - j0,), work))
            if masked is not None:
                apply_mask(s, masked, group)
            m_old = NEG if m is None else rows_2d(m, group, r0, r1)
            m_new = np.maximum(m_old, row_max(s))
            s -= m_new
            np.exp(s, out=s)
            tile_sum = row_sum(s)
            if device:
                round_bf16_away_inplace(s)
            first = m is None and r1 - r0 == i1 - i0    # m, l, acc = NEG, 0, 0 updated by it
            tile_out = np.matmul(s, v_tile, out=buffers.take("acc" if first else "tile_out",
                                                              s.shape[:2] + (dv,), work))
            if first:
                m, l, acc = m_new, tile_sum, tile_out
                continue
            if m is None:
                m, l, acc = _start_state(q_scaled, dv, buffers)
            # the running state of these rows, updated in place through [H, G, r, .] views
            shape4 = (nh, group, r1 - r0, -1)
            correction = np.exp(m_old - m_new).reshape(shape4)
            l_rows, acc_rows = row_part(l, group, r0, r1), row_part(acc, group, r0, r1)
            l_rows *= correction
            l_rows += tile_sum.reshape(shape4)
            acc_rows *= correction
            acc_rows += tile_out.reshape(shape4)
            row_part(m, group, r0, r1)[...] = m_new.reshape(shape4)
        if m is None:                                       # no key kept for any row
            m, l, acc = _start_state(q_scaled, dv, buffers)
        invalid = (m == NEG)[..., 0]
        if invalid.any():       # the device's invalid lines: sum FLT_MAX, output 0
            fully_masked += int(np.count_nonzero(invalid))
            l[invalid] = FLT_MAX
            acc[invalid] = 0.0
        acc /= l                                            # the output, in place
        if device:
            round_bf16_away_inplace(acc)
        scatter_heads(out, rows, hs, acc)
        max_block[hs, i0:i1] = m.reshape(nh * group, i1 - i0, 1)
        sum_block[hs, i0:i1] = l.reshape(nh * group, i1 - i0, 1)
        bar.step(nh)
    return fully_masked


def _start_state(q_tile, dv, buffers):
    """The running state (max, sum, output) of a query tile before any key: -FLT_MAX, 0, 0."""
    rows = q_tile.shape[:2] + (1,)
    acc = buffers.take("acc", q_tile.shape[:2] + (dv,), q_tile.dtype)
    acc.fill(0)
    return np.full(rows, NEG, q_tile.dtype), np.zeros(rows, q_tile.dtype), acc
