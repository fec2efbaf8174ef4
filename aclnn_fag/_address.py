"""The address of a numpy array's first element, cheaply.

``a.ctypes.data`` and ``a.__array_interface__`` build Python objects to answer (about 4 us
each); a call on host arrays needs the address of every upload and every download. NumPy's
C API reads it from the array object itself: ``PyArray_DATA`` is the ``data`` field that
follows the object header in ``PyArrayObject_fields`` -- part of the ABI every compiled
extension relies on. :func:`data_address` reads that field through ctypes, on CPython only,
and only after checking at import that it agrees with ``a.ctypes.data`` on probe arrays
(fresh ones, offset views, read-only ones, bfloat16); anywhere that check fails it is
``a.ctypes.data``.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np

__all__ = ["data_address", "FAST"]

_read_pointer = ctypes.c_void_p.from_address
_HEADER = object.__basicsize__          # sizeof(PyObject): the field after the header


def _slow(a: np.ndarray) -> int:
    return a.ctypes.data


def _fast(a: np.ndarray) -> int:
    return _read_pointer(id(a) + _HEADER).value or 0


def _agrees() -> bool:
    if sys.implementation.name != "cpython":
        return False
    import ml_dtypes
    base = np.arange(4096, dtype=np.uint8)
    frozen = np.arange(64, dtype=np.float32)
    frozen.flags.writeable = False
    probes = [base, base[17:], base.reshape(64, 64)[3:, 5:], frozen, frozen[1:].view(np.uint8),
              np.zeros((3, 5), ml_dtypes.bfloat16), np.frombuffer(b"abcdefgh", np.uint8)[2:]]
    try:
        return all(_fast(p) == p.ctypes.data for p in probes)
    except Exception:           # pragma: no cover - a layout this module does not know
        return False


FAST = _agrees()
data_address = _fast if FAST else _slow
data_address.__doc__ = "The address of ``a``'s first element (``a.ctypes.data``)."
