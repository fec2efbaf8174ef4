"""The short path of a call on host arrays: uploads, a cached executor, downloads.

A public call on numpy arrays whose arrays are all C-contiguous (the usual case) runs
here instead of the general path of :mod:`.op`:

1. its **layout** -- where each upload and each output lies in one device allocation --
   is looked up by the arrays' shapes and dtypes (computed once per shape signature);
2. the allocation comes from :mod:`.call_pool` (the memory of an earlier call, reused);
   the outputs' bytes are zero-filled by one ``aclrtMemset`` (the op may leave parts
   unwritten: docs/faults.md) and each input is copied by one ``aclrtMemcpy``;
   the package's compressed mask is not uploaded (its device copy, :mod:`.device_constants`);
3. the executor cached for the call's signature (:mod:`.exec_cache`; the signature is
   made from the layout, and reused while the attributes repeat) is repointed at those
   addresses and phase 2 runs, its workspace behind the pieces in the same allocation
   when there is room (else from the pool); on a miss the general path of :mod:`.op` runs
   on the same device arrays, so that its executor is cached under the signature the
   next call computes;
4. the stream is synchronised, every output downloaded into a new numpy array, and the
   memory handed back for the next call (freed instead when anything failed).

Every input is uploaded on its own (views of one host buffer are not merged into one copy
as the general path does: that needs no address arithmetic, and each copy is still one
native call). Anything else -- a non-contiguous or byte-swapped array, a DeviceArray,
outputs given by the caller, results kept on the device -- takes the general path. The
results are the same either way (tests/acl/test_call_pool.py).
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .._address import data_address
from . import call_pool, device_constants, exec_cache, ownership, runtime
from .exec_cache import _double_key as float_key
from ._status import check
from .arena import ARENA_ALIGN, layout
from .device import DeviceArray, _c_strides, slice_view
from .device import _add as device_add
from .runtime import MEMCPY_DEVICE_TO_HOST, MEMCPY_HOST_TO_DEVICE

__all__ = ["eligible", "run"]

_ND = np.ndarray
# (input shapes and dtypes, output shapes and dtypes) -> _Layout
_layouts: Dict[tuple, "_Layout"] = {}
_MAX_LAYOUTS = 256


class _MaskSlots(dict):
    """Input slot names -> the index of ``atten_mask`` among them (-1: none)."""

    def __missing__(self, slots: tuple) -> int:
        at = self[slots] = slots.index("atten_mask") if "atten_mask" in slots else -1
        return at


_MASK_SLOT = _MaskSlots()


_SHARED = "the package mask's device copy"     # its input slot in a layout's specs


class _Layout:
    """Where one shape signature's pieces lie in the call's allocation: the outputs first
    (``zero_end`` bytes, zero-filled), then the inputs, then room for the workspace
    (``workspace``: the largest a cached executor of this layout asked for so far).
    ``input_at`` / ``output_at``: the offset of each non-NULL slot's piece, in order (what
    the cached executor's tensors are pointed at; -1: the mask's device copy, None: an
    empty output)."""

    __slots__ = ("outputs", "inputs", "zero_end", "nbytes", "input_keys", "output_keys",
                 "workspace", "memo", "input_at", "output_at")

    def __init__(self, in_specs: Sequence, out_specs: Sequence) -> None:
        # out_specs / in_specs: (shape, dtype) or None (NULL) per slot; an input _SHARED is
        # the device copy of the package's mask (not placed)
        given = in_specs
        in_specs = [None if s is _SHARED else s for s in in_specs]
        out_sizes = [0 if s is None else _nbytes(*s) for s in out_specs]
        out_at, self.zero_end = layout([n for n in out_sizes if n])
        at = iter(out_at)
        # per slot: None (NULL), or (start or None for an empty array, nbytes, shape, dtype,
        # strides)
        self.outputs = [None if s is None else (next(at) if n else None, n, s[0], s[1],
                                                _c_strides(s[0]))
                        for s, n in zip(out_specs, out_sizes)]
        in_sizes = [0 if s is None else _nbytes(*s) for s in in_specs]
        in_at, end = layout([n for n in in_sizes if n], self.zero_end)
        at = iter(in_at)
        self.inputs = [None if s is None else (next(at), n, s[0], s[1], _c_strides(s[0]))
                       for s, n in zip(in_specs, in_sizes)]
        self.nbytes = -(-end // ARENA_ALIGN) * ARENA_ALIGN
        self.workspace = 0
        self.memo = None        # (signature parts, the mask's device copy, key): _signature
        # exec_cache.array_keys of the DeviceArrays _arrays makes (offset 0, storage size)
        self.input_keys = [None if p is None else (p[2], p[4], p[3], 0, p[1])
                           for p in self.inputs]
        self.output_keys = tuple([None if p is None else (p[2], p[4], p[3], 0, p[1])
                                  for p in self.outputs])
        self.input_at = [-1 if p is None else p[0] for p, s in zip(self.inputs, given)
                         if s is not None]
        self.output_at = [p[0] for p in self.outputs if p is not None]


def _nbytes(shape: tuple, dt: np.dtype) -> int:
    n = dt.itemsize
    for d in shape:
        n *= d
    return n


def eligible(arrays: Sequence) -> bool:
    """Whether a call with these input arrays (None for NULL slots) can take this path:
    every array a C-contiguous, native-order, non-empty numpy array."""
    for a in arrays:
        if a is not None and (type(a) is not _ND or not a.flags.c_contiguous
                              or not a.dtype.isnative or a.size == 0):
            return False
    return True


def run(op, arrays: list, out_specs: tuple, device_id: Optional[int], stream,
        deterministic: bool, attr_values: tuple, int_values: tuple, general,
        timings: Optional[dict] = None) -> list:
    """One call (see the module doc): ``arrays`` (host array or None per input slot, in
    parameter order; ``eligible``), ``out_specs`` ((shape, dtype) or None per output slot);
    ``deterministic``, ``attr_values``, ``int_values``: the rest of the cache signature
    (``op._signature_parts``); ``general(in_list, out_list)`` runs the general path of
    :mod:`.op` on device arrays (its cache miss; a caller's stream is not synchronised).
    Returns one numpy array (or None) per output slot. ``timings``: seconds added under
    "alloc" (the allocation from the pool, the zero fill), "copy_in", "copy_out" and, on a
    cache hit, "phase2" (launch and synchronisation); a miss adds the general path's own
    (wall, plus ``*_cpu`` when those keys exist)."""
    b = runtime.api()
    cap = exec_cache.enabled(b)
    with runtime.operation():
        dev = runtime.resolve_device(device_id)
        runtime.ensure_device(dev if device_id is not None else None)
        handle = runtime.resolve_stream(stream) if stream is not None else runtime.stream(dev)
        mask_at = _MASK_SLOT[op.inputs]
        shared = None
        if mask_at >= 0 and arrays[mask_at] is not None:
            shared = device_constants.package_mask(arrays[mask_at], dev)
        specs = tuple([None if a is None else (a.shape, a.dtype) for a in arrays])
        if shared is not None:
            specs = specs[:mask_at] + (_SHARED,) + specs[mask_at + 1:]
        lay = _layouts.get((specs, out_specs))
        if lay is None:
            if len(_layouts) >= _MAX_LAYOUTS:
                _layouts.clear()
            lay = _layouts[(specs, out_specs)] = _Layout(specs, out_specs)
        pooled = []
        ok = False
        with ownership.atomic():       # every native step below is owned or handed back
            if timings is not None:
                t0, c0 = time.perf_counter(), time.thread_time()
            arena = call_pool.take(lay.nbytes + lay.workspace, dev)
            pooled.append(arena)
            try:
                base = arena.ptr
                if timings is not None:
                    _add(timings, "alloc", t0, c0)
                _fill(b, arena, lay, arrays, timings)
                entry = None
                if cap:
                    key = _signature(op, lay, dev, deterministic, attr_values, int_values,
                                     shared, mask_at)
                    entry = exec_cache.take_repointed_at(
                        key, b, [base + at if at >= 0 else shared.buffer.ptr
                                 for at in lay.input_at],
                        [None if at is None else base + at for at in lay.output_at])
                if entry is not None:
                    def workspace_of(size):
                        if size <= arena.nbytes - lay.nbytes:   # room behind the pieces
                            return base + lay.nbytes
                        lay.workspace = max(lay.workspace, size)    # for the next calls
                        ws = call_pool.take(size, dev)
                        pooled.append(ws)
                        return ws.ptr
                    if timings is not None:
                        t0, c0 = time.perf_counter(), time.thread_time()
                    exec_cache.launch(b, op.phase2, entry, handle, workspace_of)
                    try:
                        check(b, b.aclrtSynchronizeStream(handle), "aclrtSynchronizeStream")
                    except BaseException:
                        exec_cache.discard(entry)       # as a failed phase 2
                        raise
                    exec_cache.give(key, entry, cap)
                    if timings is not None:
                        _add(timings, "phase2", t0, c0)
                else:       # the general path: its own timings; a caller's stream left to us
                    general(*_arrays(arena, lay, arrays, shared, dev))
                    check(b, b.aclrtSynchronizeStream(handle), "aclrtSynchronizeStream")
                results = _download(b, base, lay, timings)
                ok = True
            finally:
                for buf in pooled:
                    if ok:
                        call_pool.give(buf)
                    else:
                        call_pool.discard(buf)
    return results


def _signature(op, lay: _Layout, dev: int, deterministic: bool, attr_values: tuple,
               int_values: tuple, shared, mask_at: int):
    """The call's executor-cache signature (``exec_cache.signature_of_keys`` with the
    layout's array keys). The layout keeps the last one it made: a call that repeats
    everything else (the attributes' floats compared by their bits, as the signature does)
    reuses that key object, whose hash is already computed."""
    parts = (dev, runtime.current_context_record(), deterministic, float_key(attr_values[0]),
             float_key(attr_values[1]), attr_values[2:], int_values)
    memo = lay.memo
    if memo is not None and memo[1] is shared and memo[0] == parts:
        return memo[2]
    in_keys = list(lay.input_keys)
    if shared is not None:
        in_keys[mask_at] = exec_cache.array_keys([shared])[0]
    key = exec_cache.signature_of_keys(op.phase1, dev, deterministic, attr_values, int_values,
                                       tuple(in_keys), lay.output_keys)
    lay.memo = (parts, shared, key)
    return key


def _fill(b, arena, lay: _Layout, arrays: list, timings: Optional[dict]) -> None:
    """The outputs' bytes zero-filled, each input copied to its place."""
    base = arena.ptr
    if timings is not None:
        t0, c0 = time.perf_counter(), time.thread_time()
    if lay.zero_end:
        check(b, b.aclrtMemset(base, arena.nbytes, 0, lay.zero_end), "aclrtMemset")
        runtime._count("memset")
    if timings is not None:
        _add(timings, "alloc", t0, c0)
        t0, c0 = time.perf_counter(), time.thread_time()
    copies = total = 0
    memcpy = b.aclrtMemcpy
    for a, place in zip(arrays, lay.inputs):
        if place is not None:
            at, n = place[0], place[1]
            rc = memcpy(base + at, arena.nbytes - at, data_address(a), n, MEMCPY_HOST_TO_DEVICE)
            if rc:
                check(b, rc, "aclrtMemcpy", rule="host to device copy failed")
            copies += 1
            total += n
    runtime._count("h2d", copies, "h2d_bytes", total)
    if timings is not None:
        _add(timings, "copy_in", t0, c0)


def _arrays(arena, lay: _Layout, arrays: list, shared, dev: int) -> Tuple[list, list]:
    """The DeviceArrays over the arena's pieces (inputs, outputs; None for NULL slots; the
    package mask's device copy in its slot). Every invariant of DeviceArray holds by
    construction (C-contiguous, inside the arena)."""
    def view(place):
        at, n, shape, dt, strides = place
        if at is None:
            return DeviceArray.empty(shape, dt, dev)
        return slice_view(arena, at, n, shape, dt, strides)
    in_list = [(shared if a is not None else None) if p is None else view(p)
               for a, p in zip(arrays, lay.inputs)]
    return in_list, [None if p is None else view(p) for p in lay.outputs]


def _download(b, base: int, lay: _Layout, timings: Optional[dict]) -> list:
    """Each output's bytes into a new numpy array (None for NULL slots)."""
    if timings is not None:
        t0, c0 = time.perf_counter(), time.thread_time()
    results = []
    copies = total = 0
    memcpy = b.aclrtMemcpy
    for place in lay.outputs:
        if place is None:
            results.append(None)
            continue
        at, n, shape, dt, _ = place
        host = np.empty(shape, dt)
        if n:
            rc = memcpy(data_address(host), n, base + at, n, MEMCPY_DEVICE_TO_HOST)
            if rc:
                check(b, rc, "aclrtMemcpy", rule="device to host copy failed")
            copies += 1
            total += n
        results.append(host)
    runtime._count("d2h", copies, "d2h_bytes", total)
    if timings is not None:
        _add(timings, "copy_out", t0, c0)
    return results


def _add(timings: dict, key: str, t0: float, c0: float) -> None:
    """device._add of the wall and CPU time since (t0, c0)."""
    device_add(timings, key, time.perf_counter() - t0, time.thread_time() - c0)
