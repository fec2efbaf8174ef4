"""Fake torch_npu tensors for the autograd tests: a ``torch.Tensor`` subclass whose memory is
stub device memory (an ``acl.DeviceArray``), so torch's autograd can run over it.

What the package may use of it is the protocol of ``aclnn_fag.operands`` -- ``device.type``
("npu"), ``device.index``, ``data_ptr()`` (element 0, storage offset included), ``shape``,
``stride()``, ``dtype`` (a torch dtype) and ``new_empty(shape, dtype=...)`` -- and the torch
ops torch_npu would run on the device (``detach``, views). Views and ``detach`` alias the
storage. Every other torch op (the test's loss, autograd's bookkeeping) is emulated by a host
round trip -- download, the CPU op, upload -- and counted in ``NpuTensor.host_ops``, so a
test can prove that the package's own path used none. In-place ops are refused.

The C++ device of the wrapper is ``meta`` (torch's autograd engine needs a device backend
and CPU torch has none for "npu"); only the Python ``device`` attribute says npu.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch
from torch.utils._pytree import tree_leaves, tree_map

from aclnn_fag import acl

_NP = {torch.bfloat16: np.dtype(ml_dtypes.bfloat16), torch.float32: np.dtype(np.float32),
       torch.float64: np.dtype(np.float64), torch.uint8: np.dtype(np.uint8),
       torch.bool: np.dtype(np.bool_), torch.int64: np.dtype(np.int64)}


class NpuDevice:
    """What ``tensor.device`` of torch_npu offers the protocol."""

    def __init__(self, index: int) -> None:
        self.type = "npu"
        self.index = index

    def __repr__(self) -> str:
        return f"npu:{self.index}"


def _numpy_to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == _NP[torch.bfloat16]:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class NpuTensor(torch.Tensor):
    host_ops = []          # names of the torch ops emulated by a host round trip

    @staticmethod
    def __new__(cls, storage: "acl.DeviceArray", shape, strides, offset: int, dtype,
                index: int = 0):
        r = torch.Tensor._make_wrapper_subclass(cls, tuple(shape), strides=tuple(strides),
                                                storage_offset=int(offset), dtype=dtype,
                                                device="meta", requires_grad=False)
        r._storage_da = storage        # the device allocation (shared by views)
        r._offset = int(offset)        # in elements
        r._index = int(index)
        return r

    @property
    def device(self):
        return NpuDevice(self._index)

    def data_ptr(self) -> int:
        return (self._storage_da.buffer.ptr or 0) + self._offset * _NP[self.dtype].itemsize

    # ---- test helpers (not used by the package)
    @classmethod
    def from_cpu(cls, t: torch.Tensor, index: int = 0) -> "NpuTensor":
        a = np.ascontiguousarray(_torch_to_numpy(t))
        store = acl.DeviceArray.from_numpy(a, index)
        return cls(store, a.shape, acl.device.contiguous_strides(a.shape), 0, t.dtype, index)

    def cpu_copy(self) -> torch.Tensor:
        view = acl.DeviceArray(self._storage_da.buffer, tuple(self.shape), _NP[self.dtype],
                               tuple(self.stride()), self._offset)
        return _numpy_to_torch(view.numpy())

    def _alias(self, shape, strides, offset) -> "NpuTensor":
        return NpuTensor(self._storage_da, shape, strides, offset, self.dtype, self._index)

    # ---- the torch ops
    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.new_empty.default:
            self, shape = args[0], tuple(int(d) for d in args[1])
            dtype = kwargs.get("dtype") or self.dtype
            store = acl.DeviceArray.empty(shape, _NP[dtype], self._index)
            return NpuTensor(store, shape, acl.device.contiguous_strides(shape), 0, dtype,
                             self._index)
        if func._schema.is_mutable:
            raise NotImplementedError(f"the fake NPU tensor refuses the in-place op {func}")
        if func.is_view:
            # run the view on a meta tensor of the same geometry: shape, strides, offset
            self = args[0]
            extent = 1 + sum((n - 1) * st for n, st in zip(self.shape, self.stride()) if n)
            meta = torch.empty(self._offset + extent, dtype=self.dtype, device="meta")
            meta = meta.as_strided(self.shape, self.stride(), self._offset)
            out = func(meta, *args[1:], **kwargs)
            return self._alias(out.shape, out.stride(), out.storage_offset())
        NpuTensor.host_ops.append(str(func))
        index = next(a._index for a in tree_leaves((args, kwargs)) if isinstance(a, NpuTensor))
        def host(x):
            if isinstance(x, NpuTensor):
                return x.cpu_copy()
            if isinstance(x, torch.device) and x.type == "meta":
                return torch.device("cpu")          # factory ops (e.g. zeros_like) asked for meta
            return x
        cpu = func(*tree_map(host, args), **tree_map(host, kwargs))
        return tree_map(lambda x: NpuTensor.from_cpu(x, index)
                        if isinstance(x, torch.Tensor) else x, cpu)


class NpuStream:
    """What ``torch.npu.current_stream()`` returns: the aclrtStream handle as ``npu_stream``."""

    def __init__(self, handle: int) -> None:
        self.npu_stream = handle


class TorchNpu:
    """The ``torch.npu`` namespace torch_npu installs, reduced to ``current_stream``."""

    def __init__(self, handle: int) -> None:
        self.stream = NpuStream(handle)
        self.asked = []                 # the devices current_stream was asked for

    def current_stream(self, device=None) -> NpuStream:
        self.asked.append(device)
        return self.stream
