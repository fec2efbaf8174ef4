"""The torch tests: torch is optional for users but required in CI.

Without torch these tests are skipped on a developer machine and **fail** when ``CI`` is set
(``.ci/run`` sets it and installs torch), so a CI without torch cannot pass silently.
The NPU backend runs on the stand-in libraries of ``native_stubs/`` (module-scoped, as in
tests/acl).
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE, HERE.parent, HERE.parent / "acl"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from stub_kit import build_stub_libs, stub_environment  # noqa: E402

try:
    import torch  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise RuntimeError("torch is not installed but CI is set: the torch tests must run in CI "
                           "(.ci/run installs torch==2.13.0)") from None
    pass    # the test modules skip themselves (pytest.importorskip)


@pytest.fixture(scope="module", autouse=True)
def stub_env():
    import aclnn_fag.acl as acl
    acl.shutdown()        # start from a fresh runtime state (other folders drive the stubs too)
    with stub_environment(build_stub_libs()) as d:
        yield d
    acl.shutdown()
