"""aclnn_fag/_env.py: the environment variables the NPU path reads on every call follow every
change. Oracle: ``os.environ.get``."""

from __future__ import annotations

import os

import pytest

from aclnn_fag import _env

NAME = "ACLNN_FAG_TEST_ENV_READ"


@pytest.mark.parametrize("values", [["1", "2", "", "16", " 7 "], ["héllo", "wörld"], ["a"]])
def test_env_get_follows_every_change(values, monkeypatch):
    monkeypatch.delenv(NAME, raising=False)
    assert _env.get(NAME) is None
    for v in values:
        monkeypatch.setenv(NAME, v)
        assert _env.get(NAME) == os.environ.get(NAME) == v
        assert _env.get(NAME) == v                  # the second read (the reused text) too
    monkeypatch.delenv(NAME)
    assert _env.get(NAME) is None
    os.environ[NAME] = "direct"                     # os.environ itself, not monkeypatch
    try:
        assert _env.get(NAME) == "direct"
    finally:
        del os.environ[NAME]
    assert _env.get(NAME) is None
