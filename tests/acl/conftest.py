"""Fixtures of the NPU-backend tests: the stand-in CANN libraries of ``native_stubs/``.

* ``stub_lib_dir`` (session): builds the stubs with ``native_stubs/build.py``'s ``build()``
  (imported by path; needs only a C compiler).
* an autouse, module-scoped fixture points ``ACLNN_FAG_LIB_DIR`` at them (ASCEND_* and the
  backend/device variables cleared), resets the loader cache, and restores everything
  after the module — so the other test directories never see the stubs by accident.
* ``stub``: controls of the stub (counters, failure injection) declared with ctypes here.
* ``no_leaks``: the stub's live-object counters must be back to where they were.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import pathlib
import shutil
import sys
from ctypes import POINTER, byref, c_char_p, c_int32, c_int64

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_PY = ROOT / "native_stubs" / "build.py"
HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

CLEARED_VARS = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ACLNN_FAG_BACKEND", "ACLNN_FAG_DEVICE",
                "ACL_STUB_DEVICE_COUNT", "ACL_STUB_MALLOC_FILL")


def _have_compiler() -> bool:
    return bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))


@pytest.fixture(scope="session")
def stub_lib_dir() -> pathlib.Path:
    if not _have_compiler():
        pytest.skip("no C compiler to build native_stubs/ (CI installs gcc)")
    spec = importlib.util.spec_from_file_location("_aclnn_fag_stub_build", BUILD_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return pathlib.Path(module.build()).resolve()


def _reset_backend() -> None:
    import aclnn_fag.acl as acl
    acl.reset()


@pytest.fixture(scope="module", autouse=True)
def stub_env(stub_lib_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("ACLNN_FAG_LIB_DIR", str(stub_lib_dir))
    for var in CLEARED_VARS:
        mp.delenv(var, raising=False)
    _reset_backend()
    try:
        yield stub_lib_dir
    finally:
        mp.undo()
        _reset_backend()


class Stub:
    """The stub-only exports of libascendcl.so (same library instance as the package's)."""

    COUNTER_NAMES = ("tensors", "int_arrays", "executors", "device_bytes", "streams")

    def __init__(self, lib_dir: pathlib.Path) -> None:
        lib = ctypes.CDLL(str(lib_dir / "libascendcl.so"), mode=ctypes.RTLD_GLOBAL)
        # void aclStubGetCounters(int64_t *live_tensors, int64_t *live_int_arrays,
        #     int64_t *live_executors, int64_t *live_device_bytes, int64_t *live_streams);
        self._counters = lib["aclStubGetCounters"]
        self._counters.argtypes = [POINTER(c_int64)] * 5
        self._counters.restype = None
        # void aclStubInjectFailure(const char *function_name, int64_t after_n_calls,
        #                           int32_t error_code);
        self._inject = lib["aclStubInjectFailure"]
        self._inject.argtypes = [c_char_p, c_int64, c_int32]
        self._inject.restype = None
        # void aclStubClearFailures(void);
        self._clear = lib["aclStubClearFailures"]
        self._clear.argtypes = []
        self._clear.restype = None

    def counters(self) -> dict:
        vals = [c_int64(0) for _ in range(5)]
        self._counters(*[byref(v) for v in vals])
        return dict(zip(self.COUNTER_NAMES, (v.value for v in vals)))

    def inject(self, function: str, after_n_calls: int, code: int) -> None:
        self._inject(function.encode(), after_n_calls, code)

    def clear(self) -> None:
        self._clear()


@pytest.fixture
def stub(stub_lib_dir):
    s = Stub(stub_lib_dir)
    s.clear()
    yield s
    s.clear()


def settle() -> None:
    """Let garbage collection and the dead-thread stream sweep run."""
    import aclnn_fag.acl as acl
    gc.collect()
    acl.release_thread_resources()
    gc.collect()


@pytest.fixture
def no_leaks(stub):
    settle()                     # also destroys this thread's stream: everything starts at 0
    before = stub.counters()
    yield stub
    stub.clear()
    settle()
    after = stub.counters()
    assert after == before, f"native objects leaked: before {before}, after {after}"
