"""The arrays a :class:`~aclnn_fag.acl.plan.FagPlan` run returns: never aliased by later runs.

A plan writes its outputs into device buffers it allocated. What ``run()`` returns for
such an output is a :class:`~aclnn_fag.acl.device.DeviceArray` over a
:class:`ResultBuffer` — a second Python handle on the same memory that the plan itself
never holds strongly (it keeps a weak reference). Every view the caller takes of a result
(``g.dq[..., :4]``) shares that handle, so "is any result of this buffer still alive?" is
"is its ResultBuffer still alive?", a weak-reference check with no native call:

* alive at the next run: the plan hands the buffer over (it stops owning it; the
  ResultBuffer keeps it alive and the memory is freed when the last result dies, through
  the buffer's own ownership claim) and writes into a fresh zero-filled buffer;
* gone: the plan writes into the same buffer again (the common loop
  ``for ...: plan.run()`` allocates nothing per run);
* at ``close()`` or garbage collection of the plan: buffers with live results are left to
  them; the others are freed with the plan.

The memory's release stays with the one :class:`~aclnn_fag.acl.runtime.DeviceBuffer` that
allocated it (its :class:`~aclnn_fag.acl.ownership.Claim`): handing over moves Python
references only, so an interrupt at any bytecode neither leaks nor frees it twice.
"""

from __future__ import annotations

import weakref
from typing import Optional

from .device import DeviceArray
from .runtime import DeviceBuffer

__all__ = ["ResultBuffer", "lease", "leased", "result_view"]


class ResultBuffer(DeviceBuffer):
    """The caller's handle on a plan's output buffer (``real``): same memory, and it keeps
    ``real`` alive. ``free()`` frees the memory now (every result over it becomes unusable,
    and the plan writes its next run into a fresh buffer)."""

    def __init__(self, real: DeviceBuffer) -> None:   # no allocation: shares ``real``
        self.real = real
        self.device_id = real.device_id
        self.nbytes = real.nbytes

    @property
    def ptr(self) -> Optional[int]:
        return self.real.ptr

    @property
    def released(self) -> bool:
        return self.real.released

    def release(self, mode: str = "raise") -> None:
        self.real.release(mode)

    free = close = release

    def __repr__(self) -> str:
        return f"<ResultBuffer of {self.real!r}>"


def leased(ref: Optional[weakref.ref]) -> bool:
    """True when a result over the buffer is still alive (``ref``: the plan's weak reference
    to the buffer's ResultBuffer, or None when no run returned it)."""
    return ref is not None and ref() is not None


def lease(real: DeviceBuffer, ref: Optional[weakref.ref]):
    """(the live ResultBuffer of ``real``, its weak reference): the existing one when a
    result still holds it, else a new one."""
    handle = None if ref is None else ref()
    if handle is None:
        handle = ResultBuffer(real)
        ref = weakref.ref(handle)
    return handle, ref


def result_view(handle: ResultBuffer, like: DeviceArray) -> DeviceArray:
    """A new DeviceArray over ``handle`` with the view of ``like`` (a valid array over the
    same memory: the invariants of DeviceArray.__init__ hold, so they are not re-checked —
    this runs for every output of every run)."""
    arr = object.__new__(DeviceArray)
    arr.buffer, arr.shape, arr.dtype = handle, like.shape, like.dtype
    arr.strides, arr.offset = like.strides, like.offset
    return arr
