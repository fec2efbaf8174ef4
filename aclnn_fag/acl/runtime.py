"""The ACL runtime: aclInit, the per-thread device and context, streams and workspaces,
device buffers, the determinism option, fork detection, stats, shutdown (docs/faults.md)."""

from __future__ import annotations

import atexit
import itertools
import operator
import os
import threading
import warnings
import weakref
from ctypes import byref, c_int64, c_uint32, c_void_p
from typing import Callable, Dict, Optional

from ..errors import (ACL_ERRORS, ACLNN_STATUS, AclRuntimeError, BackendUnavailableError,
                      DeterminismWarning, error_class_for)
from .. import _env
from . import caches, loader, ownership
from ..constants import INT32_MAX

__all__ = [
    "ENV_DEVICE", "MEMCPY_HOST_TO_DEVICE", "MEMCPY_DEVICE_TO_HOST", "OPT_DETERMINISTIC",
    "api", "initialise", "resolve_device", "ensure_device", "device_count", "soc_name", "stream",
    "release_thread_resources", "shutdown", "DeviceBuffer", "NativeResource", "determinism",
    "get_determinism", "stats", "reset_stats", "live_resources", "owns_init",
    "ForkedProcessError", "forked_child_reason", "MAX_ALLOCATION", "DeterminismHold",
    "INT32_MAX", "refuse_pickle", "resolve_stream", "stream_workspace", "release_stream_workspace",
    "synchronize_stream", "status_error", "check", "null_handle_error", "recent_message",
    "memcpy", "destroy", "free_all", "Closing", "current_context_record", "operation",
    "distrust_context", "get_process_determinism", "tally",
]

ENV_DEVICE = "ACLNN_FAG_DEVICE"
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_RT_SYSPARAMOPT_NOT_SET = 107021
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_INVALID_DEVICEID = 107001
MEMCPY_HOST_TO_DEVICE = 1
MEMCPY_DEVICE_TO_HOST = 2
MALLOC_HUGE_FIRST = 0
OPT_DETERMINISTIC = 0
DEVICE_ALIGN = 32
MAX_ALLOCATION = (1 << 63) - 1   # bytes: sizes are computed with Python ints, passed as size_t
ACLNN_ERR_INNER_NULLPTR = 561103


def recent_message(b) -> Optional[str]:
    """``aclGetRecentErrMsg()`` text of this thread (None when absent or the symbol is missing)."""
    fn = getattr(b, "aclGetRecentErrMsg", None)
    try:
        raw = fn() if fn is not None else None
    except Exception:  # pragma: no cover - defensive: never mask the real error
        return None
    return (raw.decode("utf-8", errors="replace").strip() or None) if raw else None


def status_error(b, code: int, function: str, rule: str = "", recent_msg: Optional[str] = None,
                 fetch_message: bool = True):
    """The exception for a non-zero ``code`` returned by ``function`` (message fetched now)."""
    if recent_msg is None and fetch_message:
        recent_msg = recent_message(b)
    code = int(code)
    runtime = function.startswith("aclrt") or function in ("aclInit", "aclFinalize")
    if code not in ACLNN_STATUS and code not in ACL_ERRORS and runtime:
        cls = AclRuntimeError
    else:
        cls = error_class_for(code)
    return cls(rule, code=code, function=function, recent_msg=recent_msg)


def check(b, code: int, function: str, rule: str = "") -> None:
    """Raise the exception class of ``code`` (with aclGetRecentErrMsg text) when it is non-zero."""
    if code:
        raise status_error(b, code, function, rule)


def null_handle_error(b, function: str):
    """The exception for a pointer-returning function that returned NULL (561103)."""
    return status_error(b, ACLNN_ERR_INNER_NULLPTR, function, rule=f"{function} returned NULL")


# ----------------------------------------------------------------------------- counters
_stats_lock = threading.Lock()
_stats: Dict[str, int] = dict.fromkeys(
    ("malloc", "malloc_bytes", "free", "h2d", "h2d_bytes", "d2h", "d2h_bytes", "memset",
     "tensors", "int_arrays", "streams", "phase1", "phase2", "cache_hits"), 0)


def tally(key: str, n: int = 1, key2: Optional[str] = None, n2: int = 0) -> None:
    """Add n to the acl.stats() counter key (and n2 to key2)."""
    with _stats_lock:
        _stats[key] += n
        if key2 is not None:
            _stats[key2] += n2


def memcpy(b, copies, kind: int) -> None:
    """``aclrtMemcpy`` of each (destination, its capacity, source, nbytes) in the direction
    ``kind``, counted once for all."""
    h2d = kind == MEMCPY_HOST_TO_DEVICE
    total = 0
    for dst, cap, src, n in copies:
        check(b, b.aclrtMemcpy(dst, cap, src, n, kind), "aclrtMemcpy",
              rule="host to device copy failed" if h2d else "device to host copy failed")
        total += n
    key = "h2d" if h2d else "d2h"
    tally(key, len(copies), key + "_bytes", total)


def stats() -> Dict[str, int]:
    """Process-wide counters of native calls made by this package since the last reset."""
    with _stats_lock:
        return dict(_stats)


def reset_stats() -> None:
    with _stats_lock:
        _stats.update(dict.fromkeys(_stats, 0))


# ----------------------------------------------------------------------------- process state
class ForkedProcessError(BackendUnavailableError):
    """The NPU backend was initialised before this process was forked (docs/faults.md, fork)."""


_process_gen = 0          # bumped in a forked child: inherited handles are never released there
_fork_reason: Optional[str] = None    # set in a child forked after ACL was initialised
_state = None
_state_serials = itertools.count(1)
_state_lock = threading.RLock()
_tls = threading.local()
_atexit_registered = False


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
        self.streams: Dict[tuple, _Stream] = {}        # (device, thread id)
        self.gates: Dict[object, _ModeGate] = {}       # per device, and "process"
        self.workspaces: Dict[tuple, DeviceBuffer] = {}   # (device, caller stream)


def _forget_parent() -> None:
    """In a forked child: the parent's runtime state and handles are never used or released."""
    global _state, _process_gen, _fork_reason
    st = _state
    if st is not None and st.initialised and _fork_reason is None:
        _fork_reason = (
            f"the NPU backend was initialised in process {st.pid} and this process "
            f"(pid {os.getpid()}) was forked from it afterwards; CANN's runtime is not fork-safe, "
            "so the NPU backend cannot be used in a forked child. Use "
            "multiprocessing.get_context('spawn') or 'forkserver', or initialise the NPU backend "
            "only in the child processes (importing aclnn_fag does not initialise it)")
    _process_gen += 1
    _state = None
    ownership.after_fork()
    caches.forget_all()


def forked_child_reason() -> Optional[str]:
    """Why the NPU backend is unusable in this (forked) process, or None."""
    st = _state
    if st is not None and st.pid != os.getpid():    # a fork that bypassed register_at_fork
        with _state_lock:
            if _state is st:
                _forget_parent()
    return _fork_reason


def _get_state() -> _State:
    global _state, _atexit_registered
    if forked_child_reason() is not None:
        raise ForkedProcessError(_fork_reason, code=361001, param="backend")
    b = loader.bindings()
    st = _state
    if st is not None and st.key == b.key:
        return st
    with _state_lock:
        if _state is None or _state.key != b.key:
            _state = _State(b)
            if not _atexit_registered:      # at first use: run before earlier exit handlers
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


# ----------------------------------------------------------------------------- devices, contexts
def _index(value, message: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(message) from None


def resolve_device(device_id: Optional[int] = None) -> int:
    """``device_id``, else ``$ACLNN_FAG_DEVICE``, else 0; an int in [0, INT32_MAX]."""
    if type(device_id) is int and 0 <= device_id <= INT32_MAX:
        return device_id                # the common case, first
    source = "parameter 'device_id'"
    if device_id is None:
        source = f"${ENV_DEVICE}"
        text = (_env.get(ENV_DEVICE) or "").strip()
        if not text:
            return 0
        try:
            device_id = int(text)
        except ValueError:
            raise ValueError(f"{ENV_DEVICE} must be an integer device id, got {text!r}") from None
    device_id = _index(device_id, f"device_id must be an int, got {type(device_id).__name__}")
    if not 0 <= device_id <= INT32_MAX:
        raise ValueError(f"{source}: device id {device_id} is outside [0, {INT32_MAX}] "
                         "(device ids are int32_t)")
    return device_id


def _device_count(b) -> int:
    n = c_uint32(0)
    check(b, b.aclrtGetDeviceCount(byref(n)), "aclrtGetDeviceCount")
    return int(n.value)


def device_count() -> int:
    """``aclrtGetDeviceCount`` (initialises ACL first)."""
    return _device_count(initialise().b)


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


def _tls_current(st: _State) -> Optional[int]:
    """The device this package made current on the calling thread, or None."""
    return _tls.current if getattr(_tls, "state", None) is st else None


def _current_context(b) -> Optional[int]:
    """The thread's context, or None (none, or it cannot be asked)."""
    if b.aclrtGetCurrentContext is None:
        return None
    ctx = c_void_p()
    if b.aclrtGetCurrentContext(byref(ctx)):
        recent_message(b)
        return None
    return ctx.value


def _context_lost(b) -> bool:
    """True when the thread's context is not the one this package's aclrtSetDevice made
    current (without aclrtGetCurrentContext the record is trusted)."""
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
    """This thread's ACL context as :func:`ensure_device` recorded it (state serial, process
    generation, context epoch, handle, device): carried by objects tied to a context."""
    st = _state
    return (st.serial if st is not None else 0, _process_gen, _context_epoch,
            getattr(_tls, "ctx", None), getattr(_tls, "current", None))


def _record_device(st: _State, dev: int) -> None:
    _tls.state = st         # a new state (shutdown, fork, other libraries) makes it stale
    _tls.current = dev
    _tls.ctx = _current_context(st.b)


_OPEN, _VERIFIED = 1, 2     # _tls.op: inside an operation; its context already checked


def ensure_device(device_id: Optional[int] = None, check_context: bool = True):
    """Initialise ACL and make ``device_id`` current on this thread; returns the bindings.
    ``check_context`` False trusts the record (later steps of an operation)."""
    global _context_epoch
    st = initialise()
    dev = resolve_device(device_id)
    op = getattr(_tls, "op", None)
    recorded = _tls_current(st)
    if recorded != dev or (check_context and op != _VERIFIED and _context_lost(st.b)):
        if recorded == dev:     # reset by someone else: older context-bound objects retire
            _context_epoch += 1
        n = _device_count(st.b)
        if dev >= n:
            where = "parameter 'device_id'" if device_id is not None else f"${ENV_DEVICE}"
            raise error_class_for(ACL_ERROR_RT_INVALID_DEVICEID)(
                f"{where}: device id {dev} does not exist: aclrtGetDeviceCount reports "
                f"{n} device(s)" + (f" (ids 0..{n - 1})" if n else ""),
                code=ACL_ERROR_RT_INVALID_DEVICEID,
                param="device_id" if device_id is not None else ENV_DEVICE)
        check(st.b, st.b.aclrtSetDevice(dev), "aclrtSetDevice")
        _record_device(st, dev)
    if op == _OPEN and check_context:
        _tls.op = _VERIFIED         # checked (or set) once in this operation: trusted after
    return st.b


class operation:
    """``with runtime.operation():`` one public operation: its first :func:`ensure_device`
    checks the thread's context, the later ones trust the record."""

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
    """For releases from any thread (GC, atexit): a current context on the thread."""
    st = _state
    if (st is not None and st.key == b.key and _tls_current(st) is not None
            and (getattr(_tls, "op", None) == _VERIFIED or not _context_lost(b))):
        return
    rc = b.aclrtSetDevice(dev)
    if rc == 0 and st is not None and st.key == b.key:
        _record_device(st, dev)


# ----------------------------------------------------------------------------- streams
class _Stream:
    __slots__ = ("claim", "thread", "device")

    def __init__(self, thread, device: int) -> None:
        self.claim = ownership.Claim("a stream (aclrtCreateStream)", rank=3)
        self.thread = weakref.ref(thread)
        self.device = device

    def dead(self) -> bool:
        t = self.thread()
        return t is None or not t.is_alive()


def destroy(b, fname: str, handle: int, dev: Optional[int] = None):
    """``fname(handle)``, a Claim release function (None or the error); with ``dev`` (a
    stream's) a context of that device is made current first."""
    if dev is not None:
        _ensure_any_context(b, dev)
    rc = getattr(b, fname)(handle)
    if rc:
        where = "" if dev is None else f"the stream {handle:#x} of device {dev}"
        return status_error(b, rc, fname, rule=f"cannot destroy {where or hex(handle)}")
    return None


def stream(device_id: Optional[int] = None) -> int:
    """The stream of (device, calling thread), created on first use; streams of ended
    threads on the device are destroyed before one is looked up or created."""
    dev = resolve_device(device_id)
    ensure_device(dev, check_context=False)
    st = _get_state()
    key = (dev, threading.get_ident())
    last = getattr(_tls, "stream", None)
    if last is not None and last[0] is st and st.streams.get(key) is last[1]:
        return last[1].claim.handle
    thread = threading.current_thread()
    _drop_streams(st, lambda k, e: e.device == dev and e.dead())
    with st.lock:
        entry = st.streams.get(key)
        if entry is not None:
            if entry.thread() is not thread:      # thread id reused by a new thread: adopt
                entry.thread = weakref.ref(thread)
            _tls.stream = (st, entry)
            return entry.claim.handle
    b = ensure_device(dev)        # a native create follows: the context must really be current
    handle = c_void_p()
    entry = _Stream(thread, dev)     # Python objects before the create
    with ownership.atomic():
        rc = b.aclrtCreateStream(byref(handle))
        if rc == 0:
            entry.claim.take(handle.value, destroy, b, "aclrtDestroyStream", handle.value, dev)
            with st.lock:
                st.streams[key] = entry
            _tls.stream = (st, entry)
    check(b, rc, "aclrtCreateStream")
    tally("streams")
    return handle.value


def _drop_streams(st: _State, doomed: Callable) -> None:
    """Destroy the streams ``doomed(key, entry)`` picks (a failure warns; shutdown retries)."""
    with st.lock:
        victims = [(k, e) for k, e in st.streams.items() if doomed(k, e)]
    for key, entry in victims:
        ensure_device(entry.device)   # native destroys follow: the context must be current
        with ownership.atomic():
            with st.lock:
                if st.streams.get(key) is not entry:
                    continue
                del st.streams[key]
            entry.claim.release("warn")


def release_thread_resources() -> None:
    """Destroy this thread's streams and those of ended threads (all devices)."""
    st = _state
    if st is None:
        return
    me = threading.get_ident()
    current = _tls_current(st)
    _drop_streams(st, lambda k, e: k[1] == me or e.dead())
    if current is not None:
        ensure_device(current)


def resolve_stream(stream) -> int:
    """A caller's aclrtStream as an int handle: an int (0 = the default stream) or an object
    with an ``npu_stream`` attribute (torch_npu's ``torch.npu.current_stream()``)."""
    if hasattr(stream, "npu_stream"):
        stream = stream.npu_stream
    stream = _index(stream, "parameter 'stream' must be an aclrtStream handle (int) or an object "
                    "with an 'npu_stream' attribute (torch.npu.current_stream()), got "
                    f"{type(stream).__name__}")
    if not 0 <= stream < (1 << 64):
        raise ValueError(f"parameter 'stream' = {stream} is not a pointer value")
    return stream


def synchronize_stream(stream, device_id: Optional[int] = None) -> None:
    """``aclrtSynchronizeStream`` on a caller's stream (int or object with ``npu_stream``)."""
    handle = resolve_stream(stream)
    b = ensure_device(device_id)
    check(b, b.aclrtSynchronizeStream(handle), "aclrtSynchronizeStream")


def stream_workspace(device_id: int, stream_handle: int, nbytes: int) -> "DeviceBuffer":
    """At least ``nbytes`` of device memory kept for a caller's stream (work queued on it runs
    in order, so later calls reuse it); growing it synchronises the stream first."""
    st = _get_state()
    key = (int(device_id), int(stream_handle))
    with st.lock:
        buf = st.workspaces.get(key)
        if buf is not None and not buf.closed and buf.nbytes >= nbytes:
            return buf
        st.workspaces.pop(key, None)
    if buf is not None and not buf.closed:
        check(st.b, st.b.aclrtSynchronizeStream(stream_handle), "aclrtSynchronizeStream",
              rule="before growing the stream's workspace")
        buf.free()
    new = DeviceBuffer(nbytes, device_id)
    with st.lock:
        st.workspaces[key] = new
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
    for (dev, h), buf in entries:
        if not buf.closed:
            ensure_device(dev)
            if st.b.aclrtSynchronizeStream(h):
                recent_message(st.b)
            buf.free()


# ----------------------------------------------------------------------------- resources
def refuse_pickle(obj, protocol=None):
    """``__reduce_ex__`` of objects over device memory or native handles (pickle and copy raise)."""
    raise TypeError(f"a {type(obj).__name__} cannot be pickled or copied: it refers to "
                    "device memory (or native handles) that only this process can use; "
                    "copy the data to the host with .numpy() (a numpy array pickles) and "
                    "upload it again with DeviceArray.from_numpy")


class Closing:
    """``with obj:`` calls ``obj.close()`` on leaving (its failure raised only when the block
    raised nothing)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
        return False


class NativeResource(Closing):
    """Base of objects owning one native handle through a claim allocated before the create
    (``_prepare``), taken in its atomic block; released once (release, GC or shutdown)."""

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

    @property
    def released(self) -> bool:
        c = self._claim
        return c is None or c.state != ownership.OWNED

    def release(self, mode: str = "raise") -> None:
        """Release the handle now (a failure raises or warns; shutdown() retries it)."""
        if self._claim is not None:
            self._claim.release(mode)

    def call_consuming(self, fn, *args):
        """``fn(*args)``, a call that takes the handle over, disowned in the same atomic step
        (pass ctypes objects: no conversion can fail between the two)."""
        with ownership.atomic():
            self._claim.consume()
            return fn(*args)

    def _on_released(self) -> None:
        """Hook: the claim calls it once, when the handle stops being owned."""

    def close(self) -> None:
        self.release()


def free_all(buffers, mode: str = "raise") -> None:
    """Free every buffer now, each failure ignored (with ``mode`` "warn": warned)."""
    for buf in buffers:
        try:
            buf.release(mode)
        except Exception:
            pass


def live_resources() -> list:
    """The native resources of this package that are still alive (diagnostics)."""
    owners = (c.ref() if c.ref is not None else None for c in ownership.pending())
    return [r for r in owners if isinstance(r, NativeResource) and not r.released]


def _free_device(b, dev: int, ptr: int):
    """``aclrtFree``; returns None or the error (a Claim release function)."""
    _ensure_any_context(b, dev)
    rc = b.aclrtFree(ptr)
    tally("free")
    if rc:
        return status_error(b, rc, "aclrtFree", rule=f"cannot free {ptr:#x} on device {dev}")
    return None


class DeviceBuffer(NativeResource):
    """``nbytes`` of device memory (``aclrtMalloc``, policy HUGE_FIRST), 32-byte aligned;
    ``ptr`` is None for an empty buffer or after ``free()``."""

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
                self._claim.take(p.value, _free_device, b, self.device_id, p.value)
                self.ptr = p.value
        check(b, rc, "aclrtMalloc",
              rule=f"cannot allocate {nbytes} bytes on device {self.device_id}")
        if not p.value:
            raise status_error(b, 207001, "aclrtMalloc", rule="aclrtMalloc returned a NULL pointer",
                               fetch_message=False)
        tally("malloc", 1, "malloc_bytes", nbytes)
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

    @property
    def closed(self) -> bool:
        return self.nbytes > 0 and self.ptr is None

    def _span(self, offset: int, nbytes: int) -> tuple:
        """(device address at ``offset``, bindings) for ``nbytes`` there, the device current."""
        if self.closed:
            raise ValueError("the device buffer has been freed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.nbytes:
            raise ValueError(f"range [{offset}, {offset + nbytes}) outside the "
                             f"{self.nbytes}-byte buffer")
        return (self.ptr or 0) + offset, ensure_device(self.device_id)

    def copy_from_host(self, host_addr: int, nbytes: int, offset: int = 0) -> None:
        """H2D copy of ``nbytes`` from the host address into this buffer at ``offset``."""
        if nbytes:
            dst, b = self._span(offset, nbytes)
            memcpy(b, [(dst, self.nbytes - offset, host_addr, nbytes)], MEMCPY_HOST_TO_DEVICE)

    def copy_to_host(self, host_addr: int, nbytes: int, offset: int = 0) -> None:
        """D2H copy of ``nbytes`` from this buffer at ``offset`` to the host address."""
        if nbytes:
            src, b = self._span(offset, nbytes)
            memcpy(b, [(host_addr, nbytes, src, nbytes)], MEMCPY_DEVICE_TO_HOST)

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
        nbytes = self.nbytes - offset if nbytes is None else nbytes
        if nbytes:
            dst, b = self._span(offset, nbytes)
            check(b, b.aclrtMemset(dst, self.nbytes - offset, int(value), nbytes), "aclrtMemset")
            tally("memset")

    def __repr__(self) -> str:
        state = "freed" if self.closed else (f"{self.ptr:#x}" if self.ptr else "empty")
        return f"<DeviceBuffer {self.nbytes} bytes on device {self.device_id}: {state}>"


# ----------------------------------------------------------------------------- determinism
READ_RETRIES = 2     # extra reads of ACL_OPT_DETERMINISTIC after a failed one


class _ModeGate:
    """Serialises holders that need different values of one option (docs/faults.md,
    Determinism option): the first holder in sets the value, the last one out writes the
    previous one back. ``read()`` gives (value, 0) or (None, error code)."""

    def __init__(self, name: str, read: Callable, write: Callable) -> None:
        # re-entrant for the finalizers that may run inside a section (see leave)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.name, self.read, self.write = name, read, write
        self.deferred: list = []
        self.mode: Optional[bool] = None
        self.active = 0
        self.restore: Optional[int] = None     # what the last holder out writes back
        self.holders: Dict[int, int] = {}      # thread id -> hold count

    def enter(self, want: bool, claim) -> Optional[int]:
        """Join with ``want`` (waiting while others hold the other value); ``claim`` owns the
        leave. The getter's error code when the previous value is unknown, else None."""
        me = threading.get_ident()
        warn = None
        with self.lock:
            self._drain()
            if self.active and self.mode != want and me in self.holders:
                raise RuntimeError(
                    f"this thread already holds ACL_OPT_DETERMINISTIC={int(self.mode)} "
                    f"({self.name}); a nested call asking for deterministic={want} would wait "
                    "for itself")
            while self.active and self.mode != want:
                self.cond.wait()
                self._drain()
            with ownership.atomic():
                if self.active == 0:
                    prev, code = self.read()
                    for _ in range(READ_RETRIES):      # a transient failure: read again
                        if prev is not None or code in (ACL_ERROR_RT_SYSPARAMOPT_NOT_SET, -1):
                            break
                        prev, code = self.read()
                    changed = prev is None or bool(prev) != want
                    if changed:
                        self.write(int(want))          # raises: nothing was committed
                    unset = prev is None and code == ACL_ERROR_RT_SYSPARAMOPT_NOT_SET
                    # the value read; 0 (the documented default) when never set on this
                    # context; nothing when unreadable (left as the call ran, warned)
                    self.restore = (0 if unset else prev) if changed else None
                    self.mode = want
                    if prev is None and not unset:
                        warn = code
                self.active += 1
                self.holders[me] = self.holders.get(me, 0) + 1
                claim.take(self, self.leave, me)
        return warn

    def _exit_locked(self, me: int):
        """One holder leaves (lock held); the last one out writes the previous value back
        before a waiter reads it. Returns None or the write's error."""
        self.active -= 1
        self.holders[me] -= 1
        if not self.holders[me]:
            del self.holders[me]
        if self.active:
            return None
        restore, self.restore, self.mode = self.restore, None, None
        self.cond.notify_all()
        try:
            if restore is not None:
                self.write(restore)
        except Exception as exc:
            return exc
        return None

    def _drain(self) -> None:
        """Apply the leaves deferred by finalizers inside this thread's section (best effort)."""
        while self.deferred:
            self._exit_locked(self.deferred.pop())

    def leave(self, me: int):
        """Release one hold (a Claim release function: returns None or the error)."""
        if self.lock._is_owned():     # a GC finalizer inside this thread's own section
            self.deferred.append(me)
            return None
        with self.lock:
            self._drain()
            return self._exit_locked(me)


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


def get_determinism(device_id: Optional[int] = None) -> Optional[int]:
    """The current context's ACL_OPT_DETERMINISTIC value, or None when it cannot be read."""
    return _read_option(ensure_device(device_id).aclrtCtxGetSysParamOpt)[0]


def get_process_determinism() -> Optional[int]:
    """The process-wide ACL_OPT_DETERMINISTIC (``aclrtGetSysParamOpt``, CANN 9.0 and later),
    or None when it cannot be read."""
    return _read_option(api().aclrtGetSysParamOpt)[0]


def _set_determinism(b, value: int) -> None:
    check(b, b.aclrtCtxSetSysParamOpt(OPT_DETERMINISTIC, int(value)), "aclrtCtxSetSysParamOpt",
          rule="cannot set ACL_OPT_DETERMINISTIC on the current context")


def _set_process_determinism(b, value: int) -> None:
    check(b, b.aclrtSetSysParamOpt(OPT_DETERMINISTIC, int(value)), "aclrtSetSysParamOpt",
          rule="cannot set the process-wide ACL_OPT_DETERMINISTIC")


def _device_gate(st: _State, b, dev: int) -> _ModeGate:
    """The gate of one device's context option."""
    gate = st.gates.get(dev)
    if gate is not None:
        return gate

    def read():
        prev, code = _read_option(b.aclrtCtxGetSysParamOpt)
        if code == ACL_ERROR_RT_CONTEXT_NULL:
            # the record trusted before was stale (other code reset this thread's device)
            distrust_context()
            prev, code = _read_option(ensure_device(dev).aclrtCtxGetSysParamOpt)
        return prev, code

    def write(value):
        _set_determinism(ensure_device(dev), value)
        # from CANN 9.0 the context setter also writes the process-wide value: put back the
        # value the process gate's holders run with
        held = st.gates.get("process")
        if held is not None and held.active and b.aclrtSetSysParamOpt is not None:
            _set_process_determinism(b, int(held.mode))

    with st.lock:
        return st.gates.setdefault(dev, _ModeGate(f"device {dev}", read, write))


def _process_gate(st: _State, b) -> _ModeGate:
    """The gate of the process-wide option (CANN 9.0 and later read it), entered by every call
    that sets the option; without the symbols it only serialises the calls."""
    gate = st.gates.get("process")
    if gate is not None:
        return gate
    if b.aclrtSetSysParamOpt is None or b.aclrtGetSysParamOpt is None:
        gate = _ModeGate("the process", lambda: (None, -1), lambda value: None)
    else:
        gate = _ModeGate("the process", lambda: _read_option(b.aclrtGetSysParamOpt),
                         lambda value: _set_process_determinism(b, value))
    with st.lock:
        return st.gates.setdefault("process", gate)


class DeterminismHold:
    """Hold ACL_OPT_DETERMINISTIC == ``want`` (None: leave it alone) between :meth:`acquire`
    and :meth:`release`: the process-wide value (where exported), then the context's, each
    through its gate and owned by a claim (docs/faults.md, Determinism option)."""

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
        for gate, claim, getter, what, it in (
                (_process_gate(st, b), self._process, "aclrtGetSysParamOpt",
                 "the process-wide ACL_OPT_DETERMINISTIC", "it"),
                (_device_gate(st, b, dev), self._context, "aclrtCtxGetSysParamOpt",
                 f"ACL_OPT_DETERMINISTIC on device {dev}", "the option")):
            code = gate.enter(want, claim)
            if code is not None:
                warnings.warn(DeterminismWarning(
                    f"{getter} could not read {what} (it returned {code}); {it} is set to "
                    f"{int(want)} for the call and left at that value afterwards, since the "
                    "previous value is unknown"), stacklevel=3)
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


determinism = DeterminismHold      # ``with determinism(dev, want):`` holds it for the block


# ----------------------------------------------------------------------------- teardown
def shutdown(finalize: bool = True) -> None:
    """Release every handle of this package in dependency order (a failed release gets its
    one retry), then ``aclFinalize`` when this package's ``aclInit`` initialised ACL and
    ``finalize`` is true. The next use initialises again."""
    global _state
    st = _state
    try:
        release_stream_workspace()      # waits for the caller's streams first
    except Exception:
        pass
    ownership.release_all()     # by rank: executors, tensors, memory, streams
    caches.clear_all()
    if st is None:
        return
    with st.lock:
        st.streams.clear()
    if finalize and st.owns_init:
        try:
            if st.b.aclFinalize():
                recent_message(st.b)
        except Exception:
            pass
    with _state_lock:
        if _state is st:
            _state = None


def _at_exit() -> None:
    ownership.set_quiet()
    try:
        shutdown(finalize=False)
    except Exception:
        pass


def _after_fork_in_child() -> None:
    global _state_lock, _stats_lock
    # a lock held by another parent thread at fork time would never be released here
    _state_lock = threading.RLock()
    _stats_lock = threading.Lock()
    loader.after_fork()
    _forget_parent()        # the parent's handles and memory: never released here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
