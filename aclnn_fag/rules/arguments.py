"""The arguments of a call as aclnn_fag/spec.py describes them: their Python types, checked
before any rule (``TypeError``; ``ValueError`` for a value no C call can carry), the start
indices every call passes, and the description of a call the verdict cache keys on."""

from __future__ import annotations

import math
import numbers
import sys

import numpy as np

from ..constants import INT64_MAX, INT64_MIN
from ..seqlens import int_list
from ..spec import OpVersion

__all__ = ["is_device", "normalize", "names", "start_indices", "START_INDEX_DEFAULT",
           "signature", "IGNORED"]

# accepted by the ops but not used (IgnoredArgumentWarning when passed)
IGNORED = ("padding_mask", "softmax_in", "prefix")
START_INDEX_DEFAULT = (0,)
_ND = np.ndarray
_DEVICE_TYPES: set = set()      # DeviceArray and its subclasses met so far (by type)


def is_device(value) -> bool:
    """An aclnn_fag.acl.DeviceArray (looked up without importing the NPU backend)."""
    mod = sys.modules.get("aclnn_fag.acl.device")
    return mod is not None and isinstance(value, mod.DeviceArray)


def names(op: OpVersion):
    """(tensors, scalars, int lists) of ``op`` in the spec's order; the scalars are its
    attributes and ``deterministic`` (the Python calls' own attribute)."""
    return op.inputs, op.attrs + ("deterministic",), op.int_arrays


def _array(name, value):
    if value is not None and not isinstance(value, np.ndarray) and not is_device(value):
        raise TypeError(f"parameter '{name}' must be a numpy.ndarray, a torch CPU or NPU tensor, "
                        f"an aclnn_fag.acl.DeviceArray or None, got {type(value).__name__}")
    return value


def _int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"parameter '{name}' must be an int, got {type(value).__name__}")
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"parameter '{name}' = {value} does not fit in int64")
    return value


def _float(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"parameter '{name}' must be a float, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"parameter '{name}' = {value} does not fit in a double") from None


def _layout(name, value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"parameter '{name}' must be a str ('TND'), got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"parameter '{name}' contains a NUL character: {value!r}")
    return value


def _checker(p):
    """How a parameter of the spec is checked, from its role and C type."""
    if p.role in ("input", "int_array"):
        return _array if p.role == "input" else int_list
    if p.c_type in ("double", "char *"):
        return _float if p.c_type == "double" else _layout
    if p.default is None:         # head_num: None means query's N1
        return lambda name, value: None if value is None else _int(name, value)
    return _int


def _kind(p) -> int:
    """The order type errors are reported in: tensors, numbers, int arrays, the layout."""
    return {"input": 0, "int_array": 2}.get(p.role, 3 if p.c_type == "char *" else 1)


def normalize(op: OpVersion, values: dict) -> dict:
    """The arguments ``values`` (by parameter name) type-checked in the order of :func:`_kind`
    and normalised (ints, floats, int tuples; arrays as they are)."""
    return {p.name: _checker(p)(p.name, values[p.name])
            for p in sorted(op.params, key=_kind) if p.name in values}


def start_indices(q_start_idx, kv_start_idx):
    """qStartIdx / kvStartIdx as every call passes them: the caller's, else ``(0,)``, never
    NULL (which may select templates that ignore the rope inputs; docs/forward.md)."""
    q = int_list("q_start_idx", q_start_idx)
    kv = int_list("kv_start_idx", kv_start_idx)
    return (START_INDEX_DEFAULT if q is None else q,
            START_INDEX_DEFAULT if kv is None else kv)


def _tensor_sig(a):
    t = type(a)
    if t in _DEVICE_TYPES or is_device(a):
        _DEVICE_TYPES.add(t)
        return (1, a.shape, a.dtype, a.strides, a.offset)
    raise TypeError


def _list_sig(v):
    t = type(v)
    if (t is list or t is tuple) and len(v) <= 4096:
        return (t, tuple(map(type, v)), tuple(v))
    raise TypeError       # numpy arrays, long lists and other sequences: not cached


def signature(tensors: tuple, scalars: tuple, lists: tuple):
    """The description of a call (its tensors, scalars and int lists in the orders of
    :func:`names`) every rule but the data rules is a function of, or None. The types are
    part of it (128.0 == 128, but only 128 passes) and so are the signs of zeros."""
    nd, dev, copysign = _ND, _DEVICE_TYPES, math.copysign
    try:
        return (tuple([None if a is None
                       else (0, a.shape, a.dtype, a.strides) if type(a) is nd
                       else (1, a.shape, a.dtype, a.strides, a.offset) if type(a) in dev
                       else _tensor_sig(a) for a in tensors]),
                tuple(map(type, scalars)), scalars,
                tuple([copysign(1.0, v) if v == 0 else None for v in scalars]),
                tuple([None if v is None else _list_sig(v) for v in lists]))
    except Exception:             # e.g. an array where a scalar belongs: validation says so
        return None
