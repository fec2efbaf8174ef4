#!/usr/bin/env python3
"""Produce the documentation's command samples by running the commands, so they cannot go stale.

    python scripts/readme_samples.py            # print the samples
    python scripts/readme_samples.py --write    # refresh them in their files
    python scripts/readme_samples.py --check    # exit 1 when a file differs

Each sample sits in its file (``SAMPLE_FILES``: the demo in README.md, the parity table in
docs/cli.md) between ``<!-- sample:NAME -->`` and ``<!-- /sample:NAME -->`` as a fenced block. The commands run on the NumPy backend (``ACLNN_FAG_BACKEND=numpy``, no
CANN libraries visible), in a subprocess with this checkout first on ``PYTHONPATH``.
Comparisons ignore what legitimately changes from run to run (``normalise``): times, and the
time column of the parity table; the demo's checksums are printed with BLAS-stable digits.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# name -> the aclnn-fag arguments
SAMPLES = {
    "demo": ["demo"],
    "parity-quick": ["parity", "--quick", "--report", "-", "-q"],
}
# name -> the file that shows it
SAMPLE_FILES = {"parity-quick": ROOT / "docs" / "cli.md", "demo": README}


def current_samples() -> dict:
    """name -> the sample text currently in its file (missing ones absent)."""
    found = {}
    for name, path in SAMPLE_FILES.items():
        shown = readme_samples(path.read_text(encoding="utf-8"))
        if name in shown:
            found[name] = shown[name]
    return found
TIME = re.compile(r"\b\d+\.\d+ s\b")
PARITY_ROW = re.compile(r"^(\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+)(\d+\.\d+)( +\S+.*)$")


def run_sample(name: str) -> str:
    """The command's output (stdout), prefixed by the command line."""
    with tempfile.TemporaryDirectory() as empty:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(ACLNN_FAG_BACKEND="numpy", ACLNN_FAG_LIB_DIR=empty)
        for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
            env.pop(var, None)
        proc = subprocess.run([sys.executable, "-m", "aclnn_fag", *SAMPLES[name]], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"aclnn-fag {' '.join(SAMPLES[name])} exited {proc.returncode}:\n"
                           f"{proc.stdout}\n{proc.stderr}")
    shown = " ".join(a for a in SAMPLES[name] if a not in ("-q",))
    shown = shown.replace(" --report -", "")
    return f"$ aclnn-fag {shown}\n{proc.stdout}"


def block(name: str, text: str) -> str:
    return f"<!-- sample:{name} -->\n```text\n{text.rstrip()}\n```\n<!-- /sample:{name} -->"


def normalise(text: str) -> str:
    """Mask what differs between two honest runs: wall times."""
    out = []
    for line in text.splitlines():
        m = PARITY_ROW.match(line)
        if m and line.rstrip().endswith(("PASS", "FAIL", "ERROR")):
            line = m.group(1) + "<t>" + m.group(3)
        out.append(TIME.sub("<t> s", line).rstrip())
    return "\n".join(out).strip()


# (relative, absolute) tolerance of the numbers of a sample: the parity errors have 3
# significant digits, which another CPU's BLAS kernels may move in the last one, and a share of
# elements beyond rtol of ~3e-5 is one element, which may flip; (0, 0) = exact.
TOLERANCE = {"demo": (0.0, 0.0), "parity-quick": (0.05, 1e-4)}
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def same(name: str, shown: str, produced: str) -> bool:
    """Does the README's sample ``shown`` agree with a fresh run's ``produced``?"""
    a, b = normalise(shown).splitlines(), normalise(produced).splitlines()
    if len(a) != len(b):
        return False
    rel, absolute = TOLERANCE.get(name, (0.0, 0.0))
    for line_a, line_b in zip(a, b):
        ta, tb = line_a.split(), line_b.split()
        if len(ta) != len(tb):
            return False
        for x, y in zip(ta, tb):
            if x == y:
                continue
            if not ((rel or absolute) and NUMBER.match(x) and NUMBER.match(y)):
                return False
            fx, fy = float(x), float(y)
            if abs(fx - fy) > max(rel * max(abs(fx), abs(fy)), absolute):
                return False
    return True


def readme_samples(text: str) -> dict:
    """name -> the sample text currently in the README."""
    found = {}
    for m in re.finditer(r"<!-- sample:([\w-]+) -->\n```text\n(.*?)\n```\n<!-- /sample:\1 -->", text, re.S):
        found[m.group(1)] = m.group(2)
    return found


def replace_samples(text: str, fresh: dict) -> str:
    for name, sample in fresh.items():
        pattern = re.compile(rf"<!-- sample:{re.escape(name)} -->.*?<!-- /sample:{re.escape(name)} -->", re.S)
        if not pattern.search(text):
            raise KeyError(f"no <!-- sample:{name} --> block")
        text = pattern.sub(lambda _m: block(name, sample), text, count=1)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="refresh the samples in README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md's samples are stale")
    ap.add_argument("names", nargs="*", default=list(SAMPLES), help="samples (default: all)")
    args = ap.parse_args(argv)
    fresh = {name: run_sample(name) for name in args.names}
    if args.write:
        for name, sample in fresh.items():
            path = SAMPLE_FILES[name]
            path.write_text(replace_samples(path.read_text(encoding="utf-8"), {name: sample}),
                            encoding="utf-8")
        return 0
    if args.check:
        current = current_samples()
        stale = [n for n in fresh if not same(n, current.get(n, ""), fresh[n])]
        for n in stale:
            print(f"{SAMPLE_FILES[n].relative_to(ROOT)} sample {n!r} is stale: run "
                  f"scripts/readme_samples.py --write", file=sys.stderr)
        return 1 if stale else 0
    for name, sample in fresh.items():
        print(block(name, sample))
    return 0


if __name__ == "__main__":
    sys.exit(main())
