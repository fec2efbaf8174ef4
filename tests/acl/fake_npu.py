"""A stand-in for torch_npu tensors over stub device memory, implementing exactly the protocol
``aclnn_fag.operands`` uses (device.type/index, data_ptr(), shape, stride(), dtype,
new_empty) -- and nothing else, so the package cannot rely on more.

Memory comes from ``acl.DeviceArray`` (stub aclrtMalloc); dtypes are named like torch's
(``str(dtype)`` is ``'torch.bfloat16'``) without importing torch.
"""

from __future__ import annotations

import weakref

import ml_dtypes
import numpy as np

from aclnn_fag import acl


class FakeDType:
    def __init__(self, name: str, np_dtype) -> None:
        self.name = name
        self.np = np.dtype(np_dtype)

    def __str__(self) -> str:
        return f"torch.{self.name}"

    __repr__ = __str__


bfloat16 = FakeDType("bfloat16", ml_dtypes.bfloat16)
float32 = FakeDType("float32", np.float32)
uint8 = FakeDType("uint8", np.uint8)
bool_ = FakeDType("bool", np.bool_)
_BY_NP = {d.np: d for d in (bfloat16, float32, uint8, bool_)}


class FakeDevice:
    def __init__(self, index: int) -> None:
        self.type = "npu"
        self.index = index


class FakeNpuTensor:
    """A strided view over a device allocation (``storage``: the DeviceArray that owns it)."""

    allocations = []       # weak references to every new_empty result, for the tests' checks

    def __init__(self, storage: "acl.DeviceArray", shape, strides, offset: int, dtype: FakeDType,
                 device_index: int = 0) -> None:
        self._storage = storage
        self.shape = tuple(int(d) for d in shape)
        self._strides = tuple(int(s) for s in strides)
        self._offset = int(offset)
        self.dtype = dtype
        self.device = FakeDevice(device_index)

    # ---- the protocol
    def data_ptr(self) -> int:
        return (self._storage.buffer.ptr or 0) + self._offset * self.dtype.np.itemsize

    def stride(self):
        return self._strides

    def new_empty(self, shape, dtype=None):
        dtype = dtype or self.dtype
        store = acl.DeviceArray.empty(shape, dtype.np, self.device.index)
        t = FakeNpuTensor(store, shape, acl.device.contiguous_strides(shape), 0, dtype,
                          self.device.index)
        FakeNpuTensor.allocations.append(weakref.ref(t))
        return t

    # ---- test helpers (not used by the package)
    @classmethod
    def from_numpy(cls, a: np.ndarray, device_index: int = 0) -> "FakeNpuTensor":
        a = np.ascontiguousarray(a)
        store = acl.DeviceArray.from_numpy(a, device_index)
        return cls(store, a.shape, acl.device.contiguous_strides(a.shape), 0, _BY_NP[a.dtype],
                   device_index)

    def slice_last(self, start: int, stop: int) -> "FakeNpuTensor":
        """self[..., start:stop] (a view: same storage, same strides, offset moved)."""
        shape = self.shape[:-1] + (stop - start,)
        return FakeNpuTensor(self._storage, shape, self._strides,
                             self._offset + start * self._strides[-1], self.dtype,
                             self.device.index)

    def numpy(self) -> np.ndarray:
        view = acl.DeviceArray(self._storage.buffer, self.shape, self.dtype.np, self._strides,
                               self._offset)
        return view.numpy()

    @property
    def storage(self):
        return self._storage


def rope_views(p):
    """(q, q_rope, k, k_rope) of a test problem as views of two fake NPU tensors, one
    [T1, N1, D + Dr] and one [T2, N2, D + Dr] (offsets inside a block: ``q = qk[..., :D]``);
    also returns the two whole tensors: ``(q, qr, k, kr), (qq, kk)``."""
    import numpy as np
    d = p.q.shape[2]
    qq = FakeNpuTensor.from_numpy(np.concatenate([p.q, p.qr], axis=-1))
    kk = FakeNpuTensor.from_numpy(np.concatenate([p.k, p.kr], axis=-1))
    return ((qq.slice_last(0, d), qq.slice_last(d, qq.shape[-1]),
             kk.slice_last(0, d), kk.slice_last(d, kk.shape[-1])), (qq, kk))
