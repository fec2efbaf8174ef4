"""The recipes in scripts/: per-device parallel parity with merged report, bench targets."""

from __future__ import annotations

import json
import subprocess

from cli_paths import PYTHON, ROOT, subprocess_env


def test_parity_all_devices_on_two_stub_devices(stub_lib_dir, tiny_suite, tmp_path):
    out = tmp_path / "reports"
    env = subprocess_env({"ACLNN_FAG_LIB_DIR": str(stub_lib_dir), "ACL_STUB_DEVICE_COUNT": "2"})
    env.pop("ACLNN_FAG_DEVICE", None)
    proc = subprocess.run([PYTHON, str(ROOT / "scripts" / "parity_all_devices.py"), "--out", str(out),
                           "--", "--suite", str(tiny_suite), "--quick"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    merged = json.loads((out / "parity_all_devices.json").read_text())
    assert merged["schema"] == "aclnn_fag.parity_multi/1" and merged["ok"]
    assert merged["devices_run"] == ["0", "1"]
    for dev in ("0", "1"):
        rep = merged["devices"][dev]["report"]
        assert rep["backend"] == "npu" and rep["ok"]
        assert rep["environment"]["device_id"] == dev
    assert merged["summary"]["passed"] == 2 * merged["devices"]["0"]["report"]["summary"]["cases"]


def test_parity_all_devices_without_npu(tmp_path):
    env = subprocess_env({"ACLNN_FAG_LIB_DIR": str(tmp_path)})
    proc = subprocess.run([PYTHON, str(ROOT / "scripts" / "parity_all_devices.py"), "--out",
                           str(tmp_path / "r")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no NPU available" in proc.stderr


def test_bench_targets_script_help():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "bench_targets.sh"), "--help"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "--suite" in proc.stdout and "--check" in proc.stdout


def test_bench_loop_script_plain_and_torch():
    """scripts/bench_loop.py (docs/torch.md, fourth round) runs both loops and reports them."""
    import re
    for extra in ([], ["--torch", "--full"]):
        proc = subprocess.run([PYTHON, str(ROOT / "scripts" / "bench_loop.py"), "--lengths",
                               "24,0,16", "--heads", "2", "--steps", "3", *extra],
                              env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        line = proc.stdout.strip()
        assert line.startswith("torch" if extra else "plain"), line
        assert re.search(r"median \d+\.\d\d ms per step, \d+ minor page faults per step$", line)
