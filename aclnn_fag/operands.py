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

import sys
from typing import Dict, Optional, Tuple

import ml_dtypes
import numpy as np

__all__ = ["NUMPY", "TORCH", "DEVICE", "NPU", "KINDS", "kind_of", "convert_inputs",
           "numpy_dtype_of_torch", "torch_dtype_name", "to_torch", "is_npu_tensor",
           "DEVICE_KINDS"]

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


def torch_dtype_name(dtype) -> str:
    """``'torch.bfloat16'`` etc. for a numpy dtype."""
    return _NUMPY_TO_TORCH[np.dtype(dtype)]


def _device_array_type():
    mod = sys.modules.get("aclnn_fag.acl.device")
    return None if mod is None else mod.DeviceArray


def is_npu_tensor(x) -> bool:
    dev = getattr(x, "device", None)
    return getattr(dev, "type", None) == "npu" and callable(getattr(x, "data_ptr", None))


def _is_torch_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def kind_of(x) -> Optional[str]:
    """The kind of one tensor argument (None for None, "?" for anything unknown)."""
    if x is None:
        return None
    if type(x) is np.ndarray or isinstance(x, np.ndarray):
        return NUMPY
    da = _device_array_type()
    if da is not None and isinstance(x, da):
        return DEVICE
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


_DEVICE_ARRAY = []      # [DeviceArray] once imported (an import statement per tensor costs ~2 us)


def _npu_to_device_array(name: str, t):
    if not _DEVICE_ARRAY:
        from .acl.device import DeviceArray as cls
        _DEVICE_ARRAY.append(cls)
    DeviceArray = _DEVICE_ARRAY[0]
    torch_npu = sys.modules.get("torch_npu")
    if torch_npu is not None and hasattr(torch_npu, "get_npu_format"):
        fmt = int(torch_npu.get_npu_format(t))
        if fmt not in _PLAIN_FORMATS:
            raise ValueError(f"parameter '{name}' has the private NPU storage format {fmt} (its "
                             "memory is not plain strided memory); convert it with "
                             "torch_npu.npu_format_cast(t, 2) (ND)")
    dt = _TORCH_TO_NUMPY.get(str(t.dtype)) or numpy_dtype_of_torch(t.dtype, name)
    index = t.device.index
    # from_pointer takes each value through operator.index (ints, torch.Size entries)
    return DeviceArray.from_pointer(int(t.data_ptr()), t.shape, dt, t.stride(),
                                    device_id=0 if index is None else index, owner=t)


def convert_inputs(tensors: Dict[str, object]) -> Tuple[str, Dict[str, object]]:
    """(kind, converted) for one call's tensor arguments: torch CPU tensors become numpy views,
    NPU tensors DeviceArrays over their memory; numpy arrays and DeviceArrays pass through.
    Arguments of an unknown type pass through unchanged (validation names them)."""
    kind = None
    first = None
    kinds = {}
    for name, x in tensors.items():
        k = kinds[name] = kind_of(x)
        if k is None or k == "?":
            continue
        if kind is None:
            kind, first = k, name
        elif k != kind:
            raise TypeError(
                f"parameter '{name}' is {_DESCRIBE[k]} but '{first}' is {_DESCRIBE[kind]}: all "
                "tensor arguments of one call must be of one kind (numpy arrays, torch CPU "
                "tensors, aclnn_fag.acl.DeviceArray or NPU tensors); convert or upload the odd "
                "one (e.g. the mask) once beforehand")
    kind = kind or NUMPY
    if kind == TORCH:
        out = {n: (_torch_cpu_to_numpy(n, x) if kinds[n] == TORCH else x) for n, x in tensors.items()}
    elif kind == NPU:
        out = {n: (_npu_to_device_array(n, x) if kinds[n] == NPU else x) for n, x in tensors.items()}
    else:
        out = tensors
    return kind, out


def to_torch(a):
    """A torch tensor over a numpy array's memory (no copy; bf16 through an int16 view)."""
    if a is None:
        return None
    torch = sys.modules["torch"]
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)
