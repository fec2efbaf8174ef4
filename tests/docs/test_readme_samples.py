"""The documentation's command samples are what the commands print (scripts/readme_samples.py):
the demo in README.md, the parity table in docs/cli.md."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("readme_samples", ROOT / "scripts" / "readme_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _script()
SHOWN = S.current_samples()


@pytest.mark.parametrize("name", sorted(S.SAMPLES))
def test_readme_sample_matches_a_fresh_run(name):
    shown = SHOWN
    assert name in shown, f"{S.SAMPLE_FILES[name]} lacks the sample {name!r}"
    fresh = S.run_sample(name)
    assert S.same(name, shown[name], fresh), (
        f"sample {name!r} is stale; run: python scripts/readme_samples.py --write\n"
        f"--- README\n{shown[name]}\n--- fresh run\n{fresh}")


def test_demo_sample_has_header_checksums_and_time_lines():
    demo = SHOWN["demo"]
    assert demo.startswith("$ aclnn-fag demo\naclnnFlashAttentionUnpaddingScoreGradV3")
    assert "backend: numpy" in demo and "\ntime: inputs " in demo
    for name in ("dq", "dq_rope", "dk", "dk_rope", "dv"):
        assert f"\n  {name} " in demo


def test_comparison_masks_times_only():
    demo = SHOWN["demo"]
    retimed = S.TIME.sub("9.9999 s", demo)
    assert S.same("demo", demo, retimed)
    line = next(x for x in demo.splitlines() if x.startswith("  dq "))
    last = line.split()[-1]
    changed = demo.replace(line, line[:-1] + ("1" if last[-1] != "1" else "2"))
    assert not S.same("demo", demo, changed)


def test_parity_comparison_tolerates_last_digit_noise_only():
    par = SHOWN["parity-quick"]
    assert "SELF-CHECK" in par
    err = re.search(r"\b(\d)\.(\d\d)e-0\d\b", par)             # the first error shown
    a, b = err.group(1), err.group(2)
    nudged = f"{a}.{int(b) + 1 if b != '99' else 98:02d}{err.group(0)[4:]}"
    tripled = f"{int(a) + 3}.{b}{err.group(0)[4:]}"
    assert S.same("parity-quick", par, par.replace(err.group(0), nudged, 1))
    assert not S.same("parity-quick", par, par.replace(err.group(0), tripled, 1))
    row = next(x for x in par.splitlines() if x.rstrip().endswith("PASS"))
    share = row.split()[5]                                   # share>rtol: one element may flip
    assert S.same("parity-quick", par, par.replace(row, row.replace(share, "7.0e-05", 1), 1))
    assert not S.same("parity-quick", par, par.replace("PASS", "FAIL", 1))
