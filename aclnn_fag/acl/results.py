"""The arrays a :class:`~aclnn_fag.acl.plan.FagPlan` run returns: never aliased by later runs.

A plan writes its outputs into device buffers it allocated. What ``run()`` returns for such
an output is a :class:`~aclnn_fag.acl.device.DeviceArray` over a :class:`ResultBuffer` — a
second Python handle on the same memory, so that every view the caller takes of a result
(``g.dq[..., :4]``) refers to that handle, never to the plan's own buffer object. The plan
keeps the last returned FagGrads (:class:`LastResults`) and, before the next run, asks
whether anybody else still refers to it, to one of its arrays or to one of their
ResultBuffers (:meth:`LastResults.held`):

* held: the plan hands that output's buffer over (it stops owning it; the results keep it
  alive and it is freed when the last of them dies, through the buffer's own ownership
  claim) and writes the run into a fresh zero-filled buffer;
* not held: the run writes into the same buffer and returns the same objects again (the
  loop ``for ...: plan.run()`` allocates nothing per run);
* at ``close()`` or garbage collection of the plan: held buffers are left to the results;
  the others are freed with the plan.

"Anybody else refers to it" is a reference count above the plan's own references
(CPython's ``sys.getrefcount``, calibrated at import with the same helper, so that the
interpreter's own stack references cancel out). A count can only be too high (a traceback
or debugger holding a result), which costs a fresh buffer, never an overwritten result.
Handing over moves Python references only: an interrupt at any bytecode neither leaks the
memory nor frees it twice.
"""

from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence

from .device import DeviceArray
from .runtime import DeviceBuffer

__all__ = ["ResultBuffer", "LastResults", "result_view", "build"]


_refs = sys.getrefcount
_PROBE = [object()]
# the count of an object held by exactly one container slot, read as ``_refs(c[k])`` (the
# shape every check below has: the object is never bound to a name while counted)
_BASE = _refs(_PROBE[0])
del _PROBE


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


def result_view(real: DeviceBuffer, like: DeviceArray) -> DeviceArray:
    """A new DeviceArray with the view of ``like`` (a valid array over ``real``) over a new
    ResultBuffer of ``real`` (DeviceArray.__init__'s checks hold already: not re-run)."""
    arr = object.__new__(DeviceArray)
    arr.buffer, arr.shape, arr.dtype = ResultBuffer(real), like.shape, like.dtype
    arr.strides, arr.offset = like.strides, like.offset
    return arr


class LastResults:
    """The FagGrads a plan returned last, and which of its outputs somebody still holds.

    ``slots`` names the fields; ``owned`` (per field) tells which arrays are over a
    ResultBuffer (the plan's buffers) rather than the caller's own arrays."""

    __slots__ = ("_box", "owned", "current")

    def __init__(self, grads, owned: Sequence[bool]) -> None:
        self._box = [grads]          # the plan's one reference to the tuple
        self.owned = tuple(owned)
        self.current = True          # False once an output array of the plan changed

    @property
    def grads(self):
        return self._box[0]

    def held(self) -> List[bool]:
        """Per field: True when anything besides this record refers to the returned tuple,
        to that field's array or (through a view or directly) to its ResultBuffer."""
        box, base = self._box, _BASE
        if _refs(box[0]) > base:
            return [True] * len(self.owned)
        g = box[0]
        out = []
        i = 0
        for own in self.owned:
            out.append(own and (_refs(g[i]) > base or _refs(g[i].buffer) > base))
            i += 1
        return out


def build(slots: Sequence[str], arrays: Dict[str, Optional[DeviceArray]],
          reals: Dict[str, DeviceBuffer], reuse: Dict[str, DeviceArray], factory):
    """A new LastResults: for each slot the caller's array (``arrays[slot]``, when the plan
    does not own the slot), the previous result array when given in ``reuse``, else a new
    result view over the plan's buffer ``reals[slot]``."""
    out, owned = [], []
    for n in slots:
        real = reals.get(n)
        if real is None:
            out.append(arrays[n])
            owned.append(False)
        else:
            prev = reuse.get(n)
            out.append(prev if prev is not None else result_view(real, arrays[n]))
            owned.append(True)
    return LastResults(factory(*out), owned)
