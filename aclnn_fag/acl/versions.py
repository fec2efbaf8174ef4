"""The CANN version as the runtime reports it (three optional symbols, tried in order).

1. ``aclsysGetVersionStr("CANN", buf)`` — newer releases; torch_npu's ``get_cann_version``
   tries it first;
2. ``aclsysGetCANNVersion(ACL_PKG_NAME_CANN, &version)`` — 8.1.RC1 and later (deprecated
   later); ``version.version`` is the string;
3. ``aclrtGetVersion(&major, &minor, &patch)`` — the ACL *API* version only: reported as
   ``"acl-api <major>.<minor>.<patch>"`` so that it is never read as a CANN release.

A symbol the installed CANN does not export is skipped; a failing call is recorded with its
status and the next one is tried. The ACL API version is queried on its own as well (when
exported) because it identifies the runtime library independently of the package string.
"""

from __future__ import annotations

import ctypes
from ctypes import byref, c_int32, create_string_buffer
from typing import Optional

__all__ = ["query_cann_version", "PKG_VERSION_MAX_SIZE", "PackageVersion", "ACL_PKG_NAME_CANN"]

PKG_VERSION_MAX_SIZE = 128        # ACL_PKG_VERSION_MAX_SIZE
PKG_VERSION_PARTS_MAX_SIZE = 64   # ACL_PKG_VERSION_PARTS_MAX_SIZE
ACL_PKG_NAME_CANN = 0             # aclCANNPackageName: ACL_PKG_NAME_CANN = 0
_BUFFER = 1024                    # generous: the library writes at most PKG_VERSION_MAX_SIZE


class PackageVersion(ctypes.Structure):
    """``aclCANNPackageVersion``: version[128], major/minor/release/patch[64], reserved[128]."""

    _fields_ = [("version", ctypes.c_char * PKG_VERSION_MAX_SIZE),
                ("majorVersion", ctypes.c_char * PKG_VERSION_PARTS_MAX_SIZE),
                ("minorVersion", ctypes.c_char * PKG_VERSION_PARTS_MAX_SIZE),
                ("releaseVersion", ctypes.c_char * PKG_VERSION_PARTS_MAX_SIZE),
                ("patchVersion", ctypes.c_char * PKG_VERSION_PARTS_MAX_SIZE),
                ("reserved", ctypes.c_char * PKG_VERSION_MAX_SIZE)]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()


def _recent(b) -> str:
    fn = getattr(b, "aclGetRecentErrMsg", None)
    if fn is None:
        return ""
    try:
        raw = fn()
    except Exception:
        return ""
    return raw.decode("utf-8", errors="replace") if raw else ""


def _failed(b, name: str, rc: int) -> str:
    msg = _recent(b)
    return f"{name} returned {rc}" + (f": {msg}" if msg else "")


def acl_api_version(b) -> tuple:
    """(``"major.minor.patch"`` or None, error text or None) from ``aclrtGetVersion``."""
    fn = getattr(b, "aclrtGetVersion", None)
    if fn is None:
        return None, "aclrtGetVersion: not exported"
    major, minor, patch = c_int32(0), c_int32(0), c_int32(0)
    rc = fn(byref(major), byref(minor), byref(patch))
    if rc:
        return None, _failed(b, "aclrtGetVersion", rc)
    return f"{major.value}.{minor.value}.{patch.value}", None


def query_cann_version(b) -> dict:
    """The CANN version through the bound functions ``b`` (a ``prototypes.Bindings``; missing
    optional symbols are None). Never raises for a missing or failing symbol. Returns::

        {"cann_version": str or None, "cann_version_source": function name or None,
         "cann_version_parts": {...} (aclsysGetCANNVersion only), "acl_api_version": str or None,
         "attempts": ["aclsysGetVersionStr: ...", ...]}   # why earlier ones gave nothing
    """
    out = {"cann_version": None, "cann_version_source": None, "acl_api_version": None,
           "attempts": []}
    attempts = out["attempts"]

    fn = getattr(b, "aclsysGetVersionStr", None)
    if fn is None:
        attempts.append("aclsysGetVersionStr: not exported")
    else:
        buf = create_string_buffer(_BUFFER)
        rc = fn(b"CANN", buf)
        text = _text(buf.raw) if rc == 0 else ""
        if rc:
            attempts.append(_failed(b, "aclsysGetVersionStr", rc))
        elif not text:
            attempts.append("aclsysGetVersionStr: returned an empty string")
        else:
            out.update(cann_version=text, cann_version_source="aclsysGetVersionStr")

    if out["cann_version"] is None:
        fn = getattr(b, "aclsysGetCANNVersion", None)
        if fn is None:
            attempts.append("aclsysGetCANNVersion: not exported")
        else:
            ver = PackageVersion()
            rc = fn(ACL_PKG_NAME_CANN, byref(ver))
            text = _text(bytes(ver.version)) if rc == 0 else ""
            if rc:
                attempts.append(_failed(b, "aclsysGetCANNVersion", rc))
            elif not text:
                attempts.append("aclsysGetCANNVersion: returned an empty string")
            else:
                out.update(cann_version=text, cann_version_source="aclsysGetCANNVersion",
                           cann_version_parts={k: _text(bytes(getattr(ver, f))) for k, f in (
                               ("major", "majorVersion"), ("minor", "minorVersion"),
                               ("release", "releaseVersion"), ("patch", "patchVersion"))})

    api, api_error = acl_api_version(b)
    out["acl_api_version"] = api
    if out["cann_version"] is None:
        if api is not None:
            out.update(cann_version=f"acl-api {api}", cann_version_source="aclrtGetVersion")
        else:
            attempts.append(api_error)
    return out


def cann_version_or_error(b) -> dict:
    """``query_cann_version`` that turns an unexpected exception into an ``error`` entry."""
    try:
        return query_cann_version(b)
    except Exception as exc:   # a broken symbol must not break `aclnn-fag info`
        return {"cann_version": None, "cann_version_source": None, "acl_api_version": None,
                "attempts": [], "error": f"{type(exc).__name__}: {exc}"}


def version_summary_line(v: Optional[dict]) -> str:
    """One line for humans: ``8.5.0 (aclsysGetVersionStr)`` or ``unknown (...)``."""
    if not v:
        return "unknown (libraries not loaded)"
    if v.get("cann_version"):
        return f"{v['cann_version']} ({v.get('cann_version_source')})"
    why = "; ".join(v.get("attempts") or []) or v.get("error") or "no query answered"
    return f"unknown ({why})"
