"""Fixtures of the CLI tests: the NumPy-only environment and the stub NPU backend.

``numpy_only``: ``ACLNN_FAG_LIB_DIR`` points at an empty directory and no CANN install is
visible, so the NPU backend is unavailable and "auto" picks NumPy. ``npu_stub``: the stand-in
CANN libraries of ``native_stubs/`` (built once per session) are on ``ACLNN_FAG_LIB_DIR``.
Both reset the NPU backend's loader cache before and after the test.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from stub_kit import build_stub_libs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]

TINY_SUITE = {
    "schema": "aclnn_fag.suite/1",
    "description": "tiny cases for the CLI tests",
    "default_exclude_tags": ["slow"],
    "defaults": {"d": 64, "d_rope": 32, "d_v": 64},
    "cases": [
        {"name": "tiny-mode0", "tags": ["quick"], "seed": 1, "lengths_q": [48, 0, 32],
         "lengths_kv": [48, 16, 32], "heads": 2, "sparse_mode": 0, "mask": "zeros"},
        {"name": "tiny-gqa-causal", "tags": ["quick", "gqa"], "seed": 2, "lengths_q": [40, 24],
         "heads": 4, "kv_heads": 2, "sparse_mode": 3},
        {"name": "tiny-mode7", "tags": ["cp"], "seed": 3, "lengths_q": [32, 16], "lengths_kv": [32, 64],
         "heads": 2, "sparse_mode": 7, "pre_tokens": 16, "next_tokens": 0},
        {"name": "tiny-slow", "tags": ["slow"], "seed": 4, "lengths_q": [64], "heads": 1,
         "sparse_mode": 1, "mask": "random"},
    ],
}


def reset_acl() -> None:
    """Forget the NPU backend's cached library search and availability (``acl.reset()``)."""
    try:
        import aclnn_fag.acl as acl
    except ImportError:
        return
    if hasattr(acl, "reset"):
        acl.reset()
    else:                                   # older layout: the loader's own cache
        acl.loader.reset()


def _refresh() -> None:
    reset_acl()
    try:
        import aclnn_fag.acl as acl
    except ImportError:
        return
    acl.availability(refresh=True)


@pytest.fixture(scope="session")
def stub_lib_dir():
    """The stub CANN libraries, built once per session by ``tests/stub_kit.py``."""
    return build_stub_libs()


@pytest.fixture
def numpy_only(monkeypatch, tmp_path):
    empty = tmp_path / "no-cann"
    empty.mkdir()
    monkeypatch.setenv("ACLNN_FAG_LIB_DIR", str(empty))
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ACLNN_FAG_BACKEND", "ACLNN_FAG_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    _refresh()
    import aclnn_fag.acl as acl
    if acl.availability().ok:
        monkeypatch.undo()
        _refresh()
        pytest.skip("a CANN installation with a device is visible on this machine")
    yield
    monkeypatch.undo()
    _refresh()


@pytest.fixture
def npu_stub(monkeypatch, stub_lib_dir):
    monkeypatch.setenv("ACLNN_FAG_LIB_DIR", str(stub_lib_dir))
    for var in ("ACLNN_FAG_BACKEND", "ACLNN_FAG_DEVICE", "ACL_STUB_DEVICE_COUNT"):
        monkeypatch.delenv(var, raising=False)
    _refresh()
    yield stub_lib_dir
    monkeypatch.undo()
    _refresh()


@pytest.fixture
def tiny_suite(tmp_path) -> pathlib.Path:
    path = tmp_path / "tiny_suite.json"
    path.write_text(json.dumps(TINY_SUITE), encoding="utf-8")
    return path


BLOCK_ADAPTER = '''
import numpy as np
import aclnn_fag

def bad_block(**kw):
    """dv of key tokens 16..23, head 1, off by 0.25: one bad block."""
    g = aclnn_fag.flash_attention_unpadding_score_grad_v3(**kw, backend="numpy")
    dv = g.dv.copy()
    dv[16:24, 1, :] += np.float32(0.25).astype(dv.dtype)
    return (g.dq, g.dq_rope, g.dk, g.dk_rope, dv)
'''


@pytest.fixture
def block_adapter(tmp_path, monkeypatch):
    """``--backend-module`` spec of a backend whose dv is wrong in one block (key tokens
    16..23, head 1): the tiny suite's cases with 2+ heads FAIL on dv."""
    (tmp_path / "block_adapter.py").write_text(BLOCK_ADAPTER)
    monkeypatch.chdir(tmp_path)
    yield "block_adapter:bad_block"
    sys.modules.pop("block_adapter", None)


@pytest.fixture
def local_module(tmp_path, monkeypatch):
    """``local_module(name, source)``: write ``name.py`` into a temporary current directory
    (where ``--backend-module name:function`` finds it) and return ``name``; the module is
    forgotten after the test."""
    names = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.chdir(tmp_path)
        sys.modules.pop(name, None)
        names.append(name)
        return name
    yield write
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def run_cli(capsys):
    """Run ``aclnn-fag`` in-process: returns (exit status, stdout, stderr)."""
    from aclnn_fag.tools.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


from cli_paths import PYTHON, subprocess_env  # noqa: E402,F401  (re-exported for fixtures)
