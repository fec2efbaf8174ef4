"""``parity --backend-module``: a backend that raises SystemExit (or another BaseException
that is not KeyboardInterrupt) is an ERROR of its case, never the end of the run with exit 0
and no table; a module that exits while it is imported is a usage error (exit 2)."""

from __future__ import annotations

import json

import pytest

MODULE = '''
import aclnn_fag

class Abort(BaseException):
    pass

def exits_0(**kw):
    raise SystemExit(0)

def exits_on_gqa(**kw):
    if kw["query"].shape[1] == 4:
        raise SystemExit(0)
    return aclnn_fag.flash_attention_unpadding_score_grad_v3(**kw, backend="numpy")

def base_exception(**kw):
    raise Abort("stop everything")

def interrupted(**kw):
    raise KeyboardInterrupt
'''


@pytest.fixture
def exiting(local_module):
    return local_module("exiting_backend", MODULE)


@pytest.mark.parametrize("fn,error", [("exits_0", "SystemExit: 0"),
                                      ("base_exception", "Abort: stop everything")])
def test_base_exception_of_a_backend_is_an_error(numpy_only, run_cli, tiny_suite, tmp_path, exiting,
                                                 fn, error):
    path = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--backend-module",
                             f"{exiting}:{fn}", "--json", path, "-q")
    assert code == 1, out + err
    assert "0/2 cases passed, 0 failed, 2 errors" in out             # the table was printed
    report = json.loads(path.read_text())
    assert [c["verdict"] for c in report["cases"]] == ["ERROR", "ERROR"]
    assert all(c["error"] == error for c in report["cases"])
    assert not report["ok"]


def test_one_exiting_case_does_not_stop_the_others(numpy_only, run_cli, tiny_suite, tmp_path, exiting):
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--backend-module",
                             f"{exiting}:exits_on_gqa", "--junit", tmp_path / "j.xml", "-q")
    assert code == 1, out + err
    rows = {l.split()[0]: l.split()[-1] for l in out.splitlines() if l.startswith("tiny-")}
    assert rows["tiny-mode0"] == "PASS"
    assert "tiny-gqa-causal" in out and "SystemExit: 0" in out
    assert 'errors="1"' in (tmp_path / "j.xml").read_text()


def test_keyboard_interrupt_still_stops_the_run(numpy_only, run_cli, tiny_suite, exiting):
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--backend-module",
                             f"{exiting}:interrupted", "-q")
    assert code == 130 and "interrupted" in err and "cases passed" not in out


def test_module_exiting_at_import_is_a_usage_error(numpy_only, run_cli, tiny_suite, local_module):
    name = local_module("exits_at_import", "raise SystemExit(0)\n")
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--quick", "--backend-module",
                             f"{name}:backward")
    assert code == 2 and out == ""
    assert f"--backend-module {name}:backward: cannot import {name}: SystemExit: 0" in err
