"""Turning native status codes into the package's exception classes."""

from __future__ import annotations

from typing import Optional

from ..errors import ACL_ERRORS, ACLNN_STATUS, AclRuntimeError, error_class_for

ACLNN_ERR_INNER_NULLPTR = 561103


def recent_message(b) -> Optional[str]:
    """``aclGetRecentErrMsg()`` text of this thread (None when absent or the symbol is missing)."""
    fn = getattr(b, "aclGetRecentErrMsg", None)
    try:
        raw = fn() if fn is not None else None
    except Exception:  # pragma: no cover - defensive: never mask the real error
        return None
    return (raw.decode("utf-8", errors="replace").strip() or None) if raw else None


def status_error(b, code: int, function: str, rule: str = "", recent_msg: Optional[str] = None,
                 fetch_message: bool = True):
    """The exception for a non-zero ``code`` returned by ``function`` (message fetched now)."""
    if recent_msg is None and fetch_message:
        recent_msg = recent_message(b)
    code = int(code)
    runtime = function.startswith("aclrt") or function in ("aclInit", "aclFinalize")
    if code not in ACLNN_STATUS and code not in ACL_ERRORS and runtime:
        cls = AclRuntimeError
    else:
        cls = error_class_for(code)
    return cls(rule, code=code, function=function, recent_msg=recent_msg)


def check(b, code: int, function: str, rule: str = "") -> None:
    """Raise the exception class of ``code`` (with aclGetRecentErrMsg text) when it is non-zero."""
    if code:
        raise status_error(b, code, function, rule)


def null_handle_error(b, function: str):
    """The exception for a pointer-returning function that returned NULL (no status code exists;
    reported as 561103 ACLNN_ERR_INNER_NULLPTR with the library's recent message)."""
    return status_error(b, ACLNN_ERR_INNER_NULLPTR, function,
                        rule=f"{function} returned NULL")
