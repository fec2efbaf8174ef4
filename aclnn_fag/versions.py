"""Versions of everything a parity result depends on, read without loading CANN.

* ``toolkit_install_info()``: the CANN toolkit's install-info file (``ascend_toolkit_install.info``
  and, on older installs, ``version.info`` / ``version.cfg``), looked for in the directories
  around ``$ASCEND_HOME_PATH``, ``$ASCEND_TOOLKIT_HOME`` and the loaded runtime library;
  ``key=value`` lines parsed (``version``, ``innerversion``, ``package_name``, ...).
* ``driver_version()``: ``<Ascend root>/driver/version.info`` (``Version=...``), where the
  Ascend root is ``/usr/local/Ascend`` or a parent of ``$ASCEND_HOME_PATH``.
* ``blas_info()``: numpy's BLAS (name and version from numpy's build configuration, the shared
  library mapped into this process) and its thread count (the library's own
  ``*_get_num_threads`` when it exports one, else the environment variables).
* ``package_versions()``: aclnn_fag, numpy, ml_dtypes, Python.

The CANN version reported by the runtime itself comes from :mod:`aclnn_fag.acl.versions`.
Every function returns JSON-ready data and never raises for a missing file or library.
"""

from __future__ import annotations

import os
import pathlib
import platform
import sys
from typing import Dict, List, Mapping, Optional

__all__ = ["toolkit_install_info", "driver_version", "blas_info", "package_versions",
           "parse_key_values", "DEFAULT_ASCEND_ROOT", "INSTALL_INFO_NAMES", "summary", "shorten",
           "SHORT_WIDTH"]

DEFAULT_ASCEND_ROOT = "/usr/local/Ascend"
INSTALL_INFO_NAMES = ("ascend_toolkit_install.info", "version.info", "version.cfg")
_MAX_BYTES = 64 * 1024
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "GOTO_NUM_THREADS")


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


def blas_info() -> dict:
    """numpy's BLAS: ``{"name", "version", "library", "threads", "threads_source", "env"}``
    (plus ``cap`` and ``usable_cpus``), read through :mod:`aclnn_fag.blas`."""
    from . import blas
    info = blas.blas_info()
    out = {"name": info["library"], "version": info["version"], "library": info["path"],
           "threads": info["threads"], "threads_source": info["threads_via"],
           "env": {k: os.environ[k] for k in _THREAD_VARS if k in os.environ},
           "cap": info["cap"], "usable_cpus": info["usable_cpus"]}
    cfg = blas._numpy_blas_config().get("configuration")
    if cfg:
        out["configuration"] = cfg
    if out["threads"] is None:
        for var in _THREAD_VARS:
            value = os.environ.get(var, "").strip()
            if value.isdigit():
                out["threads"], out["threads_source"] = int(value), f"${var}"
                break
    return out


def package_versions() -> dict:
    import ml_dtypes
    import numpy as np

    from . import __version__
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
        "acl_api": cann.get("acl_api_version"),
        "toolkit_install": (v.get("toolkit_install") or {}).get("version"),
        "driver": (v.get("driver") or {}).get("version"),
        "soc": env.get("soc_name"),
        "opapi_library": libs.get("opapi") if isinstance(libs, dict) else None,
        "numpy": env.get("numpy_version"),
        "ml_dtypes": env.get("ml_dtypes_version"),
        "blas": " ".join(str(x) for x in (blas.get("name"), blas.get("version")) if x) or None,
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
