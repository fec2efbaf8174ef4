"""``aclnn-fag parity --op forward|roundtrip`` and the stand-in label of info, demo and
parity reports (a run on native_stubs/ must never pass for a device run)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from aclnn_fag.tools import parity

FORWARD = ("attention_out", "softmax_max", "softmax_sum")
GRADS = ("dq", "dq_rope", "dk", "dk_rope", "dv")


# ----------------------------------------------------------------------------- labels
def test_info_labels_the_stub(npu_stub, run_cli):
    code, out, _ = run_cli("info")
    assert code == 0
    assert "STAND-IN stub libraries" in out and "not an NPU" in out
    code, out, _ = run_cli("info", "--json")
    data = json.loads(out)
    assert data["npu"]["stand_in"] is True and data["environment"]["stand_in"] is True


def test_info_without_cann_has_no_stub_label(numpy_only, run_cli):
    code, out, _ = run_cli("info")
    assert code == 0 and "STAND-IN" not in out


def test_demo_labels_the_stub_and_runs_the_forward_on_it(npu_stub, run_cli):
    code, out, _ = run_cli("demo", "--backend", "npu")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("backend:"))
    assert re.match(r"backend: npu \[STAND-IN stub libraries.*Ascend910B_stub\]", line), line
    assert "forward: npu [STAND-IN" in line


def test_demo_numpy_has_no_label(numpy_only, run_cli):
    code, out, _ = run_cli("demo")
    assert code == 0 and "STAND-IN" not in out and "forward: numpy" in out


def test_parity_report_labels_the_stub(npu_stub, run_cli, tiny_suite, tmp_path):
    path = tmp_path / "r.json"
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--backend",
                           "npu", "--report", path, "-q")
    assert code == 0, out
    assert "on backend npu [STAND-IN stub libraries" in out
    report = json.loads(path.read_text())
    assert report["environment"]["stand_in"] is True
    assert "STAND-IN" in report["environment"]["stand_in_note"]


# ----------------------------------------------------------------------------- --op
@pytest.mark.parametrize("op,outputs", [("forward", FORWARD), ("roundtrip", FORWARD + GRADS),
                                        ("backward", GRADS)])
def test_parity_ops_on_the_stub(op, outputs, npu_stub, run_cli, tiny_suite, tmp_path):
    path = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--op", op, "--backend", "npu",
                             "--report", path, "-q", "-v")
    assert code == 0, out + err
    report = json.loads(path.read_text())
    assert report["op"] == op and report["outputs"] == list(outputs)
    assert report["ok"] and report["summary"]["cases"] >= 2
    for case in report["cases"]:
        assert list(case["outputs"]) == list(outputs), case["name"]
        assert not case.get("backend_reused_reference")
        for name in outputs:
            assert case["outputs"][name]["verdict"] == "PASS"
    assert f"{op} on backend npu" in out


def test_parity_forward_numpy_reuses_the_reference(numpy_only, run_cli, tiny_suite):
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--op", "forward", "--report", "-", "-q")
    assert code == 0 and "forward on backend numpy" in out


def test_op_usage_errors(numpy_only, run_cli, tiny_suite):
    try:                                  # argparse's usage error: status 2 either way
        code, _, err = run_cli("parity", "--suite", tiny_suite, "--op", "sideways")
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    code, _, err = run_cli("parity", "--suite", tiny_suite, "--op", "forward", "--backend-module",
                           "aclnn_fag.api:flash_attention_unpadding_score_grad_v3")
    assert code == 2 and "--op forward" in err


def _bad_forward_judged(monkeypatch, tiny_suite, op, breaker):
    """Judge a deliberately broken forward: the op's outputs must fail."""
    from aclnn_fag.tools import cases
    real = cases.forward

    def broken(inputs, backend="numpy", precision="device"):
        fwd = real(inputs, "numpy", "device")
        return breaker(fwd) if backend == "npu" else fwd

    monkeypatch.setattr(cases, "forward", broken)
    suite = cases.load_suite(tiny_suite)
    specs = cases.select_cases(suite, names=["tiny-gqa-causal"])
    return parity.run_suite(specs, backend="npu", op=op)


def test_broken_forward_statistics_fail(npu_stub, monkeypatch, tiny_suite):
    def scaled_sum(fwd):        # 1e-3 relative: far beyond fp32 rounding
        return fwd._replace(softmax_sum=fwd.softmax_sum * np.float32(1.001))
    report = _bad_forward_judged(monkeypatch, tiny_suite, "forward", scaled_sum)
    case = report["cases"][0]
    assert case["verdict"] == "FAIL" and case["failed_outputs"] == ["softmax_sum"], case


def test_broken_forward_output_fails_the_round_trip(npu_stub, monkeypatch, tiny_suite):
    def noisy(fwd):
        out = fwd.attention_out.astype(np.float32)
        out = (out * np.float32(1.02)).astype(fwd.attention_out.dtype)
        return fwd._replace(attention_out=out)
    report = _bad_forward_judged(monkeypatch, tiny_suite, "roundtrip", noisy)
    case = report["cases"][0]
    assert case["verdict"] == "FAIL" and "attention_out" in case["failed_outputs"], case
    # and the gradients, computed from that output on the "device", fail too (Dterm uses it)
    assert set(case["failed_outputs"]) & set(GRADS), case["failed_outputs"]


def test_invalid_lines_are_judged_exactly():
    g = np.full((2, 1, 8), -np.finfo(np.float32).max, np.float64)
    g[1] = 1.5
    y = g.astype(np.float32).copy()
    res = parity._judge_stats("softmax_max", y, g, y, g, k=2.0)
    assert res["verdict"] == "PASS" and res["invalid_lines"] == 1
    y[0, 0, 3] = 0.0
    res = parity._judge_stats("softmax_max", y, g, g.astype(np.float32), g, k=2.0)
    assert res["verdict"] == "FAIL" and "invalid-line" in res["problem"]
