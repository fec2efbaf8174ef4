"""Interrupt-safe ownership of native handles (docs/faults.md, "Ctrl-C at any moment"):
:class:`atomic` holds SIGINT back for a create and the :meth:`Claim.take` of its handle;
the claim releases it exactly once (owner, garbage collection or :func:`release_all`)."""

from __future__ import annotations

import signal
import sys
import threading
import warnings
import weakref
from typing import Callable, Dict, List, Optional

from ..errors import ResourceReleaseWarning

try:        # the C functions under ``signal``'s wrappers (~0.5 us a swap against ~10 us;
    # measured: without them the NPU-tensor call misses its 250 us goal)
    from _signal import getsignal as _getsignal, signal as _setsignal
except ImportError:     # pragma: no cover - other interpreters
    _getsignal, _setsignal = signal.getsignal, signal.signal
_SIGINT = int(signal.SIGINT)
_get_ident = threading.get_ident
_main_ident = threading.main_thread().ident     # refreshed by after_fork

__all__ = ["atomic", "Claim", "release_all", "pending", "after_fork",
           "run_finalizer", "deliver_deferred", "deferred_interrupts",
           "OWNED", "FAILED", "RELEASED", "CONSUMED", "EMPTY", "set_quiet"]

EMPTY, OWNED, RELEASING, FAILED, RELEASED, CONSUMED, DROPPED = (
    "empty", "owned", "releasing", "failed", "released", "consumed", "dropped")

# ----------------------------------------------------------------------------- SIGINT deferral
_depth = 0              # atomic blocks open on the main thread
_pending = False        # a SIGINT arrived inside a block
_finalizing = 0         # finalizers running on the main thread (run_finalizer)
_deferred = 0           # KeyboardInterrupts caught in finalizers, not yet raised again


def _record(signum, frame) -> None:     # the stand-in SIGINT handler inside atomic blocks
    global _pending
    _pending = True


class atomic:
    """Hold SIGINT back on the main thread for the block; deliver it right after. Nestable;
    a no-op on other threads and where the handler cannot be swapped."""

    __slots__ = ("_old", "_mine")

    def __enter__(self) -> "atomic":
        global _depth, _pending
        self._mine = False
        if _get_ident() != _main_ident:
            return self
        if _depth:
            _depth += 1
            self._mine = True
            return self
        try:
            current = _getsignal(_SIGINT)
        except (ValueError, OSError):       # pragma: no cover - no signal support here
            return self
        if current is None or current is _record:
            # a handler set outside Python (could not be put back), or an outer block between
            # its swap and its depth update (a finalizer inside it): that block defers for us
            return self
        if _deferred and not _finalizing:
            _raise_deferred()               # a boundary: before anything of the block
        _pending = False                    # before the swap: a signal now raises here
        try:
            self._old = _setsignal(_SIGINT, _record)
        except (ValueError, OSError):       # pragma: no cover - not the main interpreter
            return self
        _depth = 1
        self._mine = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        global _depth, _pending
        if not self._mine:
            return False
        _depth -= 1
        if _depth:
            return False
        _setsignal(_SIGINT, self._old)
        if _pending:
            _pending = False
            signal.raise_signal(signal.SIGINT)   # handled at the next bytecode, as usual
        if _deferred and not _finalizing:
            _raise_deferred()               # a boundary: after the block
        return False


def _raise_deferred() -> None:
    global _deferred
    _deferred -= 1
    raise KeyboardInterrupt     # the handler already ran (in the finalizer): its exception


def run_finalizer(fn: Callable, *args) -> None:
    """``fn(*args)`` as a garbage-collection finalizer: a KeyboardInterrupt raised inside it
    is kept and raised at the next library boundary instead of being dropped by CPython."""
    global _finalizing, _deferred
    main = _get_ident() == _main_ident
    if main:
        _finalizing += 1
    try:
        fn(*args)
    except KeyboardInterrupt:
        _deferred += 1
    finally:
        if main:
            _finalizing -= 1


def deferred_interrupts() -> int:
    """KeyboardInterrupts caught in finalizers that have not been raised again yet."""
    return _deferred


def deliver_deferred() -> None:
    """Raise a KeyboardInterrupt a finalizer caught, if one is waiting (main thread only)."""
    if _deferred and not _finalizing and _get_ident() == _main_ident:
        _raise_deferred()


# ----------------------------------------------------------------------------- claims
_lock = threading.RLock()
_registry: Dict[int, "Claim"] = {}
_gen = 0                # bumped in a forked child: inherited claims are never released there
_quiet = False          # interpreter exit: failures are not reported any more


class Claim:
    """The ownership record of one native handle. ``what`` names it for messages; ``rank``
    orders :func:`release_all` (lower first: executors, tensors, memory, streams)."""

    __slots__ = ("what", "rank", "handle", "func", "args", "state", "gen", "ref", "__weakref__")

    def __init__(self, what: str, rank: int = 1) -> None:
        self.what = what
        self.rank = rank
        self.handle = None
        self.func: Optional[Callable] = None
        self.args: tuple = ()
        self.state = EMPTY
        self.gen = _gen
        self.ref = None         # watch(): the owner's weak reference (its finalizer)

    def watch(self, owner) -> None:
        """Release the handle when ``owner`` is garbage collected (mode "gc"; the weak
        reference lives on the claim, so cycles too); while alive, the owner's
        ``_on_released()`` is called once when the handle stops being owned."""
        self.ref = weakref.ref(owner, self._collected)

    def _collected(self, _ref) -> None:
        run_finalizer(self.release, "gc")

    def _tell_owner(self) -> None:
        owner = self.ref() if self.ref is not None else None
        if owner is not None:
            owner._on_released()

    def take(self, handle, func: Callable, *args) -> None:
        """Own ``handle``; ``func(*args)`` releases it and returns None or an exception.
        Call inside the :class:`atomic` block of the create, right after it."""
        self.handle = handle
        self.func = func
        self.args = args
        self.gen = _gen
        with _lock:
            self.state = OWNED
            _registry[id(self)] = self

    def consume(self) -> None:
        """The library takes the handle now (call inside the atomic block of that call)."""
        with _lock:
            owned = self.state == OWNED
            if owned:
                self.state = CONSUMED
                _registry.pop(id(self), None)
        if owned:
            self._tell_owner()

    def release(self, mode: str = "raise") -> bool:
        """Release the handle now; True when it is gone. On failure the handle is kept and
        "raise" raises, "warn" / "gc" warn; "final" (:func:`release_all`) warns and drops it."""
        with atomic():
            with _lock:
                if self.state not in (OWNED, FAILED):
                    return True
                if self.state == FAILED and mode in ("gc", "warn"):
                    return False                # its retry is shutdown's (or release()'s)
                owned = self.state == OWNED
                self.state = RELEASING
            err = None
            if self.gen == _gen:                # inherited across fork: never ours to free
                try:
                    err = self.func(*self.args)
                except Exception as exc:        # a release function must not raise; be safe
                    err = exc
            with _lock:
                if err is None or mode == "final":
                    self.state = RELEASED if err is None and self.gen == _gen else DROPPED
                    _registry.pop(id(self), None)
                else:
                    self.state = FAILED
            if owned:
                self._tell_owner()
        if err is None:
            return True
        if mode == "raise":
            raise err
        if not (_quiet or sys.is_finalizing()):
            if mode == "final":
                tail = "it could not be released at shutdown either and is dropped"
            else:
                tail = "the handle is kept and released again by acl.shutdown()"
            warnings.warn(ResourceReleaseWarning(f"releasing {self.what} failed: {err}; {tail}"),
                          stacklevel=2)
        return False

    def __repr__(self) -> str:
        h = f"{self.handle:#x}" if isinstance(self.handle, int) else repr(self.handle)
        return f"<Claim {self.what} {h} {self.state}>"


def pending() -> List[Claim]:
    """Claims still holding a handle (owned, or kept after a failed release)."""
    with _lock:     # the registry holds exactly those
        return list(_registry.values())


def release_all() -> None:
    """Release every registered handle, lowest rank first (``acl.shutdown()``; a failure
    drops the handle with a warning)."""
    with _lock:
        claims = sorted(_registry.values(), key=lambda c: c.rank)
    for c in claims:
        c.release("final")


def set_quiet() -> None:
    """At interpreter exit: failures are no longer reported (nothing could act on them)."""
    global _quiet
    _quiet = True


def after_fork() -> None:
    """In a forked child: the parent's handles are not ours (never released here)."""
    global _gen, _registry, _lock, _depth, _pending, _main_ident, _finalizing, _deferred
    _gen += 1
    _main_ident = threading.main_thread().ident
    _registry = {}
    _lock = threading.RLock()
    _depth = 0
    _pending = False
    _finalizing = 0
    _deferred = 0
    try:        # forked from inside an atomic block of another thread: undo the stand-in
        if signal.getsignal(signal.SIGINT) is _record:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):   # pragma: no cover
        pass
