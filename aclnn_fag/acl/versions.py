"""The versions the runtime reports (optional symbols of libascendcl, each tried with a
128-byte buffer; a symbol the installed CANN does not export is skipped, a failing call is
recorded with its status and the next query is tried):

* **the CANN version**: ``aclsysGetCANNVersion(ACL_PKG_NAME_CANN, &version)`` first (as
  torch_npu asks for "CANN"; deprecated in newer releases but still exported), then
  ``aclsysGetVersionStr("CANN", buf)``, then the ACL *API* version of
  ``aclrtGetVersion(&major, &minor, &patch)``, reported as ``"acl-api <major>.<minor>.<patch>"``
  so that it is never read as a CANN release;
* **the package versions**: ``aclsysGetVersionStr(pkg, buf)`` reads
  ``$ASCEND_HOME_PATH/share/info/<pkg>/version.info``; queried for ``"runtime"`` and for
  ``"ops_transformer"``, the package that holds these two ops; ``aclsysGetVersionNum(pkg,
  &num)`` (newer releases) gives each package's version as a number that grows with the
  release, recorded as it is;
* **the release whose rules apply** (:mod:`aclnn_fag.releases`): read from the
  ops_transformer version, else the runtime's, else the CANN version.

The ACL API version is queried on its own as well (when exported): it identifies the runtime
library independently of the package strings.
"""

from __future__ import annotations

import ctypes
from ctypes import byref, c_int32, create_string_buffer
from typing import Optional

from .. import releases

__all__ = ["query_cann_version", "release_of", "PKG_VERSION_MAX_SIZE", "PackageVersion",
           "ACL_PKG_NAME_CANN", "PACKAGES"]

PKG_VERSION_MAX_SIZE = 128        # ACL_PKG_VERSION_MAX_SIZE
PKG_VERSION_PARTS_MAX_SIZE = 64   # ACL_PKG_VERSION_PARTS_MAX_SIZE
ACL_PKG_NAME_CANN = 0             # aclCANNPackageName: ACL_PKG_NAME_CANN = 0
PACKAGES = ("runtime", "ops_transformer")   # aclsysGetVersionStr package names queried


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


def _version_str(b, pkg: str) -> tuple:
    """(``aclsysGetVersionStr(pkg)`` or None, why it gave nothing or None)."""
    fn = getattr(b, "aclsysGetVersionStr", None)
    if fn is None:
        return None, "aclsysGetVersionStr: not exported"
    buf = create_string_buffer(PKG_VERSION_MAX_SIZE)
    rc = fn(pkg.encode(), buf)
    if rc:
        return None, _failed(b, f"aclsysGetVersionStr({pkg!r})", rc)
    text = _text(buf.raw)
    return (text, None) if text else (None, f"aclsysGetVersionStr({pkg!r}): returned an empty string")


def _version_num(b, pkg: str) -> Optional[int]:
    fn = getattr(b, "aclsysGetVersionNum", None)
    if fn is None:
        return None
    num = c_int32(0)
    return None if fn(pkg.encode(), byref(num)) else int(num.value)


def _cann_version_struct(b) -> tuple:
    """(text or None, parts or None, why it gave nothing or None) of aclsysGetCANNVersion."""
    fn = getattr(b, "aclsysGetCANNVersion", None)
    if fn is None:
        return None, None, "aclsysGetCANNVersion: not exported"
    ver = PackageVersion()
    rc = fn(ACL_PKG_NAME_CANN, byref(ver))
    if rc:
        return None, None, _failed(b, "aclsysGetCANNVersion", rc)
    text = _text(bytes(ver.version))
    if not text:
        return None, None, "aclsysGetCANNVersion: returned an empty string"
    parts = {k: _text(bytes(getattr(ver, f))) for k, f in (
        ("major", "majorVersion"), ("minor", "minorVersion"), ("release", "releaseVersion"),
        ("patch", "patchVersion"))}
    return text, parts, None


def query_cann_version(b) -> dict:
    """The versions through the bound functions ``b`` (a ``prototypes.Bindings``; missing
    optional symbols are None). Never raises for a missing or failing symbol. Returns::

        {"cann_version": str or None, "cann_version_source": function name or None,
         "cann_version_parts": {...} (aclsysGetCANNVersion only), "acl_api_version": str or None,
         "runtime_version": str or None, "ops_transformer_version": str or None,
         "version_num": {"runtime": int, "ops_transformer": int} (what answered),
         "release": "9.1.0" (the known release whose rules apply), "release_from": what it
         was read from, "release_note": why it is not an exact match (or None),
         "attempts": ["aclsysGetCANNVersion: ...", ...]}   # why a query gave nothing
    """
    out = {"cann_version": None, "cann_version_source": None, "acl_api_version": None,
           "runtime_version": None, "ops_transformer_version": None, "version_num": {},
           "attempts": []}
    attempts = out["attempts"]
    text, parts, why = _cann_version_struct(b)
    if text is not None:
        out.update(cann_version=text, cann_version_source="aclsysGetCANNVersion",
                   cann_version_parts=parts)
    else:
        attempts.append(why)
        text, why = _version_str(b, "CANN")
        if text is not None:
            out.update(cann_version=text, cann_version_source="aclsysGetVersionStr")
        else:
            attempts.append(why)
    api, api_error = acl_api_version(b)
    out["acl_api_version"] = api
    if out["cann_version"] is None:
        if api is not None:
            out.update(cann_version=f"acl-api {api}", cann_version_source="aclrtGetVersion")
        else:
            attempts.append(api_error)
    for pkg in PACKAGES:
        text, why = _version_str(b, pkg)
        out[f"{pkg}_version"] = text
        if text is None:
            attempts.append(why)
        num = _version_num(b, pkg)
        if num is not None:
            out["version_num"][pkg] = num
    out.update(release_of(out))
    return out


def release_of(v: dict) -> dict:
    """The known release whose rules apply to the versions ``v`` (see the module doc)."""
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
        out = {"cann_version": None, "cann_version_source": None, "acl_api_version": None,
               "runtime_version": None, "ops_transformer_version": None, "version_num": {},
               "attempts": [], "error": f"{type(exc).__name__}: {exc}"}
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
