"""The BLAS library under numpy, its thread count (read and set through the library itself,
found among the loaded libraries), and a cap on it for the NumPy reference (docs/usage.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading

import numpy as np

__all__ = ["blas_info", "blas_threads", "reference_threads", "set_reference_threads",
           "get_reference_threads", "capped"]

ENV_VAR = "ACLNN_FAG_BLAS_THREADS"
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              ENV_VAR)

# (kind, getter, setter), tried in order on each loaded candidate (numpy's scipy-openblas too)
_APIS = (("openblas", "openblas_get_num_threads", "openblas_set_num_threads"),
         ("openblas", "openblas_get_num_threads64_", "openblas_set_num_threads64_"),
         ("openblas", "scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
         ("openblas", "scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
         ("mkl", "mkl_get_max_threads", "mkl_set_num_threads"),
         ("mkl", "MKL_Get_Max_Threads", "MKL_Set_Num_Threads"),
         ("blis", "bli_thread_get_num_threads", "bli_thread_set_num_threads"))


class _Controller:
    """get()/set(n) of one loaded BLAS library (``getter_name``: the C function read)."""

    def __init__(self, kind, path, lib, getter_name, setter_name):
        self.kind, self.path, self.getter_name = kind, path, getter_name
        self._get = getattr(lib, getter_name)
        self._get.restype, self._get.argtypes = ctypes.c_int, []
        self._set = getattr(lib, setter_name, None)
        if self._set is not None:         # void ..._set_num_threads(int); BLIS takes a dim_t
            self._set.restype = None
            self._set.argtypes = [ctypes.c_int64 if kind == "blis" else ctypes.c_int]

    def get(self) -> int:
        return int(self._get())

    def set(self, n: int) -> None:
        if self._set is not None:
            self._set(int(n))


@functools.lru_cache(maxsize=None)
def _probe():
    """The controller of numpy's BLAS among the loaded libraries (Linux: /proc), or None."""
    np.dot(np.ones((2, 2)), np.ones((2, 2)))           # make sure the BLAS is loaded
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            paths = dict.fromkeys(p[-1] for p in map(str.split, fh) if len(p) >= 6
                                  and p[-1][0] == "/")
    except OSError:
        return None
    for path in paths:
        name = os.path.basename(path).lower()
        if ".so" not in name or not any(k in name for k in ("blas", "mkl", "blis")):
            continue
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_LOCAL)
        except OSError:
            continue
        for kind, getter, setter in _APIS:
            if hasattr(lib, getter):
                return _Controller(kind, path, lib, getter, setter)
    return None


def blas_threads():
    """The BLAS thread count in force now, or None when it cannot be read."""
    ctl = _probe()
    try:
        return None if ctl is None else ctl.get()
    except Exception:
        return None


def blas_info() -> dict:
    """Which BLAS numpy uses and how many threads it runs (read from the library, else from
    the first thread variable set), as a JSON-ready dict the reports record."""
    try:
        cfg = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    except Exception:          # older numpy: no dict mode
        cfg = {}
    ctl = _probe()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    env = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}
    threads, via = blas_threads(), (ctl.getter_name if ctl else None)
    if threads is None:
        var = next((k for k in THREAD_ENV if env.get(k, "").strip().isdigit()), None)
        if var is not None:
            threads, via = int(env[var].strip()), f"${var}"
    info = {"library": cfg.get("name") or (ctl.kind if ctl else None),
            "version": cfg.get("version"), "kind": ctl.kind if ctl else None,
            "path": ctl.path if ctl else None, "threads": threads, "threads_via": via,
            "cap": get_reference_threads(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "env": env}
    if cfg.get("openblas configuration"):
        info["configuration"] = cfg["openblas configuration"]
    return info


# --------------------------------------------------------------------------- the cap
_cap_lock = threading.Lock()
_cap_state = {"setting": None, "active": 0, "saved": None}


def _check_threads(n):
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"the BLAS thread cap must be an int >= 1 or None, got {n!r}")
    return n


def set_reference_threads(n) -> None:
    """Cap the BLAS threads of every NumPy-backend call of the package at ``n`` (None: no cap,
    also over ``$ACLNN_FAG_BLAS_THREADS``), for the duration of each call only."""
    _cap_state["setting"] = ("set", _check_threads(n))


def get_reference_threads():
    """The cap in force (set_reference_threads, else $ACLNN_FAG_BLAS_THREADS), or None."""
    setting = _cap_state["setting"]
    if setting is not None:
        return setting[1]
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return None
    try:
        return _check_threads(int(raw))
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be an integer >= 1, got {raw!r}") from None


@contextlib.contextmanager
def reference_threads(n):
    """Run the block with the BLAS capped at ``n`` threads, then restore the previous count
    (process-wide: the first block in sets the cap, the last one out restores the count)."""
    n = _check_threads(n)
    ctl = _probe() if n is not None else None
    if ctl is None or ctl._set is None:
        yield
        return
    with _cap_lock:
        if _cap_state["active"] == 0:
            _cap_state["saved"] = ctl.get()
            ctl.set(min(n, _cap_state["saved"]) if _cap_state["saved"] > 0 else n)
        _cap_state["active"] += 1
    try:
        yield
    finally:
        with _cap_lock:
            _cap_state["active"] -= 1
            if _cap_state["active"] == 0 and _cap_state["saved"] is not None:
                ctl.set(_cap_state["saved"])
                _cap_state["saved"] = None


def capped():
    """The package-level cap as a context manager (no-op when no cap is set)."""
    return reference_threads(get_reference_threads())
