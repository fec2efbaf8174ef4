"""The versions the runtime reports through optional symbols of libascendcl (docs/abi.md
§2e; docs/releases.md, "Version queries"); a missing or failing one is recorded, not raised."""

from __future__ import annotations

import ctypes
from ctypes import byref, c_int32, create_string_buffer
from typing import Optional

from .. import releases
from .runtime import recent_message

__all__ = ["query_cann_version", "release_of", "PKG_VERSION_MAX_SIZE", "PackageVersion",
           "ACL_PKG_NAME_CANN", "PACKAGES", "cann_version_or_error", "version_summary_line"]

PKG_VERSION_MAX_SIZE = 128        # ACL_PKG_VERSION_MAX_SIZE
PKG_VERSION_PARTS_MAX_SIZE = 64   # ACL_PKG_VERSION_PARTS_MAX_SIZE
ACL_PKG_NAME_CANN = 0             # aclCANNPackageName: ACL_PKG_NAME_CANN = 0
PACKAGES = ("runtime", "ops_transformer")   # aclsysGetVersionStr package names queried
_PARTS = ("major", "minor", "release", "patch")


class PackageVersion(ctypes.Structure):
    """``aclCANNPackageVersion``: version[128], major/minor/release/patch[64], reserved[128]."""

    _fields_ = ([("version", ctypes.c_char * PKG_VERSION_MAX_SIZE)]
                + [(f"{p}Version", ctypes.c_char * PKG_VERSION_PARTS_MAX_SIZE) for p in _PARTS]
                + [("reserved", ctypes.c_char * PKG_VERSION_MAX_SIZE)])


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()


def _call(b, name: str, *args, label: str = "") -> Optional[str]:
    """The optional ``b.<name>(*args)``: None when it succeeded, else why it gave nothing."""
    fn = getattr(b, name, None)
    if fn is None:
        return f"{name}: not exported"
    rc = fn(*args)
    if not rc:
        return None
    msg = recent_message(b)
    return f"{label or name} returned {rc}" + (f": {msg}" if msg else "")


def _version_str(b, pkg: str) -> tuple:
    """(``aclsysGetVersionStr(pkg)`` or None, why it gave nothing or None)."""
    buf = create_string_buffer(PKG_VERSION_MAX_SIZE)
    label = f"aclsysGetVersionStr({pkg!r})"
    why = _call(b, "aclsysGetVersionStr", pkg.encode(), buf, label=label)
    text = None if why else _text(buf.raw)
    if text == "":
        return None, f"{label}: returned an empty string"
    return text, why


def _empty() -> dict:
    return {"cann_version": None, "cann_version_source": None, "acl_api_version": None,
            "runtime_version": None, "ops_transformer_version": None, "version_num": {},
            "attempts": []}


def query_cann_version(b) -> dict:
    """The versions through the bound functions ``b`` (the keys of :func:`_empty`, plus
    ``cann_version_parts`` from aclsysGetCANNVersion and :func:`release_of`'s); ``attempts``
    says why a query gave nothing. Never raises for a missing or failing symbol."""
    out = _empty()
    attempts = out["attempts"]
    ver = PackageVersion()
    why = _call(b, "aclsysGetCANNVersion", ACL_PKG_NAME_CANN, byref(ver))
    text = None if why else _text(bytes(ver.version))
    if text:
        out.update(cann_version=text, cann_version_source="aclsysGetCANNVersion",
                   cann_version_parts={p: _text(bytes(getattr(ver, f"{p}Version")))
                                       for p in _PARTS})
    else:
        attempts.append(why or "aclsysGetCANNVersion: returned an empty string")
        text, why = _version_str(b, "CANN")
        if text is not None:
            out.update(cann_version=text, cann_version_source="aclsysGetVersionStr")
        else:
            attempts.append(why)
    nums = (c_int32(0), c_int32(0), c_int32(0))
    why = _call(b, "aclrtGetVersion", *(byref(n) for n in nums))
    # the ACL *API* version: never read as a CANN release
    out["acl_api_version"] = api = None if why else ".".join(str(n.value) for n in nums)
    if out["cann_version"] is None:
        if api is not None:
            out.update(cann_version=f"acl-api {api}", cann_version_source="aclrtGetVersion")
        else:
            attempts.append(why)
    for pkg in PACKAGES:
        text, why = _version_str(b, pkg)
        out[f"{pkg}_version"] = text
        if text is None:
            attempts.append(why)
        num = c_int32(0)
        if _call(b, "aclsysGetVersionNum", pkg.encode(), byref(num)) is None:
            out["version_num"][pkg] = int(num.value)
    out.update(release_of(out))
    return out


def release_of(v: dict) -> dict:
    """The known release whose rules apply to the versions ``v``: read from the
    ops_transformer version, else the runtime's, else the CANN version."""
    for key, source in (("ops_transformer_version", "ops_transformer"),
                        ("runtime_version", "runtime"), ("cann_version", "CANN")):
        text = v.get(key)
        if text and not text.startswith("acl-api"):
            release, note = releases.resolve(text, f"the {source} version")
            return {"release": release.name, "release_from": source, "release_note": note}
    release, note = releases.resolve(None, "the CANN version (no query answered)")
    return {"release": release.name, "release_from": None, "release_note": note}


def cann_version_or_error(b) -> dict:
    """``query_cann_version`` that turns an unexpected exception into an ``error`` entry."""
    try:
        return query_cann_version(b)
    except Exception as exc:   # a broken symbol must not break `aclnn-fag info`
        out = _empty()
        out["error"] = f"{type(exc).__name__}: {exc}"
        out.update(release_of(out))
        return out


def version_summary_line(v: Optional[dict]) -> str:
    """One line for humans: ``9.1.0 (aclsysGetCANNVersion)`` or ``unknown (...)``."""
    if not v:
        return "unknown (libraries not loaded)"
    if v.get("cann_version"):
        return f"{v['cann_version']} ({v.get('cann_version_source')})"
    why = "; ".join(v.get("attempts") or []) or v.get("error") or "no query answered"
    return f"unknown ({why})"
