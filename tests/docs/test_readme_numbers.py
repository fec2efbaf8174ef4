"""The README stays short and true: its length, the quick start's commands (the same as
`.ci/run`'s), the limits' figures (the validator's constants), the CLI table (every command
and option exists), the environment variables (every one the package or the stubs read, and
no other), the index of docs/ (every page), and its Python samples run."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAX_LINES = 250


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README.md has no section {title!r}"
    return m.group(1)


def test_readme_fits_on_a_few_screens():
    assert len(README.splitlines()) <= MAX_LINES


def test_quick_start_commands_are_ci_run_s():
    commands = re.search(r"```bash\n(.*?)```", section("Quick start"), re.S).group(1).splitlines()
    assert commands[0] == "python3 -m pip install -e . && aclnn-fag demo"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert commands[1] == ci == ("python3 -m pip install -e '.[test]' torch==2.13.0 && "
                                 "python3 -m pytest -q -n auto")


def test_stub_build_and_use_are_spelled_out():
    text = section("Quick start")
    assert "python3 native_stubs/build.py" in text
    assert "ACLNN_FAG_LIB_DIR=native_stubs/build aclnn-fag" in text


def test_limits_are_the_validator_s():
    from aclnn_fag.constants import LIMITS
    text = " ".join(section("Limits").split())
    found = {"max_heads": r"N ≤ (\d+) heads", "max_head_dim": r"D ≤ (\d+)",
             "max_tokens": r"T ≤ (\d+) tokens", "max_batch": r"at most (\d+) sequences"}
    for key, pattern in found.items():
        m = re.search(pattern, text)
        assert m and int(m.group(1)) == LIMITS[key], (key, m and m.group(0), LIMITS[key])
    assert not re.search(r"\d\s*(µs|ms)\b", text), "timings go stale: name the command instead"


def _parsers():
    from aclnn_fag.tools.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def test_cli_table_names_every_command_and_only_real_options():
    parsers = _parsers()
    rows = [line for line in section("Command line").splitlines() if line.startswith("| `")]
    named = {re.match(r"\| `(\w+)", row).group(1) for row in rows}
    assert named == set(parsers), (named, set(parsers))
    for row in rows:
        command = re.match(r"\| `(\w+)", row).group(1)
        options = {o for a in parsers[command]._actions for o in a.option_strings}
        for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", row):
            assert option in options, f"README: {command} has no option {option}"


def _variables(*folders) -> set:
    names = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".c", ".h", ".sh") and "build" not in path.parts:
                names |= set(re.findall(r"\b((?:ACLNN_FAG|ACL_STUB|NATIVE_STUBS)_[A-Z_]+)\b",
                                        path.read_text(encoding="utf-8")))
    return {n for n in names if not n.endswith("_H")}          # C include guards


def test_environment_table_has_every_variable_read():
    table = set(re.findall(r"`((?:ACLNN_FAG|ACL_STUB|NATIVE_STUBS)_[A-Z_]+)`",
                           section("Environment variables")))
    missing = _variables("aclnn_fag", "native_stubs") - table
    assert not missing, f"read by the package or the stubs, not in the README: {missing}"
    unknown = table - _variables("aclnn_fag", "native_stubs", "tests", "scripts")
    assert not unknown, f"in the README, read nowhere: {unknown}"


def test_docs_index_lists_every_page():
    listed = set(re.findall(r"^\| docs/(\w+\.md) \|", section("Documentation"), re.M))
    assert listed == {p.name for p in (ROOT / "docs").glob("*.md")}


@pytest.mark.parametrize("which", ["torch", "numpy"])
def test_python_samples_run(which, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    code = next(b for b in blocks if ("aclnn_fag.torch" in b) == (which == "torch"))
    if which == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail("CI must run the README's torch sample: torch is missing")
            pytest.skip("torch is not installed")
    monkeypatch.setenv("ACLNN_FAG_BACKEND", "numpy")
    scope = {}
    exec(compile(code, f"README.md ({which} sample)", "exec"), scope)
    if which == "torch":
        assert scope["q"].grad.shape == scope["q"].shape and scope["v"].grad.abs().sum() > 0
    else:
        assert scope["grads"].dq.shape == scope["q"].shape and scope["fwd"].attention_out.shape == (512, 16, 128)
