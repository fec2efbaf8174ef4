"""Fixtures and budget of the fuzz suite (hypothesis).

Budget: ``ACLNN_FAG_FUZZ_PROFILE=ci`` (default) runs every property with its small,
fixed number of examples, derandomized (the same examples on every run) and without the
example database; ``long`` multiplies the examples by ``ACLNN_FAG_FUZZ_SCALE`` (default 25),
draws fresh random examples each run and prints a reproduction blob on failure
(``scripts/fuzz_long.py`` runs it). ``ACLNN_FAG_FUZZ_REPORT=<file>`` writes the tallies
(cases tried, rejected, verdict comparisons, leaks) as JSON at the end of the session; the
terminal summary prints them too (summed over the workers under pytest-xdist:
tests/fuzz_tally.py).

Environment (as in ``tests/acl``): the stand-in CANN libraries of ``native_stubs/`` are
built once per session; an autouse module-scoped fixture points ``ACLNN_FAG_LIB_DIR`` at
them (CANN variables cleared), resets the loader cache, and restores everything after
the module. A watchdog dumps every thread's stack if the session hangs.
"""

from __future__ import annotations

import faulthandler
import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import fuzz_cases  # noqa: E402  (after the sys.path setup)
import fuzz_tally  # noqa: E402
from stub_kit import stub_fixtures  # noqa: E402

WATCHDOG_SECONDS = float(os.environ.get("ACLNN_FAG_FUZZ_WATCHDOG", "1800"))


def pytest_configure(config):
    # a hang must not pass silently: dump all stacks (and keep going) after the watchdog time
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, repeat=True, exit=False)


def pytest_unconfigure(config):
    faulthandler.cancel_dump_traceback_later()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    fuzz_tally.summary(terminalreporter, fuzz_cases.TALLY, fuzz_cases.PROFILE, fuzz_cases.SCALE,
                       exitstatus)


def pytest_sessionfinish(session, exitstatus):
    # a pytest-xdist worker: hand the tallies to the controller (tests/conftest.py sums them)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[fuzz_tally.WORKER_KEY] = {"profile": fuzz_cases.PROFILE,
                                               "scale": fuzz_cases.SCALE,
                                               "tally": dict(fuzz_cases.TALLY)}


fuzz_stub_dir, fuzz_stub_env, stub = stub_fixtures("fuzz_stub_dir")


@pytest.fixture(scope="module", autouse=True)
def canonical_masks_intact():
    """The shared CANONICAL masks are snapshot by identity (fuzz_cases._digest): their
    content is checked once per module instead."""
    yield
    fuzz_cases.assert_canonical_constants_intact()
