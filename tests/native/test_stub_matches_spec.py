"""The stub libraries' C declarations of both ops agree with aclnn_fag/spec.py, parameter by
parameter (type and name, in order): the one description every other layer is derived from.

Every declaration and definition of each phase in native_stubs/ (the include tree and the
stub sources) is parsed; a parameter added, dropped, renamed or retyped on either side fails.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from aclnn_fag import spec

STUBS = pathlib.Path(__file__).resolve().parents[2] / "native_stubs"


def _normalise(params: str) -> list:
    out = []
    for p in params.split(","):
        p = re.sub(r"\s+", " ", p.strip())
        p = re.sub(r"\s*\*\s*", " *", p).replace("* *", "**")
        out.append(p)
    return out


def _declarations(symbol: str) -> list:
    """The parameter lists of every declaration/definition of ``symbol`` in native_stubs/."""
    found = []
    pattern = re.compile(r"\b" + re.escape(symbol) + r"\s*\(([^;{)]*)\)\s*[;{]", re.S)
    for path in sorted(STUBS.rglob("*")):
        if path.suffix not in (".c", ".h") or "build" in path.parts:
            continue
        for m in pattern.finditer(path.read_text(encoding="utf-8")):
            found.append((path.relative_to(STUBS).as_posix(), _normalise(m.group(1))))
    return found


@pytest.mark.parametrize("op", sorted(spec.OPS), ids=str)
@pytest.mark.parametrize("phase", [1, 2])
def test_stub_declarations_equal_the_spec(op, phase):
    version = spec.OPS[op]
    symbol = version.phase1 if phase == 1 else version.phase2
    expected = _normalise(version.c_prototype(phase).split("(", 1)[1].rsplit(")", 1)[0])
    found = _declarations(symbol)
    assert found, f"no declaration of {symbol} in native_stubs/"
    for where, params in found:
        assert params == expected, f"{where}: {symbol} differs from aclnn_fag/spec.py"


def test_the_comparison_sees_a_changed_parameter():
    """The parser is not blind: a retyped or renamed parameter compares unequal."""
    text = spec.BACKWARD_V3.c_parameters()
    assert _normalise(text.replace("double scaleValue", "float scaleValue")) != _normalise(text)
    assert _normalise(text.replace("*keyIn,", "*key,")) != _normalise(text)
    assert len(_normalise(text)) == 36 and len(_normalise(spec.FORWARD_V3.c_parameters())) == 29
