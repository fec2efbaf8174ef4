"""``parity --compare`` on the reports users actually hand it: NaN errors and share growth in
cases that fail on both sides, versions that differ field by field, and malformed or
ambiguous reports (exit status 2 with a message naming the problem, never a crash)."""

from __future__ import annotations

import copy
import json

import pytest

from aclnn_fag.tools import report_compare


def _output(verdict="PASS", err=1e-3, share=0.0):
    return {"verdict": verdict, "max_abs_err": err, "ref_max_abs_err": 1e-3, "fa_bound": 2e-3,
            "fa_ratio": err / 1e-3, "k": 2.0, "share_above": share, "share_limit": 1e-3,
            "rtol": 2.0 ** -6, "max_rel_err": 0.1, "fa_pass": verdict == "PASS",
            "dt_pass": True}


def _report(cases, env=None):
    """A minimal parity report: ``cases`` maps a name to (verdict, {output: metrics})."""
    return {"schema": "aclnn_fag.parity_report/1", "backend": "npu", "started": "t0",
            "criteria": {"flash_attention": {"k": 2.0}},
            "environment": env if env is not None else {"package_version": "0.1.0"},
            "cases": [{"name": n, "verdict": v, "arguments": {"sparse_mode": 0}, "seed": 1,
                       "outputs": outs} for n, (v, outs) in cases.items()]}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------- item 11
def test_nan_error_in_a_case_failing_on_both_sides_is_a_regression(run_cli, tmp_path):
    old = _report({"c": ("FAIL", {"dq": _output("FAIL", err=5e-2), "dv": _output()})})
    new = copy.deepcopy(old)
    new["cases"][0]["outputs"]["dq"]["max_abs_err"] = float("nan")
    cmp = report_compare.compare_reports(old, new)
    row = cmp["cases"][0]
    assert row["regression"] and cmp["regressed"]
    assert row["status"] == "still fail, errors up"
    assert [(c["output"], c["metric"], c["direction"]) for c in row["changes"]] == [
        ("dq", "max_abs_err", "up")]
    # through the CLI, with NaN written the way parity writes non-finite floats ("nan")
    new["cases"][0]["outputs"]["dq"]["max_abs_err"] = "nan"
    code, out, _ = run_cli("parity", "--compare", _write(tmp_path, "old.json", old),
                           _write(tmp_path, "new.json", new))
    assert code == 1 and "NEW regressed" in out
    line = next(l for l in out.splitlines() if l[2:].startswith("c "))
    assert line.startswith("!") and "still fail, errors up" in line and "dq max_abs_err" in line
    # NaN on both sides is no change; NaN in OLD only is an improvement, not a regression
    cmp = report_compare.compare_reports(new, new)
    assert not cmp["regressed"] and cmp["cases"][0]["changes"] == []
    cmp = report_compare.compare_reports(new, old)
    assert not cmp["regressed"] and cmp["cases"][0]["changes"][0]["direction"] == "down"


def test_share_growing_4x_under_the_limit_is_flagged(run_cli, tmp_path):
    old = _report({"c": ("PASS", {"dk": _output(share=2e-4)})})
    new = _report({"c": ("PASS", {"dk": _output(share=8e-4)})})
    cmp = report_compare.compare_reports(old, new)
    row = cmp["cases"][0]
    assert row["regression"] and row["status"] == "errors up"
    assert row["changes"] == [{"output": "dk", "metric": "share_above", "old": 2e-4, "new": 8e-4,
                               "direction": "up"}]
    code, out, _ = run_cli("parity", "--compare", _write(tmp_path, "o.json", old),
                           _write(tmp_path, "n.json", new))
    assert code == 1 and "dk share_above 2.0e-04 -> 8.0e-04 (x 4.00, up)" in out
    # the same growth on a failing case counts too; a growth below a tenth of the limit does not
    old_f = _report({"c": ("FAIL", {"dk": _output("FAIL", share=2e-4)})})
    new_f = _report({"c": ("FAIL", {"dk": _output("FAIL", share=8e-4)})})
    assert report_compare.compare_reports(old_f, new_f)["regressed"]
    tiny_old = _report({"c": ("PASS", {"dk": _output(share=2e-5)})})
    tiny_new = _report({"c": ("PASS", {"dk": _output(share=8e-5)})})
    assert not report_compare.compare_reports(tiny_old, tiny_new)["regressed"]
    # x 2 exactly is not "more than x 2"
    assert not report_compare.compare_reports(
        old, _report({"c": ("PASS", {"dk": _output(share=4e-4)})}))["regressed"]


# ----------------------------------------------------------------------------- item 12
def _env(driver, toolkit, cann="8.1.RC1"):
    return {"package_version": "0.1.0", "backend": "npu", "soc_name": "Ascend910B2",
            "versions": {"cann": {"cann_version": cann, "cann_version_source": "aclsysGetVersionStr"},
                         "toolkit_install": {"path": "/x/ascend_toolkit_install.info",
                                             "version": toolkit},
                         "driver": {"path": "/x/driver/version.info", "version": driver}}}


def test_driver_and_toolkit_versions_each_in_their_own_field(run_cli, tmp_path):
    cases = {"c": ("PASS", {"dq": _output()})}
    old = _report(cases, env=_env("24.1.rc2", "8.0.RC2"))
    new = _report(cases, env=_env("24.1.rc3", "8.0.RC3"))
    cmp = report_compare.compare_reports(old, new)
    assert (cmp["old"]["versions"]["driver"], cmp["new"]["versions"]["driver"]) == ("24.1.rc2", "24.1.rc3")
    assert (cmp["old"]["versions"]["toolkit_install"],
            cmp["new"]["versions"]["toolkit_install"]) == ("8.0.RC2", "8.0.RC3")
    code, out, _ = run_cli("parity", "--compare", _write(tmp_path, "o.json", old),
                           _write(tmp_path, "n.json", new))
    assert code == 0
    rows = {l[2:].split()[0]: (l[0], l[2:].split()[1:]) for l in out.splitlines()
            if l[:1] in ("*", " ") and len(l) > 2 and l[2:].split()
            and l[2:].split()[0] in ("driver", "toolkit_install", "cann")}
    assert rows["driver"] == ("*", ["24.1.rc2", "24.1.rc3"])
    assert rows["toolkit_install"] == ("*", ["8.0.RC2", "8.0.RC3"])
    assert rows["cann"] == (" ", ["8.1.RC1", "8.1.RC1"])


# ----------------------------------------------------------------------------- item 19
def _good():
    return _report({"a": ("PASS", {"dq": _output()}), "b": ("FAIL", {"dq": _output("FAIL", 5e-2)})})


def _set(path_fn):
    def edit(d):
        path_fn(d)
        return d
    return edit


MALFORMED = {
    "case-not-object": (_set(lambda d: d["cases"].append("tiny-mode0")), "case 3", "not an object"),
    "name-missing": (_set(lambda d: d["cases"][0].pop("name")), "case 1", "'name'"),
    "name-int": (_set(lambda d: d["cases"][0].update(name=7)), "case 1", "'name'"),
    "verdict-missing": (_set(lambda d: d["cases"][1].pop("verdict")), "'b'", "'verdict'"),
    "verdict-null": (_set(lambda d: d["cases"][1].update(verdict=None)), "'b'", "'verdict'"),
    "verdict-unknown": (_set(lambda d: d["cases"][0].update(verdict="SKIP")), "'a'", "'verdict'"),
    "outputs-list": (_set(lambda d: d["cases"][0].update(outputs=[1, 2])), "'a'", "'outputs'"),
    "output-not-object": (_set(lambda d: d["cases"][0]["outputs"].update(dq=3)), "'a'", "'dq'"),
    "max-abs-err-dict": (_set(lambda d: d["cases"][1]["outputs"]["dq"].update(max_abs_err={})),
                         "'b'", "max_abs_err"),
    "share-list": (_set(lambda d: d["cases"][0]["outputs"]["dq"].update(share_above=[1])),
                   "'a'", "share_above"),
    "environment-list": (_set(lambda d: d.update(environment=[1])), "", "'environment'"),
    "versions-list": (_set(lambda d: d["environment"].update(versions=["8.1"])), "",
                      "'environment.versions'"),
    "driver-string": (_set(lambda d: d["environment"].update(versions={"driver": "24.1"})), "",
                      "'environment.versions.driver'"),
    "cann-rules-string": (_set(lambda d: d["environment"].update(cann_rules="9.1.0")), "",
                          "'environment.cann_rules'"),
    "criteria-list": (_set(lambda d: d.update(criteria=[2.0])), "", "'criteria'"),
    "flash-attention-list": (_set(lambda d: d["criteria"].update(flash_attention=[2.0])), "",
                             "'criteria.flash_attention'"),
    "duplicate-name": (_set(lambda d: d["cases"].append(dict(d["cases"][1], verdict="PASS"))),
                       "'b'", "more than once"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
@pytest.mark.parametrize("side", ["old", "new"])
def test_malformed_report_exits_2_naming_the_problem(run_cli, tmp_path, name, side):
    edit, where, what = MALFORMED[name]
    good = _write(tmp_path, "good.json", _good())
    bad = _write(tmp_path, "bad.json", edit(_good()))
    args = (good, bad) if side == "new" else (bad, good)
    code, out, err = run_cli("parity", "--compare", *args)
    assert code == 2, (out, err)
    assert out == ""
    assert err.startswith("aclnn-fag parity --compare: ") and str(bad) in err, err
    assert where in err and what in err, err
    assert "Traceback" not in err
    # the Python API raises the same ReportError for the dict
    with pytest.raises(report_compare.ReportError, match="more than once|not|must|'"):
        report_compare.compare_reports(*((_good(), edit(_good())) if side == "new"
                                         else (edit(_good()), _good())))


def test_duplicate_case_fail_then_pass_is_an_error_not_a_pass(run_cli, tmp_path):
    """Two entries named 'b', FAIL then PASS: before, the later one silently won (exit 0)."""
    old = _write(tmp_path, "old.json", _good())
    dup = _good()
    dup["cases"].append({"name": "b", "verdict": "PASS", "outputs": {"dq": _output()}})
    code, _, err = run_cli("parity", "--compare", old, _write(tmp_path, "dup.json", dup))
    assert code == 2 and "case 'b' appears more than once (cases 2 and 3)" in err


def test_deeply_nested_json_exits_2(run_cli, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    good = _write(tmp_path, "good.json", _good())
    code, _, err = run_cli("parity", "--compare", good, deep)
    assert code == 2 and str(deep) in err and "nested too deeply" in err
    bad_utf8 = tmp_path / "latin1.json"
    bad_utf8.write_bytes(b'{"schema": "\xe9"}')
    code, _, err = run_cli("parity", "--compare", bad_utf8, good)
    assert code == 2 and str(bad_utf8) in err and "UTF-8" in err


def test_well_formed_optional_fields_still_compare(run_cli, tmp_path):
    """What the checks must keep accepting: null outputs/environment/criteria, numeric
    strings ('nan', 'inf'), ERROR cases without outputs, reports of earlier releases."""
    old = _good()
    new = _good()
    old["environment"] = {"versions": {"packages": "numpy 2.4", "cann": None}}   # not read
    new["environment"] = None
    new["criteria"] = None
    new["cases"][0]["outputs"] = None
    new["cases"][0]["verdict"] = "ERROR"
    new["cases"][0]["error"] = "RuntimeError: boom"
    new["cases"][1]["outputs"]["dq"]["max_abs_err"] = "inf"
    code, out, err = run_cli("parity", "--compare", _write(tmp_path, "o.json", old),
                             _write(tmp_path, "n.json", new))
    assert code == 1, err
    assert "pass->error" in out and "NEW error: RuntimeError: boom" in out
