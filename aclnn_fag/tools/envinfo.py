"""What this machine offers: package and library versions, the NPU backend's status, and
the versions of everything a parity result depends on.

* ``toolkit_install_info()``: the CANN toolkit's install-info file (``ascend_toolkit_install.info``
  and, on older installs, ``version.info`` / ``version.cfg``), looked for in the directories
  around ``$ASCEND_HOME_PATH``, ``$ASCEND_TOOLKIT_HOME`` and the loaded runtime library;
  ``key=value`` lines parsed (``version``, ``innerversion``, ``package_name``, ...).
* ``driver_version()``: ``<Ascend root>/driver/version.info`` (``Version=...``), where the
  Ascend root is ``/usr/local/Ascend`` or a parent of ``$ASCEND_HOME_PATH``.
* numpy's BLAS and its threads: :func:`aclnn_fag.blas.blas_info`, recorded as it is.
* ``package_versions()``: aclnn_fag, numpy, ml_dtypes, Python.
* ``summary(env)``: the version facts of a report's environment block, flat.

The CANN version reported by the runtime itself comes from :mod:`aclnn_fag.acl.versions`.
Never raises because the NPU stack is missing: ``npu_status()`` reports why instead, so
``aclnn-fag info`` and every report work on a machine without CANN.
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys
from typing import Dict, List, Mapping, Optional

import ml_dtypes
import numpy as np

__all__ = ["npu_status", "auto_backend", "environment", "device_id_from_env", "backend_label",
           "toolkit_install_info", "driver_version", "package_versions", "parse_key_values",
           "DEFAULT_ASCEND_ROOT", "INSTALL_INFO_NAMES", "summary", "shorten", "SHORT_WIDTH"]


def backend_label(name, npu: dict = None) -> str:
    """``name`` ("numpy"/"npu"), with " [STAND-IN stub libraries ...]" when the "npu" backend
    is the stand-in libraries of native_stubs/ (so a stub run is never taken for a device run)."""
    if name != "npu":
        return str(name)
    npu = npu if npu is not None else npu_status()
    if npu.get("stand_in"):
        soc = npu.get("soc_name")
        return f"npu [{npu.get('stand_in_note') or 'STAND-IN stub libraries'}" + (
            f"; SoC {soc}]" if soc else "]")
    return "npu"


def device_id_from_env():
    """``$ACLNN_FAG_DEVICE`` as an int, or None when unset/empty."""
    raw = os.environ.get("ACLNN_FAG_DEVICE", "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"ACLNN_FAG_DEVICE must be an integer device id, got {raw!r}") from None


def npu_status(refresh: bool = False) -> dict:
    """The NPU backend's view of this machine as a JSON-ready dict: what ``acl.info()``
    returns (libraries with paths or why not, search order, device count, SoC name,
    features), plus ``ok`` (bool) and ``reason``. Never raises."""
    try:
        from .. import acl
    except Exception as exc:        # module missing or broken: report, never raise
        return {"ok": False, "reason": f"the NPU backend module aclnn_fag.acl cannot be imported: "
                                        f"{type(exc).__name__}: {exc}"}
    out = {}
    try:
        status = acl.availability(refresh=refresh)
        out.update(ok=bool(status.ok), reason=str(getattr(status, "reason", "") or ""),
                   device_count=getattr(status, "device_count", None),
                   libraries=_jsonable(getattr(status, "libraries", None)))
    except Exception as exc:
        out.update(ok=False, reason=f"acl.availability() failed: {type(exc).__name__}: {exc}")
    try:
        info = acl.info()
    except Exception as exc:
        out["info_error"] = f"acl.info() failed: {type(exc).__name__}: {exc}"
        return out
    if isinstance(info, dict):
        for key, value in info.items():
            if key == "reason" and out.get("reason"):
                continue
            out[key] = _jsonable(value)
    return out


def auto_backend() -> tuple:
    """(name, None) of the backend "auto" picks, or (None, reason) when resolving fails."""
    from ..api import resolve_backend
    try:
        return resolve_backend("auto"), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def environment(backend: str = None, precision: str = None, npu: dict = None) -> dict:
    """Environment block of the JSON reports (``versions``: see ``versions_block``)."""
    from .. import __version__
    npu = npu if npu is not None else npu_status()
    env = {
        "package_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "numpy_version": np.__version__,
        "ml_dtypes_version": getattr(ml_dtypes, "__version__", "unknown"),
        "cpu_count": os.cpu_count(),
        "backend": backend,
        "precision": precision,
        "npu_available": npu.get("ok", False),
        "npu_reason": npu.get("reason", ""),
        "library_paths": _library_paths(npu),
        "device_count": npu.get("device_count"),
        "soc_name": npu.get("soc_name"),
        # True: the "npu" backend is this project's stand-in libraries, not a device
        "stand_in": bool(npu.get("stand_in", False)),
        "stand_in_note": npu.get("stand_in_note"),
        "device_id": os.environ.get("ACLNN_FAG_DEVICE") or None,
        "versions": versions_block(npu),
        "cann_rules": rules_block(backend, npu),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("ACLNN_FAG_", "ASCEND_", "ACL_STUB_"))
                or k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    return env


def versions_block(npu: dict) -> dict:
    """Versions a parity result depends on (see the functions below): the CANN version
    the runtime reports (None when the libraries are not loaded), the toolkit's install-info
    file, the driver's version, numpy's BLAS and threads, the Python packages."""
    from .. import blas
    paths = [p for p in _library_paths(npu).values() if isinstance(p, str)]
    return {
        "cann": npu.get("versions"),
        "toolkit_install": toolkit_install_info(library_paths=paths),
        "driver": driver_version(),
        "blas": blas.blas_info(),
        "packages": package_versions(),
    }


def rules_block(backend, npu: dict) -> dict:
    """Which CANN release's rules the backend under test follows (docs/releases.md): on the
    NPU the release read from the runtime's versions, on the NumPy backend
    ``$ACLNN_FAG_CANN_RELEASE`` or the newest known."""
    from .. import releases
    if backend == "npu":
        v = npu.get("versions") or {}
        return {"release": v.get("release"), "from": v.get("release_from"),
                "note": v.get("release_note")}
    raw = os.environ.get(releases.ENV_VAR, "").strip()
    release, note = releases.resolve(raw, f"${releases.ENV_VAR}") if raw else (releases.NEWEST, None)
    return {"release": release.name, "from": f"${releases.ENV_VAR}" if raw else "newest known",
            "note": note}


def _library_paths(npu: dict) -> dict:
    libs = npu.get("libraries")
    if isinstance(libs, dict):
        return {str(k): (v if isinstance(v, (str, type(None))) else _jsonable(v)) for k, v in libs.items()}
    if isinstance(libs, (list, tuple)):
        return {str(i): _jsonable(v) for i, v in enumerate(libs)}
    return {}


def _jsonable(value):
    """Best-effort conversion of library/status objects to JSON-ready data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "_asdict"):
        return _jsonable(value._asdict())
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict
        return _jsonable(asdict(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


# --------------------------------------------------------------------------- versions read without loading CANN
DEFAULT_ASCEND_ROOT = "/usr/local/Ascend"
INSTALL_INFO_NAMES = ("ascend_toolkit_install.info", "version.info", "version.cfg")
_MAX_BYTES = 64 * 1024


def parse_key_values(text: str) -> Dict[str, str]:
    """``key=value`` (or ``key: value``) lines; comments and blank lines skipped; keys lowercased."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        sep = "=" if "=" in line else (":" if ":" in line else None)
        if sep is None:
            continue
        key, value = line.split(sep, 1)
        key = key.strip().lower()
        if key and key not in out:
            out[key] = value.strip().strip('"')
    return out


def _read(path: pathlib.Path) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            return fh.read(_MAX_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None


def _toolkit_dirs(environ: Mapping[str, str], library_paths) -> List[pathlib.Path]:
    """Directories that may hold the install-info file, most specific first."""
    roots: List[pathlib.Path] = []
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        value = environ.get(var, "").strip()
        if value:
            roots.append(pathlib.Path(value))
    for path in library_paths or ():
        if isinstance(path, str) and os.path.isabs(path):
            lib_dir = pathlib.Path(path).resolve().parent      # .../lib64
            roots.append(lib_dir.parent)
    roots.append(pathlib.Path(DEFAULT_ASCEND_ROOT) / "ascend-toolkit" / "latest")
    dirs: List[pathlib.Path] = []
    arch = f"{platform.machine()}-linux"
    for root in roots:
        for d in (root, root / arch, root / "runtime", root / "compiler"):
            if d not in dirs:
                dirs.append(d)
    return dirs


def toolkit_install_info(environ: Optional[Mapping[str, str]] = None, library_paths=()) -> dict:
    """The first install-info file found: ``{"path", "fields", "version"}``, or
    ``{"path": None, "searched": [...]}``."""
    env = os.environ if environ is None else environ
    searched = []
    for d in _toolkit_dirs(env, library_paths):
        for name in INSTALL_INFO_NAMES:
            path = d / name
            searched.append(str(path))
            text = _read(path)
            if text is None:
                continue
            fields = parse_key_values(text)
            version = fields.get("version") or fields.get("innerversion")
            return {"path": str(path), "version": version, "fields": fields}
    return {"path": None, "version": None, "searched": searched}


def driver_version(environ: Optional[Mapping[str, str]] = None) -> dict:
    """``{"path", "version", "fields"}`` of the driver's version.info, or why not."""
    env = os.environ if environ is None else environ
    candidates: List[pathlib.Path] = []
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        value = env.get(var, "").strip()
        if value:
            p = pathlib.Path(value)
            for parent in [p] + list(p.parents)[:4]:
                candidates.append(parent / "driver" / "version.info")
    candidates.append(pathlib.Path(DEFAULT_ASCEND_ROOT) / "driver" / "version.info")
    searched = []
    for path in dict.fromkeys(candidates):
        searched.append(str(path))
        text = _read(path)
        if text is None:
            continue
        fields = parse_key_values(text)
        return {"path": str(path), "version": fields.get("version") or fields.get("innerversion"),
                "fields": fields}
    return {"path": None, "version": None, "searched": searched}


def package_versions() -> dict:
    from .. import __version__
    return {"aclnn_fag": __version__, "numpy": np.__version__,
            "ml_dtypes": getattr(ml_dtypes, "__version__", "unknown"),
            "python": sys.version.split()[0]}


def summary(env: Optional[dict]) -> Dict[str, Optional[str]]:
    """The version facts of a report's ``environment`` block, flat (old reports: None)."""
    env = env or {}
    v = env.get("versions") or {}
    cann = v.get("cann") or {}
    blas = v.get("blas") or {}
    libs = env.get("library_paths") or {}
    return {
        "aclnn_fag": env.get("package_version"),
        "backend": env.get("backend"),
        "cann": cann.get("cann_version"),
        "cann_source": cann.get("cann_version_source"),
        "runtime": cann.get("runtime_version"),
        "ops_transformer": cann.get("ops_transformer_version"),
        "cann_rules": (env.get("cann_rules") or {}).get("release"),
        "acl_api": cann.get("acl_api_version"),
        "toolkit_install": (v.get("toolkit_install") or {}).get("version"),
        "driver": (v.get("driver") or {}).get("version"),
        "soc": env.get("soc_name"),
        "opapi_library": libs.get("opapi") if isinstance(libs, dict) else None,
        "numpy": env.get("numpy_version"),
        "ml_dtypes": env.get("ml_dtypes_version"),
        # "name" in the reports of earlier releases, "library" since (aclnn_fag.blas.blas_info)
        "blas": " ".join(str(x) for x in (blas.get("name") or blas.get("library"),
                                          blas.get("version")) if x) or None,
        "blas_threads": None if blas.get("threads") is None else str(blas.get("threads")),
        "python": env.get("python"),
    }


SHORT_WIDTH = 48


def shorten(value, width: int = SHORT_WIDTH) -> str:
    """A version-table value in at most ``width`` characters (the full one belongs in JSON):
    ``not loaded: <a; b; c>`` becomes ``not loaded (3 places tried)``, an absolute path keeps
    its last parts (``.../lib64/libopapi.so``), anything else loses its middle."""
    text = "-" if value is None else " ".join(str(value).split())
    if len(text) <= width:
        return text
    if text.startswith("not loaded:"):
        tried = [p for p in text[len("not loaded:"):].split(";") if p.strip()]
        short = f"not loaded ({len(tried)} places tried)"
        if len(short) <= width:
            return short
    if text.startswith("/") and " " not in text:
        parts = text.split("/")
        tail = parts[-1]
        for part in reversed(parts[1:-1]):
            if len(tail) + len(part) + 5 > width:
                break
            tail = f"{part}/{tail}"
        if len(tail) + 4 <= width:
            return ".../" + tail
    keep = width - 3
    return text[:keep - keep // 3] + "..." + text[len(text) - keep // 3:]
