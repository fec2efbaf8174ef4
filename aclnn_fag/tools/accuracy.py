"""Accuracy criteria of one output against the fp64 golden: flash-attention's and Ascend's
double-thousandths (bf16: share of |y-g| / max(|g|, RMS(g)) > 2**-6 below 1e-3; docs/parity.md,
"Criteria"), in chunks so that judging needs little memory."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

__all__ = ["Thresholds", "THRESHOLDS", "DEFAULT_K", "FA_FLOOR_REL", "FA_FLOOR_MIN",
           "thresholds_for", "judge", "criteria_description", "as_float", "budget_used"]

DEFAULT_K = 2.0
FA_FLOOR_REL = 1e-6
FA_FLOOR_MIN = 1e-30
_CHUNK = 1 << 22


@dataclass(frozen=True)
class Thresholds:
    """Criterion 2 for one dtype: share(|y-g| / max(|g|, RMS(g)) > rtol) < share_limit."""

    rtol: float
    share_limit: float


THRESHOLDS = {
    "bfloat16": Thresholds(rtol=2.0 ** -6, share_limit=1e-3),
    "float16": Thresholds(rtol=2.0 ** -9, share_limit=1e-3),
    "float32": Thresholds(rtol=1e-4, share_limit=1e-4),
    "float64": Thresholds(rtol=1e-10, share_limit=1e-4),
}


def thresholds_for(dtype) -> Thresholds:
    name = np.dtype(dtype).name
    if name not in THRESHOLDS:
        raise ValueError(f"no accuracy thresholds for dtype {name}")
    return THRESHOLDS[name]


def criteria_description(k: float = DEFAULT_K) -> dict:
    """The criteria as data (for reports)."""
    return {
        "flash_attention": {"rule": "max|y-g| <= k * max|ref-g| + floor_abs", "k": k,
                            "floor_abs": f"max({FA_FLOOR_REL:g} * max|g|, {FA_FLOOR_MIN:g})",
                            "reference": "NumPy backend, precision 'device'"},
        "double_thousandths": {"rule": "share(|y-g| / max(|g|, RMS(g)) > rtol) < share_limit",
                               "per_dtype": {k_: asdict(v) for k_, v in THRESHOLDS.items()}},
        "golden": "NumPy backend, precision 'fp64', same inputs",
    }


def _chunks(n):
    for start in range(0, n, _CHUNK):
        yield slice(start, min(n, start + _CHUNK))


def _golden_scale(g: np.ndarray):
    """(max|g|, RMS(g)) in float64."""
    peak, sq = 0.0, 0.0
    for s in _chunks(g.size):
        part = g[s].astype(np.float64)
        if part.size:
            peak = max(peak, float(np.max(np.abs(part))))
            sq += float(np.dot(part, part))
    return peak, math.sqrt(sq / g.size) if g.size else 0.0


def _errors(y: np.ndarray, g: np.ndarray, floor: float, rtol: float):
    """(max abs err, max rel err, count rel > rtol, non-finite count) of flat y against flat g."""
    max_abs, max_rel, above, bad = 0.0, 0.0, 0, 0
    denom_floor = max(floor, FA_FLOOR_MIN)
    for s in _chunks(g.size):
        gp = g[s].astype(np.float64)
        yp = y[s].astype(np.float64)
        finite = np.isfinite(yp)
        nonfinite = int(finite.size - np.count_nonzero(finite))
        if nonfinite:
            bad += nonfinite
            yp = np.where(finite, yp, np.inf)
        err = np.abs(yp - gp)
        rel = err / np.maximum(np.abs(gp), denom_floor)
        if err.size:
            max_abs = max(max_abs, float(err.max()))
            max_rel = max(max_rel, float(rel.max()))
        above += int(np.count_nonzero(rel > rtol))
    return max_abs, max_rel, above, bad


def judge(output: np.ndarray, golden: np.ndarray, reference: np.ndarray,
          k: float = DEFAULT_K, thresholds: Optional[Thresholds] = None) -> dict:
    """Judge ``output`` against ``golden`` (fp64); yardstick: ``reference`` (device precision)."""
    output, golden, reference = (np.asarray(x) for x in (output, golden, reference))
    result = {"dtype": str(output.dtype), "shape": list(output.shape)}
    if output.shape != golden.shape:
        result.update(verdict="FAIL", problem=f"shape {list(output.shape)} != golden "
                      f"{list(golden.shape)}")
        return result
    th = thresholds or thresholds_for(output.dtype)
    y, g, r = (np.ravel(x) for x in (output, golden, reference))
    peak, rms = _golden_scale(g)
    y_abs, y_rel, y_above, y_bad = _errors(y, g, rms, th.rtol)
    r_th = thresholds_for(reference.dtype) if thresholds is None else th
    r_abs, _, r_above, _ = _errors(r, g, rms, r_th.rtol)    # by the reference's own dtype
    floor_abs = max(FA_FLOOR_REL * peak, FA_FLOOR_MIN)
    bound = k * r_abs + floor_abs
    share = y_above / g.size if g.size else 0.0
    fa_pass = bool(y_abs <= bound) and y_bad == 0
    dt_pass = bool(share < th.share_limit) and y_bad == 0
    result.update(
        golden_max_abs=peak, golden_rms=rms,
        max_abs_err=y_abs, ref_max_abs_err=r_abs, k=k, floor_abs=floor_abs, fa_bound=bound,
        fa_ratio=(y_abs / r_abs) if r_abs > 0 else (0.0 if y_abs == 0 else math.inf),
        fa_pass=fa_pass,
        max_rel_err=y_rel, rtol=th.rtol, share_limit=th.share_limit,
        share_above=share, ref_share_above=(r_above / g.size) if g.size else 0.0,
        dt_pass=dt_pass, nonfinite=y_bad,
        verdict="PASS" if fa_pass and dt_pass else "FAIL")
    if y_bad:
        result["problem"] = f"{y_bad} non-finite elements"
    return result


def as_float(x) -> Optional[float]:
    """A figure of a JSON report as a float (non-finite ones are stored as text), or None."""
    if x is None or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def budget_used(o: dict) -> float:
    """The share of its criteria's budgets a judged output used (1: at a limit; inf: no figures)."""
    if "max_abs_err" not in o:
        return 0.0 if o.get("verdict") in (None, "PASS") else math.inf
    err, bound = as_float(o.get("max_abs_err")), as_float(o.get("fa_bound"))
    share, limit = as_float(o.get("share_above")), as_float(o.get("share_limit"))
    return max((err or 0.0) / bound if bound else 0.0, (share or 0.0) / limit if limit else 0.0)
