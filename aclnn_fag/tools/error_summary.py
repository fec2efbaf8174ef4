"""Where an output's error sits: per-(batch, head), per-token and histogram summaries in the
JSON report, from which the HTML pages draw (docs/parity.md, "5. Look at it"); rounded to 3
significant digits (the verdict uses the exact figures)."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

__all__ = ["FORMAT", "MAX_TOKEN_BINS", "MAX_BH_CELLS", "HIST_LO", "HIST_STEP", "HIST_BINS",
           "summarise", "attach", "QUERY_OUTPUTS", "STATS_OUTPUTS"]

FORMAT = "aclnn_fag.error_summary/1"
MAX_TOKEN_BINS = 512
MAX_BH_CELLS = 65536
HIST_LO, HIST_STEP, HIST_BINS = -12.0, 0.25, 56          # log10 |err| from 1e-12 to 1e2
QUERY_OUTPUTS = ("dq", "dq_rope", "attention_out", "softmax_max", "softmax_sum")
STATS_OUTPUTS = ("softmax_max", "softmax_sum")
_CHUNK_ELEMENTS = 1 << 21


def _r3(x: float):
    """3 significant digits (inf stays inf: json_safe writes it as a string)."""
    if x is None or not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.3g}")


def _per_token_head(y: np.ndarray, g: np.ndarray):
    """max |y - g| over the trailing dims as [T, N] (non-finite: inf), and the log10 histogram."""
    t, n = g.shape[0], g.shape[1]
    per = np.zeros((t, n), np.float64)
    counts = np.zeros(HIST_BINS, np.int64)
    zero = under = over = 0
    row = max(1, int(np.prod(g.shape[1:])))
    step = max(1, _CHUNK_ELEMENTS // row)
    hi = HIST_LO + HIST_STEP * HIST_BINS
    for start in range(0, t, step):
        s = slice(start, min(t, start + step))
        yp = y[s].astype(np.float64).reshape(s.stop - s.start, n, -1)
        gp = g[s].astype(np.float64).reshape(s.stop - s.start, n, -1)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(yp - gp)
        err = np.where(yp == gp, 0.0, err)    # FLT_MAX invalid lines, infinities in both
        err = np.where(np.isfinite(err), err, np.inf)
        if err.shape[2]:
            per[s] = err.max(axis=2)
        flat = err.ravel()
        zero += int(np.count_nonzero(flat == 0))
        positive = flat[flat > 0]
        with np.errstate(divide="ignore"):
            logs = np.log10(positive)
        under += int(np.count_nonzero(logs < HIST_LO))
        over += int(np.count_nonzero(logs >= hi))
        inside = logs[(logs >= HIST_LO) & (logs < hi)]
        idx = np.floor((inside - HIST_LO) / HIST_STEP).astype(np.int64)
        counts += np.bincount(np.clip(idx, 0, HIST_BINS - 1), minlength=HIST_BINS)
    return per, counts, zero, under, over


def _bh(per: np.ndarray, ends) -> list:
    rows, start = [], 0
    for end in ends:
        end = min(int(end), per.shape[0])
        rows.append(None if end <= start else [_r3(float(v)) for v in per[start:end].max(axis=0)])
        start = max(start, end)
    return rows


def _tokens(per: np.ndarray, width: int) -> list:
    by_token = per.max(axis=1) if per.shape[1] else np.zeros(per.shape[0])
    t = by_token.shape[0]
    if width > 1 and t:         # errors are >= 0: zeros pad the last bin
        by_token = np.pad(by_token, (0, (-t) % width)).reshape(-1, width).max(axis=1)
    return [_r3(float(v)) for v in by_token]


def summarise(output, golden, reference, ends, token_axis: str = "query",
              stats: bool = False) -> dict:
    """The summary of one output (y, golden, reference). ``ends``: the cumulative ends
    its rows follow (``actual_seq_qlen`` for query-side outputs, ``actual_seq_kvlen`` for
    dk/dk_rope/dv). ``stats``: the output is softmax statistics in the device layout."""
    y, g, r = (np.asarray(a) for a in (output, golden, reference))
    if y.shape != g.shape or r.shape != g.shape:
        raise ValueError(f"shapes differ: output {list(y.shape)}, golden {list(g.shape)}, "
                         f"reference {list(r.shape)}")
    if g.ndim < 2:
        raise ValueError(f"expected [T, N, ...], got shape {list(g.shape)}")
    ends = [int(e) for e in ends]
    if stats:
        from ..softmax_layout import token_major_from_device_stats
        y, g, r = (token_major_from_device_stats(a, ends) for a in (y, g, r))
    per_y, h_y, z_y, u_y, o_y = _per_token_head(y, g)
    per_r, h_r, z_r, u_r, o_r = _per_token_head(r, g)
    t, n = g.shape[0], g.shape[1]
    width = max(1, math.ceil(t / MAX_TOKEN_BINS))
    out = {"format": FORMAT, "tokens": t, "heads": n, "token_axis": token_axis,
           "batch_ends": ends, "token_bin": width,
           "token_max_abs": _tokens(per_y, width), "token_ref_max_abs": _tokens(per_r, width),
           "hist": {"log10_lo": HIST_LO, "log10_step": HIST_STEP, "bins": HIST_BINS}}
    for suffix, y_value, r_value in (("", h_y.tolist(), h_r.tolist()), ("_zero", z_y, z_r),
                                     ("_under", u_y, u_r), ("_over", o_y, o_r)):
        out["hist"].update({"backend" + suffix: y_value, "reference" + suffix: r_value})
    if len(ends) * n <= MAX_BH_CELLS:
        out["bh_max_abs"] = _bh(per_y, ends)
        out["bh_ref_max_abs"] = _bh(per_r, ends)
    else:
        out["bh_omitted"] = f"{len(ends)} x {n} cells > {MAX_BH_CELLS}"
    return out


def attach(outputs: Mapping[str, dict], result, golden, reference, inputs: Mapping) -> None:
    """Add ``error_summary`` to each judged output whose shapes agree (``error_summary_error``
    when it cannot be made: the verdict never depends on it)."""
    for name, judged in outputs.items():
        if judged.get("problem", "").startswith("shape"):
            continue
        query_side = name in QUERY_OUTPUTS
        ends = inputs["actual_seq_qlen"] if query_side else inputs["actual_seq_kvlen"]
        try:
            judged["error_summary"] = summarise(result[name], golden[name], reference[name], ends,
                                                "query" if query_side else "key",
                                                stats=name in STATS_OUTPUTS)
        except Exception as exc:          # a summary is for the eyes; never fail the case
            judged["error_summary_error"] = f"{type(exc).__name__}: {exc}"
