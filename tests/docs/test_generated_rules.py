"""The artefacts generated from the rule table (aclnn_fag/rules/table.py) are up to date, and
the stand-in ops and the validator use the table as it says: every row has its check, every
generated message is used by its stub op, in the table's order. A failure here after editing
the table: run ``python3 scripts/gen_rules.py`` and commit the result."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from aclnn_fag.rules.checks import CHECKS
from aclnn_fag.rules.table import RULES, STUB_MESSAGES, rules_for, stub_formats
from aclnn_fag.spec import BACKWARD_V3, FORWARD_V3, OPS

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("gen_rules", ROOT / "scripts" / "gen_rules.py")
gen = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gen)
SRC = ROOT / "native_stubs" / "src"
STUBS = {BACKWARD_V3.key: (SRC / "opapi_stub.c", "static aclnnStatus validate(", "FAIL_RULE"),
         FORWARD_V3.key: (SRC / "opapi_fwd_stub.c", "static aclnnStatus check_forward(",
                          "REJECT_RULE")}


def test_the_stub_header_is_generated_from_the_table():
    assert (SRC / "rule_table.h").read_text() == gen.stub_header(), \
        "native_stubs/src/rule_table.h is stale: run python3 scripts/gen_rules.py"


def test_the_docs_rule_tables_are_generated_from_the_table():
    text = (ROOT / "docs" / "validation.md").read_text()
    for which in ("device", "own"):
        assert f"<!-- rules:{which} -->" in text and f"<!-- rules:{which}:end -->" in text
    assert gen.update_docs(text) == text, \
        "docs/validation.md's rule tables are stale: run python3 scripts/gen_rules.py"
    # the words are the docs' own; the code and rows columns, and one row per section, not
    assert gen.update_docs(text.replace("| 161002 | `R4` |", "| 0 | `R5` |")) == text
    with pytest.raises(ValueError, match="rule 4"):
        gen.update_docs(re.sub(r"\n\| 4 \| [^\n]*", "", text, count=1))


def test_every_row_has_a_check_and_a_known_op():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert set(CHECKS) == set(ids)
    assert all(r.ops and set(r.ops) <= set(OPS) for r in RULES)
    assert set(STUB_MESSAGES) == set(OPS)
    for key, messages in STUB_MESSAGES.items():          # only rows the op runs
        assert set(messages) <= {r.id for r in rules_for(key)}, key
    for r in RULES:
        assert (r.code == 0) == (r.message == ""), r.id


def _body(text: str, start: str) -> str:
    body = text[text.index(start):]
    return body[:body.index("\n}\n")]


def test_the_stub_ops_check_the_rules_in_the_tables_order():
    """Each stub op fails through its generated rule macros only, each macro once, in the
    order of the op's rows (a helper's macros count where the helper is defined)."""
    for key, (path, start, macro) in STUBS.items():
        text = path.read_text()
        prefix = gen.PREFIX[key]
        used = re.findall(rf"\b{macro}\(({prefix}_\w+)", text)
        order = []
        for rule in rules_for(key):
            formats = stub_formats(key, rule)
            order += [f"{prefix}_{rule.id}" + (f"_{n + 1}" if n else "") for n in range(len(formats))]
        assert sorted(used) == sorted(order), path.name
        in_body = re.findall(rf"\b{macro}\(({prefix}_\w+)", _body(text, start))
        assert in_body == [m for m in order if m in in_body], path.name
        # no status code written by hand in the rules' part of the checks
        assert not re.search(rf"\b{macro[:-5]}\(ACLNN_ERR_PARAM_\w+, [A-Z0-9]+ \": [^\"]*\(docs/validation.md, (rule|S)",
                             _body(text, start)), path.name


def test_rows_are_keyed_on_a_release():
    """The releases column is real: the end-of-data padding rows (rule EOD) run on 9.0 and
    later only; every other row applies to every known release."""
    from aclnn_fag.rules import table
    eod = {"R_eod", "F_eod"}
    assert all(r.releases == table.RELEASES for r in RULES if r.id not in eod)
    for op, rid in ((BACKWARD_V3.key, "R_eod"), (FORWARD_V3.key, "F_eod")):
        assert rid not in [r.id for r in rules_for(op, "8.5")]
        for rel in ("9.0", "9.1"):
            assert rid in [r.id for r in rules_for(op, rel)]
    assert rules_for(BACKWARD_V3.key, "9.1") == rules_for(BACKWARD_V3.key)
