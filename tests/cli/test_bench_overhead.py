"""``aclnn-fag bench --suite overhead``: rows, goals, JSON, the stub's compute switch restored."""

from __future__ import annotations

import json
import os
import subprocess

from cli_paths import PYTHON, ROOT, subprocess_env

ROWS = ("bare ctypes call", "device-resident public call: NPU tensors, stream=",
        "FagPlan.run(stream=)", "numpy-in public call, excluding copies")


def test_overhead_suite_reports_every_row_with_goals(npu_stub, tmp_path):
    out = tmp_path / "o.json"
    env = subprocess_env({"ACLNN_FAG_LIB_DIR": str(npu_stub)})
    r = subprocess.run([PYTHON, "-m", "aclnn_fag", "bench", "--suite", "overhead", "-q",
                        "--repeat", "3", "--json", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "stub op computation off" in r.stdout
    report = json.loads(out.read_text())
    labels = [row["label"] for row in report["rows"]]
    for want in ROWS:
        assert any(label.startswith(want) for label in labels), (want, labels)
    goals = {row["label"]: row["goal_us"] for row in report["rows"] if row["goal_us"]}
    assert sorted(goals.values()) == [50.0, 250.0, 500.0]
    for row in report["rows"]:
        assert row["median_us"] > 0 and row["wall_median_us"] > 0
        assert row["met"] is None or row["met"] == (row["median_us"] <= row["goal_us"])


def test_overhead_suite_needs_the_npu_backend(numpy_only):
    r = subprocess.run([PYTHON, "-m", "aclnn_fag", "bench", "--suite", "overhead", "-q"],
                       cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "needs the NPU backend" in r.stderr


def test_overhead_run_restores_the_compute_switch(npu_stub, monkeypatch):
    from aclnn_fag import bench_overhead
    monkeypatch.delenv("ACL_STUB_SKIP_COMPUTE", raising=False)
    report = bench_overhead.run_overhead(repeat=1, inner=2)
    assert report["stub_compute_off"] is True
    assert "ACL_STUB_SKIP_COMPUTE" not in os.environ
