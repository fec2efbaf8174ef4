"""The CANN releases the package knows (a :class:`Release` each, its flags saying what the op
does on it) and which one a call follows: the runtime's on the NPU, ``$ACLNN_FAG_CANN_RELEASE``
(default: the newest) on NumPy; an unknown version follows the nearest one (docs/releases.md)."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import UnknownReleaseWarning

__all__ = ["Release", "KNOWN", "NEWEST", "OLDEST", "ENV_VAR", "resolve", "numpy_release",
           "by_name"]

ENV_VAR = "ACLNN_FAG_CANN_RELEASE"


@dataclass(frozen=True)
class Release:
    """One known CANN release and what the op does on it."""

    name: str
    version: Tuple[int, int, int]
    eod_padding: bool
    batch_drops_zero_ends: bool
    process_wide_determinism: bool


KNOWN = (
    Release("8.5.0", (8, 5, 0), eod_padding=False, batch_drops_zero_ends=False,
            process_wide_determinism=False),
    Release("9.0.0", (9, 0, 0), eod_padding=True, batch_drops_zero_ends=False,
            process_wide_determinism=True),
    Release("9.1.0", (9, 1, 0), eod_padding=True, batch_drops_zero_ends=True,
            process_wide_determinism=True),
)
OLDEST, NEWEST = KNOWN[0], KNOWN[-1]

# "9.1.0", "8.5.0.stub", "9.0.0.alpha001", "8.5.RC1" (-> 8.5.0), "V100R001C23" is not one
_VERSION = re.compile(r"^\s*(\d{1,4})\.(\d{1,4})(?:\.(\d{1,4})|\.RC\d+)?(?:[.\-+_~][\w.\-+~]*)?\s*$",
                      re.IGNORECASE)
_said: set = set()


def by_name(name: str) -> Release:
    """The known release named exactly ``name`` (ValueError naming the known ones otherwise)."""
    for r in KNOWN:
        if r.name == name:
            return r
    raise ValueError(f"unknown CANN release {name!r}; known: {', '.join(r.name for r in KNOWN)}")


def resolve(text, source: str = "the CANN version") -> Tuple[Release, Optional[str]]:
    """The release whose rules apply to version ``text`` (else the nearest older one, the
    oldest, or the newest) and a note when it is not a known release (else None)."""
    m = _VERSION.match(text) if isinstance(text, str) else None
    if m is None:
        return NEWEST, (f"{source} {text!r} is not a version aclnn_fag can read: it applies the "
                        f"rules of the newest release it knows, CANN {NEWEST.name}")
    v = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    exact = [r for r in KNOWN if r.version[:2] == v[:2]]
    if exact:
        return exact[-1], None
    if v > NEWEST.version:
        return NEWEST, (f"{source} {text} is newer than the newest release aclnn_fag knows "
                        f"(CANN {NEWEST.name}): it applies that release's rules")
    if v < OLDEST.version:
        return OLDEST, (f"{source} {text} is older than the oldest release aclnn_fag knows "
                        f"(CANN {OLDEST.name}): it applies that release's rules")
    older = [r for r in KNOWN if r.version < v][-1]
    return older, (f"{source} {text} is not a release aclnn_fag knows: it applies the rules "
                   f"of CANN {older.name}, the newest known one before it")


def warn_once(note: Optional[str]) -> None:
    """Warn ``note`` (UnknownReleaseWarning) the first time it is seen in this process."""
    if note and note not in _said:
        _said.add(note)
        warnings.warn(note, UnknownReleaseWarning, stacklevel=3)


def numpy_release() -> Release:
    """The release the NumPy backend follows: ``$ACLNN_FAG_CANN_RELEASE`` or the newest."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return NEWEST
    release, note = resolve(raw, f"${ENV_VAR}")
    warn_once(note)
    return release
