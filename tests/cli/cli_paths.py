"""Paths and the subprocess environment of the CLI tests (a uniquely named module, so that
test files can import it whatever other conftest modules pytest has loaded)."""

from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def subprocess_env(extra=None) -> dict:
    """The current environment with the checkout first on PYTHONPATH, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env
