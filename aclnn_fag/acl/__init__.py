"""The NPU backend: the CANN fused attention ops through ctypes (docs/npu.md,
docs/architecture.md). Importing it never loads a library; the first use does."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import AclnnError, LibraryNotFoundError
from . import (call_pool, device_constants, exec_cache, loader, ownership, prototypes, runtime,
               versions)
from . import device_constants as constants     # the public name of earlier releases
from .device import DeviceArray, upload_arrays
from .op import AUTO, call_raw, call_raw_forward, forward_available, run_backward, run_forward
from .plan import FagExecutor, FagPlan
from .runtime import (DeviceBuffer, ForkedProcessError, determinism, get_determinism,
                      release_thread_resources, reset_stats, shutdown, stats)
from .tensors import AclIntArray, AclTensor

__all__ = [
    "Availability", "availability", "info", "run_backward", "call_raw", "AUTO",
    "run_forward", "call_raw_forward", "forward_available",
    "DeviceArray", "DeviceBuffer", "upload_arrays", "FagPlan", "FagExecutor", "AclTensor",
    "AclIntArray", "determinism", "get_determinism", "shutdown", "release_thread_resources",
    "stats", "reset_stats", "reset", "loader", "prototypes", "runtime", "ForkedProcessError",
    "stand_in", "STAND_IN_LABEL",
    "ownership", "RETRY_BACKOFF_MIN", "RETRY_BACKOFF_MAX", "clear_executor_cache",
    "exec_cache", "release_constants", "constants", "release_call_memory", "call_pool",
]


# each returns how many it freed: the executors the public calls keep for reuse, the device
# copies of the package's compressed mask, the device memory calls on host arrays keep
clear_executor_cache = exec_cache.clear
release_constants = device_constants.clear
release_call_memory = call_pool.clear


@dataclass(frozen=True)
class Availability:
    """Whether the NPU backend can run here (libraries with the V3 op and a device);
    ``libraries`` maps each role to its path or why it did not load."""

    ok: bool
    reason: str
    device_count: int = 0
    libraries: Dict[str, str] = field(default_factory=dict)
    tried: List[object] = field(default_factory=list)
    installed: bool = False     # a CANN was found but cannot be used as configured
    device_id: Optional[int] = None   # the device the backend would use, when known
    transient: bool = False      # ACL itself failed (aclInit, device query): retried later

    def __bool__(self) -> bool:
        return self.ok


_avail_lock = threading.Lock()
_avail: Optional[tuple] = None   # (loader generation, Availability, no probe again before)
RETRY_BACKOFF_MIN = 0.05
RETRY_BACKOFF_MAX = 5.0
_backoff = RETRY_BACKOFF_MIN


def _reset_lock_in_child() -> None:
    global _avail_lock
    _avail_lock = threading.Lock()   # another parent thread may have held it at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)


def _library_summary(tried) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for role in loader.ROLE_ORDER:
        attempts = [a for a in tried if a.role == role]
        loaded = [a for a in attempts if a.outcome == "loaded"]
        if loaded:
            out[role] = loaded[-1].path
        elif attempts:
            out[role] = "not loaded: " + "; ".join(
                f"{a.path}: {a.outcome}" + (f" ({a.error})" if a.error and a.outcome != "not found"
                                           else "") for a in attempts)
        else:
            out[role] = "not tried"
    return out


def _probe() -> Availability:
    try:
        b = loader.bindings()
    except LibraryNotFoundError as exc:
        tried = list(getattr(exc, "tried", None) or [])
        # "symbols": the libraries loaded but lack the op (too old a CANN): installed
        installed = getattr(exc, "role", None) == "symbols" or any(
            getattr(a, "outcome", None) == "loaded" for a in tried)
        return Availability(False, str(exc), 0, _library_summary(tried), tried,
                            installed=installed)
    summary = dict(b.libraries.paths)
    tried = list(b.libraries.tried)
    dev = bad_device = None
    try:
        dev = runtime.resolve_device(None)
    except (TypeError, ValueError) as exc:
        bad_device = str(exc)

    def unavailable(reason: str, count: int = 0, **kw) -> Availability:
        return Availability(False, reason, count, summary, tried, installed=True, **kw)

    try:
        count = runtime.device_count()
    except AclnnError as exc:       # names aclInit or aclrtGetDeviceCount and the code
        return unavailable(f"ACL could not report the devices: {exc}", transient=True,
                           device_id=dev)
    if count <= 0:
        return unavailable("the CANN libraries load but aclrtGetDeviceCount reports no device",
                           device_id=dev)
    if bad_device is not None:
        return unavailable(bad_device, count)
    if dev >= count:
        return unavailable(f"{runtime.ENV_DEVICE}={dev} but aclrtGetDeviceCount reports "
                           f"{count} device(s)", count, device_id=dev)
    return Availability(True, f"{count} device(s); libraries: "
                        + ", ".join(f"{r}={p}" for r, p in summary.items()), count, summary, tried,
                        device_id=dev)


def availability(refresh: bool = False) -> Availability:
    """Whether the NPU backend can run (cached; ``refresh=True`` searches again; a failed
    probe is retried after a back-off, docs/faults.md)."""
    global _avail, _backoff
    forked = runtime.forked_child_reason()
    if forked is not None:
        return Availability(False, forked, installed=True)
    with _avail_lock:
        if refresh:
            loader.reset()
        gen = loader.generation()
        now = time.monotonic()
        if _avail is None or _avail[0] != gen or (_avail[1].transient and now >= _avail[2]):
            status = _probe()
            if status.transient:
                retry_at = now + _backoff
                _backoff = min(max(_backoff * 2, RETRY_BACKOFF_MIN), RETRY_BACKOFF_MAX)
            else:
                retry_at, _backoff = 0.0, RETRY_BACKOFF_MIN
            _avail = (gen, status, retry_at)
        return _avail[1]


def reset() -> None:
    """Forget the cached library search and availability (e.g. after changing ACLNN_FAG_LIB_DIR)."""
    global _avail, _backoff
    with _avail_lock:
        loader.reset()
        _avail = None
        _backoff = RETRY_BACKOFF_MIN


STAND_IN_SYMBOL = "aclStubGetCounters"   # exported only by the stand-in libraries (native_stubs/)
STAND_IN_LABEL = "STAND-IN stub libraries (native_stubs/), not an NPU"
_FEATURES = {"determinism_setter": ("aclrtCtxSetSysParamOpt",),
             "determinism_getter": ("aclrtCtxGetSysParamOpt",),
             "repeatable_executor": ("aclSetAclOpExecutorRepeatable",),
             "tensor_addr_setters": ("aclSetInputTensorAddr", "aclSetOutputTensorAddr"),
             "recent_error_message": ("aclGetRecentErrMsg",), "soc_name": ("aclrtGetSocName",),
             "forward_op": ("aclnnFlashAttentionVarLenScoreV3GetWorkspaceSize",
                            "aclnnFlashAttentionVarLenScoreV3")}


def stand_in() -> bool:
    """True when the loaded "CANN" libraries are this project's stand-ins (native_stubs/)."""
    try:
        b = loader.bindings()
    except LibraryNotFoundError:
        return False
    return b.has(STAND_IN_SYMBOL)


def info() -> dict:
    """A diagnostic report: libraries, search order, devices, SoC name, versions, features."""
    places, notes = loader.search_places()
    status = availability()
    report = {
        "available": status.ok,
        "reason": status.reason,
        "search_order": [p.describe() for p in places],
        "search_notes": notes,
        "libraries": dict(status.libraries),
        "tried": [a.line() if hasattr(a, "line") else str(a) for a in status.tried],
        "device_count": status.device_count,
        "soc_name": None,
        "features": {},
        "env": {k: os.environ.get(k) for k in (loader.ENV_LIB_DIR, "ASCEND_HOME_PATH",
                                               "ASCEND_TOOLKIT_HOME", "ASCEND_OPP_PATH",
                                               runtime.ENV_DEVICE)},
        "c_widths": prototypes.c_widths(),
    }
    try:
        b = loader.bindings()
    except LibraryNotFoundError:
        return report
    report["symbols_found_in"] = dict(b.found_in)
    report["stand_in"] = stand_in()
    if report["stand_in"]:
        report["stand_in_note"] = STAND_IN_LABEL
    report["features"] = {k: all(map(b.has, names)) for k, names in _FEATURES.items()}
    try:
        report["soc_name"] = runtime.soc_name()
    except AclnnError as exc:
        report["soc_name_error"] = str(exc)
    try:
        runtime.initialise()
        report["versions"] = versions.cann_version_or_error(b)
    except AclnnError as exc:
        report["versions"] = {"cann_version": None, "error": str(exc)}
    report["acl_initialised_by_aclnn_fag"] = runtime.owns_init()
    return report
