"""The kinds of tensor the public calls accept, one per call, recognised without importing
torch: numpy arrays, torch CPU tensors, DeviceArrays and NPU tensors (docs/npu.md)."""

from __future__ import annotations

import re
import sys
from typing import Optional, Tuple

import ml_dtypes
import numpy as np

from .acl.device import DeviceArray, foreign_view

__all__ = ["NUMPY", "TORCH", "DEVICE", "NPU", "DEVICE_KINDS", "kind_of", "convert_args", "to_torch",
           "numpy_dtype_of_torch", "torch_dtype_name", "is_npu_tensor", "in_torch_terms"]

NUMPY, TORCH, DEVICE, NPU = "numpy", "torch", "device", "npu"
DEVICE_KINDS = (DEVICE, NPU)

_DESCRIBE = {NUMPY: "a numpy.ndarray", TORCH: "a torch CPU tensor",
             DEVICE: "an aclnn_fag.acl.DeviceArray", NPU: "an NPU tensor"}
_BF16 = np.dtype(ml_dtypes.bfloat16)

# torch dtype (by its str(), so torch is never imported) -> numpy dtype
_TORCH_TO_NUMPY = {"torch." + np.dtype(d).name: np.dtype(d) for d in (
    ml_dtypes.bfloat16, np.float32, np.float16, np.float64, np.uint8, np.bool_, np.int8,
    np.int16, np.int32, np.int64)}

# the aclFormats of plain strided memory (NCHW, NHWC, ND, NDHWC, NCDHW, NCL; not FRACTAL_NZ)
_PLAIN_FORMATS = (0, 1, 2, 27, 30, 47)


def numpy_dtype_of_torch(dtype, name: str = "tensor") -> np.dtype:
    """The numpy dtype of a torch dtype, by name (``torch.bfloat16`` -> ml_dtypes.bfloat16)."""
    key = str(dtype)
    try:
        return _TORCH_TO_NUMPY[key]
    except KeyError:
        raise TypeError(f"parameter '{name}' has dtype {key}, which aclnn_fag does not support "
                        f"(supported: {', '.join(sorted(_TORCH_TO_NUMPY))})") from None


def torch_dtype_name(dtype) -> str:
    """``'torch.bfloat16'`` etc. for a numpy dtype."""
    return "torch." + np.dtype(dtype).name


def is_npu_tensor(x) -> bool:
    dev = getattr(x, "device", None)
    return getattr(dev, "type", None) == "npu" and callable(getattr(x, "data_ptr", None))


def kind_of(x) -> Optional[str]:
    """The kind of one tensor argument (None for None, "?" for anything unknown)."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return NUMPY
    if isinstance(x, DeviceArray):
        return DEVICE
    if is_npu_tensor(x):
        return NPU
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type == "cpu":
            return TORCH
        raise TypeError(f"torch tensors on device {x.device.type!r} are not supported (CPU and "
                        "NPU tensors are)")
    return "?"


def _torch_cpu_to_numpy(name: str, t) -> np.ndarray:
    """A numpy view of a torch CPU tensor's memory (no copy)."""
    t = t.detach()
    if t.is_conj() or t.is_neg():
        raise TypeError(f"parameter '{name}': resolve the lazy conjugate/negative bit first "
                        "(t.resolve_conj().resolve_neg())")
    if numpy_dtype_of_torch(t.dtype, name) == _BF16:
        return t.view(sys.modules["torch"].int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _npu_to_device_array(name: str, t):
    """A DeviceArray over an NPU tensor's memory (no copy; ``owner`` the tensor)."""
    torch_npu = sys.modules.get("torch_npu")
    if torch_npu is not None and hasattr(torch_npu, "get_npu_format"):
        fmt = int(torch_npu.get_npu_format(t))
        if fmt not in _PLAIN_FORMATS:
            raise ValueError(f"parameter '{name}' has the private NPU storage format {fmt} (its "
                             "memory is not plain strided memory); convert it with "
                             "torch_npu.npu_format_cast(t, 2) (ND)")
    dt = numpy_dtype_of_torch(t.dtype, name)
    index = t.device.index
    try:
        return foreign_view(int(t.data_ptr()), t.shape, dt, t.stride(),
                            0 if index is None else index, t)
    except (TypeError, ValueError) as e:
        raise named_error(e, f"parameter '{name}' (an NPU tensor)") from None


def convert_args(names: Tuple[str, ...], values: tuple) -> Tuple[str, tuple]:
    """(kind, the arguments converted): torch CPU tensors as numpy views, NPU tensors as
    DeviceArrays over their memory; anything else passes through (validation names it)."""
    kind = first = None
    odd = False                           # some argument is not of the call's kind
    for name, x in zip(names, values):
        k = kind_of(x)
        if k == "?":
            odd = True
        elif k is not None and k != kind:
            if kind is not None:
                raise TypeError(
                    f"parameter '{name}' is {_DESCRIBE[k]} but '{first}' is {_DESCRIBE[kind]}: "
                    "all tensor arguments of one call must be of one kind (numpy arrays, torch "
                    "CPU tensors, aclnn_fag.acl.DeviceArray or NPU tensors); convert or upload "
                    "the odd one (e.g. the mask) once beforehand")
            kind, first = k, name
    convert = {NPU: _npu_to_device_array, TORCH: _torch_cpu_to_numpy}.get(kind)
    if convert is None:
        return kind or NUMPY, values
    return kind, tuple(convert(n, x) if x is not None and (not odd or kind_of(x) == kind) else x
                       for n, x in zip(names, values))


def to_torch(a):
    """A torch tensor over a numpy array's memory (no copy; bf16 through an int16 view)."""
    if a is None:
        return None
    torch = sys.modules["torch"]
    if a.dtype == _BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def npu_to_device_array(name: str, t):
    """A DeviceArray over an NPU tensor's memory, or None when ``t`` is not an NPU tensor."""
    return _npu_to_device_array(name, t) if kind_of(t) == NPU else None


def named_error(error: Exception, what: str) -> Exception:
    """A TypeError / ValueError with ``what`` it is about named first; others unchanged."""
    if type(error) not in (TypeError, ValueError):
        return error
    return type(error)(f"{what}: {error}")


# numpy dtype names in validation messages -> their torch names
_TORCH_NAMES = {dt.name: name for name, dt in _TORCH_TO_NUMPY.items()}
_DTYPE_WORD = re.compile(r"(?<![\w.])(" + "|".join(_TORCH_NAMES) + r")(?![\w])")


def in_torch_terms(error: Exception) -> Exception:
    """A validation error reworded for torch (torch dtype names, ``.to(...)`` conversions)."""
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
