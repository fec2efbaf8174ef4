"""aclTensor and aclIntArray handles owned by Python objects (the aclTensor of a view:
docs/abi.md §4); each destroyed exactly once."""

from __future__ import annotations

import itertools
from ctypes import c_int64
from typing import Iterable, Optional, Sequence

import ml_dtypes
import numpy as np

from . import ownership, runtime
from .runtime import null_handle_error, status_error
from ..constants import MAX_INT_ARRAY_ENTRIES, INT64_MIN as _INT64_MIN, INT64_MAX as _INT64_MAX

__all__ = ["ACL_DTYPES", "FORMAT_ND", "acl_dtype", "AclTensor", "AclIntArray", "int64_array",
           "int64_values", "MAX_INT_ARRAY_ENTRIES", "HandleBatch"]

FORMAT_ND = 2

# numpy dtype -> aclDataType (docs/abi.md §3)
ACL_DTYPES = {
    np.dtype(np.float32): 0,          # ACL_FLOAT
    np.dtype(np.float16): 1,          # ACL_FLOAT16
    np.dtype(np.int8): 2,             # ACL_INT8
    np.dtype(np.int32): 3,            # ACL_INT32
    np.dtype(np.uint8): 4,            # ACL_UINT8
    np.dtype(np.int16): 6,            # ACL_INT16
    np.dtype(np.uint16): 7,           # ACL_UINT16
    np.dtype(np.uint32): 8,           # ACL_UINT32
    np.dtype(np.int64): 9,            # ACL_INT64
    np.dtype(np.uint64): 10,          # ACL_UINT64
    np.dtype(np.float64): 11,         # ACL_DOUBLE
    np.dtype(np.bool_): 12,           # ACL_BOOL
    np.dtype(np.complex64): 16,       # ACL_COMPLEX64
    np.dtype(np.complex128): 17,      # ACL_COMPLEX128
    np.dtype(ml_dtypes.bfloat16): 27,  # ACL_BF16
}


def acl_dtype(dtype) -> int:
    """The aclDataType enum of a numpy dtype (native byte order); TypeError if unsupported."""
    dt = np.dtype(dtype)
    if dt.byteorder not in ("=", "|"):
        dt = dt.newbyteorder("=")
    try:
        return ACL_DTYPES[dt]
    except KeyError:
        names = ", ".join(sorted(str(d) for d in ACL_DTYPES))
        raise TypeError(f"dtype {dt} has no aclDataType (supported: {names})") from None


def int64_values(name: str, values) -> tuple:
    """``values`` as a tuple of Python ints that fit int64 (ctypes would wrap the others), at
    most ``MAX_INT_ARRAY_ENTRIES``; TypeError / ValueError naming the parameter."""
    if type(values) is tuple and len(values) <= MAX_INT_ARRAY_ENTRIES:
        for v in values:                # the common case (validated calls): plain ints
            if type(v) is not int or not _INT64_MIN <= v <= _INT64_MAX:
                break
        else:
            return values
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise TypeError(f"parameter '{name}' must be 1-D, got shape {values.shape}")
    elif not hasattr(values, "__len__"):
        try:            # an iterable without a length: take at most one entry too many
            values = list(itertools.islice(iter(values), MAX_INT_ARRAY_ENTRIES + 1))
        except TypeError:
            raise TypeError(f"parameter '{name}' must be a sequence of ints, got "
                            f"{type(values).__name__}") from None
    n = len(values)
    if n > MAX_INT_ARRAY_ENTRIES:
        raise ValueError(f"parameter '{name}' has {n} entries; more than {MAX_INT_ARRAY_ENTRIES} "
                         "are refused")
    out = []
    for v in values.tolist() if isinstance(values, np.ndarray) else values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"parameter '{name}' must hold ints, got {type(v).__name__} {v!r}")
        v = int(v)
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"parameter '{name}' has {v}, which does not fit in int64")
        out.append(v)
    return tuple(out)


def int64_array(values: Sequence[int], name: str = "values"):
    """A ctypes ``int64_t[n]`` (n may be 0) holding ``values`` (checked: see int64_values)."""
    return _dims(int64_values(name, values))


def _dims(values: tuple):
    """A ctypes int64_t[n] holding ``values`` (the ACL create functions copy it)."""
    return (c_int64 * len(values))(*values)


class _Handle(runtime.NativeResource):
    """One handle made by an ACL create function and owned from the same atomic step."""

    def _create(self, b, fname: str, destroy_name: str, counter: str, *args) -> None:
        self.handle: Optional[int] = None
        self._prepare()
        with ownership.atomic():      # the create and its ownership: one step for SIGINT
            handle = getattr(b, fname)(*args)
            if handle:
                self._claim.take(handle, runtime.destroy, b, destroy_name, handle)
                self.handle = handle
        if not handle:
            raise null_handle_error(b, fname)
        runtime.tally(counter)

    def _on_released(self) -> None:
        self.handle = None

    destroy = runtime.NativeResource.release


class AclTensor(_Handle):
    """One ``aclTensor*``. Build with :meth:`from_device_array` or the raw constructor."""

    _what = "an aclTensor"

    def __init__(self, shape: Sequence[int], dtype, strides: Optional[Sequence[int]],
                 offset: int, storage_dims: Sequence[int], data_ptr: Optional[int]) -> None:
        b = runtime.api()
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.acl_dtype = acl_dtype(self.dtype)
        self.strides = None if strides is None else tuple(int(s) for s in strides)
        self.offset = int(offset)
        self.storage_dims = tuple(int(d) for d in storage_dims)
        self.data_ptr = data_ptr or None
        strd = None if self.strides is None else int64_array(self.strides)
        self._create(b, "aclCreateTensor", "aclDestroyTensor", "tensors",
                     int64_array(self.shape), len(self.shape), self.acl_dtype, strd, self.offset,
                     FORMAT_ND, int64_array(self.storage_dims), len(self.storage_dims),
                     self.data_ptr)

    @classmethod
    def from_device_array(cls, array) -> "AclTensor":
        """The tensor for a :class:`~aclnn_fag.acl.device.DeviceArray` view."""
        buf = array.buffer
        if buf.closed:
            raise ValueError("the device array's buffer has been freed")
        return cls(array.shape, array.dtype, array.strides, array.offset,
                   (array.storage_elems,), buf.ptr)

    def __repr__(self) -> str:
        return (f"<AclTensor {self.dtype} {list(self.shape)} strides={self.strides} "
                f"offset={self.offset} storage={list(self.storage_dims)} "
                f"{'destroyed' if self.handle is None else hex(self.handle)}>")


class AclIntArray(_Handle):
    """One ``aclIntArray*`` holding a copy of ``values`` (host int64)."""

    _what = "an aclIntArray"

    def __init__(self, values: Iterable[int]) -> None:
        self.values = int64_values("values", values)
        self._create(runtime.api(), "aclCreateIntArray", "aclDestroyIntArray", "int_arrays",
                     int64_array(self.values), len(self.values))

    def __repr__(self) -> str:
        state = "destroyed" if self.handle is None else hex(self.handle)
        return f"<AclIntArray {list(self.values)} {state}>"


def _destroy_batch(b, tensors: list, int_arrays: list):
    """Destroy every handle of a batch (a failed one stays for shutdown's retry); None or
    the first error (an ownership.Claim release)."""
    first = None
    for fname, handles in (("aclDestroyTensor", tensors), ("aclDestroyIntArray", int_arrays)):
        fn = getattr(b, fname)
        kept = []
        while handles:
            h = handles.pop()
            rc = fn(h)
            if rc:
                kept.append(h)
                err = status_error(b, rc, fname, rule=f"cannot destroy {h:#x}")
                first = first or err
        handles.extend(kept)
    return first


class HandleBatch(runtime.NativeResource):
    """The aclTensor and aclIntArray handles of one call, destroyed together exactly once."""

    def __init__(self) -> None:
        self._b = runtime.api()
        self._tensors: list = []
        self._int_arrays: list = []
        self._prepare()
        # the claim owns the two lists; each create appends in the same atomic step
        self._claim.take(self._tensors, _destroy_batch, self._b, self._tensors, self._int_arrays)

    def tensors(self, arrays) -> list:
        """New aclTensors for DeviceArray views (None -> None), in order."""
        create, dims, dtype_codes = self._b.aclCreateTensor, _dims, ACL_DTYPES

        def make(array):
            buf = array.buffer
            if buf.closed:
                raise ValueError("the device array's buffer has been freed")
            shape, dt = array.shape, array.dtype
            code = dtype_codes.get(dt)
            if code is None:
                code = acl_dtype(dt)
            return create(dims(shape), len(shape), code, dims(array.strides), array.offset,
                          FORMAT_ND, dims((buf.nbytes // dt.itemsize,)), 1, buf.ptr)

        return self._create_each(arrays, make, self._tensors, "tensors", "aclCreateTensor")

    def int_arrays(self, seqs) -> list:
        """New aclIntArrays of tuples of ints already checked to fit int64 (None -> None)."""
        create = self._b.aclCreateIntArray
        return self._create_each(seqs, lambda values: create(_dims(values), len(values)),
                                 self._int_arrays, "int_arrays", "aclCreateIntArray")

    def _create_each(self, items, make, handles: list, counter: str, function: str) -> list:
        """``make(item)`` for each item (None -> None), each handle stored in ``handles`` in the
        same atomic step; a NULL handle raises."""
        store = handles.append
        out = []
        made = 0
        try:
            with ownership.atomic():
                for item in items:
                    if item is None:
                        out.append(None)
                        continue
                    handle = make(item)
                    if not handle:
                        break
                    store(handle)
                    made += 1
                    out.append(handle)
        finally:
            if made:
                runtime.tally(counter, made)
        if len(out) < len(items):
            raise null_handle_error(self._b, function)
        return out
