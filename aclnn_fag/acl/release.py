"""The CANN release the loaded runtime reports, read once per loaded library set
(docs/releases.md): the rules of that release apply to NPU calls.

``current()`` queries the versions (:func:`.versions.query_cann_version`) the first time it
runs for the bindings :func:`.loader.bindings` returns, and keeps the answer with them; a
reload of the libraries (``loader.reset()``) gives new bindings and so a new query. A
version that is not a known release (newer, older, between two, unreadable) gives the rules
:func:`aclnn_fag.releases.resolve` picks and one ``UnknownReleaseWarning``; a failing query
gives the newest rules, never an error. ``forget()`` drops the kept answer (tests that
change ``$ACL_STUB_CANN_VERSION`` in-process call it).
"""

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
