"""The fuzz suite's tallies at the end of a session (a uniquely named module shared by
tests/conftest.py and tests/fuzz/conftest.py).

Run in one process, tests/fuzz/conftest.py prints its own tallies. Run with pytest-xdist
(``-n``), every worker hands its tallies to the controller through ``workeroutput``
(``WORKER_KEY``), tests/conftest.py sums them and prints the same section.
"""

from __future__ import annotations

import json
import os
import pathlib

WORKER_KEY = "aclnn_fag_fuzz_tally"


def summary(terminalreporter, tally: dict, profile: str, scale: int, exitstatus) -> None:
    """Print the tallies (when any) and write them to ``$ACLNN_FAG_FUZZ_REPORT`` if set."""
    if not any(tally.values()):
        return
    terminalreporter.section(f"aclnn_fag fuzz tallies (profile {profile})")
    for key in sorted(tally):
        terminalreporter.write_line(f"  {key:40s} {tally[key]}")
    out = os.environ.get("ACLNN_FAG_FUZZ_REPORT")
    if out:
        pathlib.Path(out).write_text(json.dumps({"profile": profile, "scale": scale,
                                                 "exitstatus": int(exitstatus),
                                                 "tally": dict(tally)}, indent=2))
