"""What this machine offers: package and library versions, the NPU backend's status.

Never raises because the NPU stack is missing: ``npu_status()`` reports why instead, so
``aclnn-fag info`` and every report work on a machine without CANN.
"""

from __future__ import annotations

import os
import platform
import sys

import ml_dtypes
import numpy as np

__all__ = ["npu_status", "auto_backend", "environment", "device_id_from_env"]


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
        from . import acl
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
    from .api import resolve_backend
    try:
        return resolve_backend("auto"), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def environment(backend: str = None, precision: str = None, npu: dict = None) -> dict:
    """Environment block of the JSON reports (``versions``: see ``versions_block``)."""
    from . import __version__
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
        "device_id": os.environ.get("ACLNN_FAG_DEVICE") or None,
        "versions": versions_block(npu),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("ACLNN_FAG_", "ASCEND_", "ACL_STUB_"))
                or k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    return env


def versions_block(npu: dict) -> dict:
    """Versions a parity result depends on (see :mod:`aclnn_fag.versions`): the CANN version
    the runtime reports (None when the libraries are not loaded), the toolkit's install-info
    file, the driver's version, numpy's BLAS and threads, the Python packages."""
    from . import versions
    paths = [p for p in _library_paths(npu).values() if isinstance(p, str)]
    return {
        "cann": npu.get("versions"),
        "toolkit_install": versions.toolkit_install_info(library_paths=paths),
        "driver": versions.driver_version(),
        "blas": versions.blas_info(),
        "packages": versions.package_versions(),
    }


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
