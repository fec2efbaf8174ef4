"""The public calls on device-resident inputs (DeviceArray or NPU tensors): results stay on
the one device the inputs live on (NPU tensors get ``query.new_empty`` results)."""

from __future__ import annotations

import sys

from . import acl, operands
from .acl import release as acl_release
from .call import FagForward, FagGrads, device_int_array
from .constants import BF16
from .rules import validate_backward

__all__ = ["run_backward_on_device", "run_forward_on_device", "call_device"]


def call_device(call, names) -> int:
    """The one device id of the call's device arrays (ValueError when they differ)."""
    fields = call.__dict__              # FagCall / FwdCall: frozen dataclasses (plain fields)
    seen = {}
    for n in names:
        d = getattr(fields.get(n), "device_id", None)
        if d is not None:
            seen.setdefault(d, n)
    if len(seen) == 1:
        return next(iter(seen))
    if not seen:
        return 0
    detail = ", ".join(f"'{n}' on device {d}" for d, n in seen.items())
    raise ValueError(f"all tensor arguments must live on one device, got {detail}")


def _zero(da) -> None:
    """Zero a contiguous device array's own bytes (not the aligned base before it)."""
    if da.size:
        da.buffer.memset(0, da.offset * da.itemsize, da.nbytes)


def _framework_dtype(like, name: str):
    """The dtype called ``name`` (e.g. "float32") of the framework of the tensor dtype
    ``like``, looked up without importing it (``like``'s module, else an imported torch)."""
    for mod in (sys.modules.get(type(like).__module__), sys.modules.get("torch")):
        dt = getattr(mod, name, None)
        if dt is not None and str(dt) == f"torch.{name}":
            return dt
    raise TypeError(f"cannot find the {name} dtype of the framework of {like!r} (torch is not "
                    "imported)")


def _run_on_device(call, kind: str, query_obj, stream, op, result_type, run):
    """Run ``op`` (``run``: acl.run_backward / run_forward) on device-resident inputs; its
    results (those ``result_type`` holds, shaped as the host call allocates them): NPU
    tensors (written through DeviceArrays over them) or new DeviceArrays."""
    dev = call_device(call, op.inputs)      # (the slots a FagCall / FwdCall lacks: None)
    auto = acl.op.auto_outputs(op, [getattr(call, n, None) for n in op.inputs])
    named = dict(zip(op.outputs, auto))
    specs = {n: named[n][:2] for n in result_type._fields}     # (shape, numpy dtype)
    if kind != operands.NPU:
        if call.empty_result:
            return [acl.DeviceArray.zeros(shape, dt, dev) for shape, dt in specs.values()]
        return list(run(call, device_id=dev, keep_on_device=True, stream=stream))
    tensors = []
    outs = {}
    qdtype = query_obj.dtype
    for out, (shape, dt) in specs.items():
        tdt = qdtype if dt == BF16 else _framework_dtype(
            qdtype, operands.torch_dtype_name(dt)[len("torch."):])
        t = query_obj.new_empty(shape, dtype=tdt)
        tensors.append(t)
        try:        # from_pointer's checks (the allocator's strides must be non-negative etc.)
            outs[out] = acl.device.foreign_view(int(t.data_ptr()), shape, dt, t.stride(), dev, t)
        except (TypeError, ValueError) as e:
            raise operands.named_error(e, f"result '{out}' (query.new_empty)") from None
    if call.empty_result:
        for da in outs.values():
            _zero(da)
    else:
        run(call, device_id=dev, outputs=outs, keep_on_device=True, stream=stream)
    return tensors


def run_backward_on_device(call, kind: str, query_obj, stream) -> FagGrads:
    return FagGrads(*_run_on_device(call, kind, query_obj, stream, acl.op.BACKWARD, FagGrads,
                                    acl.run_backward))


def run_forward_on_device(call, kind: str, query_obj, stream) -> FagForward:
    """The forward on device-resident inputs (the statistics in the device's layout)."""
    return FagForward(*_run_on_device(call, kind, query_obj, stream, acl.op.FORWARD,
                                      FagForward, acl.run_forward))


def _validate_plan(inputs, int_values, attrs, deterministic: bool, check_data: bool) -> None:
    """``FagPlan(validate=True)``: the public call's rules on the plan's (uploaded) inputs, of
    the release the runtime reports (the data rules read a bounded sample; none with
    check_data=False). Sets the ends the device gets in ``int_values`` (docs/releases.md)."""
    call = validate_backward(**inputs, **int_values, **attrs, deterministic=deterministic,
                             check_data=check_data, release=acl_release.current())
    for n in ("actual_seq_qlen", "actual_seq_kvlen"):
        int_values[n] = device_int_array(call, n)


# NPU tensors in plans, and the plans' validation: the acl layer asks the layers above
acl.device.register_converter(operands.npu_to_device_array)
acl.plan.register_validator(_validate_plan)
