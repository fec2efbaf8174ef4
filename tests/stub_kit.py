"""The stand-in CANN libraries of ``native_stubs/`` as the tests use them (a uniquely named
module, imported by every test folder's conftest: one build, one set of controls).

* ``build_stub_libs()``: builds the stubs once per process with ``native_stubs/build.py``
  (imported by path; needs only a C compiler) and returns their directory.
* ``stub_environment(lib_dir)``: a context manager that points ``ACLNN_FAG_LIB_DIR`` at
  them, clears the CANN and backend variables and resets the NPU backend's caches, on
  entry and on exit.
* ``StubControls``: the stub-only exports of libascendcl.so (live-object counters, failure
  injection), declared with ctypes on the same library instance the package loads.
* ``stub_fixtures(lib_dir_name)``: the fixtures a test folder on the stubs needs -- the
  session's library directory (named ``lib_dir_name``), an autouse module-wide
  ``stub_environment`` (``<lib_dir_name>_env``) and ``stub`` (cleared controls).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import pathlib
import shutil
from ctypes import POINTER, byref, c_char_p, c_int32, c_int64

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD_PY = ROOT / "native_stubs" / "build.py"

# variables that would steer the package or the stubs away from the tests' defaults
CLEARED_VARS = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ACLNN_FAG_BACKEND", "ACLNN_FAG_DEVICE",
                "ACL_STUB_DEVICE_COUNT", "ACL_STUB_MALLOC_FILL", "ACL_STUB_DEVICE_MEMORY",
                "ACL_STUB_SKIP_COMPUTE")


def have_compiler() -> bool:
    return bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))


@functools.lru_cache(maxsize=None)
def build_stub_libs() -> pathlib.Path:
    """Build (or reuse) the stub libraries; fails the test when there is no C compiler."""
    if not have_compiler():
        pytest.fail("no C compiler to build native_stubs/ (.ci/run installs gcc)")
    spec = importlib.util.spec_from_file_location("_aclnn_fag_stub_build", BUILD_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return pathlib.Path(module.build()).resolve()


def reset_acl() -> None:
    """Forget the NPU backend's cached library search and availability."""
    import aclnn_fag.acl as acl
    acl.reset()


@contextlib.contextmanager
def stub_environment(lib_dir: pathlib.Path):
    mp = pytest.MonkeyPatch()
    mp.setenv("ACLNN_FAG_LIB_DIR", str(lib_dir))
    for var in CLEARED_VARS:
        mp.delenv(var, raising=False)
    reset_acl()
    try:
        yield lib_dir
    finally:
        mp.undo()
        reset_acl()


class StubControls:
    """The stub-only exports of libascendcl.so (the same library instance as the package's)."""

    COUNTER_NAMES = ("tensors", "int_arrays", "executors", "device_bytes", "streams")

    def __init__(self, lib_dir: pathlib.Path) -> None:
        lib = ctypes.CDLL(str(pathlib.Path(lib_dir) / "libascendcl.so"), mode=ctypes.RTLD_GLOBAL)
        self.lib = lib
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
        # void aclStubSetCallDelay(int64_t microseconds);
        self._delay = lib["aclStubSetCallDelay"]
        self._delay.argtypes = [c_int64]
        self._delay.restype = None
        # int64_t aclStubGetBadReleases(void);
        self._bad = lib["aclStubGetBadReleases"]
        self._bad.argtypes = []
        self._bad.restype = c_int64

        # int32_t aclStubStreamCounts(aclrtStream stream, int64_t *launches, int64_t *syncs);
        self._stream_counts = lib["aclStubStreamCounts"]
        self._stream_counts.argtypes = [ctypes.c_void_p, POINTER(c_int64), POINTER(c_int64)]
        self._stream_counts.restype = c_int32

    def stream_counts(self, stream) -> dict:
        """{'launches': op launches on the stream, 'syncs': aclrtSynchronizeStream calls on it}
        (stream: an int handle, None = the default stream)."""
        launches, syncs = c_int64(0), c_int64(0)
        rc = self._stream_counts(stream, byref(launches), byref(syncs))
        assert rc == 0, f"stream {stream!r} is not a live stub stream"
        return {"launches": launches.value, "syncs": syncs.value}

    def counters(self, keep_cache: bool = False) -> dict:
        """The stub's live objects. The caches of the acl layer (aclnn_fag/acl/caches.py: the
        executor cache, the device copy of the compressed mask, the device memory calls keep
        for the next call) outlive calls on purpose; all are emptied first so that what
        remains is what leaked, unless ``keep_cache``."""
        if not keep_cache:
            from aclnn_fag.acl import caches
            caches.clear_all()
        vals = [c_int64(0) for _ in range(5)]
        self._counters(*[byref(v) for v in vals])
        return dict(zip(self.COUNTER_NAMES, (v.value for v in vals)))

    def objects(self, keep_cache: bool = False) -> dict:
        """The counters that must return to their value after every call (streams persist:
        one per thread, by design; the executor cache is emptied first unless ``keep_cache``)."""
        c = self.counters(keep_cache)
        c.pop("streams")
        return c

    def inject(self, function: str, after_n_calls: int, code: int) -> None:
        self._inject(function.encode(), after_n_calls, code)

    def clear(self) -> None:
        self._clear()

    def set_delay(self, microseconds: int) -> None:
        """Every ABI call of the stubs sleeps this long first (0: off)."""
        self._delay(int(microseconds))

    def bad_releases(self) -> int:
        """Releases of handles that were not live (double destroy/free, a consumed executor
        run or destroyed again) since the libraries were loaded."""
        return int(self._bad())


def stub_fixtures(lib_dir_name: str):
    """(library dir, environment, controls) fixtures for a conftest: bind all three there,
    e.g. ``stub_lib_dir, stub_env, stub = stub_fixtures("stub_lib_dir")``."""

    @pytest.fixture(scope="session", name=lib_dir_name)
    def lib_dir() -> pathlib.Path:
        return build_stub_libs()

    @pytest.fixture(scope="module", autouse=True, name=f"{lib_dir_name}_env")
    def env(request):
        with stub_environment(request.getfixturevalue(lib_dir_name)) as d:
            yield d

    @pytest.fixture(name="stub")
    def controls(request):
        s = StubControls(request.getfixturevalue(lib_dir_name))
        s.clear()
        yield s
        s.clear()

    return lib_dir, env, controls
