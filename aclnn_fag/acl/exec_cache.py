"""Executors kept between public calls, by call **signature** (everything phase 1 sees but
the addresses): a hit is repointed and runs phase 2 only; at most ``capacity()`` idle
entries (``ACLNN_FAG_EXECUTOR_CACHE``, default 16, 0 = off), least recently used dropped."""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from typing import Optional

from .. import _env
from . import caches, ownership, runtime

__all__ = ["ENV_CAPACITY", "DEFAULT_CAPACITY", "capacity", "enabled", "signature",
           "array_keys", "take", "give", "discard", "clear", "size", "CachedExecutor",
           "release_handles"]

ENV_CAPACITY = "ACLNN_FAG_EXECUTOR_CACHE"
DEFAULT_CAPACITY = 16

_lock = threading.Lock()
_lru: "OrderedDict[CachedExecutor, tuple]" = OrderedDict()   # idle entry -> key, oldest first
_env_seen: Optional[str] = "unset"
_capacity = DEFAULT_CAPACITY


def capacity() -> int:
    """Idle entries kept at most (``$ACLNN_FAG_EXECUTOR_CACHE``, read again when it changes;
    an invalid value raises ValueError naming it)."""
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
    """The double's 64-bit pattern (-0.0 and 0.0, NaN signs and payloads told apart)."""
    return _BITS.unpack(_DOUBLE.pack(value))[0]


_DOUBLE, _BITS = struct.Struct("=d"), struct.Struct("=Q")


def signature(op_name: str, dev: int, deterministic, attrs: tuple, int_arrays: tuple,
              inputs: list, outputs: list) -> tuple:
    """The cache key of one call (see the module doc); ``attrs`` in parameter order (the
    doubles first), ``inputs`` / ``outputs`` a DeviceArray or None per slot."""
    return (op_name, dev, runtime.current_context_record(), deterministic,
            (_double_key(attrs[0]), _double_key(attrs[1])) + tuple(attrs[2:]), int_arrays,
            array_keys(inputs), array_keys(outputs))


def array_keys(arrays: list) -> tuple:
    """What phase 1 sees of each tensor slot but its address."""
    return tuple([None if a is None else (a.shape, a.strides, a.dtype, a.offset, a.buffer.nbytes)
                  for a in arrays])


class CachedExecutor:
    """A repeatable executor and the ``HandleBatch`` it refers to; ``inputs`` / ``outputs``:
    per non-NULL tensor slot (setter index, aclTensor handle, the address it points at)."""

    __slots__ = ("executor", "batch", "inputs", "outputs", "workspace_size", "__weakref__")

    def __init__(self, executor, batch, inputs: list, outputs: list, workspace_size: int) -> None:
        self.executor, self.batch = executor, batch
        self.inputs, self.outputs, self.workspace_size = inputs, outputs, workspace_size

    @property
    def alive(self) -> bool:
        return not (self.executor.released or self.batch.released)

    def release(self, mode: str = "warn") -> None:
        release_handles(self.executor, self.batch, mode)


def release_handles(executor, batch, mode: str = "warn") -> None:
    """Destroy an executor, then the tensors and int arrays it refers to (None: none)."""
    with ownership.atomic():
        try:
            if executor is not None:
                executor.release(mode)
        finally:
            if batch is not None:
                batch.release(mode)


def take(key: tuple) -> Optional[CachedExecutor]:
    """The newest idle entry for ``key`` (removed from the cache), or None."""
    with _lock:
        for entry in reversed([e for e, k in _lru.items() if k == key]):
            del _lru[entry]
            if entry.alive:                 # a released one (shutdown) is dropped
                return entry
    return None


def give(key: tuple, entry: CachedExecutor, cap: Optional[int] = None) -> None:
    """Return an entry after a successful call (the least recently used beyond ``cap``,
    default ``capacity()``, are destroyed)."""
    if cap is None:
        cap = capacity()
    if cap <= 0 or not entry.alive:
        entry.release()
        return
    with _lock:
        _lru[entry] = key
    if len(_lru) > cap:
        _trim(cap)


def discard(entry: Optional[CachedExecutor]) -> None:
    """Destroy an entry that failed (or is not wanted); failures only warn."""
    if entry is not None:
        entry.release("warn")


def _trim(cap: int) -> int:
    """Destroy the least recently returned entries (of any key) beyond ``cap``; how many."""
    dropped = []
    with _lock:
        while len(_lru) > cap:
            entry, key = _lru.popitem(last=False)
            dropped.append(entry)
    for entry in dropped:
        entry.release("warn")
    return len(dropped)


def clear() -> int:
    """Destroy every idle entry; returns how many there were."""
    return _trim(0)


def size() -> int:
    """Idle entries in the cache now."""
    return len(_lru)


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _lru.clear()              # the handles were the parent's: never released here


caches.register("executor cache", clear, _forget_after_fork)
