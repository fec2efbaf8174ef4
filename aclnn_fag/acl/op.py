"""The op's two phases: ``run_backward`` (validated FagCall) and ``call_raw`` (no validation).

One call, in order (docs/abi.md §6): ``aclInit`` once; ``aclrtSetDevice`` on this thread;
this thread's stream; one device allocation
for the uploads and the outputs (:mod:`.arena`, :func:`.device.call_memory`: one H2D copy
per group of overlapping host arrays, the outputs zeroed by one aclrtMemset; with
``keep_on_device`` the outputs get an allocation of their own, owned by the results);
then either a **cached executor** for the call's signature (:mod:`.exec_cache`: its
aclTensors repointed at this call's buffers; no creates, no phase 1, no determinism hold)
or: the determinism option held, aclTensor / aclIntArray creation, phase 1 (the executor
marked repeatable for the cache); the workspace (only if its size is > 0); phase 2 on the
stream; the tensors and int arrays destroyed right after phase 2 returns, or kept with
the repeatable executor in the cache; ``aclrtSynchronizeStream``; D2H copies; the
buffers freed -- or, for the public calls, the ones used only during the call handed back to
:mod:`.call_pool` for the next call. Two short paths skip most of that:
``_launch_cached`` for a training step (device arrays, given outputs, a caller's stream:
signature, repoint, phase 2) and :mod:`.host_path` for calls on C-contiguous host arrays
(pooled memory, uploads, a cached executor, downloads; the general path on its miss).

Every native handle is owned the moment it exists (:mod:`.ownership`: the create and the
store of its handle are one atomic step for SIGINT) and registered on a
:class:`contextlib.ExitStack`, so an exception anywhere — including a ``KeyboardInterrupt``
at any bytecode, or a failed ``aclCreateTensor`` halfway through — releases everything
created so far, exactly once.  A one-shot executor is destroyed by us only when phase 1
succeeded and phase 2 was never entered; it counts as the library's from the moment phase 2
is entered (phase 2 frees it, also when it fails — docs/abi.md §6, docs/faults.md). A
repeatable (cached) one stays ours: back into the cache after a successful call, destroyed
after a failed one.  Cleanup failures after a
successful op warn (ResourceReleaseWarning) and the results are returned; outputs this
module allocates are zero-filled before the op runs (the op may leave parts unwritten).
"""

from __future__ import annotations

import contextlib
import numbers
import time
from ctypes import byref, c_double, c_int64, c_uint64, c_void_p
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ..call import INT32_MAX, FagCall, FagForward, FagGrads, FwdCall
from . import call_pool, device_constants, exec_cache, host_path, ownership, runtime
from ._status import recent_message, status_error
from .device import DeviceArray, call_memory
from .prototypes import FWD_PHASE1, FWD_PHASE2, PHASE1, PHASE2
from .tensors import HandleBatch, _destroy, int64_values
from ..constants import BF16, INT64_MIN, INT64_MAX

__all__ = ["run_backward", "call_raw", "run_forward", "call_raw_forward", "forward_available",
           "FWD_INPUT_SLOTS", "FWD_OUTPUT_SLOTS", "OpSpec", "BACKWARD", "FORWARD", "INPUT_SLOTS", "INT_ARRAY_SLOTS", "OUTPUT_SLOTS",
           "OUTPUT_LIKE", "AUTO", "TIMING_KEYS"]


# parameter order of phase 1 (docs/abi.md §2c)
INPUT_SLOTS = ("query", "query_rope", "key", "key_rope", "value", "dy", "pse_shift", "drop_mask",
               "padding_mask", "atten_mask", "softmax_max", "softmax_sum", "softmax_in",
               "attention_in")
INT_ARRAY_SLOTS = ("prefix", "actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "kv_start_idx")
OUTPUT_SLOTS = ("dq", "dq_rope", "dk", "dk_rope", "dv", "dpse")
OUTPUT_LIKE = {"dq": "query", "dq_rope": "query_rope", "dk": "key", "dk_rope": "key_rope",
               "dv": "value"}
_GRAD_SLOTS = tuple(OUTPUT_LIKE)                                  # dq .. dv
_GRAD_SOURCES = tuple(INPUT_SLOTS.index(src) for src in OUTPUT_LIKE.values())
TIMING_KEYS = ("marshal", "phase1", "phase2", "copy_in", "copy_out", "alloc")


@dataclass(frozen=True)
class OpSpec:
    """One two-phase op's parameter order: tensor inputs, int arrays, then the nine attributes
    (the same for both ops), tensor outputs, workspaceSize, executor."""

    phase1: str
    phase2: str
    inputs: Tuple[str, ...]
    int_arrays: Tuple[str, ...]
    outputs: Tuple[str, ...]


BACKWARD = OpSpec(PHASE1, PHASE2, INPUT_SLOTS, INT_ARRAY_SLOTS, OUTPUT_SLOTS)

# the forward aclnnFlashAttentionVarLenScoreV3 (29 parameters: these, the same five int
# arrays and nine attributes, the four outputs, workspaceSize, executor)
FWD_INPUT_SLOTS = ("query", "query_rope", "key", "key_rope", "value", "pse_shift", "drop_mask",
                   "padding_mask", "atten_mask")
FWD_OUTPUT_SLOTS = ("softmax_max", "softmax_sum", "softmax_out", "attention_out")
FORWARD = OpSpec(FWD_PHASE1, FWD_PHASE2, FWD_INPUT_SLOTS, INT_ARRAY_SLOTS, FWD_OUTPUT_SLOTS)


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO = _Auto()   # call_raw output default: a bf16 buffer shaped like the matching input


_NO_TIMER = contextlib.nullcontext()


class _Timer:
    def __init__(self, timings: Optional[dict], cpu: bool = False) -> None:
        self.timings = timings
        self.cpu = cpu
        if timings is not None:
            for k in TIMING_KEYS:
                timings.setdefault(k, 0.0)
                if cpu:
                    timings.setdefault(k + "_cpu", 0.0)

    def __call__(self, key: str):
        if self.timings is None:
            return _NO_TIMER                # reusable; a generator context costs ~2 us
        return self._timed(key)

    @contextlib.contextmanager
    def _timed(self, key: str):
        t0 = time.perf_counter()
        c0 = time.thread_time() if self.cpu else 0.0
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + (time.perf_counter() - t0)
            if self.cpu:
                self.timings[key + "_cpu"] += time.thread_time() - c0


def _release_on_exit(stack: contextlib.ExitStack, resource) -> None:
    """Release ``resource`` when ``stack`` unwinds. A failed release warns
    (ResourceReleaseWarning, the handle kept for shutdown) instead of raising: it neither
    hides an error in flight nor throws away results already computed."""
    stack.callback(resource.release, "warn")


def _release_on_error(stack: contextlib.ExitStack, resource) -> None:
    """Release ``resource`` only when ``stack`` unwinds with an exception (a result that
    would have been handed to the caller)."""
    def _exit(exc_type, exc, tb):
        if exc_type is not None:
            try:
                resource.release()
            except Exception:
                pass
        return False
    stack.push(_exit)


def _pool_on_exit(stack: contextlib.ExitStack, arena) -> None:
    """When ``stack`` unwinds: ``arena`` (a call's device memory, unused once the call has
    synchronised) back to :mod:`.call_pool` after success, freed after an error."""
    def _exit(exc_type, exc, tb):
        if exc_type is None:
            call_pool.give(arena)
        else:
            call_pool.discard(arena)
        return False
    stack.push(_exit)


class _Executor(runtime.NativeResource):
    """An ``aclOpExecutor*`` we own until phase 2 consumes it.

    Create it (empty) *before* phase 1 and call :meth:`adopt` inside the atomic block of
    phase 1; hand it to phase 2 with ``call_consuming``."""

    _what = "an aclOpExecutor"
    _rank = 0                      # destroyed before the tensors it refers to

    def __init__(self, b) -> None:
        self.b = b
        self.handle: Optional[int] = None
        self._prepare()

    def adopt(self, handle: Optional[int]) -> None:
        """Own the executor phase 1 returned (inside phase 1's ``ownership.atomic()``)."""
        if handle:
            self._take(handle, _destroy, self.b, "aclDestroyAclOpExecutor", handle)
            self.handle = handle

    def _on_released(self) -> None:
        self.handle = None


def check_device_arrays(arrays: Mapping[str, object], dev: int) -> None:
    """ValueError when a DeviceArray lives on another device than the call's."""
    for name, arr in arrays.items():
        if arr is not None and isinstance(arr, DeviceArray) and arr.device_id != dev:
            raise ValueError(f"parameter '{name}': the device array is on device {arr.device_id}, "
                             f"but the call runs on device {dev}; pass device_id={arr.device_id} "
                             "or copy the array to that device")


def _shape(x) -> tuple:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _layout_arg(layout) -> Optional[bytes]:
    """``input_layout`` as the C string the op receives (None = NULL). A NUL inside would
    silently cut the string short on the C side, so it is refused (ValueError)."""
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



def _int64_attr(name: str, value) -> int:
    """An int64 attribute: ctypes would silently wrap a value outside int64, so refuse it."""
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value                    # the common case, without the ABC checks
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"parameter '{name}' must be an int, got {type(value).__name__}")
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"parameter '{name}' = {value} does not fit in int64")
    return value


def _double_attr(name: str, value) -> float:
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"parameter '{name}' must be a float, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"parameter '{name}' = {value} does not fit in a double") from None


def _execute_op(inputs: Mapping[str, object], int_arrays: Mapping[str, object],
             attrs: Mapping[str, object], outputs: Mapping[str, object], *,
             deterministic: Optional[bool], device_id: Optional[int], timings: Optional[dict],
             workspace_size_out: bool = True, executor_out: bool = True,
             stream=None, keep_on_device: bool = False,
             cpu_timings: bool = False, op: OpSpec = BACKWARD,
             cache: bool = False) -> Dict[str, object]:
    """Run one call. ``inputs``: slot -> numpy array / DeviceArray / None; ``int_arrays``:
    slot -> sequence / None; ``outputs``: slot -> None, a DeviceArray (written in place) or
    (shape, dtype, initial host array or None). Returns slot -> host array (None for NULL
    outputs), or with ``keep_on_device`` slot -> DeviceArray (nothing downloaded).

    ``stream``: None runs on this thread's own stream and synchronises it. A caller's stream
    (``runtime.resolve_stream``) only gets the launch when every input is device-resident
    and ``keep_on_device`` is set: no synchronisation, the workspace comes from the
    stream's own cache (``runtime.stream_workspace``) and stays alive for later work on
    it. With host inputs or outputs the caller's stream is synchronised before the
    temporaries are freed and the results downloaded.

    ``cache`` (the public calls): the executor is kept for later calls with the same
    signature (:mod:`.exec_cache`), and the device memory used only during the call (the
    uploads' allocation, the workspace) comes from and goes back to :mod:`.call_pool`.
    Without it (``call_raw``) every handle and allocation is made and freed by the call."""
    timer = _Timer(timings, cpu_timings)
    # Python-level argument checks first: nothing native exists yet when they fail.
    attr_values = _attr_values(attrs)
    doubles, ints_a, layout_arg, ints_b = (attr_values[:2], attr_values[2:5], attr_values[5],
                                           attr_values[6:])
    int_arrays = {name: (None if int_arrays.get(name) is None
                         else int64_values(name, int_arrays[name])) for name in op.int_arrays}
    b = runtime.api()
    dev = runtime.resolve_device(device_id)
    check_device_arrays(inputs, dev)
    check_device_arrays(outputs, dev)
    runtime.ensure_device(dev if device_id is not None else None)
    caller_stream = stream is not None
    stream = runtime.resolve_stream(stream) if caller_stream else runtime.stream(dev)
    enqueue_only = (caller_stream and keep_on_device
                    and all(v is None or isinstance(v, DeviceArray) for v in inputs.values()))
    cache_cap = (exec_cache.enabled(b) if cache and workspace_size_out and executor_out
                 and deterministic is not None else 0)
    use_cache = cache_cap > 0
    # Creates are batched into few outermost ownership.atomic() blocks (each costs two
    # sigaction calls on the main thread; nested blocks cost almost nothing).
    stack = contextlib.ExitStack()
    ok = False
    try:
        # One outer ownership.atomic() block from the uploads to the handles' destruction:
        # the blocks inside it nest (no sigaction calls). Nothing in it waits in Python
        # (the waits are native calls, which hold SIGINT back anyway).
        with ownership.atomic():
            # ---- inputs and outputs: host arrays uploaded (shared ranges once), device
            # arrays used as they are; the uploads and the outputs to allocate share one
            # device allocation (.arena; the outputs zero-filled by one aclrtMemset), with
            # keep_on_device the outputs one of their own, owned by the returned arrays
            dev_inputs: Dict[str, Optional[DeviceArray]] = {}
            dev_outputs: Dict[str, Optional[DeviceArray]] = {}
            host_names, to_make = [], []
            if cache and type(inputs.get("atten_mask")) is np.ndarray:
                # the package's own compressed mask: one device copy per device (.constants)
                shared = device_constants.package_mask(inputs["atten_mask"], dev)
                if shared is not None:
                    inputs = dict(inputs, atten_mask=shared)
            for name in op.inputs:
                arr = inputs.get(name)
                if isinstance(arr, DeviceArray):
                    dev_inputs[name] = arr
                elif arr is not None:
                    host_names.append(name)
            for name in op.outputs:
                spec = outputs.get(name)
                if spec is None or isinstance(spec, DeviceArray):
                    dev_outputs[name] = spec
                else:
                    to_make.append(name)
            if host_names or to_make:
                with ownership.atomic():
                    mem = call_memory([inputs[n] for n in host_names],
                                      [outputs[n] for n in to_make], dev, timings,
                                      results_apart=keep_on_device, pooled=cache)
                    for arena in mem.arenas:
                        if cache:
                            _pool_on_exit(stack, arena)
                        else:
                            _release_on_exit(stack, arena)
                    for arena in mem.result_arenas:
                        _release_on_error(stack, arena)
                dev_inputs.update(zip(host_names, mem.inputs))
                dev_outputs.update(zip(to_make, mem.outputs))

            in_list = [dev_inputs.get(name) for name in op.inputs]
            out_list = [dev_outputs[name] for name in op.outputs]
            # ---- a cached executor for this signature (acl/exec_cache.py), repointed
            checkout = _Checkout(cache_cap)
            if use_cache:
                checkout.key = exec_cache.signature(
                    op.phase1, dev, bool(deterministic), attr_values,
                    tuple(int_arrays[n] for n in op.int_arrays), in_list, out_list)
                stack.push(checkout.settle)        # back into the cache, or destroyed on error
                with timer("marshal"):
                    checkout.entry = exec_cache.take_repointed(checkout.key, b, in_list,
                                                               out_list)
            entry = checkout.entry
            if entry is not None:
                runtime._count("cache_hits")
                ws_size_value = entry.workspace_size
                exec_handle = entry.executor.handle
                guard = None
                handles = None
            else:
                # ---- the determinism option, held from phase 1 (which reads it) to the end
                hold = runtime.call_hold(dev, deterministic)
                stack.callback(hold.release)            # registered before the hold is taken
                hold.acquire()

                # ---- handles (destroyed right after phase 2 returns, or on any error)
                handles = stack.enter_context(contextlib.ExitStack())
                with timer("marshal"), ownership.atomic():
                    batch = HandleBatch()
                    _release_on_exit(handles, batch)
                    t_args = batch.tensors(in_list)
                    ia_args = batch.int_arrays([int_arrays.get(name) for name in op.int_arrays])
                    o_args = batch.tensors(out_list)

                # ---- phase 1
                ws_size = c_uint64(0)
                executor = c_void_p(None)
                attr_args = ([c_double(v) for v in doubles] + [c_int64(v) for v in ints_a]
                             + [layout_arg] + [c_int64(v) for v in ints_b])
                args = (t_args + ia_args + attr_args + o_args
                        + [byref(ws_size) if workspace_size_out else None,
                           byref(executor) if executor_out else None])
                phase1 = getattr(b, op.phase1)
                guard = _Executor(b)
                _release_on_exit(handles, guard)       # pushed last: destroyed before the tensors
                with timer("phase1"):
                    with ownership.atomic():           # phase 1 and the executor's ownership
                        rc = phase1(*args)
                        if rc == 0:
                            guard.adopt(executor.value)
                runtime._count("phase1")
                if rc:
                    raise status_error(b, rc, op.phase1)
                if guard.handle is None:
                    guard = None
                ws_size_value = ws_size.value
                exec_handle = None if guard is None else guard.handle
                if (guard is not None and use_cache
                        and b.aclSetAclOpExecutorRepeatable(exec_handle) == 0):
                    # kept for the next call with this signature (after a good phase 2)
                    checkout.new = exec_cache.CachedExecutor(
                        guard, batch, _slots(t_args, in_list), _slots(o_args, out_list),
                        ws_size_value)
                elif guard is not None and use_cache:
                    recent_message(b)     # not repeatable: one-shot, as without the cache

            # ---- workspace
            workspace = None
            if ws_size_value > 0:
                with timer("alloc"):
                    if enqueue_only:
                        workspace = runtime.stream_workspace(dev, stream, ws_size_value)
                    elif cache:         # used only until the call has synchronised
                        workspace = call_pool.take(ws_size_value, dev)
                        _pool_on_exit(stack, workspace)
                    else:
                        workspace = runtime.DeviceBuffer(ws_size_value, dev)
                        _release_on_exit(stack, workspace)

            # ---- phase 2 (+ sync)
            if exec_handle is not None:
                phase2 = getattr(b, op.phase2)
                p2_args = (c_void_p(workspace.ptr if workspace is not None else None),
                           c_uint64(ws_size_value), c_void_p(exec_handle), c_void_p(stream))
                t0 = time.perf_counter()
                if entry is not None or checkout.new is not None:
                    # a repeatable executor stays ours through phase 2
                    rc = phase2(*p2_args)
                else:
                    # a one-shot executor is the library's from the moment phase 2 is entered
                    rc = guard.call_consuming(phase2, *p2_args)
                runtime._count("phase2")
                if rc:
                    raise status_error(b, rc, op.phase2)
                t1 = time.perf_counter()
                if handles is not None:
                    with timer("marshal"), ownership.atomic():
                        if checkout.new is not None:
                            # the executor and its handles now belong to the cache entry
                            handles.pop_all()
                            checkout.entry, checkout.new = checkout.new, None
                        else:
                            handles.close()
                t2 = time.perf_counter()
                if not enqueue_only:
                    rc = b.aclrtSynchronizeStream(stream)
                    if rc:
                        raise status_error(b, rc, "aclrtSynchronizeStream")
                if timings is not None:
                    timings["phase2"] += (t1 - t0) + (time.perf_counter() - t2)
            elif handles is not None:
                with ownership.atomic():
                    handles.close()

        # ---- results
        result: Dict[str, object] = {}
        if keep_on_device:
            result = dict(dev_outputs)
            for name in to_make:        # each result holds a share of the outputs' arena
                da = result[name]
                if da.size:
                    da.buffer.arena.share(da.buffer)
        else:
            with timer("copy_out"):
                for name in op.outputs:
                    da = dev_outputs[name]
                    result[name] = None if da is None else da.numpy()
        ok = True
    finally:
        with ownership.atomic():
            if ok:
                stack.close()
            else:       # the callbacks that release only on errors must see one
                err = RuntimeError("the call failed")
                stack.__exit__(RuntimeError, err, None)
    return result


class _Checkout:
    """The cached executor one call uses (``entry``: taken from the cache, or made by this
    call's phase 1 once phase 2 succeeded; ``new``: made by phase 1, not yet run).
    ``settle`` is the call's exit callback: back into the cache after a successful call,
    destroyed after a failed one."""

    __slots__ = ("key", "entry", "new", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.key = None
        self.entry = None
        self.new = None

    def settle(self, exc_type, exc, tb) -> bool:
        with ownership.atomic():
            entry, self.entry = self.entry, None
            if entry is not None:
                if exc_type is None:
                    exec_cache.give(self.key, entry, self.cap)
                else:
                    exec_cache.discard(entry)
        return False


def _slots(handles: list, arrays: list) -> list:
    """(setter index, aclTensor handle, base address) of each non-NULL tensor, in order."""
    out = []
    for h, a in zip(handles, arrays):
        if a is not None:
            out.append((len(out), h, a.buffer.ptr))
    return out


def _execute(*args, **kwargs):
    """:func:`_execute_op` as one operation: the thread's context is checked once."""
    with runtime.operation():
        return _execute_op(*args, **kwargs)


def _attr_values(attrs: Mapping[str, object]) -> tuple:
    """The nine attributes in parameter order, checked (doubles, int64s, the layout bytes)."""
    return (_double_attr("scale_value", attrs["scale_value"]),
            _double_attr("keep_prob", attrs["keep_prob"]),
            _int64_attr("pre_tokens", attrs["pre_tokens"]),
            _int64_attr("next_tokens", attrs["next_tokens"]),
            _int64_attr("head_num", attrs["head_num"]),
            _layout_arg(attrs["input_layout"]),
            _int64_attr("inner_precise", attrs["inner_precise"]),
            _int64_attr("sparse_mode", attrs["sparse_mode"]),
            _int64_attr("pse_type", attrs["pse_type"]))


def _launch_cached(op: OpSpec, call, in_list: list, out_list: list, device_id: Optional[int],
                   stream) -> bool:
    """A validated call on device arrays, with its outputs given, on a caller's stream, as
    a cache hit: signature, repoint, phase 2 enqueued; nothing else (the short path of a
    training step). False when it cannot be one (no cached executor for the signature, a
    host array, an array on another device, a failed address setter): the caller then runs
    the general path, which also reports what is wrong. Inside ``runtime.operation()``.
    The workspace is the stream's own (``runtime.stream_workspace``: it outlives the call)."""
    b = runtime.api()
    cap = exec_cache.enabled(b)
    if not cap:
        return False
    dev = runtime.resolve_device(device_id)
    for arrays in (in_list, out_list):
        for a in arrays:
            if a is not None and (type(a) is not DeviceArray or a.buffer.device_id != dev):
                return False
    det, attr_values, int_values = _signature_parts(op, call)
    # the device (and the thread's context, which the signature names) first
    runtime.ensure_device(dev if device_id is not None else None)
    key = exec_cache.signature(op.phase1, dev, det, attr_values, int_values, in_list, out_list)
    handle = runtime.resolve_stream(stream)
    entry = exec_cache.take_repointed(key, b, in_list, out_list)
    if entry is None:
        return False
    exec_cache.launch(b, op.phase2, entry, handle,
                      lambda size: runtime.stream_workspace(dev, handle, size).ptr)
    with ownership.atomic():
        exec_cache.give(key, entry, cap)
    return True


def _on_host_path(op: OpSpec, call, in_list: list, out_specs: tuple, device_id, stream,
                  timings: Optional[dict], cpu_timings: bool) -> list:
    """A validated call on host arrays (``host_path.eligible``) through :mod:`.host_path`:
    its outputs as numpy arrays, in slot order."""
    if timings is not None:
        _Timer(timings, cpu_timings)            # every timing key present, as _execute_op does
    return host_path.run(op, in_list, out_specs, device_id, stream,
                         *_signature_parts(op, call),
                         _general_on_device(op, call, device_id, stream, timings, cpu_timings),
                         timings)


def _signature_parts(op: OpSpec, call) -> tuple:
    """What a call's cache signature takes besides the device and its tensors: the
    determinism value, the nine attribute values, the int arrays' values."""
    int_values = []
    for n in op.int_arrays:
        v = getattr(call, n, None)
        int_values.append(None if v is None else int64_values(n, v))
    return bool(call.deterministic), _attr_values_of(call), tuple(int_values)


def _general_on_device(op: OpSpec, call, device_id: Optional[int], stream,
                       timings: Optional[dict] = None, cpu_timings: bool = False):
    """For :mod:`.host_path`: the general path on the device arrays it made (its cache
    miss), results left on the device; a caller's stream is not synchronised."""
    def general(in_list: list, out_list: list) -> None:
        _execute_op(dict(zip(op.inputs, in_list)),
                    {n: getattr(call, n, None) for n in op.int_arrays}, _attrs(call),
                    dict(zip(op.outputs, out_list)), deterministic=bool(call.deterministic),
                    device_id=device_id, timings=timings, stream=stream, keep_on_device=True,
                    cpu_timings=cpu_timings, cache=True, op=op)
    return general


def _attr_values_of(call) -> tuple:
    """:func:`_attr_values` of a call's attributes (no dict in between); plain floats, ints
    in int64 and a str layout without NUL (what validation hands over) are taken as they
    are."""
    sv, kp, layout = call.scale_value, call.keep_prob, call.input_layout
    ints = (call.pre_tokens, call.next_tokens, call.head_num, call.inner_precise,
            call.sparse_mode, call.pse_type)
    if type(sv) is float and type(kp) is float and type(layout) is str and "\x00" not in layout:
        for v in ints:
            if type(v) is not int or not INT64_MIN <= v <= INT64_MAX:
                break
        else:
            return (sv, kp, ints[0], ints[1], ints[2], layout.encode("utf-8", "surrogatepass"),
                    ints[3], ints[4], ints[5])
    return _attr_values(_attrs(call))


def _attrs(call) -> dict:
    return dict(scale_value=call.scale_value, keep_prob=call.keep_prob,
                pre_tokens=call.pre_tokens, next_tokens=call.next_tokens,
                head_num=call.head_num, input_layout=call.input_layout,
                inner_precise=call.inner_precise, sparse_mode=call.sparse_mode,
                pse_type=call.pse_type)


def run_backward(call: FagCall, *, device_id: Optional[int] = None,
                 timings: Optional[dict] = None, outputs: Optional[Mapping[str, object]] = None,
                 keep_on_device: bool = False, stream=None, cpu_timings: bool = False) -> FagGrads:
    """Run aclnnFlashAttentionUnpaddingScoreGradV3 for a validated call on the NPU.

    ``outputs``: slot (dq, dq_rope, dk, dk_rope, dv) -> DeviceArray to write into (others
    are allocated). ``keep_on_device``: return FagGrads of DeviceArrays instead of
    downloading. ``stream``: a caller's aclrtStream (int or an object with ``npu_stream``);
    with device-resident inputs and ``keep_on_device`` the call only enqueues (see
    ``_execute``).

    ``device_id`` None means ``$ACLNN_FAG_DEVICE`` or 0. ``timings`` (a dict) receives host
    seconds: "marshal" (aclTensor/aclIntArray creation and destruction), "phase1", "phase2"
    (launch + aclrtSynchronizeStream), "copy_in", "copy_out", "alloc" (device allocations).
    Errors raise the status code's exception class with aclGetRecentErrMsg text.
    """
    if keep_on_device and stream is not None and timings is None and outputs:
        in_list = [getattr(call, n, None) for n in INPUT_SLOTS]
        out_list = [outputs.get(n) for n in _GRAD_SLOTS] + [None]       # dpse: NULL
        if all((a is None) == (in_list[i] is None) for a, i in zip(out_list, _GRAD_SOURCES)):
            with runtime.operation():
                if _launch_cached(BACKWARD, call, in_list, out_list, device_id, stream):
                    return FagGrads(*out_list[:5])
    if not keep_on_device and not outputs:
        in_list = [getattr(call, n, None) for n in INPUT_SLOTS]
        if host_path.eligible(in_list):          # host arrays: the short path of host_path
            out_specs = tuple([None if in_list[i] is None else (in_list[i].shape, BF16)
                               for i in _GRAD_SOURCES] + [None])        # dpse: NULL
            return FagGrads(*_on_host_path(BACKWARD, call, in_list, out_specs, device_id,
                                           stream, timings, cpu_timings)[:5])
    inputs = {n: getattr(call, n, None) for n in INPUT_SLOTS}
    int_arrays = {n: getattr(call, n, None) for n in INT_ARRAY_SLOTS}
    given = dict(outputs or {})
    outputs = {}
    for out, src in OUTPUT_LIKE.items():
        a = inputs[src]
        if given.get(out) is not None:
            outputs[out] = given[out]
        else:
            outputs[out] = None if a is None else (tuple(a.shape), BF16, None)
    outputs["dpse"] = None
    res = _execute(inputs, int_arrays, _attrs(call), outputs,
                   deterministic=bool(call.deterministic), device_id=device_id, timings=timings,
                   stream=stream, keep_on_device=keep_on_device, cpu_timings=cpu_timings,
                   cache=True)
    return FagGrads(res["dq"], res["dq_rope"], res["dk"], res["dk_rope"], res["dv"])


def call_raw(*, query=None, query_rope=None, key=None, key_rope=None, value=None, dy=None,
             pse_shift=None, drop_mask=None, padding_mask=None, atten_mask=None, softmax_max=None,
             softmax_sum=None, softmax_in=None, attention_in=None, prefix=None,
             actual_seq_qlen=None, actual_seq_kvlen=None, q_start_idx=None, kv_start_idx=None,
             scale_value=1.0, keep_prob=1.0, pre_tokens=INT32_MAX, next_tokens=INT32_MAX,
             head_num=None, input_layout="TND", inner_precise=0, sparse_mode=0, pse_type=1,
             dq=AUTO, dq_rope=AUTO, dk=AUTO, dk_rope=AUTO, dv=AUTO, dpse=None,
             workspace_size_out=True, executor_out=True, deterministic: Optional[bool] = False,
             device_id: Optional[int] = None, timings: Optional[dict] = None) -> FagGrads:
    """The 36-argument call with **no** Python validation: any slot may be None (NULL).

    Tensor inputs: numpy arrays (any supported dtype, any rank, 0-d too) or DeviceArrays.
    Int arrays: sequences of ints (may be empty) or None. ``input_layout``: str, bytes or None
    (NULL). ``head_num`` None means ``query.shape[1]`` (0 when that does not exist).
    Outputs: ``AUTO`` = a bf16 buffer shaped like the matching input (NULL when that input is
    None), None = NULL, a numpy array = a buffer of its shape/dtype initialised with its
    contents. ``workspace_size_out``/``executor_out`` False pass NULL for those out-params.
    ``deterministic`` None leaves the context option alone.

    Returns FagGrads (None for NULL outputs; dpse is not returned) or raises the status
    code's exception class.
    """
    inputs = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value,
                  dy=dy, pse_shift=pse_shift, drop_mask=drop_mask, padding_mask=padding_mask,
                  atten_mask=atten_mask, softmax_max=softmax_max, softmax_sum=softmax_sum,
                  softmax_in=softmax_in, attention_in=attention_in)
    int_arrays = dict(prefix=prefix, actual_seq_qlen=actual_seq_qlen,
                      actual_seq_kvlen=actual_seq_kvlen, q_start_idx=q_start_idx,
                      kv_start_idx=kv_start_idx)
    if head_num is None:
        shape = _shape(query) if query is not None else ()
        head_num = shape[1] if len(shape) >= 2 else 0
    attrs = dict(scale_value=scale_value, keep_prob=keep_prob, pre_tokens=pre_tokens,
                 next_tokens=next_tokens, head_num=head_num, input_layout=input_layout,
                 inner_precise=inner_precise, sparse_mode=sparse_mode, pse_type=pse_type)
    outputs = {}
    for name, spec in (("dq", dq), ("dq_rope", dq_rope), ("dk", dk), ("dk_rope", dk_rope),
                       ("dv", dv), ("dpse", dpse)):
        src = inputs.get(OUTPUT_LIKE.get(name, "")) if spec is AUTO else None
        outputs[name] = _output_slot(spec, None if src is None else (_shape(src), BF16, None))
    res = _execute(inputs, int_arrays, attrs, outputs, deterministic=deterministic,
                   device_id=device_id, timings=timings, workspace_size_out=workspace_size_out,
                   executor_out=executor_out)
    return FagGrads(res["dq"], res["dq_rope"], res["dk"], res["dk_rope"], res["dv"])


def _output_slot(spec, auto_slot):
    """One output of ``_execute``: ``auto_slot`` (shape, dtype, None) for AUTO, None for no
    output, else the caller's array as (shape, dtype, array)."""
    if spec is AUTO:
        return auto_slot
    if spec is None:
        return None
    a = np.asarray(spec)
    return (a.shape, a.dtype, a)

# --------------------------------------------------------------------------- the forward
def forward_available() -> bool:
    """Whether the loaded libraries export the forward op (both phases)."""
    b = runtime.api()
    return b.has(FWD_PHASE1) and b.has(FWD_PHASE2)


def _require_forward() -> None:
    if not forward_available():
        from ..errors import LibraryNotFoundError
        raise LibraryNotFoundError(
            f"the loaded CANN libraries do not export {FWD_PHASE1}/{FWD_PHASE2}; this CANN is "
            "too old for the device forward (use backend='numpy' for the forward)")


def _forward_outputs(t1, n1, dv) -> dict:
    return {"softmax_max": ((t1, n1, 8), np.dtype(np.float32), None),
            "softmax_sum": ((t1, n1, 8), np.dtype(np.float32), None),
            # unused by the op; an empty tensor, as torch_npu passes
            "softmax_out": ((0,), BF16, None),
            "attention_out": ((t1, n1, dv), BF16, None)}


def run_forward(call: FwdCall, *, device_id: Optional[int] = None,
                timings: Optional[dict] = None, outputs: Optional[Mapping[str, object]] = None,
                keep_on_device: bool = False, stream=None) -> FagForward:
    """Run aclnnFlashAttentionVarLenScoreV3 for a validated FwdCall on the NPU.

    Returns FagForward(attention_out bf16 [T1, N1, Dv], softmax_max, softmax_sum float32
    [T1, N1, 8]) exactly as the device wrote them: the statistics in the device layout
    (per batch [N1, Sq_b, 8] blocks), ready for the backward. ``timings``, ``outputs``
    (slot attention_out / softmax_max / softmax_sum -> DeviceArray to write into),
    ``keep_on_device`` and ``stream``: as run_backward.
    """
    _require_forward()
    t1, n1 = call.query.shape[0], call.query.shape[1]
    slots = _forward_outputs(t1, n1, call.value.shape[2])
    if not keep_on_device and not outputs:
        in_list = [getattr(call, n, None) for n in FWD_INPUT_SLOTS]
        if host_path.eligible(in_list):          # host arrays: the short path of host_path
            out_specs = tuple((slots[n][0], slots[n][1]) for n in FWD_OUTPUT_SLOTS)
            res = dict(zip(FWD_OUTPUT_SLOTS, _on_host_path(FORWARD, call, in_list, out_specs,
                                                           device_id, stream, timings, False)))
            return FagForward(res["attention_out"], res["softmax_max"], res["softmax_sum"])
    inputs = {n: getattr(call, n, None) for n in FWD_INPUT_SLOTS}
    int_arrays = {n: getattr(call, n, None) for n in INT_ARRAY_SLOTS}
    slots.update({n: a for n, a in (outputs or {}).items() if a is not None})
    res = _execute(inputs, int_arrays, _attrs(call), slots,
                   deterministic=bool(call.deterministic), device_id=device_id, timings=timings,
                   stream=stream, keep_on_device=keep_on_device, op=FORWARD, cache=True)
    return FagForward(res["attention_out"], res["softmax_max"], res["softmax_sum"])


def call_raw_forward(*, query=None, query_rope=None, key=None, key_rope=None, value=None,
                     pse_shift=None, drop_mask=None, padding_mask=None, atten_mask=None,
                     prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, q_start_idx=None,
                     kv_start_idx=None, scale_value=1.0, keep_prob=1.0, pre_tokens=INT32_MAX,
                     next_tokens=INT32_MAX, head_num=None, input_layout="TND", inner_precise=0,
                     sparse_mode=0, pse_type=1, softmax_max=AUTO, softmax_sum=AUTO,
                     softmax_out=AUTO, attention_out=AUTO, workspace_size_out=True,
                     executor_out=True, deterministic: Optional[bool] = False,
                     device_id: Optional[int] = None, timings: Optional[dict] = None) -> FagForward:
    """The 29-argument forward with **no** Python validation: any slot may be None (NULL).

    Outputs: ``AUTO`` = float32 [T1, N1, 8] statistics, an empty softmax_out, bf16
    [T1, N1, Dv] attention_out (T1, N1 from ``query``, Dv from ``value``; NULL when those are
    None); None = NULL; a numpy array = a buffer of its shape/dtype initialised with it.
    Returns FagForward (None for NULL outputs) or raises the status code's exception class.
    """
    _require_forward()
    inputs = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value,
                  pse_shift=pse_shift, drop_mask=drop_mask, padding_mask=padding_mask,
                  atten_mask=atten_mask)
    int_arrays = dict(prefix=prefix, actual_seq_qlen=actual_seq_qlen,
                      actual_seq_kvlen=actual_seq_kvlen, q_start_idx=q_start_idx,
                      kv_start_idx=kv_start_idx)
    qshape = _shape(query) if query is not None else None
    vshape = _shape(value) if value is not None else None
    if head_num is None:
        head_num = qshape[1] if qshape is not None and len(qshape) >= 2 else 0
    attrs = dict(scale_value=scale_value, keep_prob=keep_prob, pre_tokens=pre_tokens,
                 next_tokens=next_tokens, head_num=head_num, input_layout=input_layout,
                 inner_precise=inner_precise, sparse_mode=sparse_mode, pse_type=pse_type)
    auto = None
    if qshape is not None and len(qshape) >= 2 and vshape is not None and len(vshape) >= 1:
        auto = _forward_outputs(qshape[0], qshape[1], vshape[-1])
    outputs = {}
    for name, spec in (("softmax_max", softmax_max), ("softmax_sum", softmax_sum),
                       ("softmax_out", softmax_out), ("attention_out", attention_out)):
        outputs[name] = _output_slot(spec, None if auto is None else auto[name])
    res = _execute(inputs, int_arrays, attrs, outputs, deterministic=deterministic,
                   device_id=device_id, timings=timings, workspace_size_out=workspace_size_out,
                   executor_out=executor_out, op=FORWARD)
    return FagForward(res["attention_out"], res["softmax_max"], res["softmax_sum"])
