"""``parity --json/--report/--junit``, ``bench --json -``, ``parity --backend-module``,
``parity --compare``: one output convention, JUnit contents, custom backends, comparisons."""

from __future__ import annotations

import copy
import json
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from aclnn_fag.tools import report_compare

ADAPTERS = '''
import numpy as np
import aclnn_fag

def good(**kw):
    return aclnn_fag.flash_attention_unpadding_score_grad_v3(**kw, backend="numpy")

def broken_dv(**kw):
    g = good(**kw)
    dv = g.dv.copy()
    dv.reshape(-1)[0] += np.float32(1.0).astype(dv.dtype)
    return (g.dq, g.dq_rope, g.dk, g.dk_rope, dv)        # a plain 5-tuple is accepted

def as_dict(**kw):
    return good(**kw)._asdict()

as_dict.backend_name = "dict-backend"

def wrong_signature(query, key):
    return None

not_callable = 3
'''


@pytest.fixture
def adapters(tmp_path, monkeypatch):
    """A module my_adapters.py in the current directory (found via the cwd rule)."""
    (tmp_path / "my_adapters.py").write_text(ADAPTERS)
    monkeypatch.chdir(tmp_path)
    yield "my_adapters"
    sys.modules.pop("my_adapters", None)


def test_no_report_written_by_default(numpy_only, run_cli, tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "-q")
    assert code == 0 and "cases passed" in out
    assert not (tmp_path / "parity_report.json").exists()


def test_json_to_stdout_keeps_stdout_parseable(numpy_only, run_cli, tiny_suite):
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--json", "-", "-q")
    assert code == 0
    report = json.loads(out)                                   # nothing else on stdout
    assert report["schema"] == "aclnn_fag.parity_report/1"
    assert "cases passed" in err                               # the table went to stderr


def test_report_old_spelling(numpy_only, run_cli, tiny_suite, tmp_path):
    path = tmp_path / "old.json"
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--report", path, "-q")
    assert code == 0 and f"report: {path}" in out
    assert json.loads(path.read_text())["summary"]["passed"] == 1


def test_bench_json_stdout(numpy_only, run_cli):
    code, out, err = run_cli("bench", "--suite", "smoke", "--repeat", "1", "--json", "-", "-q")
    assert code == 0, err
    data = json.loads(out)
    assert data["environment"]["versions"]["packages"]["numpy"]
    assert "GFLOP" in err or "gflop" in err.lower()


def test_junit_pass_and_fail(numpy_only, run_cli, tiny_suite, tmp_path, adapters):
    xml_path = tmp_path / "j.xml"
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--quick", "--backend-module",
                           f"{adapters}:broken_dv", "--junit", xml_path, "-q")
    assert code == 1
    suite = ET.parse(xml_path).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "2" and suite.get("failures") == "2"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["backend"] == f"module:{adapters}:broken_dv" and props["numpy"]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["tiny-mode0", "tiny-gqa-causal"]
    for c in cases:
        failure = c.find("failure")
        assert failure is not None and failure.get("type") == "ParityFailure"
        assert failure.get("message").startswith("worst output dv: max_abs_err ")
        assert "FAIL" in failure.get("message") and "failing outputs: dv" in failure.text
    # a passing run: no failure elements, the worst output in system-out
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--quick", "--junit", "-", "-q")
    assert code == 0
    suite = ET.fromstring(out)
    assert suite.get("failures") == "0" and suite.find("testcase/failure") is None
    assert suite.find("testcase/system-out").text.startswith("worst output ")


def test_junit_error_case(numpy_only, tiny_suite):
    from aclnn_fag.tools import cases, junit, parity

    def boom(**kwargs):
        raise RuntimeError("device on fire")
    report = parity.run_suite(cases.select_cases(cases.load_suite(tiny_suite), names=["tiny-mode0"]),
                              backend_fn=boom)
    root = ET.fromstring(junit.junit_xml(report))
    err = root.find("testcase/error")
    assert root.get("errors") == "1" and err.get("type") == "RuntimeError"
    assert "device on fire" in err.get("message")


def test_backend_module_variants(numpy_only, run_cli, tiny_suite, tmp_path, adapters):
    path = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--backend-module",
                             f"{adapters}:as_dict", "--json", path, "-q")
    assert code == 0, out + err
    report = json.loads(path.read_text())
    assert report["backend"] == "dict-backend" and report["summary"]["passed"] == 2
    assert not report["cases"][0].get("backend_reused_reference")    # really called
    for bad, words in ((f"{adapters}:wrong_signature", "keyword arguments"),
                       (f"{adapters}:not_callable", "not callable"),
                       (f"{adapters}:missing", "has no missing"),
                       ("no_such_module_xyz:f", "cannot import"),
                       ("no-colon", "pkg.module:function")):
        code, _, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--backend-module", bad)
        assert code == 2 and words in err, (bad, err)


def test_torch_npu_adapter_mapping(monkeypatch, tiny_suite):
    """The documented adapter, with a stand-in torch_npu that checks the argument mapping and
    computes with the NumPy backend (torch CPU tensors in and out)."""
    torch = pytest.importorskip("torch")
    import types

    import numpy as np

    import aclnn_fag
    from aclnn_fag.tools import cases, parity
    from aclnn_fag.tools.adapters import torch_npu_v2
    from aclnn_fag.tools.backend_module import load_backend

    seen = {}

    def npu_fusion_attention_grad_v2(query, key, value, dy, head_num, input_layout, **kw):
        seen.update(head_num=head_num, layout=input_layout, mask_dtype=kw["atten_mask"].dtype,
                    keep_prob=kw["keep_prob"], q_dtype=query.dtype)
        n = lambda t: None if t is None else torch_npu_v2.to_numpy(t, torch)   # noqa: E731
        mask = kw["atten_mask"].to(torch.uint8).numpy()
        g = aclnn_fag.flash_attention_unpadding_score_grad_v3(
            n(query), n(kw["query_rope"]), n(key), n(kw["key_rope"]), n(value), n(dy),
            atten_mask=mask, softmax_max=n(kw["softmax_max"]), softmax_sum=n(kw["softmax_sum"]),
            attention_in=n(kw["attention_in"]), actual_seq_qlen=kw["actual_seq_qlen"],
            actual_seq_kvlen=kw["actual_seq_kvlen"], scale_value=kw["scale_value"],
            pre_tokens=kw["pre_tokens"], next_tokens=kw["next_tokens"],
            sparse_mode=kw["sparse_mode"], backend="numpy")
        t = lambda a: torch_npu_v2.to_torch(a, torch, "cpu")                   # noqa: E731
        return t(g.dq), t(g.dk), t(g.dv), None, t(g.dq_rope), t(g.dk_rope)

    monkeypatch.setitem(sys.modules, "torch_npu",
                        types.SimpleNamespace(npu_fusion_attention_grad_v2=npu_fusion_attention_grad_v2))
    monkeypatch.setattr(torch_npu_v2, "DEVICE", "cpu")
    fn = load_backend("aclnn_fag.tools.adapters.torch_npu_v2:backward")
    assert fn.backend_name == "torch_npu.npu_fusion_attention_grad_v2"
    report = parity.run_suite(cases.select_cases(cases.load_suite(tiny_suite), tags=["quick"]),
                              backend_fn=fn)
    assert report["ok"], [c["error"] for c in report["cases"]]
    assert seen == {"head_num": 4, "layout": "TND", "mask_dtype": torch.bool, "keep_prob": 1.0,
                    "q_dtype": torch.bfloat16}
    assert np.array_equal(torch_npu_v2.to_numpy(torch_npu_v2.to_torch(
        np.arange(4, dtype=np.float32).astype(torch_npu_v2.BF16), torch, "cpu"), torch),
        np.arange(4, dtype=np.float32).astype(torch_npu_v2.BF16))


# ----------------------------------------------------------------------------- --compare
@pytest.fixture
def two_reports(numpy_only, run_cli, tiny_suite, tmp_path, adapters):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    assert run_cli("parity", "--suite", tiny_suite, "--quick", "--json", old, "-q")[0] == 0
    code = run_cli("parity", "--suite", tiny_suite, "--quick", "--backend-module",
                   f"{adapters}:broken_dv", "--json", new, "-q")[0]
    assert code == 1
    return old, new


def test_compare_pass_to_fail_exit_1(two_reports, run_cli):
    old, new = two_reports
    code, out, _ = run_cli("parity", "--compare", old, new)
    assert code == 1
    assert "NEW regressed" in out
    line = next(l for l in out.splitlines() if "tiny-mode0" in l)
    assert line.startswith("!") and "PASS" in line and "FAIL" in line and "pass->fail" in line
    assert "dv max_abs_err" in line                 # the error growth is printed too
    assert "NEW dv: max_abs_err" in out
    assert "* backend" in out                       # differing versions are marked
    # the other direction is an improvement: exit 0
    code, out, _ = run_cli("parity", "--compare", new, old)
    assert code == 0 and "fail->pass" in out and "no regression" in out


def _edit(path, tmp_path, name, fn):
    data = json.loads(path.read_text())
    fn(data)
    out = tmp_path / name
    out.write_text(json.dumps(data))
    return out


def test_compare_factor_missing_and_json(two_reports, run_cli, tmp_path):
    old, _ = two_reports
    base = json.loads(old.read_text())
    o = base["cases"][0]["outputs"]["dq"]
    assert o["max_abs_err"] > 0

    def scale(f):
        def edit(d):
            d["cases"][0]["outputs"]["dq"]["max_abs_err"] = o["max_abs_err"] * f
        return edit

    up3 = _edit(old, tmp_path, "up3.json", scale(3.0))
    code, out, _ = run_cli("parity", "--compare", old, up3)
    assert code == 1 and "errors up" in out and "(x 3.00, up)" in out
    code, out, _ = run_cli("parity", "--compare", old, up3, "--factor", "4")
    assert code == 0 and "(x 3.00, up)" not in out and "no regression" in out
    up19 = _edit(old, tmp_path, "up19.json", scale(1.9))
    assert run_cli("parity", "--compare", old, up19)[0] == 0          # within the factor
    code, out, _ = run_cli("parity", "--compare", up3, old)
    assert code == 0 and "errors down" in out
    # a case missing in NEW: listed, not a regression
    fewer = _edit(old, tmp_path, "fewer.json", lambda d: d["cases"].pop(1))
    code, out, _ = run_cli("parity", "--compare", old, fewer)
    assert code == 0 and "only in OLD: tiny-gqa-causal" in out
    # machine-readable comparison on stdout
    code, out, err = run_cli("parity", "--compare", old, up3, "--json", "-")
    cmp = json.loads(out)
    assert code == 1 and cmp["regressed"] and cmp["summary"]["errors_up"] == 1
    assert "NEW regressed" in err


def test_compare_versions_and_bad_input(two_reports, run_cli, tmp_path):
    old, new = two_reports

    def set_version(d):
        d["environment"]["versions"]["cann"] = {"cann_version": "8.1.RC1",
                                                "cann_version_source": "aclsysGetCANNVersion"}
    v = _edit(old, tmp_path, "v.json", set_version)
    code, out, _ = run_cli("parity", "--compare", old, v)
    line = next(l for l in out.splitlines() if l[2:].startswith("cann "))
    assert line.startswith("*") and "8.1.RC1" in line
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = run_cli("parity", "--compare", old, bad)
    assert code == 2 and "not a parity report" in err
    code, _, err = run_cli("parity", "--compare", old, tmp_path / "missing.json")
    assert code == 2
    code, _, err = run_cli("parity", "--quick", "--factor", "3")
    assert code == 2 and "--compare" in err


def test_compare_unit_rules():
    def report(verdicts, err=1e-3):
        return {"schema": "aclnn_fag.parity_report/1", "cases": [
            {"name": n, "verdict": v, "arguments": {}, "outputs": {
                "dq": {"verdict": v, "max_abs_err": err, "ref_max_abs_err": 1e-3,
                       "share_above": 0.0, "share_limit": 1e-3}}} for n, v in verdicts.items()]}
    cmp = report_compare.compare_reports(report({"a": "FAIL", "b": "PASS"}),
                                         report({"a": "ERROR", "b": "ERROR"}))
    assert [r["status"] for r in cmp["cases"]] == ["fail->error", "pass->error"]
    assert [r["regression"] for r in cmp["cases"]] == [True, True]
    assert cmp["regressed"] and cmp["summary"]["pass_to_fail"] == 2
    cmp = report_compare.compare_reports(report({"a": "PASS"}), report({"a": "FAIL"}))
    assert cmp["cases"][0]["regression"] and cmp["cases"][0]["status"] == "pass->fail"
    assert cmp["cases"][0]["changes"] == []           # a verdict change alone is a regression
    # growth below the noise floor (the reference's own error) is not a change
    cmp = report_compare.compare_reports(report({"a": "PASS"}, err=1e-5), report({"a": "PASS"}, err=9e-4))
    assert not cmp["regressed"] and cmp["cases"][0]["status"] == "unchanged"
    with pytest.raises(ValueError):
        report_compare.compare_reports(report({}), report({}), factor=1.0)


def test_old_adapter_path_still_loads_with_a_deprecation_warning():
    """``aclnn_fag.adapters.torch_npu_v2:backward`` (the path before the tools moved to
    aclnn_fag/tools/) loads the same adapter and says where it lives now."""
    from aclnn_fag.tools.backend_module import load_backend
    with pytest.warns(DeprecationWarning, match="aclnn_fag.tools.adapters.torch_npu_v2"):
        fn = load_backend("aclnn_fag.adapters.torch_npu_v2:backward")
    assert fn.backend_name == "torch_npu.npu_fusion_attention_grad_v2"
    assert fn.backend_module == "aclnn_fag.adapters.torch_npu_v2:backward"
