"""The address of a numpy array's first element."""

from __future__ import annotations

import numpy as np

__all__ = ["data_address"]


def data_address(a: np.ndarray) -> int:
    """The address of ``a``'s first element (``a.ctypes.data``; NumPy's public interface)."""
    return a.ctypes.data
