#!/usr/bin/env python3
"""Run the fuzz suite (tests/fuzz) with a long budget.

    python scripts/fuzz_long.py [--scale N] [--minutes M] [--report FILE] [-- pytest args...]

``--scale`` multiplies every property's CI example count (profile ``long``: fresh random
examples on every run, a reproduction blob printed on failure). ``--minutes`` repeats the
run with new random examples until the time is up (at least one run). The tallies of every
run (cases tried, rejected, verdict comparisons, leaks) are summed into ``--report``
(JSON, default fuzz_long_report.json) and printed. Exit status: 1 if any run failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aclnn_fag.tools import cliargs  # noqa: E402  (checked numbers for the options)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--scale", type=cliargs.positive_int, default=25,
                    help="examples per property = CI count x scale")
    ap.add_argument("--minutes", type=cliargs.nonnegative_float, default=0.0,
                    help="keep starting new runs until this many minutes have passed")
    ap.add_argument("--report", default="fuzz_long_report.json")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)

    total = collections.Counter()
    runs, failed = [], False
    start = time.monotonic()
    while True:
        with tempfile.TemporaryDirectory() as tmp:
            report = pathlib.Path(tmp) / "tally.json"
            env = dict(os.environ, ACLNN_FAG_FUZZ_PROFILE="long",
                       ACLNN_FAG_FUZZ_SCALE=str(args.scale), ACLNN_FAG_FUZZ_REPORT=str(report))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
            t0 = time.monotonic()
            rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  str(ROOT / "tests" / "fuzz"), *args.pytest_args],
                                 cwd=str(ROOT), env=env)
            tally = json.loads(report.read_text())["tally"] if report.exists() else {}
        total.update(tally)
        runs.append({"returncode": rc, "seconds": round(time.monotonic() - t0, 1), "tally": tally})
        failed |= rc != 0
        if failed or (time.monotonic() - start) / 60.0 >= args.minutes:
            break
    summary = {"scale": args.scale, "runs": len(runs), "failed": failed,
               "seconds": round(time.monotonic() - start, 1), "tally": dict(sorted(total.items())),
               "per_run": runs}
    pathlib.Path(args.report).write_text(json.dumps(summary, indent=2))
    print(f"\nfuzz_long: {len(runs)} run(s), scale {args.scale}, {summary['seconds']} s, "
          f"{'FAILED' if failed else 'all passed'}; report: {args.report}")
    for key, value in summary["tally"].items():
        print(f"  {key:40s} {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
