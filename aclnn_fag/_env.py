"""Environment variables read on every call, read cheaply.

``os.environ.get`` encodes the name and decodes the value on every call (about 2 us); a
call on the NPU path reads a few variables (the device, the cache sizes), so that added up.
:func:`get` returns exactly what ``os.environ.get`` returns, from the same mapping
(``os.environ``'s own store, so changes made through ``os.environ`` -- ``monkeypatch.setenv``
included -- are seen at once), with the encoded name kept and the last decoded value reused
while the stored value object is the same one. Where ``os.environ`` does not keep such a store
(not CPython's ``os._Environ``) it is ``os.environ.get``.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

__all__ = ["get", "non_negative_int"]

_env = os.environ
_store = getattr(_env, "_data", None)
_encodekey = getattr(_env, "encodekey", None)
_decodevalue = getattr(_env, "decodevalue", None)
_FAST = isinstance(_store, dict) and callable(_encodekey) and callable(_decodevalue)
_keys: Dict[str, object] = {}
_decoded: Dict[str, Tuple[object, str]] = {}


def get(name: str) -> Optional[str]:
    """``os.environ.get(name)``, cheaply (see the module doc)."""
    if not _FAST:
        return _env.get(name)
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = _encodekey(name)
    value = _store.get(key)
    if value is None:
        return None
    last = _decoded.get(name)
    if last is not None and last[0] is value:
        return last[1]
    text = _decodevalue(value)
    _decoded[name] = (value, text)
    return text


def non_negative_int(name: str, raw: Optional[str], default: int, zero_means: str) -> int:
    """The value of variable ``name`` whose text is ``raw`` (from :func:`get`): ``default``
    when unset or blank, else a non-negative integer; ValueError naming the variable
    otherwise (``zero_means``: what 0 does, for the message)."""
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
