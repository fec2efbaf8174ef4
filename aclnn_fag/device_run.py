"""The public calls on device-resident inputs (DeviceArray or NPU tensors): results stay on
the device.

* DeviceArray inputs: the results are new DeviceArrays (owned by the returned objects).
* NPU tensors (``aclnn_fag.operands``): each result is ``query.new_empty(shape,
  dtype=query.dtype)`` -- the caller's allocator owns it -- and the op writes into it
  through a DeviceArray over its memory. The results are returned as those tensors.

All inputs must live on one device; the op runs there.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from . import operands
from .call import FagGrads

__all__ = ["run_backward_on_device", "call_device"]

BF16 = np.dtype(ml_dtypes.bfloat16)
_GRAD_LIKE = (("dq", "query"), ("dq_rope", "query_rope"), ("dk", "key"), ("dk_rope", "key_rope"),
              ("dv", "value"))


def call_device(call, names) -> int:
    """The one device id of the call's device arrays (ValueError when they differ)."""
    seen = {}
    for n in names:
        a = getattr(call, n, None)
        if a is not None and hasattr(a, "device_id"):
            seen.setdefault(a.device_id, n)
    if len(seen) > 1:
        detail = ", ".join(f"'{n}' on device {d}" for d, n in seen.items())
        raise ValueError(f"all tensor arguments must live on one device, got {detail}")
    return next(iter(seen), 0)


def _zero(da) -> None:
    """Zero a contiguous device array's own bytes (not the aligned base before it)."""
    from .acl import runtime
    if da.size == 0:
        return
    b = runtime.ensure_device(da.device_id)
    ptr = da.buffer.ptr + da.offset * da.itemsize
    from .acl._status import check
    check(b, b.aclrtMemset(ptr, da.nbytes, 0, da.nbytes), "aclrtMemset")


def run_backward_on_device(call, kind: str, query_obj, stream) -> FagGrads:
    from .acl import DeviceArray, run_backward
    dev = call_device(call, ("query", "query_rope", "key", "key_rope", "value", "dy",
                             "atten_mask", "softmax_max", "softmax_sum", "attention_in"))
    shapes = {out: tuple(getattr(call, src).shape) for out, src in _GRAD_LIKE}
    if kind == operands.NPU:
        tensors = {out: query_obj.new_empty(shapes[out], dtype=query_obj.dtype)
                   for out in shapes}
        outs = {out: DeviceArray.from_pointer(int(t.data_ptr()), shapes[out], BF16, t.stride(),
                                              device_id=dev, owner=t)
                for out, t in tensors.items()}
        if call.empty_result:
            for da in outs.values():
                _zero(da)
        else:
            run_backward(call, device_id=dev, outputs=outs, keep_on_device=True, stream=stream)
        return FagGrads(*(tensors[out] for out, _ in _GRAD_LIKE))
    if call.empty_result:
        return FagGrads(*(DeviceArray.zeros(shapes[out], BF16, dev) for out, _ in _GRAD_LIKE))
    return run_backward(call, device_id=dev, keep_on_device=True, stream=stream)
