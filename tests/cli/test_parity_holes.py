"""``aclnn-fag parity`` verdicts the mutation audit found unchecked (issue 14): a backend
that raises on every case fails the run (report ``ok`` false, exit status 1), and the golden
really is the float64 computation the report says it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

import aclnn_fag as af
from aclnn_fag.tools import accuracy, cases, parity


def _raising(**kwargs):
    raise RuntimeError("device on fire")


_raising.backend_name = "raising"


@pytest.mark.parametrize("how", ["every", "one"])
def test_backend_errors_fail_the_run(how, tiny_suite, numpy_only, run_cli, monkeypatch,
                                     tmp_path):
    calls = []

    def backend(**kwargs):
        calls.append(1)
        if how == "every" or len(calls) == 2:
            raise RuntimeError("device on fire")
        return af.flash_attention_unpadding_score_grad_v3(**kwargs, backend="numpy")
    backend.backend_name = "flaky"
    specs = cases.select_cases(cases.load_suite(tiny_suite), tags=["quick"])
    report = parity.run_suite(specs, backend_fn=backend)
    errors = len(specs) if how == "every" else 1
    assert report["ok"] is False
    assert report["summary"]["errors"] == errors
    assert report["summary"]["passed"] == len(specs) - errors
    assert all(c["verdict"] == "ERROR" for c in report["cases"] if c["error"])

    calls.clear()
    monkeypatch.setattr(parity, "make_backend_fn", lambda backend_, precision: backend)
    path = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--report", path, "-q")
    assert code == 1, out + err
    written = json.loads(path.read_text())
    assert written["ok"] is False and written["summary"]["errors"] == errors
    assert "ERROR" in out


def test_golden_is_float64(tiny_suite, monkeypatch):
    seen = []
    judge = accuracy.judge

    def spy(output, golden, reference, **kw):
        seen.append((np.asarray(golden), np.asarray(reference)))
        return judge(output, golden, reference, **kw)
    monkeypatch.setattr(accuracy, "judge", spy)
    specs = cases.select_cases(cases.load_suite(tiny_suite), names=["tiny-gqa-causal"])
    report = parity.run_suite(specs, backend="numpy", precision="fp32")
    assert report["ok"] and "fp64" in report["criteria"]["golden"]
    inputs = cases.with_forward(cases.make_inputs(specs[0]))
    want = af.flash_attention_unpadding_score_grad_v3(**inputs, backend="numpy", precision="fp64")
    assert len(seen) == 5
    for (golden, reference), w in zip(seen, want):
        assert golden.dtype == np.float64
        np.testing.assert_array_equal(golden, w)        # the fp64 result, not an fp32 one
        assert reference.dtype == af.reference.rounding.BF16
    # the backend under test (fp32) is judged by the float32 thresholds
    for out in report["cases"][0]["outputs"].values():
        assert out["dtype"] == "float32" and out["rtol"] == 1e-4


@pytest.mark.parametrize("k", ["0", "-1"])
def test_non_positive_k_is_a_usage_error(k, numpy_only, run_cli, tiny_suite):
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--k", k, "--report", "-")
    assert code == 2 and "--k" in err
    assert "cases passed" not in out                  # nothing ran


@pytest.mark.parametrize("k", [0.0, -2.0, float("nan"), float("inf")])
def test_parity_main_refuses_a_bad_k_also_without_the_parser(k, numpy_only, tiny_suite, capsys):
    """parity_cli.main checks k itself (arguments built in code skip the parser's check)."""
    from aclnn_fag.tools.cli import build_parser
    args = build_parser().parse_args(["parity", "--suite", str(tiny_suite), "--quick",
                                      "--report", "-"])
    args.k = k
    from aclnn_fag.tools import parity_cli
    assert parity_cli.main(args) == 2
    assert "--k" in capsys.readouterr().err
