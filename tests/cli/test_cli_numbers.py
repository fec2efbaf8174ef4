"""Numbers on the command line are checked (usage error, exit 2, option named), and a parity
run on the NumPy backend says that it only checks the reference against itself."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("argv,option", [
    (("parity", "--quick", "--k", "nan"), "--k"),
    (("parity", "--quick", "--k", "inf"), "--k"),
    (("parity", "--quick", "--k", "0"), "--k"),
    (("parity", "--quick", "--k", "-2"), "--k"),
    (("parity", "--quick", "--k", "two"), "--k"),
    (("bench", "--repeat", "0"), "--repeat"),
    (("bench", "--repeat", "1.5"), "--repeat"),
    (("demo", "--seed", "-1"), "--seed"),
    (("demo", "--seed", "1e3"), "--seed"),
    (("parity", "--compare", "a.json", "b.json", "--factor", "nan"), "--factor"),
    (("parity", "--compare", "a.json", "b.json", "--factor", "0"), "--factor"),
])
def test_bad_numbers_are_usage_errors(run_cli, argv, option):
    code, out, err = run_cli(*argv)
    assert code == 2 and f"argument {option}" in err and out == ""


@pytest.mark.parametrize("argv,option", [
    (("parity", "--k", "nan"), "--k"), (("bench", "--repeat", "-3"), "--repeat"),
    (("demo", "--seed", "-5"), "--seed")])
def test_bad_number_message_names_the_option(capsys, argv, option):
    from aclnn_fag.tools.cli import main
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and argv[-1] in err


def test_good_k_is_used(numpy_only, run_cli, tiny_suite, tmp_path):
    report = tmp_path / "r.json"
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--k", "3.5",
                           "--report", report, "-q")
    assert code == 0
    assert json.loads(report.read_text())["criteria"]["flash_attention"]["k"] == 3.5


def test_numpy_parity_is_labelled_a_self_check(numpy_only, run_cli, tiny_suite, tmp_path):
    report = tmp_path / "r.json"
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--quick", "--report", report, "-q")
    assert code == 0
    assert "SELF-CHECK" in out and "not a device" in out
    assert json.loads(report.read_text())["self_check"] is True


def test_golden_precision_run_is_not_a_self_check(numpy_only, run_cli, tiny_suite, tmp_path):
    report = tmp_path / "r.json"
    code, out, _ = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--precision",
                           "fp32", "--report", report, "-q")
    assert "SELF-CHECK" not in out
    assert json.loads(report.read_text())["self_check"] is False


def test_npu_parity_is_not_a_self_check(npu_stub, run_cli, tiny_suite, tmp_path):
    report = tmp_path / "r.json"
    code, out, _ = run_cli("parity", "--backend", "npu", "--suite", tiny_suite, "--case",
                           "tiny-mode0", "--report", report, "-q")
    assert code == 0
    assert "SELF-CHECK" not in out
    assert json.loads(report.read_text())["self_check"] is False


@pytest.mark.parametrize("script,argv,option", [
    ("fuzz_long.py", ["--scale", "0"], "--scale"),
    ("fuzz_long.py", ["--minutes", "nan"], "--minutes"),
    ("parity_all_devices.py", ["--jobs", "-1"], "--jobs"),
])
def test_script_numbers_are_checked(script, argv, option):
    import subprocess
    from cli_paths import PYTHON, ROOT, subprocess_env
    proc = subprocess.run([PYTHON, str(ROOT / "scripts" / script), *argv], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"argument {option}" in proc.stderr
