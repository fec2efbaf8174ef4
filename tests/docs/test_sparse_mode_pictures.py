"""docs/sparse_modes.md's pictures are the output of scripts/sparse_mode_pictures.py, and they
show the kept sets the independent oracle (tests/oracle.py) computes element by element."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import numpy as np
import pytest

import oracle as O

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("sparse_mode_pictures",
                                                  ROOT / "scripts" / "sparse_mode_pictures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PICS = _script()


def doc_block() -> str:
    text = (ROOT / "docs" / "sparse_modes.md").read_text(encoding="utf-8")
    return text.split(PICS.BEGIN + "\n", 1)[1].split(PICS.END, 1)[0]


def test_committed_pictures_equal_the_script_output():
    assert doc_block() == PICS.render(), "run: python scripts/sparse_mode_pictures.py --write"
    assert PICS.main(["--check"]) == 0


def test_check_mode_notices_a_stale_picture(tmp_path, monkeypatch):
    stale = (ROOT / "docs" / "sparse_modes.md").read_text(encoding="utf-8").replace("#....", "##...", 1)
    doc = tmp_path / "sparse_modes.md"
    doc.write_text(stale, encoding="utf-8")
    monkeypatch.setattr(PICS, "DOC", doc)
    assert PICS.main(["--check"]) == 1
    assert PICS.main(["--write"]) == 0 and PICS.main(["--check"]) == 0


def parse_pictures(block: str) -> dict:
    """{mode: [matrix per batch]} read back from the ASCII text."""
    out = {}
    for chunk in block.strip("`\n").split("\n\n")[1:]:
        lines = chunk.splitlines()
        mode = int(re.match(r"sparse_mode (\d+):", lines[0]).group(1))
        title = lines[1]
        starts = [m.start() for m in re.finditer(r"b=\d+", title)]
        dims = [tuple(map(int, m)) for m in re.findall(r"Sq=(\d+) Skv=(\d+)", title)]
        mats = []
        for start, (sq, skv) in zip(starts, dims):
            rows = [line[start:start + skv] for line in lines[2:2 + sq]]
            mats.append(np.array([[c == PICS.KEPT for c in r] for r in rows], dtype=bool))
        out[mode] = mats
    return out


@pytest.mark.parametrize("mode", [0, 1, 2, 3, 4, 5, 7, 8])
def test_pictures_show_the_oracle_kept_sets(mode):
    pics = parse_pictures(doc_block())[mode]
    lay = O.layout(O.cumulative(PICS.LENGTHS_Q), O.cumulative(PICS.LENGTHS_KV))
    pre, nxt = O.normalize_tokens(mode, PICS.PRE, PICS.NEXT)
    zero_mask = np.zeros(lay.max_sq * lay.max_skv, np.uint8)
    assert len(pics) == lay.B
    for b in range(lay.B):
        want = np.array([[O.kept(mode, b, i, j, lay, pre, nxt, mask_flat=zero_mask,
                                 mask_shape=(lay.max_sq, lay.max_skv))
                          for j in range(lay.skv[b])] for i in range(lay.sq[b])], dtype=bool)
        assert np.array_equal(pics[b], want), f"mode {mode}, batch {b}"
