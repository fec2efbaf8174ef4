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

import struct
import threading
from collections import OrderedDict
from typing import Dict, List, Optional

from .. import _env
from . import caches, ownership, runtime

__all__ = ["ENV_CAPACITY", "DEFAULT_CAPACITY", "capacity", "enabled", "signature",
           "array_keys", "take", "give",
           "discard", "clear", "size", "CachedExecutor"]

ENV_CAPACITY = "ACLNN_FAG_EXECUTOR_CACHE"
DEFAULT_CAPACITY = 16

_lock = threading.Lock()
_idle: "Dict[tuple, List[CachedExecutor]]" = {}     # key -> its idle entries, newest last
_lru: "OrderedDict[CachedExecutor, tuple]" = OrderedDict()   # every idle entry, oldest first
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
        if value < len(_lru):
            _trim(value)
    return _capacity


def enabled(b) -> int:
    """The capacity when caching is on and the loaded libraries have what it needs, else 0."""
    cap = capacity()
    if (cap > 0 and b.aclSetAclOpExecutorRepeatable is not None
            and b.aclSetInputTensorAddr is not None and b.aclSetOutputTensorAddr is not None):
        return cap
    return 0


def _double_key(value: float) -> int:
    """The double's 64-bit pattern: -0.0 and 0.0, the NaN signs and payloads told apart
    (``float.hex()`` gives 'nan' for every NaN)."""
    return _BITS.unpack(_DOUBLE.pack(value))[0]


_DOUBLE, _BITS = struct.Struct("=d"), struct.Struct("=Q")


def signature(op_name: str, dev: int, deterministic, attrs: tuple, int_arrays: tuple,
              inputs: list, outputs: list) -> tuple:
    """The cache key of one call (see the module doc). ``attrs``: the attribute values in
    parameter order (doubles first); ``inputs`` / ``outputs``: DeviceArray or None per
    slot in parameter order."""
    return (op_name, dev, runtime.current_context_record(), deterministic,
            (_double_key(attrs[0]), _double_key(attrs[1])) + tuple(attrs[2:]), int_arrays,
            array_keys(inputs), array_keys(outputs))


def array_keys(arrays: list) -> tuple:
    """What phase 1 sees of each tensor slot but its address: NULL, or shape, strides,
    dtype, element offset and the storage size."""
    return tuple([None if a is None else (a.shape, a.strides, a.dtype, a.offset, a.buffer.nbytes)
                  for a in arrays])


class CachedExecutor:
    """A repeatable executor plus the handles (``HandleBatch``) its tensors and int arrays
    live in; ``inputs`` / ``outputs``: per non-NULL tensor slot (setter index, aclTensor
    handle, the device base address it points at now; :mod:`.executor` repoints them)."""

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

    def release(self, mode: str = "warn") -> None:
        """Destroy the executor, then its tensors and int arrays (idempotent)."""
        with ownership.atomic():
            try:
                self.executor.release(mode)
            finally:
                self.batch.release(mode)


def take(key: tuple) -> Optional[CachedExecutor]:
    """An idle entry for ``key`` (removed from the cache), or None."""
    with _lock:
        entries = _idle.get(key)
        found = None
        while entries and found is None:
            entry = entries.pop()           # a released one (shutdown) is dropped
            del _lru[entry]
            if entry.alive:
                found = entry
        if entries is not None and not entries:
            del _idle[key]
    return found


def give(key: tuple, entry: CachedExecutor, cap: Optional[int] = None) -> None:
    """Return an entry after a successful call (the least recently used ones beyond the
    capacity -- ``capacity()`` unless given -- are destroyed)."""
    if cap is None:
        cap = capacity()
    if cap <= 0 or not entry.alive:
        entry.release()
        return
    with _lock:
        _idle.setdefault(key, []).append(entry)
        _lru[entry] = key
    if len(_lru) > cap:
        _trim(cap)


def discard(entry: Optional[CachedExecutor]) -> None:
    """Destroy an entry that failed (or is not wanted); failures only warn."""
    if entry is not None:
        entry.release("warn")


def _trim(cap: int) -> None:
    """Destroy the least recently returned entries (of any key) beyond ``cap``."""
    dropped = []
    with _lock:
        while len(_lru) > cap:
            entry, key = _lru.popitem(last=False)
            entries = _idle[key]
            entries.remove(entry)
            if not entries:
                del _idle[key]
            dropped.append(entry)
    for entry in dropped:
        entry.release("warn")


def clear() -> int:
    """Destroy every idle entry; returns how many there were."""
    with _lock:
        entries = list(_lru)
        _idle.clear()
        _lru.clear()
    for entry in entries:
        entry.release("warn")
    return len(entries)


def size() -> int:
    """Idle entries in the cache now."""
    return len(_lru)


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _idle.clear()              # the handles were the parent's: never released here
    _lru.clear()


caches.register("executor cache", clear, _forget_after_fork)
