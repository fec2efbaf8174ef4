"""A reusable executor for data that stays on the device, :class:`FagPlan`: phase 1 once,
phase 2 per run; swapped buffers repointed, else the executor rebuilt (docs/npu.md)."""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Dict, List, Optional

from ..call import FagGrads, device_int_array
from ..constants import BF16
from . import exec_cache, executor, ownership, runtime
from .device import DeviceArray, as_device_array, upload_arrays
from .op import BACKWARD, check_device_arrays
from .runtime import DeviceBuffer, recent_message, refuse_pickle, status_error
from .tensors import HandleBatch, int64_values

__all__ = ["FagPlan", "FagExecutor", "ResultBuffer", "register_validator"]

_OUT_SLOTS = FagGrads._fields                      # dq .. dv (dpse: NULL)
_validator: List[Callable] = []


def register_validator(fn: Callable) -> None:
    """``fn(inputs, int_values, attrs, deterministic, check_data)`` raises for an invalid
    plan (``FagPlan(validate=True)``; aclnn_fag.device_run registers the public rules)."""
    _validator[:] = [fn]


class ResultBuffer(DeviceBuffer):
    """The caller's handle on a plan's output buffer ``real``; ``free()`` frees it now."""

    def __init__(self, real: DeviceBuffer) -> None:   # no allocation
        self.real = real
        self.device_id = real.device_id
        self.nbytes = real.nbytes

    @property
    def ptr(self) -> Optional[int]:
        return self.real.ptr

    @property
    def released(self) -> bool:
        return self.real.released

    def release(self, mode: str = "raise") -> None:
        self.real.release(mode)

    def __repr__(self) -> str:
        return f"<ResultBuffer of {self.real!r}>"


class _PlanState:
    """Everything native a plan owns (no reference back to the plan, for the finalizer)."""

    def __init__(self) -> None:
        self.executor: Optional[executor.Executor] = None
        self.batch: Optional[HandleBatch] = None       # the aclTensors and aclIntArrays
        self.handles: Dict[str, list] = {}             # "in" / "ints" / "out" -> handles
        self.workspace: Optional[DeviceBuffer] = None
        self.owned: List[DeviceBuffer] = []
        self.results: Dict[str, DeviceBuffer] = {}     # output slot -> the plan's buffer
        self.handed: Dict[str, weakref.ref] = {}       # ... -> the last ResultBuffer over it
        self.streams: Dict[int, int] = {}    # caller streams with queued runs -> device

    def held(self, slot: str) -> bool:
        ref = self.handed.get(slot)
        return ref is not None and ref() is not None

    def wait_for_streams(self) -> None:
        """Synchronise the caller's streams that may still run this plan's work (errors
        ignored: the stream may be gone)."""
        streams, self.streams = self.streams, {}
        for handle, dev in streams.items():
            try:
                b = runtime.ensure_device(dev)
                if b.aclrtSynchronizeStream(handle):
                    recent_message(b)
            except Exception:
                pass

    def close(self, strict: bool = True) -> None:
        self.wait_for_streams()
        errors = []
        # outputs a live result holds are the caller's now: only dropped here
        unheld = [buf for n, buf in self.results.items() if not self.held(n)]
        resources = [self.executor, self.batch, self.workspace] + self.owned + unheld
        self.executor, self.batch, self.handles = None, None, {}
        self.workspace, self.owned, self.results, self.handed = None, [], {}, {}
        for res in resources:        # executor first, then handles, then memory
            if res is None:
                continue
            try:
                res.release("raise" if strict else "warn")
            except Exception as exc:
                errors.append(exc)
        if errors and strict:
            raise errors[0]


def _same_view(a: DeviceArray, b: DeviceArray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype and a.strides == b.strides
            and a.offset == b.offset)


class FagPlan(runtime.Closing):
    """Phase 1 once, phase 2 per :meth:`run`. Tensors: DeviceArrays (used in place) or numpy
    (uploaded once); outputs: a DeviceArray to write into, or None (the plan allocates it)."""

    __reduce_ex__ = refuse_pickle     # its executor and buffers live in this process

    def __init__(self, *, query, query_rope, key, key_rope, value, dy, atten_mask, softmax_max,
                 softmax_sum, attention_in, actual_seq_qlen, actual_seq_kvlen, scale_value,
                 keep_prob=1.0, pre_tokens=BACKWARD.param("pre_tokens").default,
                 next_tokens=BACKWARD.param("next_tokens").default, head_num=None,
                 input_layout="TND", inner_precise=0, sparse_mode=0, pse_type=1, pse_shift=None,
                 drop_mask=None, padding_mask=None, softmax_in=None, prefix=None,
                 q_start_idx=None, kv_start_idx=None, dq=None, dq_rope=None, dk=None,
                 dk_rope=None, dv=None, deterministic: Optional[bool] = False,
                 device_id: Optional[int] = None, repeatable: bool = True,
                 repoint: bool = True, validate: bool = True, check_data: bool = True) -> None:
        args = dict(locals())
        self._lock = threading.RLock()
        self._state = _PlanState()
        self._finalizer = weakref.finalize(self, ownership.run_finalizer, self._state.close,
                                          False)
        self.device_id = runtime.resolve_device(device_id)
        self.deterministic = deterministic
        self.want_repeatable = bool(repeatable)
        self.repoint_enabled = bool(repoint)
        self.repeatable = False
        self.repeatable_reason = "phase 1 has not run"
        self.phase1_runs = self.phase2_runs = self.repoints = 0
        self._ws_size = 0
        given = {n: as_device_array(n, args[n]) for n in BACKWARD.inputs}
        outs_given = {n: as_device_array(n, args[n]) for n in _OUT_SLOTS}
        # start indices are never NULL: [0] unless given (docs/forward.md, "Start indices")
        self._int_values = {n: (0,) if args[n] is None and n.endswith("start_idx") else args[n]
                            for n in BACKWARD.int_arrays}
        if head_num is None:
            shape = getattr(query, "shape", ())
            args["head_num"] = shape[1] if len(shape) >= 2 else 0
        self._attrs = {n: args[n] for n in BACKWARD.attrs}
        check_device_arrays(given.items(), self.device_id)
        check_device_arrays(outs_given.items(), self.device_id)
        with runtime.operation():     # one context check for the construction
            try:
                runtime.ensure_device(self.device_id if device_id is not None else None)
                host = [n for n in BACKWARD.inputs if given[n] is not None
                        and not isinstance(given[n], DeviceArray)]
                uploaded = upload_arrays([given[n] for n in host], self.device_id)
                self._state.owned.extend({id(d.buffer): d.buffer for d in uploaded}.values())
                self._inputs: Dict[str, Optional[DeviceArray]] = dict(given)
                self._inputs.update(zip(host, uploaded))
                if validate:
                    if not _validator:
                        raise RuntimeError("no plan validator is registered (import aclnn_fag)")
                    _validator[0](self._inputs, self._int_values, self._attrs,
                                  bool(self.deterministic), check_data)
                self._outputs: Dict[str, Optional[DeviceArray]] = {}
                for n, out in outs_given.items():
                    if out is None:
                        src = self._inputs[BACKWARD.output_like[n]]
                        if src is not None:
                            # zeros: the op may leave parts of an output unwritten (docs/faults.md)
                            out = DeviceArray.zeros(src.shape, BF16, self.device_id)
                            self._state.results[n] = out.buffer
                    elif not isinstance(out, DeviceArray):
                        raise TypeError(f"output {n!r} must be a DeviceArray or None")
                    self._outputs[n] = out
                hold = runtime.DeterminismHold(self.device_id, self.deterministic)
                try:
                    hold.acquire()
                    self._build()
                finally:
                    hold.release()
            except BaseException:
                self._state.close(strict=False)
                raise

    @classmethod
    def from_call(cls, call, *, device_id: Optional[int] = None, repeatable: bool = True,
                  repoint: bool = True) -> "FagPlan":
        """A plan for a validated FagCall (not validated again)."""
        kw = {n: getattr(call, n, None) for n in BACKWARD.inputs + BACKWARD.attrs}
        kw.update({n: device_int_array(call, n) for n in BACKWARD.int_arrays})  # device's ends
        return cls(**kw, deterministic=bool(call.deterministic), device_id=device_id,
                   repeatable=repeatable, repoint=repoint, validate=False)

    # ------------------------------------------------------------------ properties
    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("the plan is closed")

    @property
    def inputs(self) -> Dict[str, Optional[DeviceArray]]:
        return dict(self._inputs)

    @property
    def outputs(self) -> FagGrads:
        """The last run's results, as ``run()`` returned them."""
        with self._lock:
            self._check_open()
            return self._results()

    def _results(self) -> FagGrads:
        """New DeviceArrays over a ResultBuffer for the plan's buffers (the one handed out last
        while it lives); the caller's own arrays as they are."""
        st = self._state
        out = []
        for n in _OUT_SLOTS:
            arr, real = self._outputs[n], st.results.get(n)
            if real is None:
                out.append(arr)
                continue
            rb = st.handed[n]() if n in st.handed else None
            if rb is None or rb.real is not real:
                rb = ResultBuffer(real)
                st.handed[n] = weakref.ref(rb)
            out.append(arr.rebased(rb))
        return FagGrads(*out)

    @property
    def workspace_size(self) -> int:
        ws = self._state.workspace
        return 0 if ws is None else ws.nbytes

    # ------------------------------------------------------------------ internals
    def _build(self) -> None:
        """Phase 1 with the current arrays (the caller holds the determinism option); the
        handles are made again only after a swap the executor could not take."""
        b = runtime.api()
        st = self._state
        if st.batch is None:
            ints = [None if v is None else int64_values(n, v)
                    for n, v in self._int_values.items()]
            with ownership.atomic():
                st.batch = HandleBatch()
                in_h = st.batch.tensors([self._inputs[n] for n in BACKWARD.inputs])
                ia_h = st.batch.int_arrays(ints)
                out_h = st.batch.tensors([self._outputs[n] for n in _OUT_SLOTS]) + [None]
            st.handles = {"in": in_h, "ints": ia_h, "out": out_h}
        try:
            ex, ws_size = executor.phase1(b, BACKWARD, st.handles["in"], st.handles["ints"],
                                          executor.attr_values(BACKWARD, self._attrs),
                                          st.handles["out"])
        finally:
            self.phase1_runs += 1
        if ex is None:
            raise status_error(b, 561103, BACKWARD.phase1,
                               rule="phase 1 succeeded but returned no executor")
        st.executor = ex
        self.repeatable = False
        if not self.want_repeatable:
            self.repeatable_reason = "not requested (repeatable=False)"
        else:
            why = executor.make_repeatable(b, ex)
            self.repeatable = why is None
            self.repeatable_reason = why or "repeatable"
        if ws_size > self.workspace_size:
            old, st.workspace = st.workspace, None
            if old is not None:
                old.release()
            st.workspace = DeviceBuffer(ws_size, self.device_id)
        self._ws_size = ws_size

    def _repoint(self, b, changes: Dict[tuple, DeviceArray]) -> bool:
        """Point the repeatable executor at new buffers; False when that is not possible."""
        if (not self.repoint_enabled or b.aclSetInputTensorAddr is None
                or b.aclSetOutputTensorAddr is None):
            return False
        for (kind, name), arr in changes.items():
            handles = self._state.handles[kind]
            at = (BACKWARD.inputs if kind == "in" else _OUT_SLOTS).index(name)
            index = sum(h is not None for h in handles[:at])    # among the non-NULL ones
            if not executor.set_address(b, kind == "out", self._state.executor, index,
                                        handles[at], arr.buffer.ptr):
                return False
            self.repoints += 1
        return True

    def _changes(self, arrays: Dict[str, object]) -> Dict[tuple, DeviceArray]:
        """The swaps of one run, checked: ("in" / "out", slot) -> the new array."""
        changes: Dict[tuple, DeviceArray] = {}
        for name, arr in arrays.items():
            if name in BACKWARD.inputs:
                key, cur = ("in", name), self._inputs[name]
            elif name in _OUT_SLOTS:
                key, cur = ("out", name), self._outputs[name]
            else:
                raise TypeError(f"unknown tensor slot {name!r}")
            if not isinstance(arr, DeviceArray):
                raise TypeError(f"{name} must be a DeviceArray")
            check_device_arrays([(name, arr)], self.device_id)
            if cur is None or not _same_view(cur, arr):
                raise ValueError(f"{name}: a replacement must match the planned array "
                                 f"({cur!r}), got {arr!r}")
            if arr.closed:
                raise ValueError(f"{name}: the device array has been freed")
            if arr is not cur:
                changes[key] = arr
        for name, arr in self._inputs.items():
            if arr is not None and arr.closed:
                raise ValueError(f"{name}: the device array has been freed")
        return changes

    # ------------------------------------------------------------------ public
    def run(self, stream=None, **arrays: DeviceArray) -> FagGrads:
        """Phase 2 + sync (phase 1 first when needed): FagGrads of new DeviceArrays. Keywords
        swap device arrays of the same view into slots; with a caller's ``stream`` phase 2
        is only enqueued (docs/npu.md)."""
        arrays = {n: as_device_array(n, a) for n, a in arrays.items()}
        with self._lock, runtime.operation():
            self._check_open()
            changes = self._changes(arrays)
            st = self._state
            fresh = set()
            for name, arr in self._outputs.items():
                real = st.results.get(name)
                if arr is None or ("out", name) in changes:
                    continue
                if real is None:
                    if arr.closed:
                        raise ValueError(f"{name}: the device array has been freed")
                elif st.held(name) or real.closed:     # a result holds it: a fresh one
                    changes["out", name] = DeviceArray.zeros(arr.shape, arr.dtype,
                                                               self.device_id)
                    fresh.add(name)
            b = runtime.ensure_device(self.device_id)
            handle = (runtime.resolve_stream(stream) if stream is not None
                      else runtime.stream(self.device_id))
            hold = None     # held only when this run runs phase 1 (docs/abi.md §6)
            try:
                if changes:
                    self._apply(b, changes, fresh)
                if st.executor is None:
                    hold = runtime.DeterminismHold(self.device_id, self.deterministic)
                    hold.acquire()
                    self._build()
                ex, ws = st.executor, st.workspace
                with ownership.atomic():
                    if not self.repeatable:
                        st.executor = None     # the library's once phase 2 is entered
                    try:
                        executor.phase2(b, BACKWARD, ex, None if ws is None else ws.ptr,
                                        self._ws_size, handle, self.repeatable)
                    finally:
                        self.phase2_runs += 1
                if stream is not None:
                    st.streams[handle] = self.device_id
                else:
                    runtime.check(b, b.aclrtSynchronizeStream(handle), "aclrtSynchronizeStream")
            finally:
                if hold is not None:
                    hold.release()
            return self._results()

    def _forget(self, strict: bool) -> None:
        """The executor and the handles go (made again by the next phase 1)."""
        st = self._state
        ex, batch, st.executor, st.batch = st.executor, st.batch, None, None
        exec_cache.release_handles(ex, batch, "raise" if strict else "warn")

    def _apply(self, b, changes: Dict[tuple, DeviceArray], fresh) -> None:
        """Point the plan at the changed arrays (``fresh``: output slots whose new array the
        plan allocated): repoint the executor, else forget it; then record them. A replaced
        buffer of the plan's is kept until close (queued work may still write it)."""
        st = self._state
        try:
            if not (st.executor is not None and self.repeatable and self._repoint(b, changes)):
                self._forget(strict=True)
            with ownership.atomic():       # the record: one step for SIGINT
                for (kind, name), arr in changes.items():
                    if kind == "in":
                        self._inputs[name] = arr
                        continue
                    old = st.results.pop(name, None)
                    if old is not None and not (name in fresh or st.held(name) or old.closed):
                        st.owned.append(old)   # the caller swapped in their own array
                    if name in fresh:
                        st.results[name] = arr.buffer
                    self._outputs[name] = arr
        except BaseException:
            self._forget(strict=False)
            raise

    def grads(self) -> FagGrads:
        """The outputs of the last run copied to the host (None for absent ones)."""
        with self._lock:
            self._check_open()
            return FagGrads(*(None if d is None else d.numpy()
                              for d in (self._outputs[n] for n in _OUT_SLOTS)))

    def close(self) -> None:
        """Destroy the executor (if any), the tensors and int arrays, free owned memory."""
        with self._lock:
            if self._finalizer.detach() is not None:
                self._inputs = dict.fromkeys(self._inputs)
                self._outputs = dict.fromkeys(self._outputs)
                self._state.close(strict=True)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("repeatable" if self.repeatable else "one-shot")
        return (f"<FagPlan device={self.device_id} {state} phase1_runs={self.phase1_runs} "
                f"phase2_runs={self.phase2_runs}>")


FagExecutor = FagPlan
