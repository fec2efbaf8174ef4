"""The calls of both ops on the device: ``run_backward`` / ``run_forward`` (validated) and
``call_raw`` / ``call_raw_forward`` (keywords from :mod:`aclnn_fag.spec`), each through
:func:`.executor.run`; the memory policy of the calls (docs/architecture.md)."""

from __future__ import annotations

import inspect
from typing import Iterable, Mapping, Optional

import numpy as np

from ..call import FagCall, FagForward, FagGrads, FwdCall, device_int_array
from ..constants import BF16
from ..errors import LibraryNotFoundError
from ..spec import BACKWARD_V3, FORWARD_V3, OpVersion
from . import caches, call_pool, device_constants, executor, ownership, runtime
from .arena import ARENA_ALIGN
from .device import DeviceArray, call_memory
from .runtime import MEMCPY_DEVICE_TO_HOST
from .tensors import int64_values

__all__ = ["run_backward", "call_raw", "run_forward", "call_raw_forward", "forward_available",
           "execute", "check_device_arrays", "auto_outputs", "BACKWARD", "FORWARD", "AUTO"]

BACKWARD, FORWARD = BACKWARD_V3, FORWARD_V3
_RESULTS = {BACKWARD.key: FagGrads, FORWARD.key: FagForward}   # what each op returns
_WORKSPACE: dict = {}       # op key -> the largest workspace a cached executor asked for


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO = _Auto()   # call_raw output default: the op's own output shape (see auto_outputs)


def check_device_arrays(named: Iterable, dev: int) -> list:
    """ValueError when a DeviceArray of the (name, array) pairs lives on another device; the
    places of the other non-None arrays."""
    others = []
    for i, (name, arr) in enumerate(named):
        if isinstance(arr, DeviceArray):
            if arr.device_id != dev:
                raise ValueError(f"parameter '{name}': the device array is on device "
                                 f"{arr.device_id}, but the call runs on device {dev}; pass "
                                 f"device_id={arr.device_id} or copy the array to that device")
        elif arr is not None:
            others.append(i)
    return others


def auto_outputs(op: OpVersion, inputs: list) -> list:
    """Per output slot the (shape, dtype, None) of the buffer the call allocates, or None
    (NULL): the backward's gradients bf16 like their inputs; the forward's statistics, an
    empty softmax_out (torch_npu passes one) and attention_out."""
    named = dict(zip(op.inputs, inputs))
    if op is FORWARD:
        q, v = named["query"], named["value"]
        qs, vs = tuple(np.shape(q)), tuple(np.shape(v))     # () for None
        if len(qs) < 2 or len(vs) < 1:
            return [None] * len(op.outputs)
        stats = ((qs[0], qs[1], 8), np.dtype(np.float32), None)
        return [stats, stats, ((0,), BF16, None), ((qs[0], qs[1], vs[-1]), BF16, None)]
    srcs = [named.get(op.output_like.get(n, "")) for n in op.outputs]
    return [None if src is None else (tuple(np.shape(src)), BF16, None) for src in srcs]


# --------------------------------------------------------------------------- one call
def execute(op: OpVersion, inputs: list, int_arrays: list, attrs: Mapping[str, object],
            outputs: list, *, deterministic: Optional[bool], device_id: Optional[int],
            stream=None, keep_on_device: bool = False, public: bool = True,
            timer: executor.Timer = executor.Timer(), out_params=(True, True)) -> list:
    """Run one call, lists in slot order: ``inputs`` numpy / DeviceArray / None, ``outputs``
    None, a DeviceArray (written in place) or (shape, dtype, initial host array or None).
    Host arrays back, or the DeviceArrays with ``keep_on_device``; a caller's ``stream`` only
    gets the launch when every input is on the device and results stay there. ``public``:
    the executor cache, the mask's device copy and the pool (``call_raw``: none)."""
    attr_values = executor.attr_values(op, attrs)
    int_values = tuple([None if v is None else int64_values(n, v)
                        for n, v in zip(op.int_arrays, int_arrays)])
    dev = runtime.resolve_device(device_id)
    host = check_device_arrays(zip(op.inputs, inputs), dev)
    made = check_device_arrays(zip(op.outputs, outputs), dev)
    enqueue_only = stream is not None and keep_on_device and not host
    with runtime.operation():
        runtime.ensure_device(dev if device_id is not None else None)
        handle = runtime.resolve_stream(stream) if stream is not None else runtime.stream(dev)
        pooled, owned, results = [], [], []     # released when the call ends (see finally)
        spare = None
        ok = False
        try:
            with ownership.atomic():     # the blocks inside nest (no signal calls)
                inputs, outputs = list(inputs), list(outputs)
                if public and "atten_mask" in op.inputs:
                    _shared_mask(op, inputs, host, dev)
                if host or made:
                    mem = call_memory([inputs[i] for i in host], [outputs[i] for i in made], dev,
                                      timer, results_apart=keep_on_device, pooled=public,
                                      spare=_room(op) if public else 0)
                    (pooled if public else owned).extend(mem.arenas)
                    results.extend(mem.result_arenas)
                    spare = mem.spare if public else None
                    for i, da in zip(host, mem.inputs):
                        inputs[i] = da
                    for i, da in zip(made, mem.outputs):
                        outputs[i] = da

                def workspace_of(nbytes: int, cached: bool) -> int:
                    with timer("alloc"):
                        if enqueue_only:
                            return runtime.stream_workspace(dev, handle, nbytes).ptr
                        if spare is not None and nbytes <= spare[1]:
                            return spare[0]     # behind the call's pieces, in its allocation
                        if cached and public:   # the next calls take room for it
                            _WORKSPACE[op.key] = max(_WORKSPACE.get(op.key, 0), nbytes)
                        ws = (call_pool.take(nbytes, dev) if public
                              else runtime.DeviceBuffer(nbytes, dev))
                        (pooled if public else owned).append(ws)
                        return ws.ptr

                launch = executor.Launch(op, dev, deterministic, attr_values, int_values,
                                         inputs, outputs, cache=public, out_params=out_params)
                executor.run(launch, handle, workspace_of, sync=not enqueue_only, timer=timer)
            if keep_on_device:
                for i in made:       # each result holds a share of the outputs' arena
                    da = outputs[i]
                    if da.size:
                        da.buffer.arena.share(da.buffer)
            else:
                with timer("copy_out"):
                    outputs = _download(outputs, made)
            ok = True
        finally:
            with ownership.atomic():
                for arena in pooled:
                    (call_pool.give if ok else call_pool.discard)(arena)
                for res in owned + ([] if ok else results):
                    res.release("warn")
    return outputs


def _forget_workspaces() -> int:
    n = len(_WORKSPACE)
    _WORKSPACE.clear()
    return n


caches.register("workspace sizes", _forget_workspaces, _forget_workspaces)


def _room(op: OpVersion) -> int:
    """Bytes to take behind a call's pieces for the workspace its cached executor asked for."""
    seen = _WORKSPACE.get(op.key, 0)
    return seen + ARENA_ALIGN if seen else 0      # the workspace starts aligned


def _shared_mask(op: OpVersion, inputs: list, host: list, dev: int) -> None:
    """The package's own compressed mask: its device copy (.device_constants) in place of
    the host array."""
    at = op.inputs.index("atten_mask")
    if type(inputs[at]) is np.ndarray:
        shared = device_constants.package_mask(inputs[at], dev)
        if shared is not None:
            inputs[at] = shared
            host.remove(at)


def _download(arrays: list, made: list) -> list:
    """Each output as a new host array: the ones allocated here (C-contiguous, each a piece
    of the call's allocation) by one aclrtMemcpy each, a caller's through ``numpy()``."""
    out = [None if da is None else (np.empty(da.shape, da.dtype) if i in made else da.numpy())
           for i, da in enumerate(arrays)]
    copies = [(host.__array_interface__["data"][0], host.nbytes, arrays[i].buffer.ptr,
               host.nbytes) for i, host in enumerate(out) if i in made and host.nbytes]
    runtime.memcpy(runtime.api(), copies, MEMCPY_DEVICE_TO_HOST)
    return out


# --------------------------------------------------------------------------- validated calls
def _run(op: OpVersion, call, given: Optional[Mapping[str, object]], device_id, stream,
         keep_on_device: bool, timer: executor.Timer):
    """A validated call (FagCall / FwdCall) of ``op``: its results in ``op``'s result type."""
    inputs = [getattr(call, n, None) for n in op.inputs]
    outputs = auto_outputs(op, inputs)
    if given:
        outputs = [given.get(n) if given.get(n) is not None else auto
                   for n, auto in zip(op.outputs, outputs)]
    res = execute(op, inputs, [device_int_array(call, n) for n in op.int_arrays],  # device's ends
                  {n: getattr(call, n) for n in op.attrs}, outputs,
                  deterministic=bool(call.deterministic), device_id=device_id,
                  stream=stream, keep_on_device=keep_on_device, timer=timer)
    return _result(op, res)


def _result(op: OpVersion, res: list):
    """The results in ``op``'s result type (FagGrads leaves out dpse)."""
    named = dict(zip(op.outputs, res))
    result_type = _RESULTS[op.key]
    return result_type(*(named[n] for n in result_type._fields))


def run_backward(call: FagCall, *, device_id: Optional[int] = None,
                 timings: Optional[dict] = None, outputs: Optional[Mapping[str, object]] = None,
                 keep_on_device: bool = False, stream=None, cpu_timings: bool = False) -> FagGrads:
    """Run aclnnFlashAttentionUnpaddingScoreGradV3 for a validated call on the NPU.
    ``outputs``: slot -> DeviceArray to write into; ``keep_on_device``: DeviceArrays back;
    ``stream``: a caller's aclrtStream (with device inputs and ``keep_on_device`` the call
    only enqueues); ``timings``: a dict of host seconds per stage (``executor.TIMING_KEYS``;
    with ``cpu_timings`` also "<key>_cpu")."""
    return _run(BACKWARD, call, outputs, device_id, stream, keep_on_device,
                executor.Timer(timings, cpu_timings))


def _exports(op: OpVersion) -> bool:
    """Whether the loaded libraries export both phases of ``op``."""
    b = runtime.api()
    return b.has(op.phase1) and b.has(op.phase2)


def forward_available() -> bool:
    """Whether the loaded libraries export the forward op (both phases)."""
    return _exports(FORWARD)


def _require(op: OpVersion) -> None:
    """LibraryNotFoundError when ``op`` is optional and this CANN lacks it."""
    if op.optional_symbols and not (forward_available() if op is FORWARD else _exports(op)):
        raise LibraryNotFoundError(
            f"the loaded CANN libraries do not export {op.phase1}/{op.phase2}; this CANN is "
            "too old for the device forward (use backend='numpy' for the forward)")


def run_forward(call: FwdCall, *, device_id: Optional[int] = None,
                timings: Optional[dict] = None, outputs: Optional[Mapping[str, object]] = None,
                keep_on_device: bool = False, stream=None) -> FagForward:
    """Run aclnnFlashAttentionVarLenScoreV3 for a validated FwdCall on the NPU (the statistics
    in the device's layout); the keywords as run_backward's."""
    _require(FORWARD)
    return _run(FORWARD, call, outputs, device_id, stream, keep_on_device,
                executor.Timer(timings))


# --------------------------------------------------------------------------- raw calls
_RAW_EXTRAS = (("workspace_size_out", True), ("executor_out", True), ("deterministic", False),
               ("device_id", None), ("timings", None))


def _raw_signature(op: OpVersion) -> inspect.Signature:
    """Every C parameter of ``op`` as a keyword (attributes the spec's defaults, outputs AUTO
    when the call can shape them, else None), then the extras."""
    dummy = np.empty((1, 1))
    auto = {n for n, s in zip(op.outputs, auto_outputs(op, [dummy] * len(op.inputs)))
            if s is not None}
    kw = inspect.Parameter.KEYWORD_ONLY
    params = []
    for p in op.params:
        if p.role in ("input", "int_array"):
            params.append(inspect.Parameter(p.name, kw, default=None))
        elif p.role == "attr":
            params.append(inspect.Parameter(p.name, kw, default=p.default))
        elif p.role == "output":
            params.append(inspect.Parameter(p.name, kw, default=AUTO if p.name in auto else None))
    params += [inspect.Parameter(n, kw, default=d) for n, d in _RAW_EXTRAS]
    return inspect.Signature(params)


def _output_slot(spec, auto_slot):
    """One output of :func:`execute`: ``auto_slot`` for AUTO, None, or (shape, dtype, array)."""
    if spec is AUTO:
        return auto_slot
    if spec is None:
        return None
    a = np.asarray(spec)
    return (a.shape, a.dtype, a)


def _call_raw(op: OpVersion, args: Mapping[str, object]):
    _require(op)
    inputs = [args[n] for n in op.inputs]
    attrs = {n: args[n] for n in op.attrs}
    if attrs["head_num"] is None:
        shape = np.shape(args["query"])
        attrs["head_num"] = shape[1] if len(shape) >= 2 else 0
    auto = auto_outputs(op, inputs)
    outputs = [_output_slot(args[n], a) for n, a in zip(op.outputs, auto)]
    res = execute(op, inputs, [args[n] for n in op.int_arrays], attrs, outputs,
                  deterministic=args["deterministic"], device_id=args["device_id"],
                  public=False, timer=executor.Timer(args["timings"]),
                  out_params=(bool(args["workspace_size_out"]), bool(args["executor_out"])))
    return _result(op, res)


def _raw_function(op: OpVersion, name: str, doc: str):
    sig = _raw_signature(op)

    def raw(**kwargs):
        bound = sig.bind(**kwargs)
        bound.apply_defaults()
        return _call_raw(op, bound.arguments)
    raw.__signature__ = sig
    raw.__name__ = raw.__qualname__ = name
    raw.__doc__ = doc
    return raw


call_raw = _raw_function(BACKWARD, "call_raw", """The 36-argument call with **no** Python
validation: any slot may be None (NULL).

Tensor inputs: numpy arrays (any supported dtype, any rank, 0-d too) or DeviceArrays.
Int arrays: sequences of ints (may be empty) or None. ``input_layout``: str, bytes or None
(NULL). ``head_num`` None means ``query.shape[1]`` (0 when that does not exist).
Outputs: ``AUTO`` = a bf16 buffer shaped like the matching input (NULL when that input is
None), None = NULL, a numpy array = a buffer of its shape/dtype initialised with its
contents. ``workspace_size_out``/``executor_out`` False pass NULL for those out-params.
``deterministic`` None leaves the context option alone.

Returns FagGrads (None for NULL outputs; dpse is not returned) or raises the status
code's exception class.""")

call_raw_forward = _raw_function(FORWARD, "call_raw_forward", """The 29-argument forward with
**no** Python validation: any slot may be None (NULL).

Outputs: ``AUTO`` = float32 [T1, N1, 8] statistics, an empty softmax_out, bf16
[T1, N1, Dv] attention_out (T1, N1 from ``query``, Dv from ``value``; NULL when those are
None); None = NULL; a numpy array = a buffer of its shape/dtype initialised with it.
Returns FagForward (None for NULL outputs) or raises the status code's exception class.""")
