"""parity's per-case progress lines carry an ETA from the mean time of the cases done."""

from __future__ import annotations

import io

from aclnn_fag.tools.parity import _Progress


def test_parity_progress_lines_have_an_eta():
    stream = io.StringIO()
    bar = _Progress(stream, 4)
    for i, seconds in enumerate((2.0, 4.0), 1):
        bar.start(i, f"case{i}")
        bar.done("PASS", seconds)
    lines = stream.getvalue().splitlines()
    assert "(ETA 6 s)" in lines[0]            # 2 s per case so far, 3 cases left
    assert "(ETA 6 s)" in lines[1]            # 3 s per case so far, 2 cases left
