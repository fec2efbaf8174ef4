"""``aclnn-fag info`` and ``aclnn-fag demo`` on NumPy and on the stub NPU backend."""

from __future__ import annotations

import json
import re
import subprocess

import aclnn_fag
from cli_paths import PYTHON, ROOT, subprocess_env

OUTPUTS = ("dq", "dq_rope", "dk", "dk_rope", "dv")


def test_info_without_cann(numpy_only, run_cli):
    code, out, _ = run_cli("info")
    assert code == 0
    assert aclnn_fag.__version__ in out
    assert re.search(r"auto backend:\s+numpy", out)
    assert "unavailable" in out


def test_info_json_without_cann(numpy_only, run_cli):
    code, out, _ = run_cli("info", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["version"] == aclnn_fag.__version__
    assert data["auto_backend"] == "numpy"
    assert data["npu"]["ok"] is False and data["npu"]["reason"]
    assert data["environment"]["numpy_version"]


def test_info_with_stub(npu_stub, run_cli):
    code, out, _ = run_cli("info")
    assert code == 0
    assert re.search(r"auto backend:\s+npu", out)
    assert str(npu_stub) in out                      # library paths are shown
    assert re.search(r"device count:\s+1", out)


def test_python_m_info_subprocess(tmp_path):
    env = subprocess_env({"ACLNN_FAG_LIB_DIR": str(tmp_path)})
    env.pop("ACLNN_FAG_BACKEND", None)
    proc = subprocess.run([PYTHON, "-m", "aclnn_fag", "info"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert aclnn_fag.__version__ in proc.stdout


def _checksums(out: str) -> dict:
    sums = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in OUTPUTS:
            sums[parts[0]] = (float(parts[-2]), float(parts[-1]))
    return sums


def test_demo_numpy(numpy_only, run_cli):
    code, out, _ = run_cli("demo")                       # auto -> numpy here
    assert code == 0
    assert re.search(r"^backend: numpy", out, re.M)
    sums = _checksums(out)
    assert set(sums) == set(OUTPUTS)
    assert "[256, 1, 128]" in out and "[256, 1, 64]" in out
    assert all(a > 0 for _, a in sums.values())
    code2, out2, _ = run_cli("demo", "--backend", "numpy")
    assert code2 == 0 and _checksums(out2) == sums       # fixed seed: same numbers


def test_demo_npu_stub_matches_numpy(npu_stub, run_cli):
    code, out, _ = run_cli("demo", "--backend", "npu")
    assert code == 0
    assert re.search(r"^backend: npu", out, re.M)
    npu = _checksums(out)
    code, out, _ = run_cli("demo", "--backend", "numpy")
    ref = _checksums(out)
    for name in OUTPUTS:
        assert abs(npu[name][1] - ref[name][1]) <= 1e-2 * ref[name][1]


def test_demo_npu_unavailable(numpy_only, run_cli):
    code, _, err = run_cli("demo", "--backend", "npu")
    assert code == 2
    assert "not available" in err
