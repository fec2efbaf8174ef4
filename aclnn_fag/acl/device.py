"""Arrays that live on the device (:class:`DeviceArray`, a strided view over one buffer) and
the uploads that make them from numpy: overlapping or touching arrays share one copy;
negative or misaligned strides and a foreign byte order are copied first."""

from __future__ import annotations

import functools
import math
import operator
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import call_pool, runtime
from .arena import ARENA_ALIGN, ArenaBuffer, ArenaSlice, layout
from .executor import Timer
from .runtime import MEMCPY_HOST_TO_DEVICE, DeviceBuffer, refuse_pickle
from .tensors import ACL_DTYPES, acl_dtype

__all__ = ["DeviceArray", "ForeignBuffer", "foreign_view", "upload_arrays", "call_memory",
           "CallMemory", "contiguous_strides", "as_device_array", "register_converter"]

_FAKE_BASE = 1 << 44   # address used only for numpy index arithmetic; never dereferenced
_BASE_ALIGN = 32


def _unit_strides(shape: Sequence[int], strides: Sequence[int]) -> Tuple[int, ...]:
    """Size-1 axes get the stride a C-contiguous layout would (never used; keeps a contiguous
    array looking contiguous to the op's checks)."""
    out = list(strides)
    for i in range(len(out) - 1, -1, -1):
        if shape[i] == 1:
            out[i] = out[i + 1] * max(shape[i + 1], 1) if i + 1 < len(out) else 1
    return tuple(out)


def contiguous_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    """C-order strides in elements."""
    return _c_strides(tuple(map(int, shape)))


@functools.lru_cache(maxsize=1024)
def _c_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """:func:`contiguous_strides` of a tuple of ints (computed once per shape)."""
    strides = []
    step = 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def _check_int_tuple(name: str, values) -> Tuple[int, ...]:
    try:
        out = tuple(map(operator.index, values))
    except TypeError:
        raise TypeError(f"parameter '{name}' must be a sequence of ints, got {values!r}") from None
    return out


class ForeignBuffer(DeviceBuffer):
    """Device memory this package does not own (``DeviceArray.from_pointer``); ``free()``
    only forgets the address, ``owner`` is kept alive."""

    def __init__(self, ptr: int, nbytes: int, device_id: int, owner=None) -> None:
        self.device_id = int(device_id)
        self.nbytes = int(nbytes)
        self.ptr: Optional[int] = int(ptr) if nbytes else None
        self.owner = owner
        self._forgotten = False

    def release(self) -> None:
        self.ptr = None
        self.owner = None
        self._forgotten = True

    @property
    def released(self) -> bool:
        return self._forgotten

    closed = released

    def __repr__(self) -> str:
        state = "forgotten" if self._forgotten else (f"{self.ptr:#x}" if self.ptr else "empty")
        return (f"<ForeignBuffer {self.nbytes} bytes on device {self.device_id}: {state} "
                "(not owned)>")


class _Interface:
    def __init__(self, iface: dict) -> None:
        self.__array_interface__ = iface


def _is_basic_index(k) -> bool:
    if k is Ellipsis or k is None or isinstance(k, slice):
        return True
    if isinstance(k, (bool, np.bool_)):
        return False
    try:
        operator.index(k)
        return True
    except TypeError:
        return False


class DeviceArray(runtime.Closing):
    """A view over device memory: ``buffer``, ``shape``, ``dtype``, ``strides`` and ``offset``
    (in elements, non-negative); basic indexing only. ``free()`` frees the buffer (every view
    of it); otherwise the last view collected does."""

    __reduce_ex__ = refuse_pickle     # device memory: .numpy() is the host copy

    def __init__(self, buffer: DeviceBuffer, shape: Sequence[int], dtype,
                 strides: Optional[Sequence[int]] = None, offset: int = 0) -> None:
        self.buffer = buffer
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        acl_dtype(self.dtype)  # supported?
        self.strides = (contiguous_strides(self.shape) if strides is None
                        else tuple(int(s) for s in strides))
        self.offset = int(offset)
        if len(self.strides) != len(self.shape):
            raise ValueError("strides and shape must have the same length")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")
        if self.offset < 0 or any(s < 0 for s in self.strides):
            raise ValueError("device arrays take a non-negative offset and strides")
        if self.size and self.offset + self.max_index_from_offset >= self.storage_elems:
            raise ValueError(f"the view (offset {self.offset}, shape {self.shape}, strides "
                             f"{self.strides}) reaches past the {buffer.nbytes}-byte buffer")

    @classmethod
    def _checked(cls, buffer: DeviceBuffer, shape: Tuple[int, ...], dtype: np.dtype,
                 strides: Tuple[int, ...], offset: int = 0) -> "DeviceArray":
        """An array whose fields the caller checked (no __init__ checks)."""
        self = object.__new__(cls)
        self.buffer, self.shape, self.dtype = buffer, shape, dtype
        self.strides, self.offset = strides, offset
        return self

    def rebased(self, buffer: DeviceBuffer) -> "DeviceArray":
        """The same view over ``buffer``, a buffer of the same size (another handle on it)."""
        if buffer.nbytes != self.buffer.nbytes:
            raise ValueError(f"rebased onto a {buffer.nbytes}-byte buffer, need "
                             f"{self.buffer.nbytes} bytes")
        return DeviceArray._checked(buffer, self.shape, self.dtype, self.strides, self.offset)

    @classmethod
    def empty(cls, shape: Sequence[int], dtype, device_id: Optional[int] = None) -> "DeviceArray":
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        dt = np.dtype(dtype)
        acl_dtype(dt)              # TypeError for an unsupported dtype, before allocating
        # Python ints: no int64 wrap-around for absurd shapes
        buf = DeviceBuffer(math.prod(shape) * dt.itemsize, device_id)
        return cls._checked(buf, shape, dt, contiguous_strides(shape))

    @classmethod
    def zeros(cls, shape: Sequence[int], dtype, device_id: Optional[int] = None) -> "DeviceArray":
        arr = cls.empty(shape, dtype, device_id)
        arr.buffer.memset(0)
        return arr

    @classmethod
    def from_numpy(cls, array, device_id: Optional[int] = None) -> "DeviceArray":
        """Upload one numpy array (a non-contiguous view keeps its strides; see module doc)."""
        return upload_arrays([array], device_id)[0]

    @classmethod
    def from_pointer(cls, ptr: int, shape: Sequence[int], dtype,
                     strides: Optional[Sequence[int]] = None, device_id: int = 0,
                     owner=None) -> "DeviceArray":
        """Wrap device memory allocated by someone else without copying: ``ptr`` the address
        of element 0, ``strides`` in elements (None: C order); ``owner`` is kept alive. The
        aclTensor gets a 32-byte aligned base at or below ``ptr`` and an element offset."""
        ptr = operator.index(ptr)
        shape = _check_int_tuple("shape", shape)
        dt = dtype if type(dtype) is np.dtype else np.dtype(dtype)
        strides = None if strides is None else _check_int_tuple("strides", strides)
        if dt not in ACL_DTYPES:
            acl_dtype(dt)               # TypeError for an unsupported dtype
        if shape and min(shape) < 0:
            raise ValueError(f"parameter 'shape' has a negative dimension: {shape}")
        if strides is None:
            strides = contiguous_strides(shape)
        if len(strides) != len(shape):
            raise ValueError(f"parameter 'strides' {strides} must have one entry per dimension "
                             f"of {shape}")
        if 0 in shape or 1 in shape:
            kept = [s if d > 1 else 0 for d, s in zip(shape, strides)]   # size-1 axes: unused
        else:
            kept = strides
        if kept and min(kept) < 0:
            raise ValueError("parameter 'strides' must be non-negative (element strides), got "
                             f"{strides}")
        device_id = operator.index(device_id)
        if device_id < 0:
            raise ValueError(f"parameter 'device_id' must be >= 0, got {device_id}")
        isz = dt.itemsize
        if 0 in shape:
            return cls(ForeignBuffer(0, 0, device_id, owner), shape, dt, list(kept) or None, 0)
        if ptr <= 0:
            raise ValueError(f"parameter 'ptr' must be a device address, got {ptr}")
        if ptr % isz:
            raise ValueError(f"parameter 'ptr' {ptr:#x} is not aligned to the {dt} item size {isz}")
        span = sum(map(operator.mul, shape, kept)) - sum(kept) + 1    # sum((d - 1) * s) + 1
        rem = ptr % _BASE_ALIGN
        offset = rem // isz
        buf = ForeignBuffer(ptr - rem, (offset + span) * isz, device_id, owner)
        return cls._checked(buf, shape, dt,
                            strides if kept is strides else _unit_strides(shape, kept), offset)

    # ---- properties
    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def device_id(self) -> int:
        return self.buffer.device_id

    @property
    def storage_elems(self) -> int:
        """The buffer's size in elements of this dtype (the aclTensor's 1-D storageDims)."""
        return self.buffer.nbytes // self.itemsize

    @property
    def max_index_from_offset(self) -> int:
        return sum((d - 1) * s for d, s in zip(self.shape, self.strides)) if self.size else -1

    @property
    def is_contiguous(self) -> bool:
        c_strides = contiguous_strides(self.shape)
        return all(s == c for d, s, c in zip(self.shape, self.strides, c_strides) if d > 1)

    @property
    def closed(self) -> bool:
        return self.buffer.closed

    # ---- data movement
    def numpy(self) -> np.ndarray:
        """A new C-contiguous host array with the view's contents (one D2H copy)."""
        out = np.empty(self.shape, self.dtype)
        if out.size == 0:
            return out
        if self.is_contiguous:          # one D2H copy straight into the result
            self.buffer.download(out, self.offset * self.itemsize)
            return out
        host = np.empty(self.max_index_from_offset + 1, self.dtype)
        self.buffer.download(host, self.offset * self.itemsize)
        out[...] = np.lib.stride_tricks.as_strided(
            host, self.shape, tuple(s * self.itemsize for s in self.strides), writeable=False)
        return out

    def copy_from_numpy(self, array) -> None:
        """Overwrite a contiguous device array with a host array of the same shape and dtype."""
        a = np.asarray(array)
        if a.shape != self.shape or a.dtype != self.dtype:
            raise ValueError(f"need shape {self.shape} {self.dtype}, got {a.shape} {a.dtype}")
        if not self.is_contiguous:
            raise ValueError("copy_from_numpy needs a contiguous device array")
        self.buffer.upload(a, self.offset * self.itemsize)

    # ---- views
    def view(self, shape: Sequence[int], strides: Optional[Sequence[int]] = None,
             offset: Optional[int] = None) -> "DeviceArray":
        """Another view over the same buffer."""
        return DeviceArray(self.buffer, shape, self.dtype, strides,
                           self.offset if offset is None else offset)

    def __getitem__(self, key) -> "DeviceArray":
        if not isinstance(key, tuple):
            key = (key,)
        if not all(_is_basic_index(k) for k in key):
            raise IndexError("device arrays support basic indexing only (ints, slices, ..., None)")
        if not any(k is Ellipsis for k in key):
            key = key + (Ellipsis,)   # keeps the result a view even when every axis is an int
        isz = self.itemsize
        fake = np.asarray(_Interface({
            "shape": self.shape, "typestr": f"|V{isz}", "version": 3,
            "data": (_FAKE_BASE + self.offset * isz, True),
            "strides": tuple(s * isz for s in self.strides)}))
        v = fake[key]
        if any(s < 0 for d, s in zip(v.shape, v.strides) if d > 1):
            raise IndexError("negative steps are not supported on device arrays")
        start = v.__array_interface__["data"][0] - _FAKE_BASE
        strides = _unit_strides(v.shape, [(s // isz) if d > 1 else 0
                                          for d, s in zip(v.shape, v.strides)])
        return DeviceArray(self.buffer, v.shape, self.dtype, strides,
                           start // isz if v.size else 0)

    # ---- lifetime
    def free(self) -> None:
        """Free the underlying buffer now (every view of it becomes unusable)."""
        self.buffer.free()

    close = free

    def __repr__(self) -> str:
        return (f"<DeviceArray {self.dtype} {list(self.shape)} strides={list(self.strides)} "
                f"offset={self.offset} on device {self.device_id}"
                f"{' (freed)' if self.closed else ''}>")


foreign_view = DeviceArray.from_pointer     # the view over an NPU tensor (operands, device_run)


_converters: list = []


def register_converter(fn) -> None:
    """Add ``fn(name, value)``: a DeviceArray over ``value``'s device memory, or None when
    ``value`` is not of its kind (aclnn_fag.device_run registers the NPU tensors')."""
    if fn not in _converters:
        _converters.append(fn)


def as_device_array(name: str, value):
    """``value`` as a DeviceArray when a registered converter recognises it, else unchanged."""
    if value is None or isinstance(value, (DeviceArray, np.ndarray)):
        return value
    for fn in _converters:
        out = fn(name, value)
        if out is not None:
            return out
    return value


# ----------------------------------------------------------------------------- upload planner
class _Item:
    __slots__ = ("index", "array", "start", "end", "strides")

    def __init__(self, index: int, array: np.ndarray) -> None:
        self.index = index
        self.array = array
        addr = array.__array_interface__["data"][0]
        self.start = addr
        if array.flags.c_contiguous:    # the common case: no per-axis arithmetic
            self.end = addr + array.nbytes
            self.strides = _c_strides(array.shape)
            return
        isz = array.itemsize
        self.end = addr + isz + sum((d - 1) * s for d, s in zip(array.shape, array.strides))
        self.strides = _unit_strides(array.shape, [s // isz if d > 1 else 0
                                                   for d, s in zip(array.shape, array.strides)])


def _needs_host_copy(a: np.ndarray) -> bool:
    if a.dtype.byteorder not in ("=", "|"):
        return True
    isz = a.itemsize
    return any(d > 1 and (s < 0 or s % isz) for d, s in zip(a.shape, a.strides))


def _as_native(a: np.ndarray) -> np.ndarray:
    """A native-order copy with non-negative strides; zero-stride axes stay broadcast (a huge
    broadcast view costs the memory of its distinct elements)."""
    compact = a[tuple(slice(0, 1) if s == 0 and n > 1 else slice(None)
                      for n, s in zip(a.shape, a.strides))]
    if compact.dtype.byteorder not in ("=", "|"):
        compact = compact.astype(compact.dtype.newbyteorder("="))
    compact = np.ascontiguousarray(compact)
    if compact.shape == a.shape:
        return compact
    return np.broadcast_to(compact, a.shape)


def _plan_uploads(arrays: Sequence[Optional[np.ndarray]], device_id: Optional[int]):
    """(out, groups): ``out`` per input an empty DeviceArray for an empty array, else None;
    ``groups`` the H2D copies as (start, end address, members: _Items, each a view)."""
    out: List[Optional[DeviceArray]] = [None] * len(arrays)
    items: List[_Item] = []
    for i, a in enumerate(arrays):
        if a is None:
            continue
        if type(a) is not np.ndarray:
            a = np.asarray(a)
        if a.dtype not in ACL_DTYPES:
            acl_dtype(a.dtype)          # TypeError for an unsupported dtype
        if a.size == 0:
            out[i] = DeviceArray(DeviceBuffer(0, device_id), a.shape, a.dtype)
            continue
        if not (a.flags.c_contiguous and a.dtype.isnative) and _needs_host_copy(a):
            a = _as_native(a)
        items.append(_Item(i, a))
    items.sort(key=lambda it: (it.start, -it.end))
    groups: List[List[_Item]] = []
    group_end = None
    for it in items:
        if groups and it.start <= group_end:
            groups[-1].append(it)
            group_end = max(group_end, it.end)
        else:
            groups.append([it])
            group_end = it.end
    # a member whose place in the group is not a whole number of its elements goes alone
    final = []
    for g in groups:
        if len(g) == 1:
            final.append((g[0].start, g[0].end, g))
            continue
        base = g[0].start
        keep = [it for it in g if (it.start - base) % it.array.itemsize == 0]
        final.append((base, max(it.end for it in keep), keep))
        for it in g:
            if it not in keep:
                alone = _Item(it.index, _as_native(it.array))
                final.append((alone.start, alone.end, [alone]))
    return out, final


def _views(out: list, buf: DeviceBuffer, start: int, members) -> None:
    """The DeviceArrays of one uploaded group over ``buf`` (its byte 0 = host ``start``)."""
    for it in members:
        a = it.array
        out[it.index] = DeviceArray._checked(buf, a.shape, a.dtype, it.strides,
                                             (it.start - start) // a.itemsize)


def upload_arrays(arrays: Sequence[Optional[np.ndarray]], device_id: Optional[int] = None,
                  timings: Optional[dict] = None) -> List[Optional[DeviceArray]]:
    """Upload numpy arrays (one DeviceArray or None each), one H2D copy per group of
    overlapping/touching memory ranges into a buffer of its own (see the module doc)."""
    out, groups = _plan_uploads(arrays, device_id)
    timer = Timer(timings)
    created: List[DeviceBuffer] = []
    try:
        for start, end, members in groups:
            with timer("alloc"):
                buf = DeviceBuffer(end - start, device_id)
            created.append(buf)
            with timer("copy_in"):
                buf.copy_from_host(start, end - start)
            _views(out, buf, start, members)
    except BaseException:
        runtime.free_all(created)
        raise
    del groups      # the host arrays (temporary copies too) lived until every copy finished
    return out


class CallMemory:
    """:func:`call_memory`'s DeviceArrays, the allocations freed or pooled when the call ends
    (``arenas``) or owned by the results, and ``spare`` (address, bytes) behind the pieces."""

    __slots__ = ("inputs", "outputs", "arenas", "result_arenas", "spare")


def call_memory(arrays: Sequence[Optional[np.ndarray]], outputs: Sequence[tuple],
                device_id: int, timer: Timer = Timer(), results_apart: bool = False,
                pooled: bool = False, spare: int = 0) -> CallMemory:
    """Upload host ``arrays`` (grouped as :func:`upload_arrays`) and place ``outputs`` (shape,
    dtype, initial host array or None) in **one** allocation, or two with ``results_apart``.
    Outputs without an initial array are zero-filled by one ``aclrtMemset`` (docs/faults.md);
    ``pooled``: from :mod:`.call_pool`, with ``spare`` bytes more behind the pieces."""
    dev_in, groups = _plan_uploads(arrays, device_id)
    dev_out: List[Optional[DeviceArray]] = [None] * len(outputs)
    zeros, inits = [], []         # (index, shape, dtype, nbytes[, host array])
    for i, (shape, dtype, init) in enumerate(outputs):
        shape = tuple(map(int, shape))
        dt = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
        n = math.prod(shape) * dt.itemsize
        if n == 0:
            dev_out[i] = DeviceArray.empty(shape, dt, device_id)
        elif init is None:
            zeros.append((i, shape, dt, n))
        else:
            a = np.asarray(init)
            if a.shape != shape or a.dtype != dt:
                raise ValueError(f"need shape {shape} {dt}, got {a.shape} {a.dtype}")
            inits.append((i, shape, dt, n, np.ascontiguousarray(a)))
    zero_at, zero_end = layout([z[3] for z in zeros])
    init_at, out_end = layout([z[3] for z in inits], zero_end)
    group_at, in_end = layout([end - start for start, end, _ in groups],
                              0 if results_apart else out_end)
    mem = CallMemory()
    mem.arenas, mem.result_arenas = [], []
    try:
        with timer("alloc"):
            if results_apart and out_end:
                mem.result_arenas.append(ArenaBuffer(out_end, device_id))
            if in_end:          # used only until the call returns: reusable (.call_pool)
                mem.arenas.append(call_pool.take(in_end + spare, device_id) if pooled
                                  else ArenaBuffer(in_end, device_id))
            in_arena = mem.arenas[0] if in_end else None
            out_arena = mem.result_arenas[0] if results_apart and out_end else in_arena
            if zero_end:
                out_arena.memset(0, 0, zero_end)
        with timer("copy_in"):
            copies = [(in_arena, at, start, end - start) for (start, end, _), at
                      in zip(groups, group_at)]
            copies += [(out_arena, at, z[4].__array_interface__["data"][0], z[3])
                       for z, at in zip(inits, init_at)]
            if copies:
                runtime.memcpy(runtime.api(), [(a.ptr + at, a.nbytes - at, src, n)
                                               for a, at, src, n in copies], MEMCPY_HOST_TO_DEVICE)
        for (i, shape, dt, n, *_), at in zip(zeros + inits, zero_at + init_at):
            dev_out[i] = DeviceArray._checked(ArenaSlice(out_arena, at, n), shape, dt,
                                              _c_strides(shape))
        for (start, end, members), at in zip(groups, group_at):
            _views(dev_in, ArenaSlice(in_arena, at, end - start), start, members)
    except BaseException:
        runtime.free_all(mem.arenas + mem.result_arenas)
        raise
    del groups, inits       # the host arrays lived until every copy finished
    mem.inputs, mem.outputs, mem.spare = dev_in, dev_out, None
    if in_arena is not None:        # behind the pieces, aligned
        at = -(-in_end // ARENA_ALIGN) * ARENA_ALIGN
        mem.spare = (in_arena.ptr + at, in_arena.nbytes - at)
    return mem

