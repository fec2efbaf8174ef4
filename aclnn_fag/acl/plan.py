"""A reusable executor for data that stays on the device: :class:`FagPlan`.

Phase 1 runs once; when ``aclSetAclOpExecutorRepeatable`` exists and returns 0 the
executor is kept and every :meth:`FagPlan.run` is one phase 2 (+ sync).  New device
buffers can be swapped in between runs (``plan.run(query=new_q, dq=new_dq)``) through
``aclSetInputTensorAddr`` / ``aclSetOutputTensorAddr``; a replacement must have the
same shape, dtype, strides and offset as the array it replaces.

Fallbacks (never an error):

* the symbol is missing or returns non-zero: the executor is one-shot; each run after
  the first runs phase 1 again (``plan.repeatable`` is False, ``plan.repeatable_reason``
  says why);
* the address setters are missing or one returns non-zero: the executor is destroyed
  and rebuilt (phase 1) with new tensors for the swapped buffers.

The input index passed to the address setters is the position among the **non-NULL**
tensor inputs in parameter order (query, queryRope, keyIn, keyInRope, value, dy,
pseShift, dropMask, paddingMask, attenMask, softmaxMax, softmaxSum, softmaxIn,
attentionIn), the outputs likewise (dq, dqRope, dk, dkRope, dv, dpse). This op's
executor ignores the index and reads the address stored in the aclTensor (docs/abi.md
§2b); pass ``repoint=False`` to always rebuild instead.

Results never alias (``aclnn_fag.acl.results``): each run returns new DeviceArray
objects; an output the plan allocated is handed to the caller when a result of it is still
alive at the next run (which then writes into a fresh zero-filled buffer, repointing the
executor or running phase 1 again), and it outlives ``close()`` and garbage collection of
the plan. Output arrays the caller passed in (``dq=...``, at construction or to ``run``)
are written by every later run and returned as they are.

The plan owns its executor, tensors, int arrays, workspace and the buffers it
allocated (uploads of numpy inputs, outputs no live result holds); ``close()`` / the
context manager / garbage collection release them, the executor first.  Device arrays
passed in by the caller stay the caller's.  A plan is bound to one device and is not meant
for concurrent use (runs are serialised by a lock).
"""

from __future__ import annotations

import threading
import weakref
from ctypes import byref, c_double, c_int64, c_uint64, c_void_p
from typing import Dict, List, Optional

import numpy as np

from ..call import INT32_MAX, FagGrads
from . import ownership, results, runtime
from ._status import recent_message, status_error
from .device import DeviceArray, upload_arrays
from .op import (INPUT_SLOTS, INT_ARRAY_SLOTS, OUTPUT_LIKE, OUTPUT_SLOTS, _Executor, _layout_arg,
                 check_device_arrays)
from .prototypes import PHASE1, PHASE2
from .tensors import AclIntArray, AclTensor
from ..constants import BF16

__all__ = ["FagPlan", "FagExecutor"]

_OUT_SLOTS = tuple(s for s in OUTPUT_SLOTS if s != "dpse")


class _PlanState:
    """Everything native a plan owns (no reference back to the plan, for the finalizer)."""

    def __init__(self) -> None:
        self.executor: Optional[_Executor] = None
        self.tensors: Dict[str, AclTensor] = {}
        self.int_arrays: List[AclIntArray] = []
        self.workspace: Optional[runtime.DeviceBuffer] = None
        self.owned: List[runtime.DeviceBuffer] = []
        # output slot -> the buffer the plan allocated for it; the FagGrads the last run
        # returned over them (aclnn_fag/acl/results.py)
        self.results: Dict[str, runtime.DeviceBuffer] = {}
        self.last: Optional[results.LastResults] = None
        self.streams: Dict[int, int] = {}    # caller streams with queued runs -> device

    def wait_for_streams(self) -> None:
        """Synchronise the caller's streams that may still run this plan's work (before its
        memory is released); errors (e.g. a stream destroyed meanwhile) are ignored."""
        streams, self.streams = self.streams, {}
        for handle, dev in streams.items():
            try:
                b = runtime.ensure_device(dev)
                if b.aclrtSynchronizeStream(handle):
                    recent_message(b)
            except Exception:
                pass

    def drop_executor(self, strict: bool = True) -> None:
        ex, self.executor = self.executor, None
        if ex is not None:
            try:
                ex.release()
            except Exception:
                if strict:
                    raise

    def close(self, strict: bool = True) -> None:
        self.wait_for_streams()
        errors = []
        # outputs a live result holds are the caller's now: only dropped here
        held = dict(zip(_OUT_SLOTS, self.last.held())) if self.last is not None else {}
        unheld = [buf for n, buf in self.results.items() if not held.get(n)]
        resources = ([self.executor] + list(self.tensors.values()) + self.int_arrays
                     + [self.workspace] + self.owned + unheld)
        self.executor = None
        self.tensors = {}
        self.int_arrays = []
        self.workspace = None
        self.owned = []
        self.results = {}
        self.last = None
        for res in resources:        # executor first, then handles, then memory
            if res is None:
                continue
            try:
                res.release("raise" if strict else "warn")
            except Exception as exc:
                errors.append(exc)
        if errors and strict:
            raise errors[0]


def _as_device_or_host(name: str, a):
    """NPU tensors (the protocol of ``aclnn_fag.operands``) become DeviceArrays over their
    memory; anything else is returned unchanged."""
    if a is not None and not isinstance(a, (DeviceArray, np.ndarray)):
        from ..operands import NPU, _npu_to_device_array, kind_of
        if kind_of(a) == NPU:
            return _npu_to_device_array(name, a)
    return a


def _same_view(a: DeviceArray, b: DeviceArray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype and a.strides == b.strides
            and a.offset == b.offset)


class FagPlan:
    """Phase 1 once, phase 2 per :meth:`run`, on device-resident arrays (see module doc).

    Tensor arguments: :class:`DeviceArray` (used in place, stays the caller's) or numpy
    (uploaded once, owned by the plan; views of one host array share one upload). Outputs
    ``dq``...``dv``: a DeviceArray to write into, or None to let the plan allocate bf16
    arrays shaped like the matching inputs. Attributes mirror the op; no Python validation
    (phase 1 reports invalid arguments with its status code).
    """

    def __init__(self, *, query, query_rope, key, key_rope, value, dy, atten_mask, softmax_max,
                 softmax_sum, attention_in, actual_seq_qlen, actual_seq_kvlen, scale_value,
                 keep_prob=1.0, pre_tokens=INT32_MAX, next_tokens=INT32_MAX, head_num=None,
                 input_layout="TND", inner_precise=0, sparse_mode=0, pse_type=1, pse_shift=None,
                 drop_mask=None, padding_mask=None, softmax_in=None, prefix=None,
                 q_start_idx=None, kv_start_idx=None, dq=None, dq_rope=None, dk=None,
                 dk_rope=None, dv=None, deterministic: Optional[bool] = False,
                 device_id: Optional[int] = None, repeatable: bool = True,
                 repoint: bool = True, validate: bool = True, check_data: bool = True) -> None:
        self._lock = threading.RLock()
        self._state = _PlanState()
        self._finalizer = weakref.finalize(self, self._state.close, False)
        self.device_id = runtime.resolve_device(device_id)
        self.deterministic = deterministic
        self.want_repeatable = bool(repeatable)
        self.repoint_enabled = bool(repoint)
        self.repeatable = False
        self.repeatable_reason = "phase 1 has not run"
        self.phase1_runs = 0
        self.phase2_runs = 0
        self.repoints = 0
        self._int_handles: Optional[Dict[str, Optional[int]]] = None
        self._ws_size = 0
        given = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value,
                     dy=dy, pse_shift=pse_shift, drop_mask=drop_mask, padding_mask=padding_mask,
                     atten_mask=atten_mask, softmax_max=softmax_max, softmax_sum=softmax_sum,
                     softmax_in=softmax_in, attention_in=attention_in)
        given = {n: _as_device_or_host(n, a) for n, a in given.items()}
        outs_given = {n: _as_device_or_host(n, a) for n, a in
                      (("dq", dq), ("dq_rope", dq_rope), ("dk", dk), ("dk_rope", dk_rope),
                       ("dv", dv))}
        dq, dq_rope, dk, dk_rope, dv = (outs_given[n] for n in _OUT_SLOTS)
        # start indices are never NULL: [0] unless given (docs/forward.md, "Start indices")
        self._int_values = dict(prefix=prefix, actual_seq_qlen=actual_seq_qlen,
                                actual_seq_kvlen=actual_seq_kvlen,
                                q_start_idx=(0,) if q_start_idx is None else q_start_idx,
                                kv_start_idx=(0,) if kv_start_idx is None else kv_start_idx)
        if head_num is None:
            shape = getattr(query, "shape", ())
            head_num = shape[1] if len(shape) >= 2 else 0
        self._attrs = dict(scale_value=float(scale_value), keep_prob=float(keep_prob),
                           pre_tokens=int(pre_tokens), next_tokens=int(next_tokens),
                           head_num=int(head_num), input_layout=input_layout,
                           inner_precise=int(inner_precise), sparse_mode=int(sparse_mode),
                           pse_type=int(pse_type))
        check_device_arrays(given, self.device_id)
        check_device_arrays(dict(dq=dq, dq_rope=dq_rope, dk=dk, dk_rope=dk_rope, dv=dv),
                            self.device_id)
        with runtime.operation():     # one context check for the construction
            try:
                runtime.ensure_device(self.device_id if device_id is not None else None)
                self._inputs: Dict[str, Optional[DeviceArray]] = {}
                host = [n for n in INPUT_SLOTS if given[n] is not None
                        and not isinstance(given[n], DeviceArray)]
                uploaded = upload_arrays([given[n] for n in host], self.device_id)
                for buf in {id(d.buffer): d.buffer for d in uploaded}.values():
                    self._state.owned.append(buf)
                for n in INPUT_SLOTS:
                    self._inputs[n] = given[n] if isinstance(given[n], DeviceArray) else None
                for n, d in zip(host, uploaded):
                    self._inputs[n] = d
                if validate:
                    self._validate(check_data)
                self._outputs: Dict[str, Optional[DeviceArray]] = {}
                for n, out in (("dq", dq), ("dq_rope", dq_rope), ("dk", dk), ("dk_rope", dk_rope),
                               ("dv", dv)):
                    if out is None:
                        src = self._inputs[OUTPUT_LIKE[n]]
                        if src is not None:
                            # zeros: the op may leave parts of an output unwritten (docs/faults.md)
                            out = DeviceArray.zeros(src.shape, BF16, self.device_id)
                            self._state.results[n] = out.buffer
                    elif not isinstance(out, DeviceArray):
                        raise TypeError(f"output {n!r} must be a DeviceArray or None")
                    self._outputs[n] = out
                hold = runtime.call_hold(self.device_id, self.deterministic)
                try:
                    hold.acquire()
                    self._build()
                finally:
                    hold.release()
            except BaseException:
                self._state.close(strict=False)
                raise

    def _validate(self, check_data: bool) -> None:
        """The public call's rules on the plan's (uploaded) inputs; the data rules read only
        a bounded sample of device memory, or nothing with ``check_data=False``."""
        from ..rules import validate_backward
        i, a = self._inputs, self._attrs
        iv = self._int_values
        validate_backward(
            i["query"], i["query_rope"], i["key"], i["key_rope"], i["value"], i["dy"],
            atten_mask=i["atten_mask"], softmax_max=i["softmax_max"],
            softmax_sum=i["softmax_sum"], attention_in=i["attention_in"],
            actual_seq_qlen=iv["actual_seq_qlen"], actual_seq_kvlen=iv["actual_seq_kvlen"],
            scale_value=a["scale_value"], keep_prob=a["keep_prob"], pre_tokens=a["pre_tokens"],
            next_tokens=a["next_tokens"], head_num=a["head_num"], input_layout=a["input_layout"],
            inner_precise=a["inner_precise"], sparse_mode=a["sparse_mode"],
            pse_type=a["pse_type"], pse_shift=i["pse_shift"], drop_mask=i["drop_mask"],
            padding_mask=i["padding_mask"], softmax_in=i["softmax_in"], prefix=iv["prefix"],
            q_start_idx=iv["q_start_idx"], kv_start_idx=iv["kv_start_idx"],
            deterministic=bool(self.deterministic), check_data=check_data)

    @classmethod
    def from_call(cls, call, *, device_id: Optional[int] = None, repeatable: bool = True,
                  repoint: bool = True) -> "FagPlan":
        """A plan for a validated FagCall (its numpy inputs are uploaded once; not validated
        again)."""
        kw = {n: getattr(call, n, None) for n in INPUT_SLOTS}
        kw.update({n: getattr(call, n, None) for n in INT_ARRAY_SLOTS})
        kw.update(scale_value=call.scale_value, keep_prob=call.keep_prob,
                  pre_tokens=call.pre_tokens, next_tokens=call.next_tokens,
                  head_num=call.head_num, input_layout=call.input_layout,
                  inner_precise=call.inner_precise, sparse_mode=call.sparse_mode,
                  pse_type=call.pse_type)
        return cls(**kw, deterministic=bool(call.deterministic), device_id=device_id,
                   repeatable=repeatable, repoint=repoint, validate=False)

    # ------------------------------------------------------------------ properties
    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def inputs(self) -> Dict[str, Optional[DeviceArray]]:
        return dict(self._inputs)

    @property
    def outputs(self) -> FagGrads:
        """The output device arrays the next run writes into, which hold the last run's
        results (FagGrads of DeviceArray; the same memory as what the last ``run()``
        returned). Holding them makes the next run write into fresh buffers, like holding
        a run's result."""
        with self._lock:
            if self.closed:
                raise ValueError("the plan is closed")
            return self._results()

    def _results(self) -> FagGrads:
        """The outputs as results (aclnn_fag/acl/results.py): the last FagGrads again while
        it is current, else a new one — DeviceArrays over a ResultBuffer for the buffers the
        plan allocated (a slot's previous one when its buffer did not change), the
        caller's own arrays as they are."""
        st = self._state
        last = st.last
        if last is not None and last.current:
            return last.grads
        reuse = {}
        if last is not None:
            for i, n in enumerate(_OUT_SLOTS):
                prev = last.grads[i]
                real = st.results.get(n)
                if real is not None and last.owned[i] and prev.buffer.real is real:
                    reuse[n] = prev
        st.last = results.build(_OUT_SLOTS, self._outputs, st.results, reuse, FagGrads)
        return st.last.grads

    @property
    def workspace_size(self) -> int:
        ws = self._state.workspace
        return 0 if ws is None else ws.nbytes

    # ------------------------------------------------------------------ internals
    def _tensor(self, key: str, arr: Optional[DeviceArray]) -> Optional[int]:
        if arr is None:
            return None
        t = self._state.tensors.get(key)
        if t is None:
            t = AclTensor.from_device_array(arr)
            self._state.tensors[key] = t
        return t.handle

    def _build(self) -> None:
        """Phase 1 with the current arrays (the caller holds the determinism option)."""
        b = runtime.api()
        st = self._state
        if self._int_handles is None:
            self._int_handles = {}
            for n in INT_ARRAY_SLOTS:
                vals = self._int_values[n]
                if vals is None:
                    self._int_handles[n] = None
                    continue
                ia = AclIntArray(vals)
                st.int_arrays.append(ia)
                self._int_handles[n] = ia.handle
        ia_handles = self._int_handles
        in_h = [self._tensor("in:" + n, self._inputs[n]) for n in INPUT_SLOTS]
        out_h = [self._tensor("out:" + n, self._outputs[n]) for n in _OUT_SLOTS] + [None]
        a = self._attrs
        ws_size = c_uint64(0)
        executor = c_void_p(None)
        args = (*in_h, *[ia_handles[n] for n in INT_ARRAY_SLOTS],
                c_double(a["scale_value"]), c_double(a["keep_prob"]), c_int64(a["pre_tokens"]),
                c_int64(a["next_tokens"]), c_int64(a["head_num"]), _layout_arg(a["input_layout"]),
                c_int64(a["inner_precise"]), c_int64(a["sparse_mode"]), c_int64(a["pse_type"]),
                *out_h, byref(ws_size), byref(executor))
        guard = _Executor(b)
        phase1 = getattr(b, PHASE1)
        with ownership.atomic():           # phase 1 and the executor's ownership: one step
            rc = phase1(*args)
            if rc == 0 and executor.value:
                guard.adopt(executor.value)
                st.executor = guard
        runtime._count("phase1")
        self.phase1_runs += 1
        if rc:
            raise status_error(b, rc, PHASE1)
        if not executor.value:
            raise status_error(b, 561103, PHASE1, rule="phase 1 succeeded but returned no executor")
        self.repeatable = False
        if not self.want_repeatable:
            self.repeatable_reason = "not requested (repeatable=False)"
        elif b.aclSetAclOpExecutorRepeatable is None:
            self.repeatable_reason = "aclSetAclOpExecutorRepeatable is not exported by this CANN"
        else:
            rc = b.aclSetAclOpExecutorRepeatable(st.executor.handle)
            if rc == 0:
                self.repeatable = True
                self.repeatable_reason = "repeatable"
            else:
                msg = recent_message(b)
                self.repeatable_reason = (f"aclSetAclOpExecutorRepeatable returned {rc}"
                                          + (f": {msg}" if msg else ""))
        if ws_size.value > (st.workspace.nbytes if st.workspace is not None else 0):
            old, st.workspace = st.workspace, None
            if old is not None:
                old.release()
            st.workspace = runtime.DeviceBuffer(ws_size.value, self.device_id)
        self._ws_size = ws_size.value

    def _repoint(self, b, changes: Dict[str, DeviceArray]) -> bool:
        """Point the repeatable executor at new buffers; False when that is not possible."""
        setters = {"in": b.aclSetInputTensorAddr, "out": b.aclSetOutputTensorAddr}
        if not self.repoint_enabled or None in setters.values():
            return False
        in_index = {n: i for i, n in enumerate(x for x in INPUT_SLOTS if self._inputs[x] is not None)}
        out_index = {n: i for i, n in enumerate(x for x in _OUT_SLOTS if self._outputs[x] is not None)}
        ex = self._state.executor
        for key, arr in changes.items():
            kind, name = key.split(":", 1)
            index = in_index[name] if kind == "in" else out_index[name]
            tensor = self._state.tensors[key]
            rc = setters[kind](ex.handle, index, tensor.handle, arr.buffer.ptr)
            if rc:
                recent_message(b)
                return False
            tensor.data_ptr = arr.buffer.ptr
            self.repoints += 1
        return True

    # ------------------------------------------------------------------ public
    def run(self, stream=None, **arrays: DeviceArray) -> FagGrads:
        """Run the op (phase 2 + sync; phase 1 first when needed) and return the output arrays.

        Keyword arguments swap device arrays in: any input slot (``query``, ``dy``, ...)
        or output slot (``dq``, ...), each with the same shape/dtype/strides/offset as the
        array it replaces. The plan keeps a reference to each array it uses; a swapped-in
        output array is written by this run and every later one.

        Returns FagGrads of new DeviceArray objects. They never alias another run's
        results: an output the plan allocated is not written again while a result of it
        (or a view of one) is alive, and it stays valid after :meth:`close` or garbage
        collection of the plan (see the module doc). Output arrays the caller passed in
        are returned as they are.

        ``stream``: a caller's aclrtStream (int, or an object with ``npu_stream``): phase 2
        is only enqueued on it (no synchronisation). The plan's workspace and buffers stay
        alive until :meth:`close`, which first synchronises every stream a run was
        enqueued on.
        """
        arrays = {n: _as_device_or_host(n, a) for n, a in arrays.items()}
        with self._lock, runtime.operation():
            if self.closed:
                raise ValueError("the plan is closed")
            changes: Dict[str, DeviceArray] = {}
            for name, arr in arrays.items():
                if name in INPUT_SLOTS:
                    key, cur = "in:" + name, self._inputs[name]
                elif name in _OUT_SLOTS:
                    key, cur = "out:" + name, self._outputs[name]
                else:
                    raise TypeError(f"unknown tensor slot {name!r}")
                if not isinstance(arr, DeviceArray):
                    raise TypeError(f"{name} must be a DeviceArray")
                check_device_arrays({name: arr}, self.device_id)
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
            st = self._state
            fresh = set()
            held = dict(zip(_OUT_SLOTS, st.last.held() if st.last is not None
                            else [False] * len(_OUT_SLOTS)))
            for name, h in held.items():
                arr = self._outputs[name]
                if arr is None or "out:" + name in changes:
                    continue
                real = st.results.get(name)
                if real is None:
                    if arr.closed:
                        raise ValueError(f"{name}: the device array has been freed")
                elif h or real.closed:
                    # a result of the last run still holds this buffer (or freed it): write
                    # into a fresh one; zeros, as at construction (docs/faults.md)
                    changes["out:" + name] = DeviceArray.zeros(arr.shape, arr.dtype,
                                                               self.device_id)
                    fresh.add(name)
            b = runtime.api()
            runtime.ensure_device(self.device_id)
            caller_stream = stream is not None
            stream = (runtime.resolve_stream(stream) if caller_stream
                      else runtime.stream(self.device_id))
            # the determinism option is read by phase 1 (docs/abi.md §6): held only when
            # this run builds the executor; a repeatable executor's phase 2 needs no hold
            hold = None
            try:
                if changes:
                    self._apply(b, changes, fresh, held)
                if st.executor is None:
                    hold = runtime.call_hold(self.device_id, self.deterministic)
                    hold.acquire()
                    self._build()
                ex = st.executor
                ws = st.workspace
                phase2 = getattr(b, PHASE2)
                args = (c_void_p(ws.ptr if ws is not None else None), c_uint64(self._ws_size),
                        c_void_p(ex.handle), c_void_p(stream))
                with ownership.atomic():
                    if not self.repeatable:
                        # a one-shot executor is the library's from the moment phase 2 is
                        # entered: forgotten in the same atomic step as the call
                        st.executor = None
                        ex.disown()
                    rc = phase2(*args)
                runtime._count("phase2")
                self.phase2_runs += 1
                if rc:
                    raise status_error(b, rc, PHASE2)
                if caller_stream:
                    st.streams[stream] = self.device_id
                else:
                    rc = b.aclrtSynchronizeStream(stream)
                    if rc:
                        raise status_error(b, rc, "aclrtSynchronizeStream")
            finally:
                if hold is not None:
                    hold.release()
            return self._results()

    def _forget(self, changes, strict: bool) -> None:
        """The executor and the tensors of the changed slots go (rebuilt by the next phase 1)."""
        st = self._state
        st.drop_executor(strict)
        for key in changes:
            t = st.tensors.pop(key, None)
            if t is not None:
                t.release("raise" if strict else "warn")

    def _apply(self, b, changes: Dict[str, DeviceArray], fresh, held) -> None:
        """Point the plan at the changed arrays (``fresh``: the output slots whose new array
        the plan allocated; ``held``: slot -> a result of its buffer is still alive): repoint the executor (or forget it and the changed tensors),
        then record the arrays; an output buffer the plan allocated and no result holds is
        kept until close (work queued on a caller's stream may still write it). Should
        anything fail or be interrupted before the record is complete, the executor and
        the changed tensors are forgotten: no executor points at an array the plan does
        not hold."""
        st = self._state
        try:
            if not (st.executor is not None and self.repeatable and self._repoint(b, changes)):
                self._forget(changes, strict=True)
            with ownership.atomic():       # the record: one step for SIGINT
                for key, arr in changes.items():
                    kind, name = key.split(":", 1)
                    if kind == "in":
                        self._inputs[name] = arr
                        continue
                    if st.last is not None:
                        st.last.current = False
                    old = st.results.pop(name, None)
                    if old is not None and not (name in fresh or held[name] or old.closed):
                        st.owned.append(old)   # the caller swapped in their own array
                    if name in fresh:
                        st.results[name] = arr.buffer
                    self._outputs[name] = arr
        except BaseException:
            with ownership.atomic():
                self._forget(changes, strict=False)
            raise

    def grads(self) -> FagGrads:
        """The outputs of the last run copied to the host (FagGrads of new numpy arrays;
        None for absent ones)."""
        with self._lock:
            if self.closed:
                raise ValueError("the plan is closed")
            return FagGrads(*(None if d is None else d.numpy()
                              for d in (self._outputs[n] for n in _OUT_SLOTS)))

    def close(self) -> None:
        """Destroy the executor (if any), the tensors and int arrays, free owned memory."""
        with self._lock:
            if self._finalizer.detach() is not None:
                # the plan lets go of every array: results it returned live on alone
                self._inputs = dict.fromkeys(self._inputs)
                self._outputs = dict.fromkeys(self._outputs)
                self._state.close(strict=True)

    def __enter__(self) -> "FagPlan":
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
        return False

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("repeatable" if self.repeatable else "one-shot")
        return (f"<FagPlan device={self.device_id} {state} phase1_runs={self.phase1_runs} "
                f"phase2_runs={self.phase2_runs}>")


FagExecutor = FagPlan
