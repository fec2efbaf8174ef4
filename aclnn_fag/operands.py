"""The kinds of tensor the public calls accept, recognised without importing torch.

* ``numpy``: ``numpy.ndarray`` (bf16 as ``ml_dtypes.bfloat16``); results are numpy arrays.
* ``torch``: torch CPU tensors (``torch.Tensor`` with ``device.type == "cpu"``), taken as
  numpy views of their memory (no copy; bf16 through an int16 view) and returned as torch
  tensors over the results' memory (no copy either). Recognised only when ``torch`` is
  already imported by the caller (``sys.modules``): ``import aclnn_fag`` never imports it.
* ``device``: :class:`aclnn_fag.acl.DeviceArray`; results are DeviceArrays.
* ``npu``: NPU tensors as torch_npu makes them, used only through this protocol:
  ``t.device.type == "npu"``, ``t.device.index``, ``t.data_ptr()`` (address of element 0,
  storage offset included), ``t.shape``, ``t.stride()`` (elements), ``t.dtype`` (a torch
  dtype, mapped by name) and ``t.new_empty(shape, dtype=...)`` for the results. The op gets
  the caller's addresses and strides (views included) -- no copy, no host round trip.

One call takes one kind for all its tensor arguments (``None`` aside); mixing kinds raises
``TypeError`` naming the parameters.
"""

from __future__ import annotations

import re
import sys
from typing import Dict, Optional, Tuple

import ml_dtypes
import numpy as np

from .acl.device import DeviceArray, foreign_view

__all__ = ["NUMPY", "TORCH", "DEVICE", "NPU", "KINDS", "kind_of", "convert_inputs", "convert_args",
           "numpy_dtype_of_torch", "torch_dtype_name", "to_torch", "is_npu_tensor",
           "DEVICE_KINDS", "in_torch_terms"]

NUMPY, TORCH, DEVICE, NPU = "numpy", "torch", "device", "npu"
KINDS = (NUMPY, TORCH, DEVICE, NPU)
DEVICE_KINDS = (DEVICE, NPU)

_DESCRIBE = {NUMPY: "a numpy.ndarray", TORCH: "a torch CPU tensor",
             DEVICE: "an aclnn_fag.acl.DeviceArray", NPU: "an NPU tensor"}

# torch dtype (by its str(), so torch is never imported) -> numpy dtype
_TORCH_TO_NUMPY = {
    "torch.bfloat16": np.dtype(ml_dtypes.bfloat16),
    "torch.float32": np.dtype(np.float32),
    "torch.float16": np.dtype(np.float16),
    "torch.float64": np.dtype(np.float64),
    "torch.uint8": np.dtype(np.uint8),
    "torch.bool": np.dtype(np.bool_),
    "torch.int8": np.dtype(np.int8),
    "torch.int16": np.dtype(np.int16),
    "torch.int32": np.dtype(np.int32),
    "torch.int64": np.dtype(np.int64),
}
_NUMPY_TO_TORCH = {v: k for k, v in _TORCH_TO_NUMPY.items()}

# aclFormat values whose memory is plain strided memory (the others, e.g. FRACTAL_NZ, are
# private tiled layouts): NCHW, NHWC, ND, NDHWC, NCDHW, NCL.
_PLAIN_FORMATS = (0, 1, 2, 27, 30, 47)


def numpy_dtype_of_torch(dtype, name: str = "tensor") -> np.dtype:
    """The numpy dtype of a torch dtype, by name (``torch.bfloat16`` -> ml_dtypes.bfloat16)."""
    key = str(dtype)
    try:
        return _TORCH_TO_NUMPY[key]
    except KeyError:
        raise TypeError(f"parameter '{name}' has dtype {key}, which aclnn_fag does not support "
                        f"(supported: {', '.join(sorted(_TORCH_TO_NUMPY))})") from None


# dtype object -> numpy dtype, for the dtypes met so far (torch dtypes are immutable
# singletons, so their name -- and mapping -- never changes): one dict lookup per tensor
# instead of str() and a lookup by name. Unsupported dtypes are never stored.
_DTYPE_OF: dict = {}
_DTYPE_OF_MAX = 64


def _numpy_dtype_cached(dtype, name: str) -> np.dtype:
    try:
        return _DTYPE_OF[dtype]
    except KeyError:
        pass
    except TypeError:                     # an unhashable dtype object: by name each time
        return numpy_dtype_of_torch(dtype, name)
    dt = numpy_dtype_of_torch(dtype, name)
    if len(_DTYPE_OF) >= _DTYPE_OF_MAX:
        _DTYPE_OF.clear()
    _DTYPE_OF[dtype] = dt
    return dt


def torch_dtype_name(dtype) -> str:
    """``'torch.bfloat16'`` etc. for a numpy dtype."""
    return _NUMPY_TO_TORCH[np.dtype(dtype)]


def is_npu_tensor(x) -> bool:
    dev = getattr(x, "device", None)
    return getattr(dev, "type", None) == "npu" and callable(getattr(x, "data_ptr", None))


def _is_torch_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


# type -> NUMPY or DEVICE for the types whose kind follows from the type alone (numpy
# arrays and DeviceArrays, subclasses included), _BY_INSTANCE for the types already found
# to be neither (NPU / torch CPU tensors and unknown objects: their device decides).
_BY_INSTANCE = "by instance"
_KIND_OF_TYPE: dict = {np.ndarray: NUMPY}
_KIND_OF_TYPE_MAX = 256


def kind_of(x) -> Optional[str]:
    """The kind of one tensor argument (None for None, "?" for anything unknown)."""
    if x is None:
        return None
    tx = type(x)
    k = _KIND_OF_TYPE.get(tx)
    if k is None:
        if isinstance(x, np.ndarray):
            k = NUMPY
        elif isinstance(x, DeviceArray):
            k = DEVICE
        else:
            k = _BY_INSTANCE
        if len(_KIND_OF_TYPE) >= _KIND_OF_TYPE_MAX:
            _KIND_OF_TYPE.clear()
            _KIND_OF_TYPE[np.ndarray] = NUMPY
        _KIND_OF_TYPE[tx] = k
    if k is _BY_INSTANCE:
        return _kind_by_instance(x)
    return k


def _kind_by_instance(x) -> str:
    if is_npu_tensor(x):
        return NPU
    if _is_torch_tensor(x):
        if x.device.type == "cpu":
            return TORCH
        raise TypeError(f"torch tensors on device {x.device.type!r} are not supported (CPU and "
                        "NPU tensors are)")
    return "?"


def _torch_cpu_to_numpy(name: str, t) -> np.ndarray:
    """A numpy view of a torch CPU tensor's memory (no copy)."""
    torch = sys.modules["torch"]
    t = t.detach()
    if t.is_conj() or t.is_neg():
        raise TypeError(f"parameter '{name}': resolve the lazy conjugate/negative bit first "
                        "(t.resolve_conj().resolve_neg())")
    dt = numpy_dtype_of_torch(t.dtype, name)
    if dt == np.dtype(ml_dtypes.bfloat16):
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _npu_to_device_array(name: str, t, torch_npu=False):
    """A DeviceArray over an NPU tensor's memory (no copy; ``owner`` the tensor).
    ``torch_npu``: the torch_npu module when imported, else None (False: look it up)."""
    if torch_npu is False:
        torch_npu = sys.modules.get("torch_npu")
    if torch_npu is not None and hasattr(torch_npu, "get_npu_format"):
        fmt = int(torch_npu.get_npu_format(t))
        if fmt not in _PLAIN_FORMATS:
            raise ValueError(f"parameter '{name}' has the private NPU storage format {fmt} (its "
                             "memory is not plain strided memory); convert it with "
                             "torch_npu.npu_format_cast(t, 2) (ND)")
    dt = _numpy_dtype_cached(t.dtype, name)
    index = t.device.index
    ptr = t.data_ptr()
    if type(ptr) is not int:
        ptr = int(ptr)
    # from_pointer's checks (each value an int: ints, torch.Size entries)
    try:
        return foreign_view(ptr, t.shape, dt, t.stride(), 0 if index is None else index, t)
    except (TypeError, ValueError) as e:
        raise _named(e, f"parameter '{name}' (an NPU tensor)") from None


def _named(error: Exception, what: str) -> Exception:
    """``error`` (a TypeError / ValueError about a view's pointer, shape or strides) with the
    tensor it is about named first; other exception types unchanged."""
    if type(error) not in (TypeError, ValueError):
        return error
    return type(error)(f"{what}: {error}")


def convert_inputs(tensors: Dict[str, object]) -> Tuple[str, Dict[str, object]]:
    """(kind, converted) for one call's tensor arguments: torch CPU tensors become numpy views,
    NPU tensors DeviceArrays over their memory; numpy arrays and DeviceArrays pass through.
    Arguments of an unknown type pass through unchanged (validation names them)."""
    kind, values = convert_args(tuple(tensors), tuple(tensors.values()))
    return kind, (tensors if kind in (NUMPY, DEVICE) else dict(zip(tensors, values)))


def convert_args(names: Tuple[str, ...], values: tuple) -> Tuple[str, tuple]:
    """``convert_inputs`` on parallel tuples (parameter names, arguments): (kind, the
    arguments converted, in order) -- the form the public calls use."""
    kind = None
    first = None
    odd = False                           # some argument is not of the call's kind
    for name, x in zip(names, values):
        if x is None:
            continue
        k = kind_of(x)
        if k == "?":
            odd = True
        elif k != kind:
            if kind is None:
                kind, first = k, name
                continue
            raise TypeError(
                f"parameter '{name}' is {_DESCRIBE[k]} but '{first}' is {_DESCRIBE[kind]}: all "
                "tensor arguments of one call must be of one kind (numpy arrays, torch CPU "
                "tensors, aclnn_fag.acl.DeviceArray or NPU tensors); convert or upload the odd "
                "one (e.g. the mask) once beforehand")
    if kind == NPU:
        torch_npu = sys.modules.get("torch_npu")
        if odd:
            return kind, tuple(_npu_to_device_array(n, x, torch_npu)
                               if x is not None and kind_of(x) == NPU else x
                               for n, x in zip(names, values))
        # every argument an NPU tensor or None
        return kind, tuple(x if x is None else _npu_to_device_array(n, x, torch_npu)
                           for n, x in zip(names, values))
    if kind == TORCH:
        return kind, tuple(_torch_cpu_to_numpy(n, x) if x is not None and kind_of(x) == TORCH
                           else x for n, x in zip(names, values))
    return kind or NUMPY, values


def to_torch(a):
    """A torch tensor over a numpy array's memory (no copy; bf16 through an int16 view)."""
    if a is None:
        return None
    torch = sys.modules["torch"]
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def npu_to_device_array(name: str, t):
    """A DeviceArray over an NPU tensor's memory (no copy; the tensor is its owner), or None
    when ``t`` is not an NPU tensor (the converter aclnn_fag.device_run registers for the
    plans, :func:`aclnn_fag.acl.device.register_converter`)."""
    return _npu_to_device_array(name, t) if kind_of(t) == NPU else None


def named_error(error: Exception, what: str) -> Exception:
    """``error`` (a TypeError / ValueError about a view) with the tensor it is about named
    first (``what``, e.g. "result 'dq' (query.new_empty)"); other exception types unchanged."""
    return _named(error, what)


# numpy dtype names in validation messages -> their torch names
_TORCH_NAMES = {"bfloat16": "torch.bfloat16", "float16": "torch.float16",
                "float32": "torch.float32", "float64": "torch.float64", "uint8": "torch.uint8",
                "bool": "torch.bool", "int8": "torch.int8", "int16": "torch.int16",
                "int32": "torch.int32", "int64": "torch.int64"}
_DTYPE_WORD = re.compile(r"(?<![\w.])(" + "|".join(_TORCH_NAMES) + r")(?![\w])")


def in_torch_terms(error: Exception) -> Exception:
    """A validation error of a call made with torch tensors, reworded for torch: dtypes by
    their torch names (``torch.float32``) and torch's conversion (``query.to(torch.bfloat16)``
    instead of ``query.astype(ml_dtypes.bfloat16)``). Same class, code, parameter and rule
    otherwise; errors without a ``rule`` come back unchanged."""
    rule = getattr(error, "rule", None)
    if not rule:
        return error
    text = re.sub(r"\.astype\(ml_dtypes\.bfloat16\)", ".to(bfloat16)", rule)
    text = text.replace(" (ml_dtypes.bfloat16)", "")
    text = _DTYPE_WORD.sub(lambda m: _TORCH_NAMES[m.group(1)], text)
    if text == rule:
        return error
    return type(error)(text, code=error.code, param=error.param, function=error.function,
                       recent_msg=error.recent_msg, stricter=error.stricter)
