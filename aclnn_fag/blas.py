"""The BLAS library under numpy, its thread count, and a cap on it for the NumPy reference.

The NumPy reference spends its time in float32 matmuls. OpenBLAS starts one thread per core;
when other processes share the cores (parallel test runs, several workers on one host) those
threads wait for each other and one backward can take ten times longer. ``blas_info()`` says
which library numpy uses and how many threads it runs (reports and ``aclnn-fag bench`` record
it); ``reference_threads(n)`` caps the threads for a block of code, and
``set_reference_threads(n)`` (or ``$ACLNN_FAG_BLAS_THREADS``) caps them for every NumPy-backend
call of the package -- for the duration of the call only, the previous count is restored after.

The thread count is read and set through the library itself (``openblas_get_num_threads`` and
the prefixed names of the scipy-openblas builds numpy ships, ``mkl_get_max_threads``, BLIS's
``bli_thread_get_num_threads``), found among the libraries loaded into this process. Where no
such library is found (another platform, another BLAS) the information says so and the cap
does nothing. threadpoolctl is not needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

import numpy as np

__all__ = ["blas_info", "blas_threads", "reference_threads", "set_reference_threads",
           "get_reference_threads", "capped"]

ENV_VAR = "ACLNN_FAG_BLAS_THREADS"
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
              ENV_VAR)

# (kind, getter names, setter names): tried in order on every loaded candidate library.
_APIS = (
    ("openblas", ("openblas_get_num_threads", "openblas_get_num_threads64_",
                  "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"),
     ("openblas_set_num_threads", "openblas_set_num_threads64_",
      "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")),
    ("mkl", ("mkl_get_max_threads", "MKL_Get_Max_Threads"),
     ("mkl_set_num_threads", "MKL_Set_Num_Threads")),
    ("blis", ("bli_thread_get_num_threads",), ("bli_thread_set_num_threads",)),
)
_KEYWORDS = ("blas", "mkl", "blis")


class _Controller:
    """get()/set(n) of one loaded BLAS library."""

    def __init__(self, kind, path, getter, setter, getter_name):
        self.kind, self.path, self._get, self._set = kind, path, getter, setter
        self.getter_name = getter_name

    def get(self) -> int:
        return int(self._get())

    def set(self, n: int) -> None:
        if self._set is not None:
            self._set(int(n))


_controller_cache: list = []
_probe_lock = threading.Lock()


def _loaded_libraries() -> list:
    """Paths of the loaded shared libraries whose name looks like a BLAS (Linux: /proc)."""
    paths = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and parts[-1].startswith("/"):
                    name = os.path.basename(parts[-1]).lower()
                    if any(k in name for k in _KEYWORDS) and ".so" in name and parts[-1] not in paths:
                        paths.append(parts[-1])
    except OSError:
        pass
    return paths


def _probe():
    """The controller of numpy's BLAS, or None (cached)."""
    with _probe_lock:
        if _controller_cache:
            return _controller_cache[0]
        np.dot(np.ones((2, 2)), np.ones((2, 2)))           # make sure the BLAS is loaded
        found = None
        for path in _loaded_libraries():
            try:
                lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_LOCAL)
            except OSError:
                continue
            for kind, getters, setters in _APIS:
                getter = next((getattr(lib, n) for n in getters if hasattr(lib, n)), None)
                if getter is None:
                    continue
                getter.restype, getter.argtypes = ctypes.c_int, []
                # void openblas_set_num_threads(int) / mkl_set_num_threads(int) /
                # void bli_thread_set_num_threads(dim_t)
                setter = next((getattr(lib, n) for n in setters if hasattr(lib, n)), None)
                if setter is not None:
                    setter.restype = None
                    setter.argtypes = [ctypes.c_int64 if kind == "blis" else ctypes.c_int]
                name = next(n for n in getters if hasattr(lib, n))
                found = _Controller(kind, path, getter, setter, name)
                break
            if found:
                break
        _controller_cache.append(found)
        return found


def _numpy_blas_config() -> dict:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return {"name": blas.get("name"), "version": blas.get("version"),
                "configuration": blas.get("openblas configuration")}
    except Exception:          # older numpy: no dict mode
        return {}


def blas_threads():
    """The BLAS thread count in force now, or None when it cannot be read."""
    ctl = _probe()
    if ctl is None:
        return None
    try:
        return ctl.get()
    except Exception:
        return None


def blas_info() -> dict:
    """Which BLAS numpy uses and how many threads it runs, as a JSON-ready dict:
    ``library`` (name from numpy's build config, else the loaded library's kind), ``version``,
    ``configuration`` (numpy's record of the build, when it has one), ``kind``, ``path`` (the
    loaded library), ``threads`` (now; read from the library, else from the first thread
    variable set; None when neither tells), ``threads_via`` (the C function read, or the
    variable), ``cap`` (the package-level cap, None when unset), ``cpu_count``,
    ``usable_cpus`` (this process's CPU affinity) and ``env`` (the thread variables set).
    The ``info`` command and every report record this dict as it is."""
    cfg = _numpy_blas_config()
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
    info = {
        "library": cfg.get("name") or (ctl.kind if ctl else None),
        "version": cfg.get("version"),
        "kind": ctl.kind if ctl else None,
        "path": ctl.path if ctl else None,
        "threads": threads,
        "threads_via": via,
        "cap": get_reference_threads(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "env": env,
    }
    if cfg.get("configuration"):
        info["configuration"] = cfg["configuration"]
    return info


# --------------------------------------------------------------------------- the cap
_cap_lock = threading.Lock()
_cap_state = {"setting": None, "active": 0, "saved": None}


def _check_threads(n):
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the BLAS thread cap must be an int >= 1 or None, got {n!r}")
    return n


def set_reference_threads(n) -> None:
    """Cap the BLAS threads of every NumPy-backend call of the package at ``n`` (None: no cap,
    the default; ``$ACLNN_FAG_BLAS_THREADS`` gives a default when this was never called). The
    cap holds only while a call runs; the previous thread count is restored after it."""
    _cap_state["setting"] = ("set", _check_threads(n))


def get_reference_threads():
    """The package-level cap in force (set_reference_threads, else $ACLNN_FAG_BLAS_THREADS),
    or None."""
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
    """Run the block with the BLAS capped at ``n`` threads, then restore the previous count.

    Thread counts are process-wide: blocks entered from several Python threads at once share
    one cap (the first one in sets it, the last one out restores the count)."""
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
