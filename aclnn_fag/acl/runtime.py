"""The ACL runtime side: initialisation, per-thread device, streams, device buffers, copies.

* ``aclInit`` runs once per process (100002 "already initialised", e.g. by torch_npu,
  is accepted; then this package does not own the initialisation).
* ``ensure_device(dev)`` calls ``aclrtSetDevice`` on each calling thread the first time
  it uses ``dev`` there (thread-local record); the device's default context is shared
  by all threads, so the determinism option is per device (see ``determinism``).
  Threads are never ``aclrtResetDevice``'d (that would drop the shared context).
* ``stream(dev)``: one stream per (device, thread), created lazily; streams of threads
  that have ended are destroyed the next time a stream is requested on that device,
  by ``release_thread_resources()`` and by ``shutdown()``.
* :class:`DeviceBuffer`: ``aclrtMalloc``'d memory owned by a Python object, freed
  exactly once by ``free()``, the context manager, garbage collection
  (a weak reference on its claim) or ``shutdown()``, through an :class:`.ownership.Claim` taken
  atomically with the allocation (Ctrl-C at any bytecode neither leaks nor double-frees);
  a failed release warns (``ResourceReleaseWarning``) or raises (explicit ``free()``) and
  keeps the handle for a retry by ``shutdown()``; memory inherited across ``fork`` is never
  freed. Streams likewise (a failed ``aclrtDestroyStream`` is reported and retried).
* device ids: int32 and below ``aclrtGetDeviceCount`` (:func:`resolve_device`,
  :func:`ensure_device`).
* ``stats()``: process-wide counters of native calls (allocations, copies, ...).
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import warnings
import weakref
from ctypes import byref, c_int64, c_uint32, c_void_p
from typing import Callable, Dict, Optional

from ..errors import (AclRuntimeError, BackendUnavailableError, DeterminismWarning,
                      ResourceReleaseWarning, error_class_for)
from .. import _env
from . import caches, loader, ownership
from ._status import check, recent_message, status_error
from ..constants import INT32_MAX

__all__ = [
    "ENV_DEVICE", "MEMCPY_HOST_TO_DEVICE", "MEMCPY_DEVICE_TO_HOST", "OPT_DETERMINISTIC",
    "api", "initialise", "resolve_device", "ensure_device", "device_count", "soc_name", "stream",
    "release_thread_resources", "shutdown", "DeviceBuffer", "NativeResource", "determinism",
    "get_determinism", "stats", "reset_stats", "live_resources", "owns_init",
    "ForkedProcessError", "forked_child_reason", "MAX_ALLOCATION", "DeterminismHold",
    "INT32_MAX", "refuse_pickle", "resolve_stream", "stream_workspace", "release_stream_workspace",
    "synchronize_stream",
]

ENV_DEVICE = "ACLNN_FAG_DEVICE"
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_RT_SYSPARAMOPT_NOT_SET = 107021
ACL_ERROR_RT_CONTEXT_NULL = 107002
MEMCPY_HOST_TO_DEVICE = 1
MEMCPY_DEVICE_TO_HOST = 2
MALLOC_HUGE_FIRST = 0
OPT_DETERMINISTIC = 0
DEVICE_ALIGN = 32
MAX_ALLOCATION = (1 << 63) - 1   # bytes: sizes are computed with Python ints, passed as size_t

# ----------------------------------------------------------------------------- counters
_stats_lock = threading.RLock()
_STAT_KEYS = ("malloc", "malloc_bytes", "free", "h2d", "h2d_bytes", "d2h", "d2h_bytes",
              "memset", "tensors", "int_arrays", "streams", "phase1", "phase2", "cache_hits")
_stats: Dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)


def _count(key: str, n: int = 1, key2: Optional[str] = None, n2: int = 0) -> None:
    with _stats_lock:
        _stats[key] += n
        if key2 is not None:
            _stats[key2] += n2


def stats() -> Dict[str, int]:
    """Process-wide counters of native calls made by this package since the last reset."""
    with _stats_lock:
        return dict(_stats)


def reset_stats() -> None:
    with _stats_lock:
        for k in _STAT_KEYS:
            _stats[k] = 0


# ----------------------------------------------------------------------------- process state
_process_gen = 0          # bumped in a forked child: inherited handles are never released there
_shutting_down = False


class _Stream:
    __slots__ = ("handle", "thread", "device")

    def __init__(self, handle: int, thread, device: int) -> None:
        self.handle = handle
        self.thread = thread      # weakref to threading.Thread
        self.device = device

    def dead(self) -> bool:
        t = self.thread()
        return t is None or not t.is_alive()


class ForkedProcessError(BackendUnavailableError):
    """The NPU backend was initialised in a parent process before this process was forked.

    CANN's runtime is not fork-safe (aclInit/aclrtSetDevice start driver threads and map
    device memory, none of which a forked child inherits in a usable state), so a child
    never touches it: every NPU use there raises this error, ``availability()`` reports the
    backend unavailable (``backend="auto"`` falls back to NumPy) and handles inherited from
    the parent are dropped without being released. The same holds for the stub libraries
    of ``native_stubs/`` (no re-initialisation is attempted in the child). A child may use
    the NPU backend when the parent never initialised it (importing ``aclnn_fag`` does not),
    or use the "spawn"/"forkserver" start methods."""


_fork_reason: Optional[str] = None    # set in a child forked after ACL was initialised


def _forked_message(parent_pid: int) -> str:
    return (f"the NPU backend was initialised in process {parent_pid} and this process "
            f"(pid {os.getpid()}) was forked from it afterwards; CANN's runtime is not fork-safe, "
            "so the NPU backend cannot be used in a forked child. Use "
            "multiprocessing.get_context('spawn') or 'forkserver', or initialise the NPU backend "
            "only in the child processes (importing aclnn_fag does not initialise it)")


def forked_child_reason() -> Optional[str]:
    """Why the NPU backend is unusable in this (forked) process, or None."""
    _check_pid()
    return _fork_reason


def _check_pid() -> None:
    """Catch forks that bypassed os.register_at_fork (e.g. a C extension calling fork())."""
    global _fork_reason, _state, _process_gen
    st = _state
    if st is not None and st.pid != os.getpid():
        with _state_lock:
            if _state is st:
                if st.initialised and _fork_reason is None:
                    _fork_reason = _forked_message(st.pid)
                _process_gen += 1
                _state = None
                ownership.after_fork()
                caches.forget_all()


def _raise_if_forked() -> None:
    _check_pid()
    if _fork_reason is not None:
        raise ForkedProcessError(_fork_reason, code=361001, param="backend")


class _State:
    """Runtime state for one set of loaded libraries."""

    def __init__(self, b) -> None:
        self.b = b
        self.key = b.key
        self.serial = next(_state_serials)      # told apart from a later state's
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.initialised = False
        self.owns_init = False
        self.streams: Dict[tuple, _Stream] = {}
        self.failed_streams: list = []      # destroy failed once: retried by shutdown()
        self.gates: Dict[object, "_ModeGate"] = {}    # per device, and "process"
        self.workspaces: Dict[tuple, "_StreamWorkspace"] = {}   # (device, caller stream)


_state: Optional[_State] = None
_state_serials = itertools.count(1)
_state_lock = threading.RLock()
_tls = threading.local()
_atexit_registered = False


def _get_state() -> _State:
    global _state, _atexit_registered
    _raise_if_forked()
    b = loader.bindings()
    st = _state
    if st is not None and st.key == b.key:
        return st
    with _state_lock:
        if _state is None or _state.key != b.key:
            _state = _State(b)
            if not _atexit_registered:
                atexit.register(_at_exit)
                _atexit_registered = True
        return _state


def api():
    """The bound prototype table (loads the libraries; raises LibraryNotFoundError)."""
    return _get_state().b


def owns_init() -> bool:
    """True when this package's aclInit call initialised ACL (False when someone else did)."""
    st = _state
    return bool(st is not None and st.owns_init)


def initialise() -> _State:
    """``aclInit(NULL)`` once per process; 100002 (already initialised) is accepted."""
    st = _get_state()
    if st.initialised:
        return st
    with st.lock:
        if not st.initialised:
            rc = st.b.aclInit(None)
            if rc == 0:
                st.owns_init = True
            elif rc == ACL_ERROR_REPEAT_INITIALIZE:
                recent_message(st.b)  # consume the message of the harmless repeat
                st.owns_init = False
            else:
                check(st.b, rc, "aclInit")
            st.initialised = True
    return st


def _device_source(device_id) -> str:
    return f"${ENV_DEVICE}" if device_id is None else "parameter 'device_id'"


def resolve_device(device_id: Optional[int] = None) -> int:
    """``device_id``, else ``$ACLNN_FAG_DEVICE``, else 0; an int in [0, INT32_MAX] (ctypes
    would silently wrap a larger one modulo 2**32 into another device). The device count is
    checked by :func:`ensure_device`, where ACL is initialised anyway."""
    if type(device_id) is int and 0 <= device_id <= INT32_MAX:
        return device_id                # the common case, first
    source = _device_source(device_id)
    if device_id is None:
        text = (_env.get(ENV_DEVICE) or "").strip()
        if not text:
            return 0
        try:
            device_id = int(text)
        except ValueError:
            raise ValueError(f"{ENV_DEVICE} must be an integer device id, got {text!r}") from None
    if isinstance(device_id, bool) or not isinstance(device_id, int):
        try:
            import operator
            device_id = operator.index(device_id)
        except TypeError:
            raise TypeError(f"device_id must be an int, got {type(device_id).__name__}") from None
    if not 0 <= device_id <= INT32_MAX:
        raise ValueError(f"{source}: device id {device_id} is outside [0, {INT32_MAX}] "
                         "(device ids are int32_t)")
    return int(device_id)


ACL_ERROR_RT_INVALID_DEVICEID = 107001


def check_device_count(b, dev: int, source: str = "parameter 'device_id'") -> None:
    """The 107001 (ACL_ERROR_RT_INVALID_DEVICEID) error class when ``dev`` is not below
    ``aclrtGetDeviceCount`` (``.param`` names where the id came from)."""
    n = c_uint32(0)
    check(b, b.aclrtGetDeviceCount(byref(n)), "aclrtGetDeviceCount")
    if dev >= n.value:
        param = ENV_DEVICE if source.startswith("$") else "device_id"
        raise error_class_for(ACL_ERROR_RT_INVALID_DEVICEID)(
            f"{source}: device id {dev} does not exist: aclrtGetDeviceCount reports "
            f"{n.value} device(s)" + (f" (ids 0..{n.value - 1})" if n.value else ""),
            code=ACL_ERROR_RT_INVALID_DEVICEID, param=param)


def _tls_current(st: _State) -> Optional[int]:
    """The device this package made current on the calling thread, or None. Only a record:
    other code may have changed the thread's context since (see _context_lost)."""
    if getattr(_tls, "key", None) != st.key or getattr(_tls, "gen", None) != _process_gen:
        return None
    return _tls.current


def _current_context(b) -> Optional[int]:
    """``aclrtGetCurrentContext``: the calling thread's context, or None (no context, or the
    query failed; its error message is consumed)."""
    ctx = c_void_p()
    if b.aclrtGetCurrentContext(byref(ctx)):
        recent_message(b)
        return None
    return ctx.value


def _context_lost(b) -> bool:
    """True when the thread's context is no longer the one this package's aclrtSetDevice
    made current: another library, a user or a test called aclrtResetDevice, aclFinalize or
    aclrtSetCurrentContext on this thread meanwhile, so the thread-local record is stale.
    One query per check; without aclrtGetCurrentContext the record is trusted. A record made
    without the context (the query was missing or failed then) adopts the thread's current
    one, and is lost only when there is none."""
    if b.aclrtGetCurrentContext is None:
        return False
    actual = _current_context(b)
    expected = getattr(_tls, "ctx", None)
    if expected is None:
        _tls.ctx = actual
        return actual is None
    return actual != expected


_context_epoch = 0     # bumped whenever a thread's context is found reset by someone else


def current_context_record() -> tuple:
    """What identifies the ACL context this thread's calls run in, as recorded by the last
    checked :func:`ensure_device`: (runtime state serial, process generation, context epoch,
    context handle, device). Objects tied to a context (cached executors) carry it; a new
    ``aclInit``, a fork, or a context found reset by other code (even when the runtime
    hands out the same handle again) gives a different record."""
    st = _state
    return (st.serial if st is not None else 0, _process_gen, _context_epoch,
            getattr(_tls, "ctx", None), getattr(_tls, "current", None))


def _record_device(st: _State, dev: int) -> None:
    """After a successful aclrtSetDevice on this thread: remember the device and its context."""
    _tls.key = st.key
    _tls.gen = _process_gen
    _tls.current = dev
    _tls.ctx = _current_context(st.b) if st.b.aclrtGetCurrentContext is not None else None


def ensure_device(device_id: Optional[int] = None, check_context: bool = True):
    """Initialise ACL and make ``device_id`` current on this thread. Returns the bindings.

    The thread-local record of what this package made current is checked against the
    thread's real context (one aclrtGetCurrentContext), so that a reset by other code is
    noticed. ``check_context=False`` trusts the record: for the steps of one operation that
    follow its checked ensure_device (stream lookup, determinism hold), which would
    otherwise pay the query again."""
    global _context_epoch
    st = initialise()
    dev = resolve_device(device_id)
    op = getattr(_tls, "op", None)
    recorded = _tls_current(st)
    if recorded != dev or (check_context and op != _VERIFIED and _context_lost(st.b)):
        if recorded == dev:
            # the context this package made current was reset by someone else: objects tied
            # to contexts (cached executors) made before now are never used again
            _context_epoch += 1
        check_device_count(st.b, dev, _device_source(device_id))
        rc = st.b.aclrtSetDevice(dev)
        check(st.b, rc, "aclrtSetDevice")
        _record_device(st, dev)
    if op == _OPEN and check_context:
        _tls.op = _VERIFIED         # checked (or set) once in this operation: trusted after
    return st.b


_OPEN, _VERIFIED = 1, 2     # _tls.op: inside an operation; its context already checked


class operation:
    """``with runtime.operation():`` one public operation (an op call, a plan's
    construction or run). Its first :func:`ensure_device` checks the thread's context as
    usual; the later ones in the same operation trust the record (saves one
    aclrtGetCurrentContext each). Leaving the operation restores the state before it, so
    the next operation, and every call outside one, checks again: a foreign
    aclrtResetDevice between operations is still noticed. A nested operation checks again
    on its own first call."""

    __slots__ = ("prev",)

    def __enter__(self) -> "operation":
        self.prev = getattr(_tls, "op", None)
        _tls.op = _OPEN
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        _tls.op = self.prev
        return False


def distrust_context() -> None:
    """The record was found stale inside an operation: the next ensure_device checks."""
    if getattr(_tls, "op", None) == _VERIFIED:
        _tls.op = _OPEN


def _ensure_any_context(b, dev: int) -> None:
    """For releases from any thread (GC, atexit): make sure the thread has a current context."""
    st = _state
    if (st is not None and st.key == b.key and _tls_current(st) is not None
            and (getattr(_tls, "op", None) == _VERIFIED or not _context_lost(b))):
        return
    rc = b.aclrtSetDevice(dev)
    if rc == 0 and st is not None and st.key == b.key:
        _record_device(st, dev)


def device_count() -> int:
    """``aclrtGetDeviceCount`` (initialises ACL first)."""
    st = initialise()
    n = c_uint32(0)
    check(st.b, st.b.aclrtGetDeviceCount(byref(n)), "aclrtGetDeviceCount")
    return int(n.value)


def soc_name() -> Optional[str]:
    """``aclrtGetSocName()`` or None (symbol missing or NULL)."""
    st = initialise()
    fn = st.b.aclrtGetSocName
    if fn is None:
        return None
    raw = fn()
    if not raw:
        recent_message(st.b)
        return None
    return raw.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- streams
def stream(device_id: Optional[int] = None) -> int:
    """The stream of (device, calling thread), created on first use. The thread remembers
    the last one it got: while that stream is still registered (not destroyed by
    ``release_thread_resources``, ``shutdown`` or a new runtime state) it is returned at
    once; otherwise streams of ended threads on the device are destroyed first."""
    dev = resolve_device(device_id)
    b = ensure_device(dev, check_context=False)
    st = _get_state()
    last = getattr(_tls, "stream", None)
    if last is not None and last[0] is st and last[1] == dev:
        entry = last[2]
        if entry.handle is not None and st.streams.get((dev, threading.get_ident())) is entry:
            return entry.handle
    thread = threading.current_thread()
    key = (dev, threading.get_ident())
    with st.lock:
        _sweep_dead_streams(st, dev)
        entry = st.streams.get(key)
        if entry is not None:
            if entry.thread() is not thread:      # thread id reused by a new thread: adopt
                entry.thread = weakref.ref(thread)
            _tls.stream = (st, dev, entry)
            return entry.handle
    b = ensure_device(dev)        # a native create follows: the context must really be current
    handle = c_void_p()
    entry = _Stream(None, weakref.ref(thread), dev)     # Python objects before the create
    with ownership.atomic():
        rc = b.aclrtCreateStream(byref(handle))
        if rc == 0:
            entry.handle = handle.value
            with st.lock:
                st.streams[key] = entry
            _tls.stream = (st, dev, entry)
    check(b, rc, "aclrtCreateStream")
    _count("streams")
    return handle.value


def resolve_stream(stream) -> int:
    """A caller's aclrtStream as an int handle: an int (0 = the default stream) or an object
    with an ``npu_stream`` attribute (torch_npu's ``torch.npu.current_stream()``)."""
    if hasattr(stream, "npu_stream"):
        stream = stream.npu_stream
    if isinstance(stream, bool) or not isinstance(stream, int):
        try:
            import operator
            stream = operator.index(stream)
        except TypeError:
            raise TypeError("parameter 'stream' must be an aclrtStream handle (int) or an object "
                            "with an 'npu_stream' attribute (torch.npu.current_stream()), got "
                            f"{type(stream).__name__}") from None
    if not 0 <= stream < (1 << 64):
        raise ValueError(f"parameter 'stream' = {stream} is not a pointer value")
    return int(stream)


def synchronize_stream(stream, device_id: Optional[int] = None) -> None:
    """``aclrtSynchronizeStream`` on a caller's stream (int or object with ``npu_stream``)."""
    handle = resolve_stream(stream)
    b = ensure_device(device_id)
    check(b, b.aclrtSynchronizeStream(handle), "aclrtSynchronizeStream")


class _StreamWorkspace:
    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer: Optional["DeviceBuffer"] = None


def stream_workspace(device_id: int, stream_handle: int, nbytes: int) -> "DeviceBuffer":
    """The workspace of a caller's stream: at least ``nbytes`` of device memory that stays
    alive for later work queued on that stream (calls on one stream run in order, so the
    next call may reuse it). Growing it synchronises the stream once before the smaller
    buffer is freed. Released by ``release_stream_workspace`` or ``shutdown``."""
    st = _get_state()
    key = (int(device_id), int(stream_handle))
    with st.lock:
        entry = st.workspaces.setdefault(key, _StreamWorkspace())
        buf = entry.buffer
        if buf is not None and not buf.closed and buf.nbytes >= nbytes:
            return buf
        entry.buffer = None
    if buf is not None and not buf.closed:
        check(st.b, st.b.aclrtSynchronizeStream(stream_handle), "aclrtSynchronizeStream",
              rule="before growing the stream's workspace")
        buf.free()
    new = DeviceBuffer(nbytes, device_id)
    with st.lock:
        entry.buffer = new
    return new


def release_stream_workspace(stream=None) -> None:
    """Free the cached workspace of one caller's stream (all of them for None), after
    synchronising that stream. Call it before destroying a stream you passed as ``stream=``."""
    st = _state
    if st is None:
        return
    handle = None if stream is None else resolve_stream(stream)
    with st.lock:
        keys = [k for k in st.workspaces if handle is None or k[1] == handle]
        entries = [(k, st.workspaces.pop(k)) for k in keys]
    for (dev, h), entry in entries:
        buf = entry.buffer
        if buf is None or buf.closed:
            continue
        ensure_device(dev)
        rc = st.b.aclrtSynchronizeStream(h)
        if rc:
            recent_message(st.b)
        buf.free()


def _destroy_stream(st: _State, entry: _Stream, final: bool = False) -> bool:
    """``aclrtDestroyStream``; a failure is reported (ResourceReleaseWarning) and the stream
    kept for one retry by ``shutdown()`` (``final``: that retry; then it is dropped)."""
    if entry.handle is None:
        return True
    rc = st.b.aclrtDestroyStream(entry.handle)
    if rc == 0:
        entry.handle = None
        return True
    err = status_error(st.b, rc, "aclrtDestroyStream",
                       rule=f"cannot destroy the stream {entry.handle:#x} of device {entry.device}")
    if final:
        tail = "it could not be destroyed at shutdown either and is dropped"
    else:
        st.failed_streams.append(entry)
        tail = "the stream is kept and destroyed again by acl.shutdown()"
    if not (_shutting_down or sys.is_finalizing()):
        warnings.warn(ResourceReleaseWarning(f"{err}; {tail}"), stacklevel=3)
    return False


def _sweep_dead_streams(st: _State, dev: int) -> None:
    """Destroy streams of ended threads on ``dev`` (the caller made ``dev`` current)."""
    checked = False
    for key, entry in list(st.streams.items()):
        if entry.device == dev and entry.dead():
            if not checked:         # native destroys follow: the context must really be current
                ensure_device(dev)
                checked = True
            with ownership.atomic():
                if st.streams.get(key) is entry:
                    del st.streams[key]
                    _destroy_stream(st, entry)


def release_thread_resources() -> None:
    """Destroy this thread's streams and those of ended threads (all devices)."""
    st = _state
    if st is None:
        return
    me = threading.get_ident()
    with st.lock:
        victims = [(k, e) for k, e in st.streams.items() if k[1] == me or e.dead()]
    current = _tls_current(st)
    for key, entry in victims:
        ensure_device(entry.device)
        with ownership.atomic():
            with st.lock:
                if st.streams.get(key) is not entry:
                    continue
                del st.streams[key]
            _destroy_stream(st, entry)
    if current is not None:
        ensure_device(current)


# ----------------------------------------------------------------------------- resources
def refuse_pickle(obj, protocol=None):
    """``__reduce_ex__`` of the objects over device memory or native handles: they only
    mean something in this process, so ``pickle`` and ``copy.deepcopy`` (and
    ``copy.copy``) raise a TypeError saying so and what to do instead."""
    raise TypeError(f"a {type(obj).__name__} cannot be pickled or copied: it refers to "
                    "device memory (or native handles) that only this process can use; "
                    "copy the data to the host with .numpy() (a numpy array pickles) and "
                    "upload it again with DeviceArray.from_numpy")


class NativeResource:
    """Base of objects that own one native handle (buffer, tensor, int array, executor).

    Ownership goes through an :class:`~.ownership.Claim` allocated before the native create
    (``_prepare``) and filled in the create's atomic block (``_take``): an interrupt at any
    bytecode neither leaks the handle nor frees it twice. ``release()`` frees it now (errors
    raised; the handle is then kept for a retry); otherwise garbage collection or
    ``shutdown()`` does (failures warned). Idempotent.
    """

    _claim: Optional[ownership.Claim] = None
    _what = "a native handle"
    _rank = 1
    __reduce_ex__ = refuse_pickle

    def _prepare(self) -> ownership.Claim:
        """Allocate the claim and the finalizer (before the native create)."""
        claim = ownership.Claim(self._what, self._rank)
        self._claim = claim
        claim.watch(self)           # released ("gc") when this object is collected
        return claim

    def _take(self, handle, func, *args) -> None:
        """Own ``handle`` (inside the create's ``ownership.atomic()`` block)."""
        self._claim.take(handle, func, *args)

    @property
    def released(self) -> bool:
        c = self._claim
        return c is None or c.state != ownership.OWNED

    def release(self, mode: str = "raise") -> None:
        """Release the handle now. ``mode`` "raise" (default) raises a failed release's error;
        "warn" warns instead (used on the op's cleanup paths, so that computed results are
        still returned). Either way a failed handle is kept for a retry by ``shutdown()``."""
        c = self._claim
        if c is None:
            return
        was_owned = c.state == ownership.OWNED
        try:
            ok = c.release(mode)
        finally:
            if was_owned and c.state != ownership.OWNED:
                self._on_released()
        if ok:
            c.unwatch()

    def disown(self) -> None:
        """The library took the handle (e.g. phase 2 consumed the executor). Call inside the
        ``ownership.atomic()`` block of the consuming call, right before it."""
        c = self._claim
        if c is not None and c.state == ownership.OWNED:
            c.consume()
            self._on_released()

    def call_consuming(self, fn, *args):
        """``fn(*args)`` — a call that takes the handle over (phase 2 and its executor) —
        with the handle counted as the library's from the moment the call is entered: the
        disown and the call form one atomic step for SIGINT. Pass ctypes objects (no
        conversion can fail between the two)."""
        with ownership.atomic():
            self.disown()
            return fn(*args)

    def _on_released(self) -> None:
        """Hook: forget the handle (called once, when it stops being owned)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.release()
        except Exception:
            if exc_type is None:
                raise
        return False


def _owners() -> list:
    """The objects owning the registered claims' handles (each watched by its claim)."""
    out = []
    for c in ownership.pending():
        ref = c.ref
        obj = ref() if ref is not None else None
        if isinstance(obj, NativeResource):
            out.append(obj)
    return out


def live_resources() -> list:
    """The native resources of this package that are still alive (diagnostics)."""
    return [r for r in _owners() if not r.released]


def _free_device(b, dev: int, ptr: int):
    """``aclrtFree``; returns None or the error (see ownership.Claim.take)."""
    _ensure_any_context(b, dev)
    rc = b.aclrtFree(ptr)
    _count("free")
    if rc:
        return status_error(b, rc, "aclrtFree", rule=f"cannot free {ptr:#x} on device {dev}")
    return None


class DeviceBuffer(NativeResource):
    """``nbytes`` of device memory (``aclrtMalloc``, policy HUGE_FIRST), 32-byte aligned.

    ``ptr`` is the device address (None for an empty buffer or after ``free()``).
    Use as a context manager, call ``free()``, or let garbage collection free it.
    """

    _what = "device memory (aclrtMalloc)"
    _rank = 2

    def __init__(self, nbytes: int, device_id: Optional[int] = None) -> None:
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        self.device_id = resolve_device(device_id)
        self.nbytes = nbytes
        self.ptr: Optional[int] = None
        if nbytes == 0:
            ensure_device(self.device_id)     # the device id is checked for empty arrays too
            return
        if nbytes > MAX_ALLOCATION:
            # size_t would silently wrap in ctypes: refuse before any native call
            raise error_class_for(207001)(
                f"cannot allocate {nbytes} bytes on device {self.device_id}: more than "
                f"{MAX_ALLOCATION} bytes can never be allocated", code=207001,
                function="aclrtMalloc")
        b = ensure_device(self.device_id)
        self._prepare()
        p = c_void_p()
        with ownership.atomic():      # the create and its ownership: one step for SIGINT
            rc = b.aclrtMalloc(byref(p), nbytes, MALLOC_HUGE_FIRST)
            if rc == 0 and p.value:
                self._take(p.value, _free_device, b, self.device_id, p.value)
                self.ptr = p.value
        check(b, rc, "aclrtMalloc", rule=f"cannot allocate {nbytes} bytes on device {self.device_id}")
        if not p.value:
            raise status_error(b, 207001, "aclrtMalloc", rule="aclrtMalloc returned a NULL pointer",
                               fetch_message=False)
        _count("malloc", 1, "malloc_bytes", nbytes)
        if p.value % DEVICE_ALIGN:
            self.free()
            raise AclRuntimeError(f"aclrtMalloc returned {p.value:#x}, not {DEVICE_ALIGN}-byte "
                                  "aligned (aclCreateTensor requires it)", code=107000,
                                  function="aclrtMalloc")

    def _on_released(self) -> None:
        self.ptr = None

    def free(self) -> None:
        """Free the memory now (idempotent)."""
        self.release()

    close = free

    @property
    def closed(self) -> bool:
        return self.nbytes > 0 and self.ptr is None

    def _require(self, offset: int, nbytes: int) -> int:
        if self.closed:
            raise ValueError("the device buffer has been freed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise ValueError(f"range [{offset}, {offset + nbytes}) outside the {self.nbytes}-byte buffer")
        return (self.ptr or 0) + offset

    def copy_from_host(self, host_addr: int, nbytes: int, offset: int = 0) -> None:
        """H2D copy of ``nbytes`` from the host address into this buffer at ``offset``."""
        if nbytes == 0:
            return
        dst = self._require(offset, nbytes)
        b = ensure_device(self.device_id)
        rc = b.aclrtMemcpy(dst, self.nbytes - offset, host_addr, nbytes, MEMCPY_HOST_TO_DEVICE)
        check(b, rc, "aclrtMemcpy", rule="host to device copy failed")
        _count("h2d", 1, "h2d_bytes", nbytes)

    def copy_to_host(self, host_addr: int, nbytes: int, offset: int = 0) -> None:
        """D2H copy of ``nbytes`` from this buffer at ``offset`` to the host address."""
        if nbytes == 0:
            return
        src = self._require(offset, nbytes)
        b = ensure_device(self.device_id)
        rc = b.aclrtMemcpy(host_addr, nbytes, src, nbytes, MEMCPY_DEVICE_TO_HOST)
        check(b, rc, "aclrtMemcpy", rule="device to host copy failed")
        _count("d2h", 1, "d2h_bytes", nbytes)

    def upload(self, array, offset: int = 0) -> None:
        """Copy a C-contiguous numpy array's bytes into the buffer at ``offset``."""
        import numpy as np
        a = np.ascontiguousarray(array)
        self.copy_from_host(a.ctypes.data, a.nbytes, offset)

    def download(self, out, offset: int = 0) -> None:
        """Fill a writable C-contiguous numpy array from the buffer at ``offset``."""
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("download needs a writable C-contiguous array")
        self.copy_to_host(out.ctypes.data, out.nbytes, offset)

    def memset(self, value: int = 0, offset: int = 0, nbytes: Optional[int] = None) -> None:
        """Fill ``nbytes`` (default: to the end) from ``offset`` with a byte value (aclrtMemset)."""
        if nbytes is None:
            nbytes = self.nbytes - offset
        if nbytes == 0:
            return
        dst = self._require(offset, nbytes)
        b = ensure_device(self.device_id)
        check(b, b.aclrtMemset(dst, self.nbytes - offset, int(value), nbytes), "aclrtMemset")
        _count("memset")

    def __repr__(self) -> str:
        state = "freed" if self.closed else (f"{self.ptr:#x}" if self.ptr else "empty")
        return f"<DeviceBuffer {self.nbytes} bytes on device {self.device_id}: {state}>"


# ----------------------------------------------------------------------------- determinism
class _ModeGate:
    """Serialises calls that need different values of one option.

    Calls wanting the same value run concurrently; the first one in sets the value (if it
    differs), the last one out restores the previous value. ``read()`` gives (value, 0) or
    (None, the getter's error code); ``write(value)`` sets it (raises on failure).
    """

    def __init__(self, read: Callable, write: Callable) -> None:
        # ``with gate.lock`` (a C lock: no bytecode runs between its acquire and the with
        # block, so an interrupt cannot leave it held), ``gate.cond.wait()`` inside;
        # re-entrant for the finalizers that may run inside a section (see _leave_gate)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.read, self.write = read, write
        self.deferred: list = []
        self.mode: Optional[bool] = None
        self.active = 0
        self.prev: Optional[int] = None
        self.prev_code = 0               # the getter's code when prev is None
        self.changed = False
        self.holders: Dict[int, int] = {}    # thread id -> hold count
        self.waiting = 0                     # threads in cond.wait(): notified on a change


def _read_option(getter):
    """(value, 0) or (None, the getter's error code; -1 when the getter is missing)."""
    if getter is None:
        return None, -1
    value = c_int64(0)
    rc = getter(OPT_DETERMINISTIC, byref(value))
    if rc:
        recent_message(api())
        return None, int(rc)
    return int(value.value), 0


def _read_determinism(b):
    """The current context's ACL_OPT_DETERMINISTIC: (value, 0) or (None, error code)."""
    return _read_option(b.aclrtCtxGetSysParamOpt)


def get_determinism(device_id: Optional[int] = None) -> Optional[int]:
    """The current context's ACL_OPT_DETERMINISTIC value, or None when it cannot be read."""
    b = ensure_device(device_id)
    return _read_determinism(b)[0]


def get_process_determinism() -> Optional[int]:
    """The process-wide ACL_OPT_DETERMINISTIC (``aclrtGetSysParamOpt``; the value CANN 9.0
    and later read), or None when it cannot be read or the symbol is missing."""
    return _read_option(api().aclrtGetSysParamOpt)[0]


def _set_determinism(b, value: int) -> None:
    check(b, b.aclrtCtxSetSysParamOpt(OPT_DETERMINISTIC, int(value)), "aclrtCtxSetSysParamOpt",
          rule="cannot set ACL_OPT_DETERMINISTIC on the current context")


def _set_process_determinism(b, value: int) -> None:
    check(b, b.aclrtSetSysParamOpt(OPT_DETERMINISTIC, int(value)), "aclrtSetSysParamOpt",
          rule="cannot set the process-wide ACL_OPT_DETERMINISTIC")


def _exit_gate_locked(gate: _ModeGate, me: int) -> Optional[int]:
    """One holder leaves (``gate.lock`` held); the value to write back, or None."""
    gate.active -= 1
    if gate.holders.get(me, 0) <= 1:
        gate.holders.pop(me, None)
    else:
        gate.holders[me] -= 1
    if gate.active:
        return None
    restore, prev, code = gate.changed, gate.prev, gate.prev_code
    gate.mode, gate.changed, gate.prev, gate.prev_code = None, False, None, 0
    if gate.waiting:
        gate.cond.notify_all()
    if not restore:
        return None
    if prev is None:
        if code != ACL_ERROR_RT_SYSPARAMOPT_NOT_SET:
            return None             # unknown previous value: left as the call ran (warned)
        prev = 0                    # never set on this context: the documented default
    return prev


def _drain_gate_locked(gate: _ModeGate) -> None:
    """Apply the leaves deferred by finalizers that ran inside this thread's gate section."""
    while gate.deferred:
        me = gate.deferred.pop()
        value = _exit_gate_locked(gate, me)
        if value is not None:
            try:
                gate.write(value)
            except Exception:       # pragma: no cover - reported by nobody: best effort
                pass


def _leave_gate(gate: _ModeGate, me: int):
    """Release one hold of ``gate`` (a Claim release function: returns None or the error)."""
    if gate.lock._is_owned():
        # a garbage-collection finalizer running inside this thread's own gate section
        # (any allocation there may trigger one): changing the gate now would corrupt the
        # section's view of it, so the leave is applied at the next entry of the gate
        gate.deferred.append(me)
        return None
    with gate.lock:
        _drain_gate_locked(gate)
        value = _exit_gate_locked(gate, me)
        if value is None:
            return None
        # written back before the lock is released: a call waiting for the other mode must
        # read the restored value as its "previous" one, not the value this hold set
        try:
            gate.write(value)
        except Exception as exc:
            return exc
    return None


READ_RETRIES = 2     # extra reads of ACL_OPT_DETERMINISTIC after a failed one


def _enter_gate(gate: _ModeGate, want: bool, claim, what: str) -> Optional[int]:
    """Join ``gate`` with ``want`` (waiting while other holders want the other value); the
    first holder in reads, sets and remembers the option. ``claim`` owns this holder's
    leave. Returns the getter's error code when the previous value is unknown, else None."""
    me = threading.get_ident()
    warn = None
    with gate.lock:
        _drain_gate_locked(gate)
        if gate.active and gate.mode != want and me in gate.holders:
            raise RuntimeError(
                f"this thread already holds ACL_OPT_DETERMINISTIC={int(gate.mode)} ({what}); a "
                f"nested call asking for deterministic={want} would wait for itself")
        while gate.active and gate.mode != want:
            gate.waiting += 1
            try:
                gate.cond.wait()
            finally:
                gate.waiting -= 1
            _drain_gate_locked(gate)
        with ownership.atomic():
            if gate.active == 0:
                prev, code = gate.read()
                for _ in range(READ_RETRIES):      # a transient failure: read again
                    if prev is not None or code in (ACL_ERROR_RT_SYSPARAMOPT_NOT_SET, -1):
                        break
                    prev, code = gate.read()
                changed = prev is None or bool(prev) != want
                if changed:
                    gate.write(int(want))          # raises: nothing was committed
                gate.prev, gate.prev_code, gate.changed, gate.mode = prev, code, changed, want
                if prev is None and code != ACL_ERROR_RT_SYSPARAMOPT_NOT_SET:
                    warn = code
            gate.active += 1
            gate.holders[me] = gate.holders.get(me, 0) + 1
            claim.take(gate, _leave_gate, gate, me)
    return warn


def _device_gate(st: "_State", b, dev: int) -> _ModeGate:
    """The gate of one device's context option."""
    gate = st.gates.get(dev)
    if gate is None:
        def read():
            prev, code = _read_determinism(b)
            if code == ACL_ERROR_RT_CONTEXT_NULL:
                # the record trusted before was stale (other code reset this thread's
                # device): set it again, then read
                distrust_context()
                prev, code = _read_determinism(ensure_device(dev))
            return prev, code

        def write(value):
            _set_determinism(ensure_device(dev), value)
            # from CANN 9.0 the context setter also writes the process-wide value: while the
            # process gate is held, put back the value its holders run with
            held = st.gates.get("process")
            if held is not None and held.active and b.aclrtSetSysParamOpt is not None:
                _set_process_determinism(b, int(held.mode))

        with st.lock:
            gate = st.gates.setdefault(dev, _ModeGate(read, write))
    return gate


def _process_gate(st: "_State", b) -> _ModeGate:
    """The gate of the process-wide option: every call that sets the option enters it, on
    any device, so calls with different settings never overlap (CANN 9.0 and later read
    this one value for every device and context). Without ``aclrtSetSysParamOpt`` the gate
    still serialises the calls and writes nothing."""
    gate = st.gates.get("process")
    if gate is None:
        if b.aclrtSetSysParamOpt is None or b.aclrtGetSysParamOpt is None:
            gate = _ModeGate(lambda: (None, -1), lambda value: None)
        else:
            gate = _ModeGate(lambda: _read_option(b.aclrtGetSysParamOpt),
                             lambda value: _set_process_determinism(b, value))
        with st.lock:
            gate = st.gates.setdefault("process", gate)
    return gate


class DeterminismHold:
    """Hold ACL_OPT_DETERMINISTIC == ``want`` between :meth:`acquire` and :meth:`release`
    (``want`` None: leave the option alone): the process-wide value
    (``aclrtSetSysParamOpt``, where exported) and the device's context value
    (``aclrtCtxSetSysParamOpt``), each set by the first holder that needs it and restored by
    the last one out. One process-wide gate orders the holds: calls wanting different values
    wait for each other on every device (docs/releases.md, Determinism).

    Each value is restored exactly as read before (a failed read is retried READ_RETRIES
    times); 0 (the op's documented default) when the context option had never been set
    (107021); when it could not be read for another reason, a DeterminismWarning says so
    and the option keeps the value the call ran with (no guessed value is written). Without
    ``aclrtCtxSetSysParamOpt``, ``want=True`` raises BackendUnavailableError and
    ``want=False`` proceeds unchanged.

    Interrupt-safe: each hold is a :class:`~.ownership.Claim` taken atomically with the
    gate entry, released by :meth:`release`, by garbage collection or by ``shutdown()``.
    Register :meth:`release` (e.g. on an ExitStack) *before* calling :meth:`acquire`.
    """

    def __init__(self, device_id: Optional[int], want: Optional[bool]) -> None:
        self.want = None if want is None else bool(want)
        self.device_id = device_id
        # rank 1: released after the context's hold (rank 0) when shutdown() releases all
        self._process = ownership.Claim("a process-wide ACL_OPT_DETERMINISTIC hold", rank=1)
        self._context = ownership.Claim("an ACL_OPT_DETERMINISTIC hold", rank=0)
        self._finalizer = weakref.finalize(self, ownership.run_finalizer, _release_claims,
                                           self._context, self._process, "gc")

    def acquire(self) -> "DeterminismHold":
        want = self.want
        if want is None:
            return self
        dev = resolve_device(self.device_id)
        b = ensure_device(dev, check_context=False)     # checked on a failed read below
        if b.aclrtCtxSetSysParamOpt is None:
            if want:
                raise BackendUnavailableError(
                    "deterministic=True needs aclrtCtxSetSysParamOpt, which the loaded CANN does "
                    "not export", code=361001, param="deterministic")
            return self
        st = _get_state()
        warn = _enter_gate(_process_gate(st, b), want, self._process, "the process")
        if warn is not None:
            warnings.warn(DeterminismWarning(
                f"aclrtGetSysParamOpt could not read the process-wide ACL_OPT_DETERMINISTIC (it "
                f"returned {warn}); it is set to {int(want)} for the call and left at that value "
                "afterwards, since the previous value is unknown"), stacklevel=3)
        warn = _enter_gate(_device_gate(st, b, dev), want, self._context, f"device {dev}")
        if warn is not None:
            warnings.warn(DeterminismWarning(
                f"aclrtCtxGetSysParamOpt could not read ACL_OPT_DETERMINISTIC on device {dev} "
                f"(it returned {warn}); the option is set to {int(want)} for the call and left at "
                "that value afterwards, since the previous value is unknown"), stacklevel=3)
        return self

    def release(self, mode: str = "warn") -> None:
        """Leave the hold (idempotent; a failed restore warns, or raises with mode="raise")."""
        if _release_claims(self._context, self._process, mode):
            self._finalizer.detach()

    def __enter__(self) -> "DeterminismHold":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.release("warn" if exc_type is not None else "raise")
        return False


def _release_claims(context, process, mode: str) -> bool:
    """The context hold, then the process hold (the order they were taken in, reversed)."""
    try:
        done = context.release(mode)
    finally:
        done = process.release(mode) and done
    return done


def determinism(device_id: Optional[int], want: Optional[bool]) -> DeterminismHold:
    """``with determinism(dev, want):`` hold ACL_OPT_DETERMINISTIC == ``want`` for the block
    (see :class:`DeterminismHold`)."""
    return DeterminismHold(device_id, want)


# ----------------------------------------------------------------------------- teardown
def _release_all_resources() -> None:
    # through the owning objects first (so that they know: buffer.closed, tensor.handle
    # None), executors before tensors before memory; then the claims whose object is gone
    # (its finalizer was interrupted) or whose earlier release failed — their one retry
    for res in sorted((r for r in _owners() if not r.released), key=lambda r: r._rank):
        res.release("final")
    ownership.release_all(final=True)


def shutdown(finalize: bool = True) -> None:
    """Release every live buffer/tensor/executor of this package (also handles whose earlier
    release failed: their one retry) and every stream; then, if this package's ``aclInit``
    initialised ACL and ``finalize`` is true, call ``aclFinalize``. Failures are reported
    as ResourceReleaseWarning. The next use initialises again."""
    global _state
    st = _state
    try:
        release_stream_workspace()      # waits for the caller's streams first
    except Exception:
        pass
    # dependency order: every owned handle by rank (executors, then tensors and int arrays,
    # then memory), the caches' included; then the caches forget what was released
    _release_all_resources()
    caches.clear_all()
    if st is None:
        return
    with st.lock:
        entries = list(st.streams.values())
        st.streams.clear()
        retries, st.failed_streams = st.failed_streams, []
    for entry in entries + retries:
        try:
            with ownership.atomic():
                _ensure_any_context(st.b, entry.device)
                _destroy_stream(st, entry, final=True)
        except Exception:
            pass
    if finalize and st.owns_init:
        try:
            rc = st.b.aclFinalize()
            if rc:
                recent_message(st.b)
        except Exception:
            pass
    with _state_lock:
        if _state is st:
            _state = None
    for attr in ("key", "gen", "current", "ctx"):
        if hasattr(_tls, attr):
            delattr(_tls, attr)


def _at_exit() -> None:
    global _shutting_down
    _shutting_down = True
    ownership.set_quiet(True)
    try:
        shutdown(finalize=False)
    except Exception:
        pass


def _after_fork_in_child() -> None:
    global _state, _process_gen, _fork_reason, _state_lock, _stats_lock
    _process_gen += 1
    st = _state
    if st is not None and st.initialised and _fork_reason is None:
        _fork_reason = _forked_message(st.pid)
    _state = None
    ownership.after_fork()
    caches.forget_all()         # the parent's handles and memory: never released here
    # a lock held by another parent thread at fork time would never be released here
    _state_lock = threading.RLock()
    _stats_lock = threading.RLock()
    loader._cache.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
