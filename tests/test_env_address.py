"""aclnn_fag/_env.py and aclnn_fag/_address.py: the cheap reads of an environment variable
and of an array's address. Oracles: ``os.environ.get`` and ``a.ctypes.data``."""

from __future__ import annotations

import os
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aclnn_fag import _address, _env

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


_DTYPES = [np.uint8, np.float32, np.int64, ml_dtypes.bfloat16, np.bool_]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(_DTYPES), st.integers(0, 40), st.integers(1, 7), st.integers(0, 5),
       st.integers(-3, 3).filter(bool), st.booleans())
def test_address_equals_ctypes_data(dtype, n, m, start, step, frozen):
    base = np.zeros((n, m), dtype)
    if frozen:
        base.flags.writeable = False
    for a in (base, base[start:], base[:, ::step], base.T, base[start:, start % m:], base[::-1],
              base.reshape(-1)[start::abs(step)]):
        assert _address.data_address(a) == a.ctypes.data


def test_address_of_memory_numpy_does_not_own():
    raw = bytearray(b"0123456789abcdef")
    a = np.frombuffer(raw, np.uint8)[3:]
    b = np.frombuffer(bytes(16), np.uint8).reshape(4, 4)[1:, 2:]
    for x in (a, b, np.zeros(0), np.array(1.0, np.float32)):
        assert _address.data_address(x) == x.ctypes.data
