"""One device copy per (dtype, device, ACL context record) of the package's read-only
compressed mask, used instead of an upload (docs/npu.md, "The compressed mask on the device")."""

from __future__ import annotations

import threading
from typing import Dict, Optional

import numpy as np

from .. import masks
from . import caches, runtime
from .device import DeviceArray, upload_arrays

__all__ = ["package_mask", "clear", "size"]

_lock = threading.Lock()
_copies: Dict[tuple, DeviceArray] = {}


def package_mask(mask, dev: int) -> Optional[DeviceArray]:
    """The device copy of ``mask`` when it is the package's own 2-D compressed mask, else
    None. Call after ``runtime.ensure_device(dev)``."""
    if type(mask) is not np.ndarray or mask.ndim != 2 or not masks.is_package_mask(mask):
        return None
    key = (mask.dtype.str, dev, runtime.current_context_record())
    da = _copies.get(key)
    if da is not None and not da.buffer.closed:
        return da
    with _lock:
        da = _copies.get(key)
        if da is None or da.buffer.closed:
            for old in [k for k in _copies if k[:2] == key[:2]]:
                del _copies[old]            # another context's copy: freed when unused
            da = upload_arrays([mask], dev)[0]
            _copies[key] = da
    return da


def clear() -> int:
    """Free every device copy; returns how many there were."""
    with _lock:
        copies = list(_copies.values())
        _copies.clear()
    runtime.free_all([da.buffer for da in copies])
    return len(copies)


def size() -> int:
    return len(_copies)


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _copies.clear()             # the parent's device memory: never freed here


caches.register("package mask device copies", clear, _forget_after_fork)
