"""Executors kept between public calls: phase 1 once per call signature.

A public call (``run_backward`` / ``run_forward``, so every ``backend="npu"`` call) whose
phase 1 succeeded marks its executor repeatable (``aclSetAclOpExecutorRepeatable``) and,
after a successful phase 2, keeps it here together with the aclTensor and aclIntArray
handles it refers to, instead of destroying them. The next call with the same
**signature** takes it out, points its tensors at the new device addresses
(``aclSetInputTensorAddr`` / ``aclSetOutputTensorAddr``) and runs phase 2 only: no
aclTensor is created, phase 1 (tiling) does not run again, and the determinism option is
not touched (phase 1 is where the op reads it; docs/abi.md §6).

The signature is everything phase 1 sees except the device addresses: the op, the device
and the thread's ACL context, the determinism value, every attribute (floats compared bit
for bit), the int arrays' values, and for each tensor slot NULL-ness, shape, strides,
dtype, element offset and the size of the storage its aclTensor describes. Two calls with
equal signatures give phase 1 identical arguments but for ``tensorData``, which is exactly
what the address setters replace.

Rules that keep it safe:

* An entry is used by one call at a time: ``take`` removes it from the cache, ``give``
  puts it back (a concurrent call with the same signature builds its own).
* Failure anywhere (an address setter, phase 2, the synchronisation) destroys the entry
  instead of returning it. A repeatable executor stays ours through phase 2 (phase 2 does
  not free it), so it is destroyed by us exactly once: executor first, then its handles.
* The cache holds at most ``capacity()`` idle entries (least recently used dropped first);
  ``ACLNN_FAG_EXECUTOR_CACHE`` sets it (default 16; ``0`` turns caching off, every call
  then creates and destroys its handles as before). :func:`clear` destroys every idle
  entry; ``acl.shutdown()`` does too. Host memory only: no device memory is kept (each
  call brings its own buffers and workspace).
* Without ``aclSetAclOpExecutorRepeatable`` or the address setters nothing is cached.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from ctypes import c_uint64, c_void_p
from typing import List, Optional

from .. import _env
from . import ownership, runtime
from ._status import recent_message, status_error

__all__ = ["ENV_CAPACITY", "DEFAULT_CAPACITY", "capacity", "enabled", "signature",
           "signature_of_keys", "array_keys", "take", "take_repointed", "take_repointed_at", "launch", "give",
           "discard", "clear", "size", "CachedExecutor"]

ENV_CAPACITY = "ACLNN_FAG_EXECUTOR_CACHE"
DEFAULT_CAPACITY = 16

_lock = threading.Lock()
_idle: "OrderedDict[tuple, List[CachedExecutor]]" = OrderedDict()
_count = 0                       # idle entries over all keys
_env_seen: Optional[str] = "unset"
_capacity = DEFAULT_CAPACITY


def capacity() -> int:
    """Idle entries kept at most (``$ACLNN_FAG_EXECUTOR_CACHE``, default 16, 0 = off).
    Read again whenever the variable changes; an invalid value raises ValueError naming it."""
    global _env_seen, _capacity
    raw = _env.get(ENV_CAPACITY)
    if raw != _env_seen:
        value = _env.non_negative_int(ENV_CAPACITY, raw, DEFAULT_CAPACITY,
                                      "0 turns the executor cache off")
        _capacity, _env_seen = value, raw
        if value < _count:
            _trim(value)
    return _capacity


def enabled(b) -> int:
    """The capacity when caching is on and the loaded libraries have what it needs, else 0."""
    cap = capacity()
    if (cap > 0 and b.aclSetAclOpExecutorRepeatable is not None
            and b.aclSetInputTensorAddr is not None and b.aclSetOutputTensorAddr is not None):
        return cap
    return 0


def _double_key(value: float) -> str:
    if type(value) is float:
        return value.hex()             # -0.0 and 0.0, NaN payloads: told apart
    return float(value).hex()


def signature(op_name: str, dev: int, deterministic, attrs: tuple, int_arrays: tuple,
              inputs: list, outputs: list) -> tuple:
    """The cache key of one call (see the module doc). ``attrs``: the nine attribute values
    in parameter order (doubles first); ``inputs`` / ``outputs``: DeviceArray or None per
    slot in parameter order."""
    return signature_of_keys(op_name, dev, deterministic, attrs, int_arrays,
                             array_keys(inputs), array_keys(outputs))


def signature_of_keys(op_name: str, dev: int, deterministic, attrs: tuple, int_arrays: tuple,
                      input_keys: tuple, output_keys: tuple) -> tuple:
    """:func:`signature` from the slots' :func:`array_keys` (for a caller that knows them
    without making DeviceArrays: :mod:`.host_path`)."""
    ctx = runtime.current_context_record()
    return _Key((op_name, dev, ctx, deterministic,
                 (_double_key(attrs[0]), _double_key(attrs[1])) + tuple(attrs[2:]), int_arrays,
                 input_keys, output_keys))


def array_keys(arrays: list) -> tuple:
    """What phase 1 sees of each tensor slot but its address: NULL, or shape, strides,
    dtype, element offset and the storage size."""
    return tuple([None if a is None else (a.shape, a.strides, a.dtype, a.offset, a.buffer.nbytes)
                  for a in arrays])


class _Key:
    """A signature tuple with its hash computed once (a call looks it up several times)."""

    __slots__ = ("parts", "hash")

    def __init__(self, parts: tuple) -> None:
        self.parts = parts
        self.hash = hash(parts)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other) -> bool:
        return (type(other) is _Key and self.hash == other.hash
                and (self.parts is other.parts or self.parts == other.parts))

    def __repr__(self) -> str:
        return f"_Key({self.parts!r})"


class CachedExecutor:
    """A repeatable executor plus the handles (``HandleBatch``) its tensors and int arrays
    live in; ``inputs`` / ``outputs``: per non-NULL tensor slot (setter index, aclTensor
    handle, the device base address it points at now)."""

    __slots__ = ("executor", "batch", "inputs", "outputs", "workspace_size", "__weakref__")

    def __init__(self, executor, batch, inputs: list, outputs: list, workspace_size: int) -> None:
        self.executor = executor
        self.batch = batch
        self.inputs = inputs
        self.outputs = outputs
        self.workspace_size = workspace_size

    @property
    def alive(self) -> bool:
        return not (self.executor.released or self.batch.released)

    def repoint(self, b, inputs: list, outputs: list) -> bool:
        """Point the tensors at the base addresses of ``inputs`` / ``outputs`` (DeviceArrays
        in the order of the entry's slots). False when a setter fails (the entry must then
        be discarded: some tensors may already point at the new buffers)."""
        return self.repoint_addresses(b, _addresses(inputs), _addresses(outputs))

    def repoint_addresses(self, b, inputs: list, outputs: list) -> bool:
        """:meth:`repoint` given the base addresses (int, or None for an empty buffer)."""
        ex = self.executor.handle
        for setter, slots, addresses in ((b.aclSetInputTensorAddr, self.inputs, inputs),
                                         (b.aclSetOutputTensorAddr, self.outputs, outputs)):
            for k, new in enumerate(addresses):
                index, handle, ptr = slots[k]
                if new != ptr:
                    if setter(ex, index, handle, new):
                        recent_message(b)
                        return False
                    slots[k] = (index, handle, new)
        return True

    def release(self, mode: str = "warn") -> None:
        """Destroy the executor, then its tensors and int arrays (idempotent)."""
        with ownership.atomic():
            try:
                self.executor.release(mode)
            finally:
                self.batch.release(mode)


def take(key: tuple) -> Optional[CachedExecutor]:
    """An idle entry for ``key`` (removed from the cache), or None."""
    global _count
    with _lock:
        entries = _idle.get(key)
        found = None
        while entries and found is None:
            entry = entries.pop()           # a released one (shutdown) is dropped
            _count -= 1
            if entry.alive:
                found = entry
        if entries is not None and not entries:
            del _idle[key]
    return found


def _addresses(arrays: list) -> list:
    """The base address of each DeviceArray's buffer (None: an empty one); ValueError for
    a freed buffer."""
    out = []
    for arr in arrays:
        buf = arr.buffer
        new = buf.ptr
        if new is None and buf.closed:
            raise ValueError("the device array's buffer has been freed")
        out.append(new)
    return out


def take_repointed(key: tuple, b, inputs: list, outputs: list) -> Optional[CachedExecutor]:
    """:func:`take`, then the entry's tensors pointed at ``inputs`` / ``outputs`` (a
    DeviceArray or None per slot, in parameter order): the entry ready for phase 2, or None
    (no entry, or an address setter failed: that entry is destroyed and the caller runs
    phase 1). An error while repointing (a freed buffer) destroys the entry too."""
    return _take_then(key, b, lambda entry: entry.repoint(
        b, [a for a in inputs if a is not None], [a for a in outputs if a is not None]))


def take_repointed_at(key: tuple, b, inputs: list, outputs: list) -> Optional[CachedExecutor]:
    """:func:`take_repointed` given the base addresses of the non-NULL slots, in order."""
    return _take_then(key, b, lambda entry: entry.repoint_addresses(b, inputs, outputs))


def _take_then(key: tuple, b, repoint) -> Optional[CachedExecutor]:
    with ownership.atomic():
        entry = take(key)
    if entry is None:
        return None
    try:
        ok = repoint(entry)
    except BaseException:
        with ownership.atomic():
            discard(entry)
        raise
    if not ok:
        with ownership.atomic():
            discard(entry)
        return None
    return entry


def launch(b, phase2: str, entry: CachedExecutor, stream: int, workspace_of) -> None:
    """Phase 2 (the function named ``phase2``) of a repointed entry on ``stream``, with
    ``workspace_of(nbytes)`` giving the workspace's address (asked only for a workspace of
    more than 0 bytes). Any failure destroys the entry and propagates (the status code's
    exception for a failed phase 2); after success the caller gives the entry back
    (:func:`give`) -- or discards it if what follows (its synchronisation) fails."""
    try:
        size = entry.workspace_size
        ws = workspace_of(size) if size > 0 else None
        rc = getattr(b, phase2)(c_void_p(ws), c_uint64(size), c_void_p(entry.executor.handle),
                                c_void_p(stream))
        runtime._count("phase2", 1, "cache_hits", 1)
        if rc:
            raise status_error(b, rc, phase2)
    except BaseException:
        with ownership.atomic():
            discard(entry)
        raise


def give(key: tuple, entry: CachedExecutor, cap: Optional[int] = None) -> None:
    """Return an entry after a successful call (the least recently used ones beyond the
    capacity -- ``capacity()`` unless given -- are destroyed)."""
    global _count
    if cap is None:
        cap = capacity()
    if cap <= 0 or not entry.alive:
        entry.release()
        return
    with _lock:
        entries = _idle.get(key)
        if entries is None:
            _idle[key] = [entry]
        else:
            entries.append(entry)
            _idle.move_to_end(key)
        _count += 1
    if _count > cap:
        _trim(cap)


def discard(entry: Optional[CachedExecutor]) -> None:
    """Destroy an entry that failed (or is not wanted); failures only warn."""
    if entry is not None:
        entry.release("warn")


def _trim(cap: int) -> None:
    global _count
    dropped = []
    with _lock:
        while _count > cap and _idle:
            key, entries = next(iter(_idle.items()))
            dropped.append(entries.pop(0))
            _count -= 1
            if not entries:
                del _idle[key]
    for entry in dropped:
        entry.release("warn")


def clear() -> int:
    """Destroy every idle entry; returns how many there were."""
    global _count
    with _lock:
        entries = [e for lst in _idle.values() for e in lst]
        _idle.clear()
        _count = 0
    for entry in entries:
        entry.release("warn")
    return len(entries)


def size() -> int:
    """Idle entries in the cache now."""
    return _count


def _forget_after_fork() -> None:
    global _lock, _count
    _lock = threading.Lock()
    _idle.clear()              # the handles were the parent's: never released here
    _count = 0


runtime.on_shutdown(clear)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
