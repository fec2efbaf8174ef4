"""The one route of a call on the device: the only caller of phase 1, the address setters
and phase 2 (docs/architecture.md, "The path of one call"; docs/abi.md §6)."""

from __future__ import annotations

import contextlib
import numbers
import time
from ctypes import byref, c_double, c_int64, c_uint64, c_void_p
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

from ..constants import INT64_MAX, INT64_MIN
from ..errors import ParamNullptrError
from ..spec import OPS, OpVersion
from . import exec_cache, ownership, runtime
from .runtime import recent_message, status_error
from .tensors import HandleBatch

__all__ = ["Executor", "Launch", "Timer", "run", "phase1", "make_repeatable", "set_address",
           "phase2", "attr_values", "layout_arg", "TIMING_KEYS"]

TIMING_KEYS = ("marshal", "phase1", "phase2", "copy_in", "copy_out", "alloc")
_UNTIMED = contextlib.nullcontext()


class Timer:
    """Host seconds per stage added to ``timings`` (and thread CPU as ``<key>_cpu`` with
    ``cpu``); without a dict it times nothing."""

    def __init__(self, timings: Optional[dict] = None, cpu: bool = False) -> None:
        self.timings = timings
        for k in TIMING_KEYS if timings is not None else ():
            timings.setdefault(k, 0.0)
            if cpu:
                timings.setdefault(k + "_cpu", 0.0)

    def __call__(self, key: str):
        """A context manager timing its block under ``key`` (a no-op one without a dict)."""
        return _UNTIMED if self.timings is None else self._timed(key)

    @contextlib.contextmanager
    def _timed(self, key: str):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0
            if key + "_cpu" in self.timings:
                self.timings[key + "_cpu"] += time.thread_time() - c0


class Executor(runtime.NativeResource):
    """An ``aclOpExecutor*`` we own until phase 2 consumes it (one-shot) or we destroy it."""

    _what = "an aclOpExecutor"
    _rank = 0                      # destroyed before the tensors it refers to

    def __init__(self, b) -> None:
        self.b = b
        self.handle: Optional[int] = None
        self._prepare()

    def _adopt(self, handle: int) -> None:
        self._claim.take(handle, runtime.destroy, self.b, "aclDestroyAclOpExecutor", handle)
        self.handle = handle

    def _on_released(self) -> None:
        self.handle = None


# --------------------------------------------------------------------------- arguments
def layout_arg(layout) -> Optional[bytes]:
    """``input_layout`` as the C string the op receives (None = NULL; a NUL inside, which
    would cut the string short, is refused)."""
    if layout is None:
        return None
    if isinstance(layout, (bytes, bytearray)):
        raw = bytes(layout)
    elif isinstance(layout, str):
        raw = layout.encode("utf-8", "surrogatepass")
    else:
        raise TypeError(f"parameter 'input_layout' must be a str, bytes or None, got "
                        f"{type(layout).__name__}")
    if b"\x00" in raw:
        raise ValueError(f"parameter 'input_layout' contains a NUL character: {layout!r}")
    return raw


def _number(name: str, value, kind: type, abc: type, what: str):
    """``kind(value)`` for a ``kind`` or an ``abc`` number that is no bool, else TypeError."""
    if type(value) is not kind and (isinstance(value, bool) or not isinstance(value, abc)):
        raise TypeError(f"parameter '{name}' must be {what}, got {type(value).__name__}")
    return kind(value)


def _int64_attr(name: str, value) -> int:
    """An int64 attribute: ctypes would silently wrap a value outside int64, so refuse it."""
    value = _number(name, value, int, numbers.Integral, "an int")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"parameter '{name}' = {value} does not fit in int64")
    return value


def _double_attr(name: str, value) -> float:
    try:
        return _number(name, value, float, numbers.Real, "a float")
    except OverflowError:
        raise ValueError(f"parameter '{name}' = {value} does not fit in a double") from None


_CHECK = {"double": _double_attr, "int64_t": _int64_attr,
          "char *": lambda name, value: layout_arg(value)}
_CTYPE = {"double": c_double, "int64_t": c_int64, "char *": lambda raw: raw}


# op key -> (name, check, ctypes type) of each attribute, in parameter order
_ATTR_PARAMS = {op.key: [(p.name, _CHECK[p.c_type], _CTYPE[p.c_type])
                         for p in op.params if p.role == "attr"] for op in OPS.values()}


def attr_values(op: OpVersion, attrs) -> tuple:
    """The op's attributes (name -> value) in parameter order, checked against their C types."""
    return tuple([check(name, attrs[name]) for name, check, _ in _ATTR_PARAMS[op.key]])


# --------------------------------------------------------------------------- the four natives
def phase1(b, op: OpVersion, tensors_in: Sequence, int_arrays: Sequence, attrs: tuple,
           tensors_out: Sequence, out_params: Tuple[bool, bool] = (True, True)
           ) -> Tuple[Optional[Executor], int]:
    """Phase 1 on handles (None per NULL slot, parameter order) and checked attribute values:
    (the owned executor or None, the workspace size). ``out_params``: False passes NULL."""
    ws_size, handle = c_uint64(0), c_void_p(None)
    c_attrs = [ctype(v) for (_, _, ctype), v in zip(_ATTR_PARAMS[op.key], attrs)]
    args = (list(tensors_in) + list(int_arrays) + c_attrs + list(tensors_out)
            + [byref(ws_size) if out_params[0] else None,
               byref(handle) if out_params[1] else None])
    ex = Executor(b)
    fn = getattr(b, op.phase1)
    with ownership.atomic():
        rc = fn(*args)
        if handle.value:               # also on failure (the forward's, docs/releases.md)
            ex._adopt(handle.value)
    runtime.tally("phase1")
    if rc:
        error = status_error(b, rc, op.phase1)
        ex.release("warn")             # a failed phase 1's executor: ours to destroy
        raise error
    return (ex if ex.handle is not None else None), ws_size.value


def make_repeatable(b, ex: Executor) -> Optional[str]:
    """Mark ``ex`` repeatable: None on success, else why not (the status and message)."""
    if b.aclSetAclOpExecutorRepeatable is None:
        return "aclSetAclOpExecutorRepeatable is not exported by this CANN"
    rc = b.aclSetAclOpExecutorRepeatable(ex.handle)
    if rc == 0:
        return None
    msg = recent_message(b)
    return f"aclSetAclOpExecutorRepeatable returned {rc}" + (f": {msg}" if msg else "")


def set_address(b, output: bool, ex: Executor, index: int, tensor: int, address) -> bool:
    """Point one aclTensor of a repeatable executor at ``address`` (``index`` among the
    non-NULL tensors of its kind, docs/abi.md §2b); False when the setter fails."""
    setter = b.aclSetOutputTensorAddr if output else b.aclSetInputTensorAddr
    if setter(ex.handle, index, tensor, address):
        recent_message(b)
        return False
    return True


def phase2(b, op: OpVersion, ex: Executor, workspace: Optional[int], ws_size: int, stream: int,
           repeatable: bool) -> None:
    """Phase 2 on ``stream``; a one-shot executor is the library's once phase 2 is entered."""
    if ws_size > 0 and not workspace:   # the op would delete even a repeatable executor
        raise ParamNullptrError(f"phase 1 asked for a workspace of {ws_size} bytes and none was "
                                "given; phase 2 is not run without it", code=161001,
                                param="workspace", function=op.phase2, stricter=True)
    fn = getattr(b, op.phase2)
    args = (c_void_p(workspace), c_uint64(ws_size), c_void_p(ex.handle), c_void_p(stream))
    rc = fn(*args) if repeatable else ex.call_consuming(fn, *args)
    runtime.tally("phase2")
    if rc:
        raise status_error(b, rc, op.phase2)


# --------------------------------------------------------------------------- one call
class Launch(NamedTuple):
    """One call: a DeviceArray or None per tensor slot, checked ``attrs``
    (:func:`attr_values`), int tuples or None; ``cache``: use the executor cache."""

    op: OpVersion
    dev: int
    deterministic: Optional[bool]
    attrs: tuple
    int_values: tuple
    inputs: list
    outputs: list
    cache: bool = True
    out_params: Tuple[bool, bool] = (True, True)


def run(call: Launch, stream: int, workspace_of: Callable[[int, bool], int], sync: bool,
        timer: Timer = Timer()) -> None:
    """Run ``call`` on ``stream``: a cached executor of its signature repointed, else new
    handles and phase 1; ``workspace_of(nbytes, cached)`` gives the workspace's address (the
    caller's memory); ``sync``: synchronise the stream before returning."""
    b = runtime.api()
    cap = exec_cache.enabled(b) if call.cache else 0
    key = entry = None
    if cap:
        key = exec_cache.signature(call.op.phase1, call.dev, bool(call.deterministic),
                                   call.attrs, call.int_values, call.inputs, call.outputs)
        entry = _take_repointed(b, key, call)
    try:
        if entry is not None:
            runtime.tally("cache_hits")
            with timer("phase2"):
                phase2(b, call.op, entry.executor,
                       _workspace(workspace_of, entry.workspace_size, True),
                       entry.workspace_size, stream, True)
        else:
            entry = _build_and_launch(b, call, cap, stream, workspace_of, timer)
        if sync:
            with timer("phase2"):
                rc = b.aclrtSynchronizeStream(stream)
            if rc:
                raise status_error(b, rc, "aclrtSynchronizeStream")
    except BaseException:
        with ownership.atomic():
            exec_cache.discard(entry)
        raise
    if entry is not None:
        with ownership.atomic():
            exec_cache.give(key, entry, cap)


def _workspace(workspace_of, size: int, cached: bool) -> Optional[int]:
    return workspace_of(size, cached) if size > 0 else None


def _build_and_launch(b, call: Launch, cap: int, stream: int, workspace_of,
                      timer: Timer) -> Optional[exec_cache.CachedExecutor]:
    """Phase 1 and phase 2 with new handles; the cache entry they make (None: one-shot)."""
    hold = runtime.DeterminismHold(call.dev, call.deterministic)
    batch = ex = None
    try:
        hold.acquire()
        with timer("marshal"), ownership.atomic():
            batch = HandleBatch()
            t_in = batch.tensors(call.inputs)
            t_ia = batch.int_arrays(call.int_values)
            t_out = batch.tensors(call.outputs)
        with timer("phase1"):
            ex, ws_size = phase1(b, call.op, t_in, t_ia, call.attrs, t_out, call.out_params)
        if ex is None:
            return None
        entry = None
        if cap and make_repeatable(b, ex) is None:     # else one-shot, as without the cache
            entry = exec_cache.CachedExecutor(ex, batch, _slots(t_in, call.inputs),
                                              _slots(t_out, call.outputs), ws_size)
        workspace = _workspace(workspace_of, ws_size, False)
        with timer("phase2"):
            phase2(b, call.op, ex, workspace, ws_size, stream, entry is not None)
        if entry is not None:
            batch = ex = None       # the entry's now
        return entry
    finally:
        with timer("marshal"):
            exec_cache.release_handles(ex, batch)
        hold.release()


def _slots(handles: list, arrays: list) -> list:
    """(setter index, aclTensor handle, base address) of each non-NULL tensor, in order."""
    out = []
    for h, a in zip(handles, arrays):
        if a is not None:
            out.append((len(out), h, a.buffer.ptr))
    return out


def _take_repointed(b, key, call: Launch) -> Optional[exec_cache.CachedExecutor]:
    """An idle entry of ``key`` pointed at the call's arrays, or None (one that could not be
    repointed is destroyed)."""
    with ownership.atomic():
        entry = exec_cache.take(key)
    if entry is None:
        return None
    ok = False
    try:
        ok = (_repoint(b, entry, entry.inputs, call.inputs, False)
              and _repoint(b, entry, entry.outputs, call.outputs, True))
    finally:
        if not ok:
            with ownership.atomic():
                exec_cache.discard(entry)
    return entry if ok else None


def _repoint(b, entry, slots: list, arrays: list, output: bool) -> bool:
    """Point the entry's tensors at the non-NULL ``arrays``; False when a setter fails."""
    k = 0
    for arr in arrays:
        if arr is None:
            continue
        if arr.buffer.closed:
            raise ValueError("the device array's buffer has been freed")
        new = arr.buffer.ptr
        index, handle, ptr = slots[k]
        if new != ptr:
            if not set_address(b, output, entry.executor, index, handle, new):
                return False
            slots[k] = (index, handle, new)
        k += 1
    return True
