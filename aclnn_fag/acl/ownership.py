"""Interrupt-safe ownership of native handles: one small mechanism for every native sequence.

The problem it solves: Python raises ``KeyboardInterrupt`` between any two bytecodes of the
main thread (also at the first bytecode of any Python function). A handle returned by
``aclCreateTensor`` that has not yet been stored anywhere when the interrupt lands is lost
for good (a leak); an executor handed to phase 2 that is still marked "ours" when the
interrupt lands after the call is destroyed again by the cleanup (a double free on real
CANN, which frees it inside phase 2).

The rules (see docs/faults.md):

* :class:`atomic` — a context manager that, on the main thread, holds ``SIGINT`` back for
  its block (the signal is recorded by a stand-in handler) and delivers it right after the
  block, to whatever handler was installed before (so ``KeyboardInterrupt`` is raised
  there, or the process dies under ``SIG_DFL``, exactly as it would have). Other threads
  never receive ``KeyboardInterrupt``, so there it costs nothing. Blocks are nestable and
  meant to be tiny: *one native create and the store of its result*, or *marking an
  executor consumed and calling phase 2*.
* :class:`Claim` — the ownership record of one handle. It is allocated **before** the
  native call (so nothing can fail between the call and the store except a signal, which
  :class:`atomic` defers), filled by :meth:`Claim.take` in the same atomic block as the
  create, and kept in a process-wide registry (strong references) until released. The
  Python object owning the handle is watched by the claim (:meth:`Claim.watch`, a weak
  reference whose callback calls :meth:`Claim.release`); should that callback itself be
  interrupted, the claim is still in the registry and :func:`release_all`
  (``acl.shutdown()``) releases it.
* Finalizers run through :func:`run_finalizer`. A ``KeyboardInterrupt`` raised inside a
  garbage-collection callback (an interrupt deferred by the release's atomic block and
  delivered at its end, or one landing in the callback's own bytecodes) would be printed
  as "Exception ignored" and dropped by CPython; it is kept instead and raised in the main
  flow at the next library boundary: the start or the end of the next outermost
  :class:`atomic` block on the main thread (every native step of the package), or
  :func:`deliver_deferred`.
* :meth:`Claim.consume` — marks the handle as the library's (an executor given to phase
  2). Call it inside the same :class:`atomic` block as the consuming call, right before it:
  from that bytecode on the handle is never released by us.
* Releases go through the claim's state (owned → releasing → released), under a lock: a
  handle is released at most once whatever mix of explicit release, garbage collection,
  context-manager exit and shutdown reaches it. A release that fails keeps the handle in
  the registry (state ``failed``) with a :class:`~aclnn_fag.errors.ResourceReleaseWarning`
  (or the error, for an explicit ``release()``); ``release_all()`` tries it once more and
  then drops it with a warning.
* Handles inherited across ``fork`` are never released in the child (:func:`after_fork`).

Usage, for any native create::

    resource._prepare()                     # the claim and the finalizer first
    with ownership.atomic():
        handle = b.aclCreateTensor(...)
        if handle:
            resource._take(handle, release_fn, *args)  # the only step after the call
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings
import weakref
from typing import Callable, Dict, List, Optional

from ..errors import ResourceReleaseWarning

try:        # the C functions under ``signal``'s wrappers: those convert every handler they
    # return to an enum member (a failed enum lookup, i.e. a raised and caught ValueError,
    # for each Python handler), ~10 us per call, whereas the swap itself costs ~0.5 us.
    # Kept (measured): without it the NPU-tensor call of the overhead bench misses its
    # 250 us goal (170-295 us, against 123-147 us with it).
    from _signal import getsignal as _getsignal, signal as _setsignal
except ImportError:     # pragma: no cover - other interpreters
    _getsignal, _setsignal = signal.getsignal, signal.signal
_SIGINT = int(signal.SIGINT)
_get_ident = threading.get_ident
_main_ident = threading.main_thread().ident     # refreshed by after_fork

__all__ = ["atomic", "Claim", "release_all", "pending", "after_fork", "generation",
           "run_finalizer", "deliver_deferred", "deferred_interrupts",
           "OWNED", "FAILED", "RELEASED", "CONSUMED", "EMPTY"]

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
    """Hold SIGINT back on the main thread for the block; deliver it right after.

    Nestable; a no-op on other threads and where the SIGINT handler cannot be swapped
    (not the main interpreter, or a handler installed outside Python)."""

    __slots__ = ("_old", "_mine")

    def __enter__(self) -> "atomic":
        global _depth, _pending
        self._mine = False
        if _get_ident() != _main_ident:
            return self
        if _depth:
            _depth += 1
            self._mine = True
            self._old = None
            return self
        try:
            current = _getsignal(_SIGINT)
        except (ValueError, OSError):       # pragma: no cover - no signal support here
            return self
        if current is None or current is _record:
            # None: a handler installed outside Python, which signal.signal could not put
            # back; _record: an outer block is between its swap and its depth update (a
            # finalizer ran inside it) — the outer block defers for us.
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
    """``fn(*args)`` as a garbage-collection finalizer (a weak reference's callback, a
    ``weakref.finalize``): a KeyboardInterrupt raised inside it is kept and raised again in
    the main flow at the next library boundary (see the module doc) instead of being
    dropped by CPython."""
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


def generation() -> int:
    return _gen


class Claim:
    """The ownership record of one native handle (see the module doc).

    ``what`` names the handle for messages; ``rank`` orders :func:`release_all`
    (lower first: executors before the tensors they use, those before memory)."""

    __slots__ = ("what", "rank", "handle", "func", "args", "state", "gen", "failures",
                 "error", "ref", "__weakref__")

    def __init__(self, what: str, rank: int = 1) -> None:
        self.what = what
        self.rank = rank
        self.handle = None
        self.func: Optional[Callable] = None
        self.args: tuple = ()
        self.state = EMPTY
        self.gen = _gen
        self.failures = 0
        self.error: Optional[BaseException] = None
        self.ref = None         # watch(): the owner's weak reference (its finalizer)

    def watch(self, owner) -> None:
        """Release the handle when ``owner`` is garbage collected (mode "gc"). The weak
        reference lives on the claim, which the registry holds while the handle is owned,
        so its callback runs also when the owner dies in a reference cycle; cheaper than a
        ``weakref.finalize``. :meth:`unwatch` cancels it."""
        self.ref = weakref.ref(owner, self._collected)

    def unwatch(self) -> None:
        self.ref = None

    def _collected(self, _ref) -> None:
        run_finalizer(self.release, "gc")

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

    @property
    def live(self) -> bool:
        """Owned, or kept after a failed release."""
        return self.state in (OWNED, FAILED, RELEASING)

    def consume(self) -> None:
        """The library takes the handle now (call inside the atomic block of that call)."""
        with _lock:
            if self.state in (OWNED, FAILED):
                self.state = CONSUMED
                _registry.pop(id(self), None)

    def release(self, mode: str = "raise") -> bool:
        """Release the handle now. True when it is gone (released before, consumed, never
        taken, or released now). On failure the handle is kept and, by ``mode``: "raise"
        raises the error, "warn" and "gc" warn (quiet at interpreter exit), "final" warns and
        drops the handle (the last try, from :func:`release_all`)."""
        with atomic():
            with _lock:
                if self.state not in (OWNED, FAILED):
                    return True
                if self.state == FAILED and mode in ("gc", "warn"):
                    return False                # its retry is shutdown's (or release()'s)
                if self.gen != _gen:            # inherited across fork: never ours to free
                    self.state = DROPPED
                    _registry.pop(id(self), None)
                    return True
                self.state = RELEASING
            try:
                err = self.func(*self.args)
            except Exception as exc:            # a release function must not raise; be safe
                err = exc
            with _lock:
                if err is None:
                    self.state = RELEASED
                    self.error = None
                    _registry.pop(id(self), None)
                    return True
                self.failures += 1
                self.error = err
                if mode == "final":
                    self.state = DROPPED
                    _registry.pop(id(self), None)
                else:
                    self.state = FAILED
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
    with _lock:
        claims = list(_registry.values())
    return [c for c in claims if c.live]


def release_all(final: bool = True) -> List[Claim]:
    """Release every registered handle, lowest rank first (``acl.shutdown()``). A handle
    whose release fails is dropped with a warning when ``final`` (its retry). Returns the
    claims that could not be released."""
    with _lock:
        claims = list(_registry.values())
    claims.sort(key=lambda c: c.rank)
    failed = []
    for c in claims:
        if not c.release("final" if final else "warn"):
            failed.append(c)
    return failed


def set_quiet(value: bool = True) -> None:
    """At interpreter exit: failures are no longer reported (nothing could act on them)."""
    global _quiet
    _quiet = bool(value)


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
