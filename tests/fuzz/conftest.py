"""Fixtures and budget of the fuzz suite (hypothesis).

Budget: ``ACLNN_FAG_FUZZ_PROFILE=ci`` (default) runs every property with its small,
fixed number of examples, derandomized (the same examples on every run) and without the
example database; ``long`` multiplies the examples by ``ACLNN_FAG_FUZZ_SCALE`` (default 25),
draws fresh random examples each run and prints a reproduction blob on failure
(``scripts/fuzz_long.py`` runs it). ``ACLNN_FAG_FUZZ_REPORT=<file>`` writes the tallies
(cases tried, rejected, verdict comparisons, leaks) as JSON at the end of the session; the
terminal summary prints them too.

Environment (as in ``tests/acl``): the stand-in CANN libraries of ``native_stubs/`` are
built once per session; an autouse module-scoped fixture points ``ACLNN_FAG_LIB_DIR`` at
them (CANN variables cleared), resets the loader cache, and restores everything after
the module. A watchdog dumps every thread's stack if the session hangs.
"""

from __future__ import annotations

import ctypes
import faulthandler
import importlib.util
import json
import os
import pathlib
import shutil
import sys
from ctypes import POINTER, byref, c_char_p, c_int32, c_int64

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUILD_PY = ROOT / "native_stubs" / "build.py"
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import fuzz_cases  # noqa: E402  (after the sys.path setup)

CLEARED_VARS = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ACLNN_FAG_BACKEND", "ACLNN_FAG_DEVICE",
                "ACL_STUB_DEVICE_COUNT", "ACL_STUB_MALLOC_FILL", "ACL_STUB_DEVICE_MEMORY")
WATCHDOG_SECONDS = float(os.environ.get("ACLNN_FAG_FUZZ_WATCHDOG", "1800"))


def pytest_configure(config):
    # a hang must not pass silently: dump all stacks (and keep going) after the watchdog time
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, repeat=True, exit=False)


def pytest_unconfigure(config):
    faulthandler.cancel_dump_traceback_later()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tally = fuzz_cases.TALLY
    if not any(tally.values()):
        return
    terminalreporter.section(f"aclnn_fag fuzz tallies (profile {fuzz_cases.PROFILE})")
    for key in sorted(tally):
        terminalreporter.write_line(f"  {key:40s} {tally[key]}")
    out = os.environ.get("ACLNN_FAG_FUZZ_REPORT")
    if out:
        pathlib.Path(out).write_text(json.dumps({"profile": fuzz_cases.PROFILE,
                                                 "scale": fuzz_cases.SCALE,
                                                 "exitstatus": int(exitstatus),
                                                 "tally": dict(tally)}, indent=2))


def _have_compiler() -> bool:
    return bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"))


@pytest.fixture(scope="session")
def fuzz_stub_dir() -> pathlib.Path:
    if not _have_compiler():
        pytest.skip("no C compiler to build native_stubs/ (CI installs gcc)")
    spec = importlib.util.spec_from_file_location("_aclnn_fag_stub_build_fuzz", BUILD_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return pathlib.Path(module.build()).resolve()


@pytest.fixture(scope="module", autouse=True)
def fuzz_stub_env(fuzz_stub_dir):
    import aclnn_fag.acl as acl
    mp = pytest.MonkeyPatch()
    mp.setenv("ACLNN_FAG_LIB_DIR", str(fuzz_stub_dir))
    for var in CLEARED_VARS:
        mp.delenv(var, raising=False)
    acl.reset()
    try:
        yield fuzz_stub_dir
    finally:
        mp.undo()
        acl.reset()


class StubControls:
    """The stub-only exports of libascendcl.so (the same library instance as the package's)."""

    NAMES = ("tensors", "int_arrays", "executors", "device_bytes", "streams")

    def __init__(self, lib_dir: pathlib.Path) -> None:
        lib = ctypes.CDLL(str(lib_dir / "libascendcl.so"), mode=ctypes.RTLD_GLOBAL)
        # void aclStubGetCounters(int64_t *live_tensors, int64_t *live_int_arrays,
        #     int64_t *live_executors, int64_t *live_device_bytes, int64_t *live_streams);
        self._counters = lib["aclStubGetCounters"]
        self._counters.argtypes = [POINTER(c_int64)] * 5
        self._counters.restype = None
        # void aclStubInjectFailure(const char *function_name, int64_t after_n_calls, int32_t code);
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
        return dict(zip(self.NAMES, (v.value for v in vals)))

    def objects(self) -> dict:
        """The counters that must return to their value after every call (streams persist:
        one per thread, by design)."""
        c = self.counters()
        c.pop("streams")
        return c

    def inject(self, function: str, after_n_calls: int, code: int) -> None:
        self._inject(function.encode(), after_n_calls, code)

    def clear(self) -> None:
        self._clear()


@pytest.fixture
def stub(fuzz_stub_dir):
    s = StubControls(fuzz_stub_dir)
    s.clear()
    yield s
    s.clear()
