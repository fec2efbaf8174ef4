"""What this machine offers: the NPU backend's status (never raises) and the reports'
environment block (docs/parity.md, "What every report records")."""

from __future__ import annotations

import os
import pathlib
import platform
import sys
from typing import Dict, Mapping, Optional

import ml_dtypes
import numpy as np

from .. import __version__, blas, releases
from .output import json_safe

__all__ = ["npu_status", "environment", "backend_label", "toolkit_install_info",
           "driver_version", "parse_key_values", "summary", "shorten"]

DEFAULT_ASCEND_ROOT = "/usr/local/Ascend"
INSTALL_INFO_NAMES = ("ascend_toolkit_install.info", "version.info", "version.cfg")
SHORT_WIDTH = 48


def backend_label(name, npu: dict = None) -> str:
    """``name``, marked " [STAND-IN stub libraries ...]" when "npu" is native_stubs/."""
    if name != "npu":
        return str(name)
    npu = npu if npu is not None else npu_status()
    if not npu.get("stand_in"):
        return "npu"
    soc = npu.get("soc_name")
    return f"npu [{npu.get('stand_in_note') or 'STAND-IN stub libraries'}" + (
        f"; SoC {soc}]" if soc else "]")


def npu_status(refresh: bool = False) -> dict:
    """What ``acl.info()`` returns plus ``ok`` and ``reason``; never raises."""
    try:
        from .. import acl
    except Exception as exc:        # module missing or broken: report, never raise
        return {"ok": False, "reason": f"the NPU backend module aclnn_fag.acl cannot be imported: "
                                        f"{type(exc).__name__}: {exc}"}
    out = {}
    try:
        status = acl.availability(refresh=refresh)
        out.update(ok=bool(status.ok), reason=str(status.reason or ""),
                   device_count=status.device_count, libraries=json_safe(status.libraries))
    except Exception as exc:
        out.update(ok=False, reason=f"acl.availability() failed: {type(exc).__name__}: {exc}")
    try:
        info = acl.info()
    except Exception as exc:
        out["info_error"] = f"acl.info() failed: {type(exc).__name__}: {exc}"
        return out
    for key, value in info.items():
        if not (key == "reason" and out.get("reason")):
            out[key] = json_safe(value)
    return out


def environment(backend: str = None, precision: str = None, npu: dict = None) -> dict:
    """The environment block of the JSON reports."""
    npu = npu if npu is not None else npu_status()
    libs = npu.get("libraries") if isinstance(npu.get("libraries"), dict) else {}
    packages = {"aclnn_fag": __version__, "numpy": np.__version__,
                "ml_dtypes": getattr(ml_dtypes, "__version__", "unknown"),
                "python": sys.version.split()[0]}
    return {
        "package_version": __version__,
        "python": packages["python"],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "numpy_version": np.__version__,
        "ml_dtypes_version": packages["ml_dtypes"],
        "cpu_count": os.cpu_count(),
        "backend": backend,
        "precision": precision,
        "npu_available": npu.get("ok", False),
        "npu_reason": npu.get("reason", ""),
        "library_paths": libs,
        "device_count": npu.get("device_count"),
        "soc_name": npu.get("soc_name"),
        # True: the "npu" backend is this project's stand-in libraries, not a device
        "stand_in": bool(npu.get("stand_in", False)),
        "stand_in_note": npu.get("stand_in_note"),
        "device_id": os.environ.get("ACLNN_FAG_DEVICE") or None,
        "versions": {"cann": npu.get("versions"),
                     "toolkit_install": toolkit_install_info(
                         library_paths=[p for p in libs.values() if isinstance(p, str)]),
                     "driver": driver_version(), "blas": blas.blas_info(),
                     "packages": packages},
        "cann_rules": _rules_block(backend, npu),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("ACLNN_FAG_", "ASCEND_", "ACL_STUB_"))
                or k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }


def _rules_block(backend, npu: dict) -> dict:
    """The CANN release whose rules the backend follows (docs/releases.md)."""
    if backend == "npu":
        v = npu.get("versions") or {}
        return {"release": v.get("release"), "from": v.get("release_from"),
                "note": v.get("release_note")}
    raw = os.environ.get(releases.ENV_VAR, "").strip()
    release, note = releases.resolve(raw, f"${releases.ENV_VAR}") if raw else (releases.NEWEST, None)
    return {"release": release.name, "from": f"${releases.ENV_VAR}" if raw else "newest known",
            "note": note}


def parse_key_values(text: str) -> Dict[str, str]:
    """``key=value`` (or ``key: value``) lines; comments and blank lines skipped; keys lowercased."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        sep = "=" if "=" in line else ":"
        if not line or line.startswith(("#", ";", "[")) or sep not in line:
            continue
        key, value = line.split(sep, 1)
        key = key.strip().lower()
        if key and key not in out:
            out[key] = value.strip().strip('"')
    return out


def _first_readable(paths) -> dict:
    """path, version and fields of the first readable file of ``paths`` (else where it looked)."""
    searched = []
    for path in dict.fromkeys(paths):
        searched.append(str(path))
        try:
            with open(path, "rb") as fh:
                text = fh.read(64 * 1024).decode("utf-8", errors="replace")
        except OSError:
            continue
        fields = parse_key_values(text)
        return {"path": str(path), "version": fields.get("version") or fields.get("innerversion"),
                "fields": fields}
    return {"path": None, "version": None, "searched": searched}


def _env_roots(environ: Mapping[str, str]) -> list:
    return [pathlib.Path(environ[v].strip()) for v in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")
            if environ.get(v, "").strip()]


def toolkit_install_info(environ: Optional[Mapping[str, str]] = None, library_paths=()) -> dict:
    """The toolkit's install-info file near $ASCEND_HOME_PATH, $ASCEND_TOOLKIT_HOME, the libs."""
    roots = _env_roots(os.environ if environ is None else environ)
    roots += [pathlib.Path(p).resolve().parent.parent for p in library_paths or ()
              if isinstance(p, str) and os.path.isabs(p)]            # .../lib64/lib.so -> root
    roots.append(pathlib.Path(DEFAULT_ASCEND_ROOT) / "ascend-toolkit" / "latest")
    arch = f"{platform.machine()}-linux"
    dirs = dict.fromkeys(d for root in roots
                         for d in (root, root / arch, root / "runtime", root / "compiler"))
    return _first_readable(d / name for d in dirs for name in INSTALL_INFO_NAMES)


def driver_version(environ: Optional[Mapping[str, str]] = None) -> dict:
    """The driver's ``<Ascend root>/driver/version.info``."""
    roots = [parent for p in _env_roots(os.environ if environ is None else environ)
             for parent in [p] + list(p.parents)[:4]]
    return _first_readable([r / "driver" / "version.info" for r in roots]
                           + [pathlib.Path(DEFAULT_ASCEND_ROOT) / "driver" / "version.info"])


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


def shorten(value, width: int = SHORT_WIDTH) -> str:
    """A version-table value in at most ``width`` characters (paths keep their tail)."""
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
