"""The calls of both ops on the device: ``run_backward`` / ``run_forward`` (validated calls)
and ``call_raw`` / ``call_raw_forward`` (no validation; their keywords come from
:mod:`aclnn_fag.spec`).

Each call turns its arguments into device arrays and hands them to :mod:`.executor` (the
one route to phase 1 and phase 2): host arrays are uploaded into one allocation (views of
one host array share one upload, :func:`.device.call_memory`) next to the outputs it
allocates (zero-filled by one aclrtMemset: the op may leave parts unwritten, docs/faults.md);
device arrays are used in place. A public call whose inputs are all C-contiguous host
arrays takes :mod:`.host_path` instead (a per-shape layout, the same executor route).

Memory policy (docs/architecture.md, "Where to change the memory policy"): the public calls
take the allocation used only during the call and the workspace from :mod:`.call_pool` and
hand them back after the synchronisation (freed instead after an error); with a caller's
stream and device-resident inputs only the launch is enqueued and the workspace is the
stream's own (``runtime.stream_workspace``); ``call_raw`` allocates and frees everything.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Dict, Mapping, Optional

import numpy as np

from ..call import FagCall, FagForward, FagGrads, FwdCall, device_int_array
from ..constants import BF16
from ..errors import LibraryNotFoundError
from ..spec import BACKWARD_V3, FORWARD_V3, OpVersion
from . import call_pool, device_constants, executor, host_path, ownership, runtime
from .device import DeviceArray, call_memory
from .tensors import int64_values

__all__ = ["run_backward", "call_raw", "run_forward", "call_raw_forward", "forward_available",
           "execute", "check_device_arrays", "BACKWARD", "FORWARD", "INPUT_SLOTS",
           "INT_ARRAY_SLOTS", "OUTPUT_SLOTS", "OUTPUT_LIKE", "FWD_INPUT_SLOTS",
           "FWD_OUTPUT_SLOTS", "AUTO", "TIMING_KEYS"]

BACKWARD, FORWARD = BACKWARD_V3, FORWARD_V3
INPUT_SLOTS, INT_ARRAY_SLOTS, OUTPUT_SLOTS = BACKWARD.inputs, BACKWARD.int_arrays, BACKWARD.outputs
OUTPUT_LIKE = dict(BACKWARD.output_like)
FWD_INPUT_SLOTS, FWD_OUTPUT_SLOTS = FORWARD.inputs, FORWARD.outputs
TIMING_KEYS = executor.TIMING_KEYS
_RESULTS = {BACKWARD.key: FagGrads, FORWARD.key: FagForward}   # what each op returns


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO = _Auto()   # call_raw output default: the op's own output shape (see _auto_outputs)


def check_device_arrays(arrays: Mapping[str, object], dev: int) -> None:
    """ValueError when a DeviceArray lives on another device than the call's."""
    for name, arr in arrays.items():
        if arr is not None and isinstance(arr, DeviceArray) and arr.device_id != dev:
            raise ValueError(f"parameter '{name}': the device array is on device {arr.device_id}, "
                             f"but the call runs on device {dev}; pass device_id={arr.device_id} "
                             "or copy the array to that device")


def _shape(x) -> tuple:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _auto_outputs(op: OpVersion, inputs: Mapping[str, object]) -> Dict[str, Optional[tuple]]:
    """Output slot -> (shape, dtype, None) of the buffer the call allocates, or None (NULL).
    The backward's gradients are bf16 shaped like their inputs (``output_like``; dpse NULL);
    the forward's are the [T1, N1, 8] float32 statistics, an empty softmax_out (torch_npu
    passes one) and the bf16 [T1, N1, Dv] attention_out."""
    if op is FORWARD:
        q, v = inputs.get("query"), inputs.get("value")
        qs, vs = (() if q is None else _shape(q)), (() if v is None else _shape(v))
        if len(qs) < 2 or len(vs) < 1:
            return dict.fromkeys(op.outputs)
        stats = ((qs[0], qs[1], 8), np.dtype(np.float32), None)
        return {"softmax_max": stats, "softmax_sum": stats, "softmax_out": ((0,), BF16, None),
                "attention_out": ((qs[0], qs[1], vs[-1]), BF16, None)}
    out = {}
    for name in op.outputs:
        src = inputs.get(op.output_like.get(name, ""))
        out[name] = None if src is None else (_shape(src), BF16, None)
    return out


# --------------------------------------------------------------------------- one call
def _release_on_exit(stack: contextlib.ExitStack, resource) -> None:
    """Release ``resource`` when ``stack`` unwinds; a failed release warns
    (ResourceReleaseWarning, the handle kept for shutdown) instead of raising."""
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
    """When ``stack`` unwinds: ``arena`` back to :mod:`.call_pool` after success, freed
    after an error."""
    def _exit(exc_type, exc, tb):
        (call_pool.give if exc_type is None else call_pool.discard)(arena)
        return False
    stack.push(_exit)


def execute(op: OpVersion, inputs: Mapping[str, object], int_arrays: Mapping[str, object],
            attrs: Mapping[str, object], outputs: Mapping[str, object], *,
            deterministic: Optional[bool], device_id: Optional[int], stream=None,
            keep_on_device: bool = False, public: bool = True,
            timer: executor.Timer = executor.Timer(), out_params=(True, True)
            ) -> Dict[str, object]:
    """Run one call. ``inputs``: slot -> numpy array / DeviceArray / None; ``int_arrays``:
    slot -> sequence / None; ``outputs``: slot -> None, a DeviceArray (written in place) or
    (shape, dtype, initial host array or None). Returns slot -> host array (None for NULL
    outputs), or with ``keep_on_device`` slot -> DeviceArray (nothing downloaded).

    ``stream`` None: this thread's own stream, synchronised. A caller's stream only gets
    the launch when every input is device-resident and ``keep_on_device`` is set;
    otherwise it is synchronised before the results are read. ``public``: the executor
    cache, the package mask's device copy and the memory pool are used (``call_raw``:
    none of them; ``out_params`` may then pass NULL out-parameters to phase 1)."""
    # Python-level argument checks first: nothing native exists yet when they fail.
    attr_values = executor.attr_values(op, attrs)
    int_values = tuple(None if int_arrays.get(n) is None else int64_values(n, int_arrays[n])
                       for n in op.int_arrays)
    dev = runtime.resolve_device(device_id)
    check_device_arrays(inputs, dev)
    check_device_arrays(outputs, dev)
    with runtime.operation():
        runtime.ensure_device(dev if device_id is not None else None)
        handle = runtime.resolve_stream(stream) if stream is not None else runtime.stream(dev)
        enqueue_only = (stream is not None and keep_on_device
                        and all(v is None or isinstance(v, DeviceArray) for v in inputs.values()))
        ok = False
        stack = contextlib.ExitStack()
        try:
            # one outer atomic block: the blocks inside it nest (no signal calls); nothing
            # in it waits in Python (the waits are native calls, which hold SIGINT anyway)
            with ownership.atomic():
                in_list, out_list, made = _device_arrays(op, inputs, outputs, dev, stack,
                                                         keep_on_device, public, timer)

                def workspace_of(nbytes: int, cached: bool) -> int:
                    with timer("alloc"):
                        if enqueue_only:
                            return runtime.stream_workspace(dev, handle, nbytes).ptr
                        ws = (call_pool.take(nbytes, dev) if public
                              else runtime.DeviceBuffer(nbytes, dev))
                        (_pool_on_exit if public else _release_on_exit)(stack, ws)
                        return ws.ptr

                launch = executor.Launch(op, dev, deterministic, attr_values, int_values,
                                         in_list, out_list, cache=public, out_params=out_params)
                executor.run(launch, handle, workspace_of, sync=not enqueue_only, timer=timer)
            result = dict(zip(op.outputs, out_list))
            if keep_on_device:
                for name in made:       # each result holds a share of the outputs' arena
                    da = result[name]
                    if da.size:
                        da.buffer.arena.share(da.buffer)
            else:
                with timer("copy_out"):
                    result = {n: None if da is None else da.numpy() for n, da in result.items()}
            ok = True
        finally:
            with ownership.atomic():
                if ok:
                    stack.close()
                else:       # the callbacks that release only on errors must see one
                    stack.__exit__(RuntimeError, RuntimeError("the call failed"), None)
    return result


def _device_arrays(op: OpVersion, inputs, outputs, dev: int, stack, keep_on_device: bool,
                   public: bool, timer):
    """(inputs, outputs, names of the outputs allocated here): one DeviceArray or None per
    slot. Host inputs are uploaded and the outputs to allocate placed in one allocation
    (the outputs one of their own with ``keep_on_device``, owned by the results); its
    release is registered on ``stack``."""
    if public and type(inputs.get("atten_mask")) is np.ndarray:
        # the package's own compressed mask: one device copy per device (.device_constants)
        shared = device_constants.package_mask(inputs["atten_mask"], dev)
        if shared is not None:
            inputs = dict(inputs, atten_mask=shared)
    host = [n for n in op.inputs if inputs.get(n) is not None
            and not isinstance(inputs[n], DeviceArray)]
    made = [n for n in op.outputs if outputs.get(n) is not None
            and not isinstance(outputs[n], DeviceArray)]
    dev_in = {n: inputs.get(n) for n in op.inputs}
    dev_out = {n: outputs.get(n) for n in op.outputs}
    if host or made:
        with ownership.atomic():
            mem = call_memory([inputs[n] for n in host], [outputs[n] for n in made], dev,
                              timer.timings, results_apart=keep_on_device, pooled=public)
            for arena in mem.arenas:
                (_pool_on_exit if public else _release_on_exit)(stack, arena)
            for arena in mem.result_arenas:
                _release_on_error(stack, arena)
        dev_in.update(zip(host, mem.inputs))
        dev_out.update(zip(made, mem.outputs))
    return list(dev_in.values()), list(dev_out.values()), made


# --------------------------------------------------------------------------- validated calls
def _run(op: OpVersion, call, given: Optional[Mapping[str, object]], device_id, stream,
         keep_on_device: bool, timer: executor.Timer):
    """A validated call (FagCall / FwdCall) of ``op``: its results in ``op``'s result type."""
    inputs = {n: getattr(call, n, None) for n in op.inputs}
    auto = _auto_outputs(op, inputs)
    attrs = {n: getattr(call, n) for n in op.attrs}
    int_arrays = {n: device_int_array(call, n) for n in op.int_arrays}   # the device's ends
    if not keep_on_device and not given and host_path.eligible(list(inputs.values())):
        res = host_path.run(op, list(inputs.values()),
                            [None if s is None else s[:2] for s in auto.values()],
                            device_id, stream, bool(call.deterministic),
                            executor.attr_values(op, attrs),
                            tuple(None if v is None else int64_values(n, v)
                                  for n, v in int_arrays.items()), timer)
        res = dict(zip(op.outputs, res))
    else:
        outputs = {n: (given or {}).get(n) if (given or {}).get(n) is not None else auto[n]
                   for n in op.outputs}
        res = execute(op, inputs, int_arrays, attrs, outputs,
                      deterministic=bool(call.deterministic), device_id=device_id,
                      stream=stream, keep_on_device=keep_on_device, timer=timer)
    result_type = _RESULTS[op.key]
    return result_type(*(res[n] for n in result_type._fields))


def run_backward(call: FagCall, *, device_id: Optional[int] = None,
                 timings: Optional[dict] = None, outputs: Optional[Mapping[str, object]] = None,
                 keep_on_device: bool = False, stream=None, cpu_timings: bool = False) -> FagGrads:
    """Run aclnnFlashAttentionUnpaddingScoreGradV3 for a validated call on the NPU.

    ``outputs``: slot (dq, dq_rope, dk, dk_rope, dv) -> DeviceArray to write into (others
    are allocated). ``keep_on_device``: return FagGrads of DeviceArrays instead of
    downloading. ``stream``: a caller's aclrtStream (int or an object with ``npu_stream``);
    with device-resident inputs and ``keep_on_device`` the call only enqueues.

    ``device_id`` None means ``$ACLNN_FAG_DEVICE`` or 0. ``timings`` (a dict) receives host
    seconds: "marshal" (aclTensor/aclIntArray creation and destruction), "phase1", "phase2"
    (launch + aclrtSynchronizeStream), "copy_in", "copy_out", "alloc" (device allocations);
    ``cpu_timings`` adds the thread's CPU seconds as "<key>_cpu".
    Errors raise the status code's exception class with aclGetRecentErrMsg text.
    """
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
    """Run aclnnFlashAttentionVarLenScoreV3 for a validated FwdCall on the NPU.

    Returns FagForward(attention_out bf16 [T1, N1, Dv], softmax_max, softmax_sum float32
    [T1, N1, 8]) exactly as the device wrote them: the statistics in the device layout
    (per batch [N1, Sq_b, 8] blocks), ready for the backward. ``timings``, ``outputs``
    (slot attention_out / softmax_max / softmax_sum -> DeviceArray to write into),
    ``keep_on_device`` and ``stream``: as run_backward.
    """
    _require(FORWARD)
    return _run(FORWARD, call, outputs, device_id, stream, keep_on_device,
                executor.Timer(timings))


# --------------------------------------------------------------------------- raw calls
_RAW_EXTRAS = (("workspace_size_out", True), ("executor_out", True), ("deterministic", False),
               ("device_id", None), ("timings", None))


def _raw_signature(op: OpVersion) -> inspect.Signature:
    """Every C parameter of ``op`` as a keyword (tensors and int arrays None, attributes the
    spec's defaults, outputs AUTO when the call can shape them else None), then the extras."""
    dummy = np.empty((1, 1))
    auto = {n for n, s in _auto_outputs(op, dict.fromkeys(op.inputs, dummy)).items()
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
    """One output of :func:`execute`: ``auto_slot`` for AUTO, None for no output, else the
    caller's array as (shape, dtype, array)."""
    if spec is AUTO:
        return auto_slot
    if spec is None:
        return None
    a = np.asarray(spec)
    return (a.shape, a.dtype, a)


def _call_raw(op: OpVersion, args: Mapping[str, object]):
    _require(op)
    inputs = {n: args[n] for n in op.inputs}
    attrs = {n: args[n] for n in op.attrs}
    if attrs["head_num"] is None:
        shape = _shape(inputs["query"]) if inputs["query"] is not None else ()
        attrs["head_num"] = shape[1] if len(shape) >= 2 else 0
    auto = _auto_outputs(op, inputs)
    outputs = {n: _output_slot(args[n], auto[n]) for n in op.outputs}
    res = execute(op, inputs, {n: args[n] for n in op.int_arrays}, attrs, outputs,
                  deterministic=args["deterministic"], device_id=args["device_id"],
                  public=False, timer=executor.Timer(args["timings"]),
                  out_params=(bool(args["workspace_size_out"]), bool(args["executor_out"])))
    result_type = _RESULTS[op.key]
    return result_type(*(res[n] for n in result_type._fields))


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
