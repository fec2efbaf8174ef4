#!/usr/bin/env python3
"""Draw the kept set of every sparse mode from ``aclnn_fag.semantics`` (ASCII).

    python scripts/sparse_mode_pictures.py            # print the pictures
    python scripts/sparse_mode_pictures.py --write    # refresh them in docs/sparse_modes.md
    python scripts/sparse_mode_pictures.py --check    # exit 1 when the doc is out of date

The pictures in docs/sparse_modes.md sit between the markers ``<!-- pictures:begin -->`` and
``<!-- pictures:end -->`` and are exactly this script's output; a test compares them, so the
documentation and the code cannot drift apart.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from aclnn_fag.seqlens import seq_info
from aclnn_fag.semantics.sparse import band_index, batch_keep, normalize_tokens

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "sparse_modes.md"
BEGIN, END = "<!-- pictures:begin -->", "<!-- pictures:end -->"

# Three sequences: one with more keys than queries, one with fewer, one square.
LENGTHS_Q = [4, 6, 5]
LENGTHS_KV = [7, 4, 5]
PRE, NEXT = 2, 1           # tokens of the modes that use them (0, 4, 5, 7, 8)
KEPT, DROPPED = "#", "."

EXAMPLES = [
    (0, f"pre_tokens={PRE}, next_tokens={NEXT}, all-zero mask"),
    (1, "all-zero mask (tokens ignored)"),
    (2, "compressed mask (tokens ignored)"),
    (3, "compressed mask (tokens ignored)"),
    (4, f"pre_tokens={PRE}, next_tokens={NEXT}, compressed mask"),
    (5, f"pre_tokens={PRE}, next_tokens={NEXT}, all-zero mask (behaves like mode 0)"),
    (7, f"pre_tokens={PRE}, next_tokens={NEXT}, compressed mask"),
    (8, f"pre_tokens={PRE}, next_tokens={NEXT}, compressed mask"),
]


def kept_matrix(mode: int, b: int, sq: int, skv: int, pre: int, nxt: int, band: int):
    """Rows of booleans: kept(i, j) of batch b, with an all-zero mask for modes 0/1/5."""
    keep = batch_keep(mode, b, sq, skv, pre, nxt, band)
    return [[keep.lo <= j - i <= keep.hi for j in range(skv)] for i in range(sq)]


def picture(mode: int, note: str) -> str:
    ends_q = [sum(LENGTHS_Q[:k + 1]) for k in range(len(LENGTHS_Q))]
    ends_kv = [sum(LENGTHS_KV[:k + 1]) for k in range(len(LENGTHS_KV))]
    seqs = seq_info(ends_q, ends_kv)
    pre, nxt = normalize_tokens(mode, PRE, NEXT)
    band = band_index(mode, seqs)
    blocks = []
    for b in range(seqs.batch):
        sq, skv = seqs.sq[b], seqs.skv[b]
        title = f"b={b} Sq={sq} Skv={skv}" + (" (band)" if b == band else "")
        rows = ["".join(KEPT if k else DROPPED for k in row)
                for row in kept_matrix(mode, b, sq, skv, pre, nxt, band)]
        width = max(len(title), skv)
        blocks.append([title.ljust(width)] + [r.ljust(width) for r in rows])
    height = max(len(blk) for blk in blocks)
    lines = [f"sparse_mode {mode}: {note}"]
    for r in range(height):
        parts = [blk[r] if r < len(blk) else " " * len(blk[0]) for blk in blocks]
        lines.append(("   ".join(parts)).rstrip())
    return "\n".join(lines)


def render() -> str:
    header = (f"actual_seq_qlen={[sum(LENGTHS_Q[:k + 1]) for k in range(len(LENGTHS_Q))]}, "
              f"actual_seq_kvlen={[sum(LENGTHS_KV[:k + 1]) for k in range(len(LENGTHS_KV))]}; "
              f"row i = query, column j = key; '{KEPT}' kept, '{DROPPED}' not kept")
    body = "\n\n".join(picture(mode, note) for mode, note in EXAMPLES)
    return f"```\n{header}\n\n{body}\n```\n"


def replace_block(text: str, block: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="refresh docs/sparse_modes.md")
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/sparse_modes.md is stale")
    args = ap.parse_args(argv)
    block = render()
    if not (args.write or args.check):
        sys.stdout.write(block)
        return 0
    text = DOC.read_text(encoding="utf-8")
    fresh = replace_block(text, block)
    if args.check:
        if fresh != text:
            print(f"{DOC} is out of date: run scripts/sparse_mode_pictures.py --write", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
