"""Device memory kept between calls on host arrays, per (device, ACL context record): at
most ``limit()`` idle bytes (``ACLNN_FAG_CALL_MEMORY_CACHE`` MiB, default 64, 0 = off),
sizes rounded up to :data:`GRAIN`; out of memory frees the idle ones and tries again."""

from __future__ import annotations

import threading
import warnings
from typing import Dict, List, Optional

from .. import _env
from ..errors import AclnnError
from . import caches, runtime
from .arena import ArenaBuffer

__all__ = ["ENV_LIMIT", "DEFAULT_LIMIT_MIB", "GRAIN", "limit", "take", "give", "discard",
           "clear", "idle_bytes"]

ENV_LIMIT = "ACLNN_FAG_CALL_MEMORY_CACHE"
DEFAULT_LIMIT_MIB = 64
GRAIN = 64 * 1024
_OUT_OF_MEMORY = 207001          # ACL_ERROR_RT_MEMORY_ALLOCATION

_lock = threading.Lock()
_idle: Dict[tuple, List[ArenaBuffer]] = {}   # (device, context record) -> oldest first
_env_seen: Optional[str] = "unset"
_limit = DEFAULT_LIMIT_MIB << 20


def limit() -> int:
    """Idle bytes kept at most per device (read again when the variable changes). An invalid
    value never fails a call (one may be running): a RuntimeWarning naming the variable,
    once per value, and the limit in force stays."""
    global _env_seen, _limit
    raw = _env.get(ENV_LIMIT)
    if raw != _env_seen:
        _env_seen = raw
        try:
            mib = _env.non_negative_int(ENV_LIMIT, raw, DEFAULT_LIMIT_MIB,
                                        "MiB; 0 turns the reuse off")
        except ValueError as e:
            warnings.warn(RuntimeWarning(f"{e}; the call memory pool keeps its limit of "
                                         f"{_limit >> 20} MiB"), stacklevel=2)
            return _limit
        _limit = mib << 20
        if _limit == 0:
            clear()
    return _limit


def take(nbytes: int, device_id: int) -> ArenaBuffer:
    """An allocation of at least ``nbytes`` for one call: the smallest idle one that fits, or
    a new one (call after ``runtime.ensure_device``)."""
    cap = limit()
    if cap == 0 or nbytes > cap:
        return ArenaBuffer(nbytes, device_id)   # not kept (pool_key None): give() frees it
    key = (device_id, runtime.current_context_record())
    with _lock:
        entries = _idle.get(key, [])
        found = min((a for a in entries if a.nbytes >= nbytes), key=_size, default=None)
        if found is not None:
            entries.remove(found)
            if not entries:
                del _idle[key]
    if found is not None and not found.closed:
        return found
    # another context's on this device: never handed out again
    runtime.free_all(_pop_idle(lambda k: k[0] == device_id and k != key), "warn")
    size = min(cap, -(-nbytes // GRAIN) * GRAIN)
    try:
        arena = ArenaBuffer(size, device_id)
    except AclnnError as e:
        if e.code != _OUT_OF_MEMORY or not clear(device_id):
            raise
        arena = ArenaBuffer(size, device_id)    # the idle ones freed: once more
    arena.pool_key = key
    return arena


def give(arena: ArenaBuffer) -> None:
    """Back after a successful call: kept for the next one (within the limit) or freed."""
    key = arena.pool_key
    cap = limit()
    if key is None or arena.closed or arena.nbytes > cap:
        arena.release("warn")
        return
    dropped = []
    with _lock:
        entries = _idle.setdefault(key, [])
        entries.append(arena)
        while sum(a.nbytes for a in entries) > cap:     # the oldest go first
            dropped.append(entries.pop(0))
    runtime.free_all(dropped, "warn")


def _size(arena: ArenaBuffer) -> int:
    return arena.nbytes


def discard(arena: ArenaBuffer) -> None:
    """After a failed call: freed, never reused (a failed free only warns)."""
    arena.release("warn")


def clear(device_id: Optional[int] = None) -> int:
    """Free every idle allocation (of one device, or all); returns how many there were."""
    arenas = _pop_idle(lambda k: device_id is None or k[0] == device_id)
    runtime.free_all(arenas, "warn")
    return len(arenas)


def _pop_idle(match) -> list:
    """The idle allocations kept under the keys ``match`` accepts, taken out of the pool."""
    with _lock:
        return [a for k in [k for k in _idle if match(k)] for a in _idle.pop(k)]


def idle_bytes(device_id: Optional[int] = None) -> int:
    """Bytes of idle allocations kept now (of one device, or all)."""
    with _lock:
        return sum(a.nbytes for k, lst in _idle.items() for a in lst
                   if device_id is None or k[0] == device_id)


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _idle.clear()              # the parent's device memory: never freed here


caches.register("call memory pool", clear, _forget_after_fork)
