"""Write the artefacts generated from aclnn_fag/rules/table.py: native_stubs/src/rule_table.h
and the rule tables of docs/validation.md. ``--check`` writes nothing and exits 1 when a
committed copy is stale (tests/docs/test_generated_rules.py makes the same check)."""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aclnn_fag.rules import gen  # noqa: E402

TARGETS = {ROOT / "native_stubs" / "src" / "rule_table.h": lambda _old: gen.stub_header(),
           ROOT / "docs" / "validation.md": gen.update_docs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    stale = []
    for path, render in TARGETS.items():
        old = path.read_text() if path.exists() else ""
        new = render(old)
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
