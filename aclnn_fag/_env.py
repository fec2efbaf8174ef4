"""Environment variables the NPU path reads on every call (the device, the cache sizes)."""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["get", "non_negative_int"]


def get(name: str) -> Optional[str]:
    """``os.environ.get(name)``: a change made at any time is seen by the next call."""
    return os.environ.get(name)


def non_negative_int(name: str, raw: Optional[str], default: int, zero_means: str) -> int:
    """Variable ``name``'s value (text ``raw``): ``default`` when unset or blank, else int >= 0."""
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be a non-negative integer "
                         f"({zero_means})") from None
    if value < 0:
        raise ValueError(f"environment variable {name}={raw!r} must be >= 0")
    return value
