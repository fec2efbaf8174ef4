"""backend="auto" warns once per process and reason when CANN is installed but the NPU cannot
be used as configured (naming the device and the cause), then runs NumPy; it stays silent when
simply no CANN is installed. Each case runs in a fresh process (the warning is per process)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from stub_kit import CLEARED_VARS

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, warnings, ctypes, os
import numpy as np
inject = sys.argv[1]
if inject:
    lib = ctypes.CDLL(os.path.join(os.environ["ACLNN_FAG_LIB_DIR"], "libascendcl.so"),
                      mode=ctypes.RTLD_GLOBAL)
    f = lib["aclStubInjectFailure"]
    f.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int32]
    f(inject.encode(), 0, 100000)
import aclnn_fag as af
sys.path.insert(0, sys.argv[2])
from acl_cases import make_problem
p = make_problem(seed=1, q_lens=(5, 3), d=16, dr=8)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        p.grads("auto")
        backend = af.last_backend()
msgs = [str(w.message) for w in caught if issubclass(w.category, af.NpuFallbackWarning)]
print(json.dumps({"backend": backend, "messages": msgs,
                  "where": [w.filename for w in caught
                            if issubclass(w.category, af.NpuFallbackWarning)]}))
"""


def _run(env_over, inject=""):
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_VARS}
    env.update(env_over)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT, inject, str(pathlib.Path(__file__).parent)],
                         capture_output=True, text=True, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_missing_device_warns_once_naming_device_and_cause(stub_lib_dir):
    res = _run({"ACLNN_FAG_LIB_DIR": str(stub_lib_dir), "ACLNN_FAG_DEVICE": "5"})
    assert res["backend"] == "numpy"
    assert len(res["messages"]) == 1, res
    msg = res["messages"][0]
    assert "device 5" in msg and "aclrtGetDeviceCount reports 1 device" in msg
    assert res["where"] == [__file__.replace("test_auto_warning.py", "acl_cases.py")]


def test_no_device_warns(stub_lib_dir):
    res = _run({"ACLNN_FAG_LIB_DIR": str(stub_lib_dir), "ACL_STUB_DEVICE_COUNT": "0"})
    assert res["backend"] == "numpy"
    assert len(res["messages"]) == 1 and "no device" in res["messages"][0]


def test_init_failure_warns(stub_lib_dir):
    res = _run({"ACLNN_FAG_LIB_DIR": str(stub_lib_dir)}, inject="aclInit")
    assert res["backend"] == "numpy"
    assert len(res["messages"]) == 1, res
    assert "device 0" in res["messages"][0] and "100000" in res["messages"][0]


def test_usable_npu_is_silent(stub_lib_dir):
    res = _run({"ACLNN_FAG_LIB_DIR": str(stub_lib_dir)})
    assert res == {"backend": "npu", "messages": [], "where": []}


def test_no_cann_installed_is_silent(tmp_path):
    if any(pathlib.Path(p).exists() for p in ("/usr/local/Ascend",)):
        pytest.skip("this machine has a CANN install under /usr/local/Ascend")
    res = _run({"ACLNN_FAG_LIB_DIR": str(tmp_path)})
    assert res == {"backend": "numpy", "messages": [], "where": []}
