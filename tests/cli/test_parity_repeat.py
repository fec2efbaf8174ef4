"""``aclnn-fag parity --repeat N``: the backend under test runs N times per case on the same
inputs, and the report says whether its outputs were bit-identical (a race in a kernel, or a
"deterministic" run that accumulates with atomics, shows here even when every run passes)."""

from __future__ import annotations

import json

import numpy as np

from aclnn_fag.tools import cases, parity


def _quick(tiny_suite):
    return cases.select_cases(cases.load_suite(tiny_suite), tags=["quick"])[:1]


def test_a_backend_that_changes_one_bit_per_run_is_reported(numpy_only, tiny_suite):
    calls = []

    def flaky(**kw):
        g = parity.reference_grads(**kw)
        calls.append(1)
        dk = np.array(g.dk)
        flat = dk.reshape(-1).view(np.uint16)
        flat[0] ^= np.uint16(len(calls) > 1)          # the last bit of one element, from run 2 on
        return g._replace(dk=dk)

    flaky.backend_name = "flaky"
    report = parity.run_suite(_quick(tiny_suite), backend_fn=flaky, repeat=3)
    case = report["cases"][0]
    assert case["verdict"] == "PASS" and len(calls) == 3            # still within the criteria
    assert case["repeat"] == {"runs": 3, "bit_identical": False, "differing_runs": {"dk": 2}}
    table = parity.format_table(report)
    assert "repeat x3: 0/1 cases bit-identical" in table
    assert f"NOT bit-identical: {case['name']} (dk differed in 2 run(s))" in table


def test_a_deterministic_backend_is_bit_identical_and_the_cli_records_it(numpy_only, tiny_suite,
                                                                       run_cli, tmp_path):
    out = tmp_path / "r.json"
    code, text, _ = run_cli("parity", "--suite", tiny_suite, "--quick",
                            "--repeat", "2", "--json", out, "-q")
    report = json.loads(out.read_text())
    assert code == 0 and report["repeat"] == 2
    assert all(c["repeat"] == {"runs": 2, "bit_identical": True, "differing_runs": {}}
               for c in report["cases"])
    assert f"repeat x2: {len(report['cases'])}/{len(report['cases'])} cases bit-identical" in text


def test_without_repeat_nothing_runs_twice(numpy_only, tiny_suite):
    calls = []

    def once(**kw):
        calls.append(1)
        return parity.reference_grads(**kw)

    report = parity.run_suite(_quick(tiny_suite), backend_fn=once)
    assert len(calls) == 1 and "repeat" not in report["cases"][0]
    assert "repeat x" not in parity.format_table(report)


def test_repeat_must_be_a_positive_count(run_cli, tiny_suite):
    code, _, err = run_cli("parity", "--suite", tiny_suite, "--repeat", "0")
    assert code == 2 and "--repeat" in err
