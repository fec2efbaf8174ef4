"""One device allocation for the memory of one call, in slices placed by :func:`layout`
(docs/abi.md §4); a result's slice holds a share and the last share frees the arena."""

from __future__ import annotations

import threading
from typing import List, Optional, Sequence, Tuple

from . import ownership
from .runtime import DEVICE_ALIGN, DeviceBuffer

__all__ = ["ARENA_ALIGN", "ArenaBuffer", "ArenaSlice", "layout"]

# a multiple of the 32 bytes aclCreateTensor wants (docs/abi.md §4): torch_npu's granularity
ARENA_ALIGN = 512
assert ARENA_ALIGN % DEVICE_ALIGN == 0


def layout(sizes: Sequence[int], start: int = 0) -> Tuple[List[int], int]:
    """(start offsets, end) of pieces of ``sizes`` bytes placed in turn from ``start``, each
    start rounded up to a multiple of :data:`ARENA_ALIGN`."""
    offsets = []
    end = start
    align = ARENA_ALIGN
    for n in sizes:
        at = -(-end // align) * align
        offsets.append(at)
        end = at + n
    return offsets, end


class ArenaBuffer(DeviceBuffer):
    """The arena's one allocation (see the module doc)."""

    _what = "device memory of a call (aclrtMalloc, arena)"
    # (device, context record) when it came from .call_pool and may go back there, else None
    pool_key = None

    def __init__(self, nbytes: int, device_id: Optional[int] = None) -> None:
        self._shares = 0
        self._share_lock = threading.Lock()
        super().__init__(nbytes, device_id)

    def share(self, piece: "ArenaSlice") -> None:
        """``piece`` is handed out (a result): it holds a share of the arena until freed."""
        if piece.arena is not self:
            raise ValueError("the slice belongs to another arena")
        with self._share_lock:
            if not piece._shared:
                piece._shared = True
                self._shares += 1

    @property
    def shares(self) -> int:
        return self._shares


class ArenaSlice(DeviceBuffer):
    """Bytes [start, start + nbytes) of an :class:`ArenaBuffer`; owns nothing native:
    ``free()`` gives back the slice's share of the arena (if it holds one)."""

    def __init__(self, arena: ArenaBuffer, start: int, nbytes: int) -> None:
        self.arena: Optional[ArenaBuffer] = arena
        self.start = int(start)
        self.nbytes = int(nbytes)
        self.device_id = arena.device_id
        self._shared = False

    @property
    def ptr(self) -> Optional[int]:
        arena = self.arena
        base = None if arena is None else arena.ptr
        return None if base is None else base + self.start

    @property
    def closed(self) -> bool:
        arena = self.arena
        return arena is None or arena.ptr is None

    released = closed

    def release(self, mode: str = "raise") -> None:
        arena = self.arena
        if arena is None:
            return
        with ownership.atomic(), arena._share_lock:    # once, whichever thread comes first
            if self.arena is None:
                return
            self.arena = None
            last = False
            if self._shared:
                self._shared = False
                arena._shares -= 1
                last = arena._shares == 0
        if last:
            arena.release(mode)

    def __repr__(self) -> str:
        state = "freed" if self.closed else f"{self.ptr:#x}"
        return (f"<ArenaSlice {self.nbytes} bytes at +{self.start} on device {self.device_id}: "
                f"{state}>")
