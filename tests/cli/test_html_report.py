"""``parity --html``, ``report REPORT.json``, ``parity --compare ... --html``: the error
summaries in the JSON report, the page's content, and every bad input (exit status 2).
The pages in a real browser: ``test_html_browser.py``."""

from __future__ import annotations

import copy
import json
import re
import sys

import numpy as np
import pytest

from aclnn_fag.tools import error_summary
from aclnn_fag.tools.envinfo import shorten


# --------------------------------------------------------------------------- summaries
def test_summary_locates_a_bad_block():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((40, 3, 8))
    r = g + 1e-3 * rng.standard_normal(g.shape)
    y = r.copy()
    y[25:30, 2, :] += 0.5                                   # batch 1 (ends [20, 40]), head 2
    s = error_summary.summarise(y, g, r, [20, 40], "key")
    bh = np.array(s["bh_max_abs"])
    assert bh.shape == (2, 3)
    assert np.unravel_index(np.argmax(bh), bh.shape) == (1, 2)
    assert bh[1, 2] == pytest.approx(0.5, rel=0.02) and bh[0].max() < 0.01
    tokens = np.array(s["token_max_abs"])
    assert s["token_bin"] == 1 and tokens.shape == (40,)
    assert set(np.nonzero(tokens > 0.1)[0]) == set(range(25, 30))
    assert s["token_ref_max_abs"] == s["token_max_abs"][:25] + s["token_ref_max_abs"][25:30] \
        + s["token_max_abs"][30:]
    h = s["hist"]
    for who in ("backend", "reference"):
        total = sum(h[who]) + h[f"{who}_zero"] + h[f"{who}_under"] + h[f"{who}_over"]
        assert total == g.size
    top_bin = int((np.log10(0.5) - h["log10_lo"]) / h["log10_step"])
    assert h["backend"][top_bin] >= 5 * 8 - 2 and h["reference"][top_bin] == 0


def test_summary_bins_long_outputs_and_marks_empty_batches():
    t = error_summary.MAX_TOKEN_BINS * 3 + 5
    g = np.zeros((t, 1, 2))
    y = g.copy()
    y[7, 0, 1] = np.nan                                     # non-finite: an infinite error
    s = error_summary.summarise(y, g, g, [0, 10, 10, t])
    assert s["token_bin"] == 4 and len(s["token_max_abs"]) == -(-t // 4)
    assert s["token_max_abs"][1] == float("inf") and s["hist"]["backend_over"] == 1
    assert s["bh_max_abs"][0] is None and s["bh_max_abs"][2] is None
    assert s["bh_max_abs"][1] == [float("inf")] and s["bh_max_abs"][3] == [0.0]


def test_summary_reads_statistics_token_major():
    from aclnn_fag.softmax_layout import device_stats_from_token_major
    ends = [3, 7]
    tm = np.arange(14, dtype=np.float32).reshape(7, 2)
    bad = tm.copy()
    bad[4, 1] += 2.0                                        # token 4 (batch 1), head 1
    g, y = (device_stats_from_token_major(a, ends) for a in (tm, bad))
    s = error_summary.summarise(y, g, g, ends, stats=True)
    assert s["bh_max_abs"] == [[0.0, 0.0], [0.0, 2.0]]
    assert s["token_max_abs"] == [0, 0, 0, 0, 2.0, 0, 0]


def test_report_records_summaries(numpy_only, run_cli, tiny_suite, tmp_path):
    path = tmp_path / "r.json"
    code, _, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--json", path, "-q")
    assert code == 0, err
    text = path.read_text()
    case = json.loads(text)["cases"][0]
    for name, o in case["outputs"].items():
        s = o["error_summary"]
        assert s["format"] == error_summary.FORMAT
        assert s["batch_ends"] == (case["arguments"]["actual_seq_qlen"] if name.startswith("dq")
                                   else case["arguments"]["actual_seq_kvlen"])
        assert len(s["bh_max_abs"]) == 3 and len(s["token_max_abs"]) == s["tokens"]
        # the query side's second sequence is empty (lengths_q [48, 0, 32]), the key side's not
        assert (s["bh_max_abs"][1] is None) == name.startswith("dq")
    # compact: a per-token array is one line of the file
    assert re.search(r'"token_max_abs": \[[^\n\]]+\]', text)


# --------------------------------------------------------------------------- pages
def _sections(page: str):
    return re.findall(r'<section class="case" id="([^"]+)"', page)


def test_failing_run_page(numpy_only, run_cli, tiny_suite, tmp_path, block_adapter):
    html, rep = tmp_path / "fail.html", tmp_path / "fail.json"
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--case",
                             "tiny-gqa-causal", "--backend-module", block_adapter, "--json", rep,
                             "--html", html, "-q")
    assert code == 1, err
    assert f"html: {html}" in out
    page = html.read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    rows = re.findall(r'<tr class="case-row" data-status="(\w+)"', page)
    assert sorted(rows) == ["FAIL", "FAIL"]
    assert _sections(page) == ["case-tiny-gqa-causal", "case-tiny-mode0"] or \
        sorted(_sections(page)) == ["case-tiny-gqa-causal", "case-tiny-mode0"]
    assert page.count("data:image/png;base64,") == 6          # 3 pictures per failing case
    for row in ("CANN", "runtime", "ops_transformer", "driver", "SoC", "op-API library",
                "BLAS and threads"):
        assert f"<tr><th>{row}</th>" in page
    # the saved report renders the same sections (from JSON alone)
    again = tmp_path / "again.html"
    code, out, err = run_cli("report", rep, "--html", again, "-q")
    assert code == 1 and err == ""
    assert _sections(again.read_text()) == _sections(page)
    assert again.read_text().count("data:image/png;base64,") == 6


def test_passing_run_page_orders_and_counts(numpy_only, run_cli, tiny_suite, tmp_path):
    html, rep = tmp_path / "pass.html", tmp_path / "pass.json"
    code, _, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--html", html, "--json", rep, "-q")
    assert code == 0, err
    page = html.read_text()
    assert len(re.findall(r'<tr class="case-row"', page)) == 2
    assert _sections(page) == [] and "data:image/png" not in page
    assert "SELF-CHECK" in page and "PASS 2" in page
    # failing first: the suite's second case made to fail comes first in the table
    report = json.loads(rep.read_text())
    assert [c["name"] for c in report["cases"]] == ["tiny-mode0", "tiny-gqa-causal"]
    report["cases"][1]["verdict"] = "FAIL"
    report["cases"][1]["outputs"]["dv"].update(verdict="FAIL", fa_pass=False)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(report))
    code, _, _ = run_cli("report", edited, "--html", html, "-q")
    assert code == 0                                  # the report's own "ok" is still true
    rows = re.findall(r'data-status="(\w+)"><td class="num">\d+</td><td class="name">([^<]*<a[^>]*>)?([\w-]+)', html.read_text())
    assert [(r[0], r[2]) for r in rows] == [("FAIL", "tiny-gqa-causal"), ("PASS", "tiny-mode0")]


def test_repro_links(numpy_only, run_cli, tiny_suite, tmp_path, block_adapter):
    html = tmp_path / "pages" / "r.html"
    html.parent.mkdir()
    code, _, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--backend-module",
                           block_adapter, "--repro", tmp_path / "repro", "--no-shrink",
                           "--html", html, "--json", tmp_path / "r.json", "-q")
    assert code == 1, err
    hrefs = re.findall(r'<a class="repro" href="([^"]+)"', html.read_text())
    assert hrefs == ["../repro/tiny-mode0/"]
    assert (html.parent / hrefs[0] / "repro.c").is_file()
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report["reproducers"]["cases"]) == ["tiny-mode0"]


def test_compare_page(numpy_only, run_cli, tiny_suite, tmp_path, block_adapter):
    old, new, html = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "cmp.html"
    base = ("parity", "--suite", tiny_suite, "--quick", "-q", "--json")
    assert run_cli(*base, old)[0] == 0
    assert run_cli(*base, new, "--backend-module", block_adapter)[0] == 1
    code, out, err = run_cli("parity", "--compare", old, new, "--html", html)
    assert code == 1 and "NEW regressed" in out and f"html: {html}" in out, err
    page = html.read_text()
    kinds = re.findall(r'<tr class="case-row regression" data-kind="(\w+)"', page)
    assert kinds == ["regression", "regression"]
    assert sorted(_sections(page)) == ["case-tiny-gqa-causal", "case-tiny-mode0"]
    assert "OLD backend" not in page          # legend text lives in the PNG, not the HTML


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "stdout"])
def test_unwritable_destination_exits_2_before_running(numpy_only, run_cli, tiny_suite, tmp_path, where):
    dest = {"missing-dir": tmp_path / "no" / "such" / "x.html", "a-directory": tmp_path,
            "stdout": "-"}[where]
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--html", dest)
    assert code == 2 and out == ""
    assert "--html" in err and ("does not exist" in err or "is a directory" in err or "file name" in err)


def test_unwritable_destination_of_report(numpy_only, run_cli, tmp_path):
    rep = tmp_path / "r.json"
    rep.write_text(json.dumps({"schema": "aclnn_fag.parity_report/1", "cases": [], "ok": True}))
    code, _, err = run_cli("report", rep, "--html", tmp_path / "nope" / "r.html")
    assert code == 2 and "does not exist" in err


def test_without_matplotlib_says_what_to_install(numpy_only, run_cli, tiny_suite, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--html",
                             tmp_path / "x.html")
    assert code == 2 and out == ""
    assert "pip install 'aclnn_fag[report]'" in err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.parametrize("schema", ["aclnn_fag.parity_report/2", "aclnn_fag.parity_compare/1", None])
def test_report_of_another_format(numpy_only, run_cli, tmp_path, schema):
    rep = tmp_path / "other.json"
    rep.write_text(json.dumps({"schema": schema, "cases": []}))
    code, out, err = run_cli("report", rep, "--html", tmp_path / "x.html")
    assert code == 2 and out == "" and not (tmp_path / "x.html").exists()
    assert "is not a parity report" in err and str(schema) in err
    if schema == "aclnn_fag.parity_compare/1":
        assert "parity --compare OLD.json NEW.json --html FILE" in err


def test_older_report_renders_what_it_has_and_exits_2(numpy_only, run_cli, tiny_suite, tmp_path,
                                                      block_adapter):
    rep = tmp_path / "r.json"
    assert run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--backend-module",
                   block_adapter, "--json", rep, "-q")[0] == 1
    old = json.loads(rep.read_text())
    for case in old["cases"]:
        for o in case["outputs"].values():
            del o["error_summary"]
    older = tmp_path / "older.json"
    older.write_text(json.dumps(old))
    html = tmp_path / "older.html"
    code, out, err = run_cli("report", older, "--html", html)
    assert code == 2
    assert "no per-position error summaries" in err and "tiny-mode0" in err
    page = html.read_text()
    assert "no per-position error summaries" in page and "data:image/png" not in page
    assert _sections(page) == ["case-tiny-mode0"] and "2.5" in page      # dv's figures still there
    # as NEW of a comparison: the same; as OLD: nothing is missing from the page
    code, _, err = run_cli("parity", "--compare", rep, older, "--html", tmp_path / "c1.html")
    assert code == 2 and "no per-position error summaries" in err
    code, _, err = run_cli("parity", "--compare", older, rep, "--html", tmp_path / "c2.html")
    assert code == 0 and err == ""


def test_report_command_table_and_junit(numpy_only, run_cli, tiny_suite, tmp_path):
    rep = tmp_path / "r.json"
    assert run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--json", rep, "-q")[0] == 0
    code, out, _ = run_cli("report", rep)
    assert code == 0 and "tiny-mode0" in out and "1/1 cases passed" in out
    code, out, err = run_cli("report", rep, "--junit", "-")
    assert code == 0 and out.startswith("<?xml") and "tiny-mode0" in err
    code, out, _ = run_cli("report", rep, "-q")
    assert code == 0 and out == ""


# --------------------------------------------------------------------------- shortening
def test_long_version_values_are_shortened():
    value = "not loaded: " + "; ".join(f"/usr/local/Ascend/ascend-toolkit/latest/lib64/lib{i}.so: not found"
                                       for i in range(4))
    assert len(value) > 200
    assert shorten(value) == "not loaded (4 places tried)"
    path = "/very/long/" + "x" * 40 + "/lib64/libopapi_transformer.so"
    assert shorten(path) == ".../lib64/libopapi_transformer.so"
    assert len(shorten("y" * 300)) == 48 and shorten("short") == "short"


def test_compare_table_shortens_long_values(numpy_only, run_cli, tiny_suite, tmp_path):
    rep = tmp_path / "r.json"
    assert run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--json", rep, "-q")[0] == 0
    data = json.loads(rep.read_text())
    data["environment"]["library_paths"] = {"opapi": "not loaded: " + "; ".join(
        f"/opt/x{i}/lib64/libopapi.so: not found" for i in range(6))}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(copy.deepcopy(data)))
    code, out, _ = run_cli("parity", "--compare", rep, other)
    assert code == 0
    line = next(l for l in out.splitlines() if "opapi_library" in l)
    assert "not loaded (6 places tried)" in line and len(line) < 100


def test_core_and_cli_do_not_import_matplotlib():
    import subprocess

    from cli_paths import PYTHON, subprocess_env
    code = ("import sys, aclnn_fag, aclnn_fag.tools.parity, aclnn_fag.tools.html_report; "
            "from aclnn_fag.tools.cli import build_parser; build_parser(); "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    done = subprocess.run([PYTHON, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
