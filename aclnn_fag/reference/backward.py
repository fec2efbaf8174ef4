"""NumPy backward of the op (docs/semantics.md, "Backward"), tiled.

Per batch, per group of KV heads (batched matmuls, common.batch_heads), per query tile (the
G query heads of a KV head stacked into one row block, so that dK/dV sum over the group in
the matmul), per key tile with work (blocks.tiles). dQ accumulates per query tile, dK/dV per
(batch, KV heads) in the working precision.

The rope parts are concatenated ([Q | Qr]·[K | Kr]ᵀ, one fp32 accumulation), the scale is
folded into the query tile and the per-row terms (−max, −Dterm) into the matmuls as one
extra contraction column: only the fp32 summation order changes, not the rounding points.
Precision "device": P and dS rounded to bf16 (ties away from zero) before the gradient
matmuls, float32 accumulation, the scale applied to dq/dk/dqRope/dkRope at the end, the
outputs rounded to bf16; "fp32"/"fp64": the same math without rounding.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..call import FagCall, FagGrads
from ..errors import FullyMaskedRowWarning
from ..softmax_layout import device_stat_blocks
from .blocks import BlockSizes, default_block_sizes, query_blocks, rows_without_keys, tiles
from .common import (KeySide, apply_mask, batch_heads, call_progress, gather_concat,
                     kernel_setup, precision_dtype, row_part, rows_2d, scatter_heads, scratch)
from .rounding import BF16, round_bf16_away_inplace, store_into

__all__ = ["attention_backward"]


def attention_backward(call: FagCall, precision: str = "device",
                       blocks: BlockSizes | None = None, progress=None) -> FagGrads:
    """The five gradients for a validated call (see module docstring). ``progress``: report
    progress on stderr when the call is long (``common.call_progress``)."""
    blocks = blocks or default_block_sizes()
    q, qr, k, kr, v = call.query, call.query_rope, call.key, call.key_rope, call.value
    grads = FagGrads(*(np.zeros(x.shape, dtype=BF16 if precision == "device"
                                else precision_dtype(precision)) for x in (q, qr, k, kr, v)))
    if call.empty_result:
        return grads
    setup = kernel_setup(call, precision, blocks.q_tokens)
    work = setup.work
    d_qk, dv = q.shape[2] + qr.shape[2], v.shape[2]
    fully_masked = 0
    stats_max = np.ascontiguousarray(call.softmax_max)   # no copy when already contiguous
    stats_sum = np.ascontiguousarray(call.softmax_sum)
    bar = call_progress(call, setup, "backward", progress)
    itemsize = np.dtype(work).itemsize

    def per_head_bytes(skv):          # dK/dV accumulators and the key side of one KV head
        return 2 * skv * (d_qk + dv + 2) * itemsize

    # Tiles are [H, G*rows, C] for H KV heads at a time (common.HEAD_BATCH_BYTES bounds H)
    with scratch() as buffers:
        for step in batch_heads(call, setup, blocks, per_head_bytes):
            fully_masked += _batch_heads_backward(call, setup, blocks, step, grads, stats_max,
                                                  stats_sum, buffers, bar)
    bar.close()
    if fully_masked:
        warnings.warn(f"{fully_masked} (row, head) pairs have no kept key: "
                      "the docs call this unsupported; they contribute zero gradients here",
                      FullyMaskedRowWarning, stacklevel=3)
    return grads


def _batch_heads_backward(call, setup, blocks, step, grads, stats_max, stats_sum, buffers,
                          bar) -> int:
    """One (batch, group of H KV heads) of the backward: every tile is [H, G*rows, C], the
    matmuls batched; returns the count of (row, head) pairs with no kept key."""
    work, device, scale, group, bq, mask = setup
    q, qr, k, kr, v = call.query, call.query_rope, call.key, call.key_rope, call.value
    d, d_qk, dv = q.shape[2], q.shape[2] + qr.shape[2], v.shape[2]
    b, qs, sq, ks, skv, keep, n2, hs, per_head = step
    fully_masked = 0
    nh = n2.stop - n2.start
    max_blocks = device_stat_blocks(stats_max, call.seqs, b)   # [N1, Sq_b, 8]
    sum_blocks = device_stat_blocks(stats_sum, call.seqs, b)
    acc_k = buffers.take("acc_k", (nh, skv, d_qk), work)     # [dK | dKr] (unscaled)
    acc_v = buffers.take("acc_v", (nh, skv, dv), work)
    fresh = True                                # nothing accumulated yet
    key_side = KeySide(k, kr, v, slice(ks, ks + skv), n2, work, True, buffers)
    for i0, i1 in query_blocks(sq, bq):
        work_tiles = list(tiles(keep, mask, b, i0, i1, skv, blocks, per_head))
        fully_masked += nh * rows_without_keys(work_tiles, group, i1 - i0)
        bar.step(nh)
        if not work_tiles:
            continue
        rows = slice(qs + i0, qs + i1)
        # Query side of the tile, G heads stacked: [Q | Qr] unscaled (for dK), and
        # [scale·Q | scale·Qr | −max] so that one matmul gives scale·S − max.
        q_cat = gather_concat((q, qr), rows, hs, work, 0, buffers, "queries")
        q_cat = q_cat.reshape(nh, -1, d_qk)
        # a contiguous copy: NumPy 2.4's float64 negative misreads this strided [r, 1]
        # view into a column of q_aug (float64 statistics: torch golden precision fp64)
        row_max = np.ascontiguousarray(max_blocks[hs, i0:i1, 0]).reshape(nh, -1, 1)
        row_sum = sum_blocks[hs, i0:i1, 0].reshape(nh, -1, 1).astype(work)
        q_aug = buffers.take("scaled_queries", q_cat.shape[:2] + (d_qk + 1,), work)
        np.multiply(q_cat, scale, out=q_aug[..., :d_qk])
        np.negative(row_max, out=q_aug[..., d_qk:], casting="unsafe")
        # [dy | −Dterm] so that one matmul gives dP − Dterm (Dterm = Σ_c dy·O).
        dy_aug = gather_concat((call.dy,), rows, hs, work, 1, buffers, "dy")
        dy_aug = dy_aug.reshape(nh, -1, dv + 1)
        o_t = gather_concat((call.attention_in,), rows, hs, work, 0, buffers, "out")
        o_t = o_t.reshape(nh, -1, dv)
        np.negative(np.einsum("hrc,hrc->hr", dy_aug[..., :dv], o_t)[..., None],
                    out=dy_aug[..., dv:])
        acc_q = None   # [dQ | dQr], unscaled: a first tile over every row gives it
        for r0, r1, j0, j1, masked, key_tile in work_tiles:
            k_aug, v_aug = key_side.get(key_tile, j0, j1)   # [K | Kr | 1], [V | 1]
            k_cat = k_aug[..., :d_qk]
            q_aug_t, q_cat_t, dy_aug_t, sum_t = (rows_2d(x, group, r0, r1)
                                                 for x in (q_aug, q_cat, dy_aug, row_sum))
            # 1-2. P = exp(scale·S − max) / sum; excluded positions give exactly 0
            tile = q_aug_t.shape[:2] + (j1 - j0,)
            p = np.matmul(q_aug_t, k_aug.swapaxes(-1, -2), out=buffers.take("p", tile, work))
            if masked is not None:
                apply_mask(p, masked, group)
            np.exp(p, out=p)
            p /= sum_t
            # 3-5. dS = P ⊙ (dy·Vᵀ − Dterm), with the un-rounded P
            ds = np.matmul(dy_aug_t, v_aug.swapaxes(-1, -2), out=buffers.take("ds", tile, work))
            ds *= p
            # 6. device rounding points: P and dS to bf16, ties away from zero
            if device:
                round_bf16_away_inplace(p)
                round_bf16_away_inplace(ds)
            # 7. accumulate (the G stacked heads sum into dK/dV)
            if fresh and j1 - j0 == skv:      # the first tile over every key sets them
                np.matmul(p.swapaxes(-1, -2), dy_aug_t[..., :dv], out=acc_v)
                np.matmul(ds.swapaxes(-1, -2), q_cat_t, out=acc_k)
            else:
                if fresh:
                    _clear(acc_k, acc_v)
                acc_v[:, j0:j1] += p.swapaxes(-1, -2) @ dy_aug_t[..., :dv]
                acc_k[:, j0:j1] += ds.swapaxes(-1, -2) @ q_cat_t
            fresh = False
            every_row = tile[1] == q_cat.shape[1]
            if every_row and acc_q is None:
                acc_q = np.matmul(ds, k_cat, out=buffers.take("acc_q", q_cat.shape, work))
                continue
            part = np.matmul(ds, k_cat, out=buffers.take("dq_part", tile[:2] + (d_qk,), work))
            if acc_q is None:
                acc_q = buffers.take("acc_q", q_cat.shape, work)
                acc_q.fill(0)
            if every_row:
                acc_q += part
            else:
                row_part(acc_q, group, r0, r1)[...] += part.reshape(nh, group, r1 - r0, -1)
        _finish(acc_q, scale, device)
        scatter_heads(grads.dq, rows, hs, acc_q[..., :d])
        scatter_heads(grads.dq_rope, rows, hs, acc_q[..., d:])
    if fresh:
        _clear(acc_k, acc_v)
    _finish(acc_k, scale, device)
    _finish(acc_v, None, device)
    for out, part in ((grads.dk, acc_k[..., :d]), (grads.dk_rope, acc_k[..., d:]),
                      (grads.dv, acc_v)):
        store_into(out[ks:ks + skv, n2], part.transpose(1, 0, 2))
    return fully_masked


def _clear(acc_k, acc_v):
    acc_k.fill(0)
    acc_v.fill(0)


def _finish(acc, scale, device):
    """In place: scale (dq/dk/rope accumulators) and, in device precision, round to bf16
    values (ties away from zero); the caller's cast to the bf16 output is then exact."""
    if scale is not None:
        acc *= scale
    if device:
        round_bf16_away_inplace(acc)
