"""``aclnn-fag bench --suite overhead``: rows, goals, JSON, the stub's compute switch restored."""

from __future__ import annotations

import json
import os

ROWS = ("bare ctypes call", "device-resident public call: NPU tensors, stream=",
        "FagPlan.run(stream=)", "numpy-in public call, excluding copies")


def test_overhead_suite_reports_every_row_with_goals(npu_stub, run_cli, tmp_path, monkeypatch):
    from aclnn_fag.tools import bench_overhead
    real = bench_overhead.run_overhead
    # the command's rows, goals and JSON, not its timings: a short run (the CLI imports
    # run_overhead when the command runs, so the patched module attribute is the one used)
    monkeypatch.setattr(bench_overhead, "run_overhead",
                        lambda repeat, progress=None: real(repeat=1, inner=4, progress=progress))
    out = tmp_path / "o.json"
    code, stdout, stderr = run_cli("bench", "--suite", "overhead", "-q", "--json", out)
    assert code == 0, stderr
    assert "stub op computation off" in stdout
    report = json.loads(out.read_text())
    labels = [row["label"] for row in report["rows"]]
    for want in ROWS:
        assert any(label.startswith(want) for label in labels), (want, labels)
    goals = {row["label"]: row["goal_us"] for row in report["rows"] if row["goal_us"]}
    assert sorted(goals.values()) == [50.0, 250.0, 500.0]
    for row in report["rows"]:
        assert row["median_us"] > 0 and row["wall_median_us"] > 0
        assert row["met"] is None or row["met"] == (row["median_us"] <= row["goal_us"])


def test_overhead_suite_needs_the_npu_backend(numpy_only, run_cli):
    code, _, stderr = run_cli("bench", "--suite", "overhead", "-q")
    assert code == 2 and "needs the NPU backend" in stderr


def test_overhead_run_restores_the_compute_switch(npu_stub, monkeypatch):
    from aclnn_fag.tools import bench_overhead
    monkeypatch.delenv("ACL_STUB_SKIP_COMPUTE", raising=False)
    report = bench_overhead.run_overhead(repeat=1, inner=2)
    assert report["stub_compute_off"] is True
    assert "ACL_STUB_SKIP_COMPUTE" not in os.environ
