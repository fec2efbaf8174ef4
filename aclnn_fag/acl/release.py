"""The CANN release the loaded runtime reports (docs/releases.md), read once per loaded
library set; a failing query gives the newest rules, never an error."""

from __future__ import annotations

import threading

from .. import releases
from . import loader, versions

__all__ = ["current", "forget"]

_lock = threading.Lock()
_kept = (None, None)          # (the bindings queried, the Release)


def _query(b):
    try:
        found = versions.query_cann_version(b)
        release, note = releases.by_name(found["release"]), found.get("release_note")
    except Exception as exc:    # a broken symbol must never make a call fail
        release, note = releases.resolve(None, f"the CANN version ({type(exc).__name__})")
    releases.warn_once(note)
    return release


def current() -> releases.Release:
    """The release whose rules NPU calls follow (read once per loaded library set)."""
    global _kept
    b = loader.bindings()
    kept_b, release = _kept
    if kept_b is b:
        return release
    with _lock:
        if _kept[0] is not b:
            _kept = (b, _query(b))
        return _kept[1]


def forget() -> None:
    """Query the versions again at the next call."""
    global _kept
    with _lock:
        _kept = (None, None)
