"""Progress on stderr for long work (the cases of ``parity``/``bench``, the blocks of a long
NumPy-backend call): tqdm's bar when tqdm is installed, else a plain line at most every
``PLAIN_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Optional

__all__ = ["progress_bar", "call_progress_wanted", "enable_call_progress", "estimate_seconds",
           "LONG_CALL_S", "ASSUMED_GFLOPS", "ENV_VAR", "BlockProgress"]

ENV_VAR = "ACLNN_FAG_PROGRESS"
LONG_CALL_S = 10.0          # calls estimated longer than this report progress
ASSUMED_GFLOPS = 40.0       # a conservative NumPy float32 rate for the estimate
PLAIN_INTERVAL_S = 2.0      # the plain (no tqdm) bar writes at most this often
_ON = ("1", "true", "yes", "on")
_enabled_by_cli = False


def enable_call_progress(on: bool = True) -> bool:
    """Report progress of long NumPy-backend calls by default; returns the previous setting."""
    global _enabled_by_cli
    previous, _enabled_by_cli = _enabled_by_cli, bool(on)
    return previous


def call_progress_wanted(progress: Optional[bool]) -> bool:
    """Whether a call reports progress: its ``progress`` argument, else ``$ACLNN_FAG_PROGRESS``,
    else whether the CLI enabled it."""
    if progress is not None:
        if not isinstance(progress, bool):
            raise TypeError(f"parameter 'progress' must be None, True or False, got "
                            f"{type(progress).__name__}")
        return progress
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw and raw not in _ON + ("0", "false", "no", "off"):
        raise ValueError(f"{ENV_VAR} must be 1/true/yes/on or 0/false/no/off, got {raw!r}")
    return raw in _ON if raw else _enabled_by_cli


def estimate_seconds(flops: float) -> float:
    """The expected time of ``flops`` float operations on the NumPy backend."""
    return flops / (ASSUMED_GFLOPS * 1e9)


class _PlainBar:
    """tqdm's interface as lines on ``stream`` (None: silent), at most every PLAIN_INTERVAL_S."""

    def __init__(self, total, desc, unit, stream):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self._stream, self._postfix = stream, ""
        self._start = self._last = time.perf_counter()

    def update(self, n=1):
        self.n += n
        now = time.perf_counter()
        if self._stream is not None and (now - self._last >= PLAIN_INTERVAL_S
                                         or self.n >= self.total):
            self._last = now
            rate = self.n / max(now - self._start, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            extra = f" [{self._postfix}]" if self._postfix else ""
            self._stream.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s, "
                               f"{rate:.2f} {self.unit}/s, ETA {eta:.0f} s{extra}\n")
            self._stream.flush()

    def set_postfix_str(self, s, refresh=True):
        self._postfix = s

    def close(self):
        pass


def _bar(total, desc, unit, enabled, stream):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not enabled:
        return _PlainBar(total, desc, unit, stream if enabled else None)
    return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, stream=None):
    """A bar over ``total`` steps on stderr with ``update(n)`` and ``set_postfix_str(s)``, as a
    context manager that closes it; nothing is shown when ``enabled`` is false."""
    return contextlib.closing(_bar(total, desc, unit, enabled, stream or sys.stderr))


class BlockProgress:
    """Progress of one long NumPy-backend call over its blocks (nothing when disabled)."""

    def __init__(self, total_blocks: int, what: str, enabled: bool):
        self._bar = _bar(total_blocks, what, "block", enabled, sys.stderr)

    def step(self, n: int = 1):
        self._bar.update(n)

    def close(self):
        self._bar.close()
