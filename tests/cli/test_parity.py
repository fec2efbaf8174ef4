"""``aclnn-fag parity``: exit codes, report schema, green on NumPy and the stub NPU, red on a
deliberately broken backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

import aclnn_fag
from aclnn_fag.tools import accuracy, cases, parity

OUTPUTS = ("dq", "dq_rope", "dk", "dk_rope", "dv")
OUTPUT_KEYS = {"max_abs_err", "ref_max_abs_err", "max_rel_err", "share_above", "ref_share_above",
               "rtol", "share_limit", "fa_bound", "fa_pass", "dt_pass", "verdict", "dtype", "shape"}
CASE_KEYS = {"name", "tags", "verdict", "error", "backend", "timings", "warnings", "outputs", "seed",
             "arguments", "shapes", "dtypes", "spec", "mask"}


def _check_schema(report: dict, backend: str):
    assert report["schema"] == "aclnn_fag.parity_report/1"
    assert report["backend"] == backend
    env = report["environment"]
    for key in ("package_version", "backend", "library_paths", "numpy_version", "python"):
        assert key in env
    assert env["package_version"] == aclnn_fag.__version__
    assert set(report["summary"]) >= {"cases", "passed", "failed", "errors"}
    assert report["criteria"]["flash_attention"]["k"] == 2.0
    for case in report["cases"]:
        assert CASE_KEYS <= set(case), set(CASE_KEYS) - set(case)
        assert set(case["outputs"]) == set(OUTPUTS)
        assert {"inputs_s", "forward_s", "golden_s", "reference_s", "backend_s"} <= set(case["timings"])
        args = case["arguments"]
        assert args["actual_seq_qlen"][-1] == case["shapes"]["query"][0]
        assert case["dtypes"]["query"] == "bfloat16"
        for out in case["outputs"].values():
            assert OUTPUT_KEYS <= set(out)


def test_parity_quick_numpy(numpy_only, run_cli, tmp_path):
    report_path = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--quick", "--report", report_path)
    assert code == 0, out + err
    assert "doc-example" in out and "cases passed" in out
    assert "[" in err and "PASS" in err                      # progress on stderr
    report = json.loads(report_path.read_text())
    _check_schema(report, "numpy")
    assert report["ok"] and report["summary"]["passed"] == report["summary"]["cases"] >= 5
    assert all("quick" in c["tags"] for c in report["cases"])
    # The NumPy backend in device precision *is* the reference: it passes by construction
    # (say so in the report); what this run checks is the fp64 golden being a different
    # computation (non-zero reference errors) and the shipped cases meeting rule 2.
    for case in report["cases"]:
        assert case["backend_reused_reference"] is True
        for out in case["outputs"].values():
            assert out["ref_max_abs_err"] > 0 and out["max_abs_err"] == out["ref_max_abs_err"]
            assert out["share_above"] < out["share_limit"]


def test_parity_quick_numpy_fp32_is_judged_for_real(numpy_only, run_cli, tmp_path):
    """The fp32 NumPy backend is not the reference: its outputs are judged by the float32
    thresholds against the fp64 golden."""
    report_path = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--quick", "--precision",
                             "fp32", "--case", "doc-example", "--report", report_path, "-q")
    assert code == 0, out + err
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["precision"] == "fp32"
    for case in report["cases"]:
        assert "backend_reused_reference" not in case
        for out_ in case["outputs"].values():
            assert out_["dtype"] == "float32" and out_["rtol"] == 1e-4
            assert 0 < out_["max_abs_err"] < out_["ref_max_abs_err"]


def test_parity_quick_npu_stub(npu_stub, run_cli, tmp_path):
    report_path = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--quick", "--backend", "npu", "--report", report_path)
    assert code == 0, out + err
    report = json.loads(report_path.read_text())
    _check_schema(report, "npu")
    assert report["ok"]
    assert any(str(npu_stub) in str(p) for p in report["environment"]["library_paths"].values())
    # a real second implementation: not bit-identical everywhere, within the criteria
    ratios = [o["max_abs_err"] / o["ref_max_abs_err"] for c in report["cases"]
              for o in c["outputs"].values() if o["ref_max_abs_err"] > 0]
    assert max(ratios) <= 2.0


def test_parity_custom_suite_and_selection(numpy_only, run_cli, tiny_suite, tmp_path):
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--list")
    assert code == 0
    assert "tiny-mode0" in out and "tiny-slow" not in out           # excluded by default
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--all", "--list")
    assert "tiny-slow" in out
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--tags", "gqa,cp", "--list")
    assert "tiny-gqa-causal" in out and "tiny-mode7" in out and "tiny-mode0" not in out
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-m*", "--report", "-", "-q")
    assert code == 0
    assert "tiny-mode0" in out and "tiny-mode7" in out


def test_parity_usage_errors(numpy_only, run_cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cases": [{"name": "x", "lengths_q": [8], "heads": 1, "typo": 1}]}))
    code, _, err = run_cli("parity", "--suite", bad)
    assert code == 2 and "typo" in err
    code, _, err = run_cli("parity", "--suite", tmp_path / "missing.json")
    assert code == 2
    code, _, err = run_cli("parity", "--tags", "no-such-tag")
    assert code == 2 and "no case" in err
    code, _, err = run_cli("parity", "--quick", "--backend", "npu")
    assert code == 2 and "not available" in err


def _perturbed(output: str, delta: float = 0.5):
    """A deliberately broken backend: the NumPy result with one element of one output off."""
    def backend(**kwargs):
        grads = aclnn_fag.flash_attention_unpadding_score_grad_v3(**kwargs, backend="numpy")
        arr = getattr(grads, output).copy()
        flat = arr.reshape(-1)
        flat[0] = flat[0] + np.float32(delta).astype(flat.dtype)
        return grads._replace(**{output: arr})
    backend.backend_name = "broken"
    return backend


def test_run_suite_broken_backend_fails(tiny_suite):
    specs = cases.select_cases(cases.load_suite(tiny_suite))
    report = parity.run_suite(specs, backend_fn=_perturbed("dk_rope"))
    assert report["backend"] == "broken"
    assert not report["ok"] and report["summary"]["failed"] == len(specs)
    for case in report["cases"]:
        assert case["failed_outputs"] == ["dk_rope"]
        assert case["outputs"]["dk_rope"]["fa_pass"] is False
        assert case["outputs"]["dq"]["verdict"] == "PASS"


def test_cli_parity_broken_backend_exit_1(numpy_only, run_cli, tiny_suite, tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "make_backend_fn", lambda backend, precision: _perturbed("dv"))
    report_path = tmp_path / "r.json"
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--quick", "--report", report_path)
    assert code == 1
    assert "FAIL" in out
    report = json.loads(report_path.read_text())
    assert report["summary"]["failed"] == report["summary"]["cases"]


def test_backend_exception_is_error(tiny_suite):
    def boom(**kwargs):
        raise RuntimeError("device on fire")
    specs = cases.select_cases(cases.load_suite(tiny_suite), tags=["quick"])
    report = parity.run_suite(specs, backend_fn=boom)
    assert report["summary"]["errors"] == len(specs)
    assert report["summary"]["passed"] == 0
    assert report["ok"] is False                       # errors are not passes
    assert "device on fire" in report["cases"][0]["error"]
    assert all(c["verdict"] == "ERROR" for c in report["cases"])


def test_judge_floor_and_nonfinite():
    g = np.zeros(16)
    ok = accuracy.judge(np.zeros(16, np.float32), g, np.zeros(16, np.float32))
    assert ok["verdict"] == "PASS"                     # exact zeros: the floor keeps this green
    bad = accuracy.judge(np.full(16, 1e-3, np.float32), g, np.zeros(16, np.float32))
    assert bad["verdict"] == "FAIL"
    y = np.ones(16, np.float32)
    y[3] = np.nan
    nan = accuracy.judge(y, np.ones(16), np.ones(16, np.float32))
    assert nan["verdict"] == "FAIL" and nan["nonfinite"] == 1


def test_thresholds_documented():
    th = accuracy.thresholds_for(np.dtype("bfloat16") if hasattr(np, "bfloat16") else
                                 __import__("ml_dtypes").bfloat16)
    assert th.rtol == 2.0 ** -6 and th.share_limit == 1e-3
    assert "2**-6" in accuracy.__doc__ and "RMS" in accuracy.__doc__


@pytest.mark.parametrize("name", ["doc-example", "quick-mode8-cp"])
def test_shipped_suite_case_reproducible(name):
    suite = cases.load_suite()
    spec = next(c for c in suite.cases if c.name == name)
    a, b = cases.make_inputs(spec), cases.make_inputs(spec)
    for key in ("query", "key_rope", "dy", "atten_mask"):
        assert np.array_equal(a[key], b[key])
