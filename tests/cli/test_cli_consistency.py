"""One output convention on every command (``--json FILE``/``-`` and ``-q``), help texts that
say what runs where, and native_stubs/README.md listing every export of the stub libraries."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _help(run_cli, *command):
    code, out, _ = run_cli(*command, "--help")
    assert code == 0
    return " ".join(out.split())


@pytest.mark.parametrize("command", ["info", "demo", "parity", "bench"])
def test_json_and_quiet_on_every_command(run_cli, command):
    text = _help(run_cli, command)
    assert "--json FILE" in text and "'-' = stdout" in text
    assert "-q, --quiet" in text


def test_report_command_options(run_cli):
    text = _help(run_cli, "report")
    assert "--html FILE" in text and "--junit FILE" in text and "-q, --quiet" in text
    assert "Runs nothing" in text


def test_help_says_what_runs_where(run_cli):
    demo = _help(run_cli, "demo")
    assert "the forward and then the backward, both on the chosen backend" in demo
    assert "backend of the forward and the backward" in demo
    parity = _help(run_cli, "parity")
    assert "always run on NumPy" in parity and "--html FILE" in parity
    assert "runs no op" in _help(run_cli, "info")
    top = _help(run_cli)
    assert "forward and backward on the chosen backend" in top and "(runs nothing)" in top
    assert "fp64 golden (NumPy)" in top


def test_demo_json_to_stdout(numpy_only, run_cli):
    code, out, err = run_cli("demo", "--json", "-")
    assert code == 0
    data = json.loads(out)                                   # nothing else on stdout
    assert data["schema"] == "aclnn_fag.demo/1" and data["backend"] == "numpy"
    assert data["forward_backend"] == "numpy" and data["case"]["name"] == "doc-example"
    assert set(data["tensors"]) == {"attention_in", "softmax_max", "softmax_sum", "dq", "dq_rope",
                                    "dk", "dk_rope", "dv"}
    dq = data["tensors"]["dq"]
    assert dq["shape"] == [256, 1, 128] and dq["dtype"] == "bfloat16"
    assert f"{dq['sum_shown']:>12s} {dq['sum_abs_shown']:>12s}" in err   # the table went to stderr
    assert data["times_s"]["total"] > 0


def test_demo_json_file_and_quiet(numpy_only, run_cli, tmp_path):
    path = tmp_path / "demo.json"
    code, out, err = run_cli("demo", "--json", path, "-q")
    assert code == 0 and out == "" and err == ""
    assert json.loads(path.read_text())["tensors"]["dv"]["shape"] == [256, 1, 128]
    code, out, _ = run_cli("demo", "--json", path)
    assert code == 0 and "backend: numpy" in out and out.rstrip().endswith(f"json: {path}")


def test_info_quiet(numpy_only, run_cli, tmp_path):
    assert run_cli("info", "-q")[1:] == ("", "")
    path = tmp_path / "info.json"
    code, out, _ = run_cli("info", "--json", path, "-q")
    assert code == 0 and out == "" and json.loads(path.read_text())["version"]


def _readme_exports() -> set:
    text = (ROOT / "native_stubs" / "README.md").read_text()
    table = text[text.index("| library | exports |"):text.index("Every export is in this table")]
    return set(re.findall(r"`([A-Za-z_]\w*)`", table))


def test_native_stubs_readme_lists_every_export(stub_lib_dir):
    nm = shutil.which("nm")
    if nm is None:
        pytest.fail("nm (binutils) is needed to list the stub libraries' exports")
    exported = set()
    for lib in ("libascendcl.so", "libnnopbase.so", "libopapi.so"):
        out = subprocess.run([nm, "-D", "--defined-only", str(pathlib.Path(stub_lib_dir) / lib)],
                             capture_output=True, text=True, check=True).stdout
        exported |= {parts[2] for parts in (line.split() for line in out.splitlines())
                     if len(parts) == 3 and parts[1] == "T"}
    assert "aclnnFlashAttentionVarLenScoreV3" in exported
    listed = _readme_exports()
    assert exported - listed == set(), "exported but not in native_stubs/README.md"
    assert listed - exported == set(), "in native_stubs/README.md but not exported"
