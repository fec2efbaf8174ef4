"""The short path of a call on host arrays: a per-shape layout, pooled memory, downloads.

A public call on numpy arrays whose arrays are all C-contiguous (the usual case) runs
here instead of through :func:`.op.execute`:

1. its **layout** -- where each upload and each output lies in one device allocation --
   is looked up by the arrays' shapes and dtypes (computed once per shape signature);
2. the allocation comes from :mod:`.call_pool` (the memory of an earlier call, reused);
   the outputs' bytes are zero-filled by one ``aclrtMemset`` (the op may leave parts
   unwritten: docs/faults.md) and each input is copied by one ``aclrtMemcpy``;
   the package's compressed mask is not uploaded (its device copy, :mod:`.device_constants`);
3. :func:`.executor.run` runs the call on DeviceArrays over those pieces (a cached
   executor repointed, or phase 1 on a miss) and synchronises the stream; the workspace
   of a cached executor lies behind the pieces in the same allocation when there is room
   (the layout remembers its size for the next calls), any other from the pool;
4. every output is downloaded into a new numpy array, and the memory handed back for the
   next call (freed instead when anything failed).

Every input is uploaded on its own (views of one host buffer are not merged into one copy
as :func:`.device.call_memory` does). Anything else -- a non-contiguous or byte-swapped
array, a DeviceArray, outputs given by the caller, results kept on the device -- takes
:func:`.op.execute`. The results are the same either way (tests/acl/test_call_pool.py).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from . import caches, call_pool, device_constants, executor, ownership, runtime
from ._status import check
from .arena import ARENA_ALIGN, layout
from .device import DeviceArray, contiguous_strides, slice_view
from .runtime import MEMCPY_DEVICE_TO_HOST, MEMCPY_HOST_TO_DEVICE

__all__ = ["eligible", "run"]

# (input shapes and dtypes, output shapes and dtypes) -> _Layout
_layouts: Dict[tuple, "_Layout"] = {}
_MAX_LAYOUTS = 256


_SHARED = "the package mask's device copy"     # its input slot in a layout's specs


class _Layout:
    """Where one shape signature's pieces lie in the call's allocation: the outputs first
    (``zero_end`` bytes, zero-filled), then the inputs, then room for the workspace
    (``workspace``: the largest one asked for so far). ``inputs`` / ``outputs``: per slot
    None (NULL or the mask's device copy) or (start or None for an empty array, nbytes,
    shape, dtype, C strides)."""

    __slots__ = ("outputs", "inputs", "zero_end", "nbytes", "workspace")

    def __init__(self, in_specs: Sequence, out_specs: Sequence) -> None:
        in_specs = [None if s is _SHARED else s for s in in_specs]
        out_sizes = [0 if s is None else _nbytes(*s) for s in out_specs]
        out_at, self.zero_end = layout([n for n in out_sizes if n])
        at = iter(out_at)
        self.outputs = [None if s is None else (next(at) if n else None, n, s[0], s[1],
                                                contiguous_strides(s[0]))
                        for s, n in zip(out_specs, out_sizes)]
        in_sizes = [0 if s is None else _nbytes(*s) for s in in_specs]
        in_at, end = layout([n for n in in_sizes if n], self.zero_end)
        at = iter(in_at)
        self.inputs = [None if s is None else (next(at), n, s[0], s[1], contiguous_strides(s[0]))
                       for s, n in zip(in_specs, in_sizes)]
        self.nbytes = -(-end // ARENA_ALIGN) * ARENA_ALIGN
        self.workspace = 0


def _nbytes(shape: tuple, dt: np.dtype) -> int:
    n = dt.itemsize
    for d in shape:
        n *= d
    return n


def eligible(arrays: Sequence) -> bool:
    """Whether a call with these input arrays (None for NULL slots) can take this path:
    every array a C-contiguous, native-order, non-empty numpy array."""
    for a in arrays:
        if a is not None and (type(a) is not np.ndarray or not a.flags.c_contiguous
                              or not a.dtype.isnative or a.size == 0):
            return False
    return True


def run(op, arrays: list, out_specs: list, device_id: Optional[int], stream,
        deterministic: bool, attr_values: tuple, int_values: tuple,
        timer: executor.Timer = executor.Timer()) -> list:
    """One call (see the module doc): ``arrays`` (host array or None per input slot of
    ``op``, in parameter order; ``eligible``), ``out_specs`` ((shape, dtype) or None per
    output slot); ``deterministic``, ``attr_values`` (checked), ``int_values``: the rest of
    the call. Returns one numpy array (or None) per output slot."""
    b = runtime.api()
    with runtime.operation():
        dev = runtime.resolve_device(device_id)
        runtime.ensure_device(dev if device_id is not None else None)
        handle = runtime.resolve_stream(stream) if stream is not None else runtime.stream(dev)
        mask_at = op.inputs.index("atten_mask") if "atten_mask" in op.inputs else -1
        shared = None
        if mask_at >= 0 and arrays[mask_at] is not None:
            shared = device_constants.package_mask(arrays[mask_at], dev)
        specs = tuple([None if a is None else (a.shape, a.dtype) for a in arrays])
        if shared is not None:
            specs = specs[:mask_at] + (_SHARED,) + specs[mask_at + 1:]
        key = (specs, tuple(out_specs))
        lay = _layouts.get(key)
        if lay is None:
            if len(_layouts) >= _MAX_LAYOUTS:
                _layouts.clear()
            lay = _layouts[key] = _Layout(specs, out_specs)
        pooled = []
        ok = False
        with ownership.atomic():       # every native step below is owned or handed back
            with timer("alloc"):
                arena = call_pool.take(lay.nbytes + lay.workspace, dev)
            pooled.append(arena)
            try:
                _fill(b, arena, lay, arrays, timer)

                def workspace_of(size: int, cached: bool) -> int:
                    # a cached executor's: behind the pieces when there is room
                    if cached and size <= arena.nbytes - lay.nbytes:
                        return arena.ptr + lay.nbytes
                    if cached:
                        lay.workspace = max(lay.workspace, size)    # for the next calls
                    ws = call_pool.take(size, dev)
                    pooled.append(ws)
                    return ws.ptr

                in_list, out_list = _arrays(arena, lay, arrays, shared, dev)
                executor.run(executor.Launch(op, dev, deterministic, attr_values, int_values,
                                             in_list, out_list),
                             handle, workspace_of, sync=True, timer=timer)
                results = _download(b, arena.ptr, lay, timer)
                ok = True
            finally:
                for buf in pooled:
                    (call_pool.give if ok else call_pool.discard)(buf)
    return results


def _fill(b, arena, lay: _Layout, arrays: list, timer: executor.Timer) -> None:
    """The outputs' bytes zero-filled, each input copied to its place."""
    base = arena.ptr
    with timer("alloc"):
        if lay.zero_end:
            check(b, b.aclrtMemset(base, arena.nbytes, 0, lay.zero_end), "aclrtMemset")
            runtime._count("memset")
    copies = total = 0
    with timer("copy_in"):
        for a, place in zip(arrays, lay.inputs):
            if place is not None:
                at, n = place[0], place[1]
                check(b, b.aclrtMemcpy(base + at, arena.nbytes - at, _address(a), n,
                                       MEMCPY_HOST_TO_DEVICE),
                      "aclrtMemcpy", rule="host to device copy failed")
                copies += 1
                total += n
    runtime._count("h2d", copies, "h2d_bytes", total)


def _arrays(arena, lay: _Layout, arrays: list, shared, dev: int) -> Tuple[list, list]:
    """The DeviceArrays over the arena's pieces (inputs, outputs; None for NULL slots; the
    package mask's device copy in its slot)."""
    def view(place):
        at, n, shape, dt, strides = place
        if at is None:
            return DeviceArray.empty(shape, dt, dev)
        return slice_view(arena, at, n, shape, dt, strides)
    in_list = [(shared if a is not None else None) if p is None else view(p)
               for a, p in zip(arrays, lay.inputs)]
    return in_list, [None if p is None else view(p) for p in lay.outputs]


def _download(b, base: int, lay: _Layout, timer: executor.Timer) -> list:
    """Each output's bytes into a new numpy array (None for NULL slots)."""
    results = []
    copies = total = 0
    with timer("copy_out"):
        for place in lay.outputs:
            if place is None:
                results.append(None)
                continue
            at, n, shape, dt, _ = place
            host = np.empty(shape, dt)
            if n:
                check(b, b.aclrtMemcpy(_address(host), n, base + at, n,
                                       MEMCPY_DEVICE_TO_HOST),
                      "aclrtMemcpy", rule="device to host copy failed")
                copies += 1
                total += n
            results.append(host)
    runtime._count("d2h", copies, "d2h_bytes", total)
    return results


def _address(a: np.ndarray) -> int:
    """The address of a numpy array's first element (NumPy's array interface)."""
    return a.__array_interface__["data"][0]


def _forget() -> None:
    _layouts.clear()


caches.register("host-path layouts", lambda: _forget() or 0, _forget)
