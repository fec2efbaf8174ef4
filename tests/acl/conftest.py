"""Fixtures of the NPU-backend tests: the stand-in CANN libraries of ``native_stubs/``.

* ``stub_lib_dir`` (session): the stubs built by ``tests/stub_kit.py``.
* an autouse, module-scoped fixture points ``ACLNN_FAG_LIB_DIR`` at them (ASCEND_* and the
  backend/device variables cleared), resets the loader cache, and restores everything
  after the module — so the other test directories never see the stubs by accident.
* ``stub``: ``stub_kit.StubControls`` (counters, failure injection).
* ``no_leaks``: the stub's live-object counters must be back to where they were.
"""

from __future__ import annotations

import gc
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from stub_kit import StubControls, build_stub_libs, stub_environment, stub_fixtures  # noqa: E402,F401

Stub = StubControls          # the name the tests of this folder know


stub_lib_dir, stub_env, stub = stub_fixtures("stub_lib_dir")


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
