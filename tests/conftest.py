"""Suite-wide settings of the tests (every folder's own conftest adds its fixtures).

Garbage collection: many tests call ``gc.collect()`` to prove that native objects are
released (the ``no_leaks`` fixture of tests/acl does it before and after every test). A
full collection walks every tracked object of the process -- pytest's, hypothesis', numpy's,
torch's once a test imported it -- which made those collections most of the suite's time.
At the start of each test module the garbage of the earlier modules is collected and the
survivors are moved to the permanent generation (``gc.freeze``): later collections only
walk the objects created since, so a test still sees every object *it* made (and every
cycle it leaked) collected, at a fraction of the cost. Reference counting is unaffected;
only cycles that were already alive when a module started (long-lived state of earlier
modules) are no longer collected by later collections.

pytest-xdist (``-n auto``, the README's command): the workers' fuzz tallies are summed here
(tests/fuzz_tally.py); the stub libraries are built under a file lock (native_stubs/build.py),
so concurrent workers share one build; each worker's BLAS (and OpenMP) runs one thread unless
the caller set the variables (one worker per core: BLAS threads per worker would only wait
for each other -- docs/usage.md, "Threads").
"""

from __future__ import annotations

import collections
import gc
import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fuzz_tally  # noqa: E402  (after the sys.path setup)

_WORKER_TALLIES = {"profile": None, "scale": None, "tally": collections.Counter()}


BLAS_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def pytest_configure(config):
    # the xdist controller, before it starts the workers (they inherit the environment)
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        for var in BLAS_VARS:
            os.environ.setdefault(var, "1")


@pytest.fixture(autouse=True, scope="module")
def _collect_then_freeze_older_objects():
    gc.collect()            # earlier modules' garbage (and the native handles it holds) first
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def _empty_executor_cache():
    """Each test starts and ends with every cache of the acl layer empty (the registry
    aclnn_fag/acl/caches.py: the executor cache, the device copy of the compressed mask, the
    device memory kept between calls, the host path's layouts), so that no test depends on
    what an earlier one left behind."""
    caches = sys.modules.get("aclnn_fag.acl.caches")
    if caches is not None:
        caches.clear_all()
    yield
    caches = sys.modules.get("aclnn_fag.acl.caches")
    if caches is not None:
        caches.clear_all()


RELEASE_NAMES = ("8.5.0", "9.0.0", "9.1.0")


def forget_npu_release() -> None:
    """Drop the release the binding read from the loaded runtime (aclnn_fag/acl/release.py),
    so that the next NPU call queries the (stub) versions again."""
    kept = sys.modules.get("aclnn_fag.acl.release")
    if kept is not None:
        kept.forget()


@pytest.fixture(params=RELEASE_NAMES)
def cann_release(request, monkeypatch):
    """Each CANN release in turn: the NumPy backend follows it ($ACLNN_FAG_CANN_RELEASE) and
    the stub libraries emulate it ($ACL_STUB_CANN_VERSION, read at call time); the binding's
    kept release is dropped before and after. Yields the aclnn_fag.releases.Release."""
    from aclnn_fag import releases
    monkeypatch.setenv("ACLNN_FAG_CANN_RELEASE", request.param)
    monkeypatch.setenv("ACL_STUB_CANN_VERSION", request.param)
    forget_npu_release()
    yield releases.by_name(request.param)
    forget_npu_release()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist controller: a worker finished; add its fuzz tallies."""
    got = getattr(node, "workeroutput", {}).get(fuzz_tally.WORKER_KEY)
    if got:
        _WORKER_TALLIES["profile"], _WORKER_TALLIES["scale"] = got["profile"], got["scale"]
        _WORKER_TALLIES["tally"].update(got["tally"])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _WORKER_TALLIES["profile"] is not None:        # only a controller receives tallies
        fuzz_tally.summary(terminalreporter, _WORKER_TALLIES["tally"], _WORKER_TALLIES["profile"],
                           _WORKER_TALLIES["scale"], exitstatus)
