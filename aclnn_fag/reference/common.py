"""Pieces shared by the forward and backward kernel bodies."""

from __future__ import annotations

import math
import threading
from typing import Iterator, NamedTuple, Optional

import numpy as np

from ..constants import FLT_MAX
from ..semantics.sparse import MaskReader, batch_keep
from .rounding import load_into, store_into

__all__ = ["Scratch", "scratch", "release_scratch", "KernelSetup", "kernel_setup",
           "batch_heads", "call_progress", "NEG", "PRECISIONS", "precision_dtype",
           "gather_concat", "KeySide", "row_max", "row_sum", "scatter_heads", "apply_mask",
           "row_part", "rows_2d"]

# KeySide gathers one (batch, KV heads)'s whole key side when it fits this many bytes, else
# key tile by key tile (read at construction: tests lower it to drive the tile path).
KEY_GATHER_BYTES = 16 << 20
# The bodies take several KV heads per step while one [H, G*rows, keys] score tile (and the
# per-head memory a body names) stays within this many bytes (batch_heads).
HEAD_BATCH_BYTES = 4 << 20
# The scratch buffers a thread keeps between calls, in total (a larger set is dropped after
# the call that grew it)
SCRATCH_KEEP_BYTES = 64 << 20
NEG = -FLT_MAX
PRECISIONS = ("device", "fp32", "fp64")


class Scratch:
    """Reusable buffers for the kernel bodies' temporaries, one per role ("scores", "keys",
    ...): every tile of a call reuses them, and so does the next call on the same thread.
    Fresh 0.1-4 MB blocks per tile went back to the system each time glibc trimmed the heap
    top and page-faulted in again on the next call (``scripts/bench_loop.py --torch``, T = 256
    causal: ~17 -> ~11 ms a step)."""

    def __init__(self) -> None:
        self._buffers: dict = {}
        self.in_use = False

    def take(self, role: str, shape: tuple, dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` over the buffer of ``role``."""
        dtype = np.dtype(dtype)
        size = math.prod(shape)
        buf = self._buffers.get((role, dtype))
        if buf is None or buf.size < size:
            buf = self._buffers[(role, dtype)] = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())

    def __enter__(self) -> "Scratch":
        self.in_use = True
        return self

    def __exit__(self, *exc) -> None:
        self.in_use = False
        if self.nbytes() > SCRATCH_KEEP_BYTES:
            self._buffers.clear()


_THREAD = threading.local()


def scratch() -> Scratch:
    """This thread's scratch buffers for a call, or a fresh set when they are in use."""
    kept = getattr(_THREAD, "scratch", None)
    if kept is None:
        kept = _THREAD.scratch = Scratch()
    return Scratch() if kept.in_use else kept


def release_scratch() -> None:
    """Free this thread's scratch buffers (at most ``SCRATCH_KEEP_BYTES``; they are made
    again by the next call)."""
    _THREAD.scratch = None


class KernelSetup(NamedTuple):
    """What the forward and backward bodies derive the same way from a call."""

    work: type          # working dtype
    device: bool        # precision == "device" (bf16 rounding points)
    scale: object       # float32(scaleValue), in the working dtype
    group: int          # G = N1 / N2
    q_tokens: int       # query tokens per tile
    mask: Optional[MaskReader]   # explicit-mask reader for modes 0/1/5, else None


def kernel_setup(call, precision: str, q_tokens_of) -> KernelSetup:
    work = precision_dtype(precision)
    scale = call.scale32 if work == np.float32 else np.float64(call.scale32)
    mask = (MaskReader(call.atten_mask, call.seqs, call.query.shape[1])
            if call.sparse_mode in (0, 1, 5) else None)
    return KernelSetup(work, precision == "device", scale, call.group,
                       q_tokens_of(call.group), mask)


def batch_heads(call, setup: KernelSetup, blocks, per_head_bytes) -> Iterator[tuple]:
    """Yield (b, qs, sq, ks, skv, keep, kv_heads, heads, per_head) for every batch with work
    and every group of KV heads taken together: ``kv_heads`` a slice of H KV heads, ``heads``
    the slice of their H*G query heads, ``per_head`` the head range when the explicit mask
    differs per head (then H = 1), else None. H is as large as ``HEAD_BATCH_BYTES`` allows
    for one score tile and for ``per_head_bytes(skv)``."""
    group = setup.group
    n2_total = call.key.shape[1]
    per_head_mask = setup.mask is not None and setup.mask.per_head
    itemsize = np.dtype(setup.work).itemsize
    for b, qs, sq, ks, skv in call.seqs.batches():
        if sq == 0 or skv == 0:
            continue     # nothing computed: outputs (and the forward's statistics) stay 0
        keep = batch_keep(call.sparse_mode, b, sq, skv, call.pre_eff, call.next_eff,
                          call.band_index)
        tile = group * min(sq, setup.q_tokens) * min(skv, blocks.k) * itemsize
        step = 1 if per_head_mask else max(1, min(
            n2_total, HEAD_BATCH_BYTES // max(1, tile), HEAD_BATCH_BYTES // per_head_bytes(skv)))
        for n2 in range(0, n2_total, step):
            kv_heads = slice(n2, min(n2 + step, n2_total))
            heads = slice(kv_heads.start * group, kv_heads.stop * group)
            per_head = range(heads.start, heads.stop) if per_head_mask else None
            yield b, qs, sq, ks, skv, keep, kv_heads, heads, per_head


def call_progress(call, setup: KernelSetup, direction: str, progress):
    """A ``progress.BlockProgress`` over the query tiles of a call, shown when progress is
    wanted and the call's estimated time (its kept area, halved for modes 2/3) is long."""
    from .. import progress as prog
    if not prog.call_progress_wanted(progress):
        return prog.BlockProgress(0, "", False)
    d_qk = call.query.shape[2] + call.query_rope.shape[2]
    dv = call.value.shape[2]
    per_pair = 2 * (d_qk + dv) if direction == "forward" else 2 * (3 * d_qk + 2 * dv)
    area = sum(sq * skv for _, _, sq, _, skv in call.seqs.batches())
    if call.sparse_mode in (2, 3):
        area /= 2
    flops = area * call.query.shape[1] * per_pair
    show = prog.estimate_seconds(flops) > prog.LONG_CALL_S
    steps = sum(-(-sq // setup.q_tokens) for _, _, sq, _, skv in call.seqs.batches()
                if sq and skv) * call.key.shape[1]
    return prog.BlockProgress(steps, f"aclnn_fag {direction} (numpy)", show)


def precision_dtype(precision: str):
    """Working dtype of a precision mode."""
    if precision in ("device", "fp32"):
        return np.float32
    if precision == "fp64":
        return np.float64
    raise ValueError(f"parameter 'precision' must be one of {PRECISIONS}, got {precision!r}")


def gather_concat(parts, rows: slice, heads: slice, dtype, extra: int, buffers: Scratch,
                  role: str) -> np.ndarray:
    """x[rows, heads, :] of several arrays concatenated along the last dim, as a C-contiguous
    [heads, rows, sum(C) + extra] array in ``dtype`` over ``buffers``' ``role`` buffer; the
    ``extra`` trailing columns are left for the caller (a per-row term folded into a
    matmul)."""
    first = parts[0][rows, heads]
    width = sum(p.shape[2] for p in parts)
    out = buffers.take(role, (first.shape[1], first.shape[0], width + extra), dtype)
    col = 0
    for p in parts:
        load_into(out[:, :, col:col + p.shape[2]], p[rows, heads].transpose(1, 0, 2))
        col += p.shape[2]
    return out


def row_part(x: np.ndarray, group: int, r0: int, r1: int) -> np.ndarray:
    """Rows [r0, r1) of every head of a head-major stacked [..., G*r, C] tile, as a
    [..., G, r1-r0, C] view."""
    return x.reshape(x.shape[:-2] + (group, -1, x.shape[-1]))[..., r0:r1, :]


def rows_2d(x: np.ndarray, group: int, r0: int, r1: int) -> np.ndarray:
    """The same rows as a [..., G*(r1-r0), C] array (a view when G == 1, else a copy)."""
    if r0 == 0 and r1 * group == x.shape[-2]:
        return x
    return row_part(x, group, r0, r1).reshape(x.shape[:-2] + (-1, x.shape[-1]))


class KeySide:
    """The key side of one batch's KV heads ``n2`` (a slice of H heads) in the working dtype:
    [K | Kr | 1] and [V | 1], each [H, rows, C] (the ones column folds a per-row term into a
    matmul; ``ones=False`` omits it). Gathered once for the whole sequence when it fits
    ``budget_bytes`` (default ``KEY_GATHER_BYTES``), else once per key tile."""

    def __init__(self, k, kr, v, kv_rows: slice, n2: slice, dtype, ones: bool,
                 buffers: Scratch, budget_bytes: Optional[int] = None):
        if budget_bytes is None:
            budget_bytes = KEY_GATHER_BYTES
        self._src = (k, kr, v)
        self._buffers = buffers
        self._start = kv_rows.start
        self._n2, self._dtype, self._extra = n2, dtype, int(ones)
        self._heads = n2.stop - n2.start
        width = k.shape[2] + kr.shape[2] + v.shape[2] + 2 * self._extra
        rows = kv_rows.stop - kv_rows.start
        self._whole = self._heads * rows * width * np.dtype(dtype).itemsize <= budget_bytes
        self._cached = None
        if self._whole:
            self._tile, self._k, self._v = (0, rows), *self._gather(0, rows)

    def _gather(self, t0, t1):
        k, kr, v = self._src
        cols = slice(self._start + t0, self._start + t1)
        k_tile = gather_concat((k, kr), cols, self._n2, self._dtype, self._extra,
                               self._buffers, "keys")
        v_tile = gather_concat((v,), cols, self._n2, self._dtype, self._extra,
                               self._buffers, "values")
        if self._extra:
            k_tile[..., -1] = 1
            v_tile[..., -1] = 1
        return k_tile, v_tile

    def get(self, key_tile: tuple, j0: int, j1: int):
        """([K | Kr (| 1)], [V (| 1)]) rows for keys [j0, j1) of ``key_tile``."""
        if not self._whole and self._cached != key_tile:
            self._cached = key_tile
            self._tile = key_tile
            self._k, self._v = self._gather(*key_tile)
        base = self._tile[0]
        return self._k[..., j0 - base:j1 - base, :], self._v[..., j0 - base:j1 - base, :]


def row_max(s: np.ndarray) -> np.ndarray:
    """max over the last axis of a tile, [..., r, 1]."""
    return s.max(axis=-1, keepdims=True)


def row_sum(s: np.ndarray) -> np.ndarray:
    """sum over the last axis of a tile, [..., r, 1], as a matmul with a ones column (fp32
    accumulation in BLAS order; several times faster than numpy's per-row reduction)."""
    return s @ np.ones((s.shape[-1], 1), dtype=s.dtype)


def scatter_heads(x: np.ndarray, rows: slice, heads: slice, tile: np.ndarray) -> None:
    """Write a head-major tile (``heads`` x ``rows`` rows of C) into x[rows, heads, :]."""
    target = x[rows, heads]
    store_into(target, tile.reshape(target.shape[1], target.shape[0], -1).transpose(1, 0, 2))


def apply_mask(s: np.ndarray, masked: np.ndarray, group: int) -> None:
    """Exclude masked positions of a [..., G*r, c] score tile (masked: [r, c], or [G, r, c]
    for a per-head mask, which comes with one KV head per tile): they become -inf, so that
    exp gives exactly 0 (rows with no kept key then contribute 0, not the device's ~2.9e-39).
    """
    s3 = s.reshape(-1, masked.shape[-2], s.shape[-1])          # [H*G, r, c]
    np.copyto(s3, -np.inf, where=masked)
