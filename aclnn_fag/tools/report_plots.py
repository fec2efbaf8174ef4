"""The pictures of a parity HTML page as PNG bytes, drawn with matplotlib's ``Figure`` (no
pyplot state) from a report's error summaries alone; only html_report imports this module."""

from __future__ import annotations

import io
import math
from typing import Dict, Optional

import numpy as np

from .accuracy import as_float

__all__ = ["MissingMatplotlib", "require", "heatmaps", "token_errors", "histograms"]

INSTALL_HINT = "pip install 'aclnn_fag[report]' (or: pip install matplotlib)"
_DPI = 72
_BACKEND, _REFERENCE, _OLD, _BOUND = "#c0392b", "#7f8c8d", "#2e86c1", "#e67e22"


class MissingMatplotlib(RuntimeError):
    """matplotlib cannot be imported."""


def require():
    """matplotlib's Figure (raises MissingMatplotlib with what to install)."""
    try:
        import matplotlib  # noqa: F401  (first: a cached submodule must not hide its absence)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingMatplotlib(f"--html needs matplotlib ({exc}): {INSTALL_HINT}") from None
    return Figure


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)        # a Figure alone draws with Agg
    return buf.getvalue()


def _num(x) -> float:
    value = as_float(x)
    return math.nan if value is None else value


def _panels(outputs: Dict[str, dict], key: str) -> list:
    """(name, output) of the outputs whose error summary has ``key``."""
    return [(n, o) for n, o in outputs.items()
            if isinstance(o.get("error_summary"), dict) and o["error_summary"].get(key)]


def _bound(o: dict) -> Optional[float]:
    """The output's criterion-1 bound when it is a finite number > 0."""
    bound = _num(o.get("fa_bound"))
    return bound if math.isfinite(bound) and bound > 0 else None


def _positive_floor(values: np.ndarray) -> float:
    pos = values[np.isfinite(values) & (values > 0)]
    return float(pos.min()) if pos.size else 1e-12


def heatmaps(outputs: Dict[str, dict]) -> Optional[bytes]:
    """One panel per output that has a per-(batch, head) summary; None when none has."""
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle
    Figure = require()
    panels = _panels(outputs, "bh_max_abs")
    if not panels:
        return None
    b = max(len(o["error_summary"]["bh_max_abs"]) for _, o in panels)
    height = min(6.0, 1.8 + 0.3 * b)
    fig = Figure(figsize=(3.1 * len(panels), height))
    fig.subplots_adjust(left=0.35 / len(panels), right=1 - 0.3 / len(panels), bottom=0.55 / height,
                        top=1 - 0.35 / height, wspace=0.75)
    for i, (name, o) in enumerate(panels, 1):
        s = o["error_summary"]
        rows = s["bh_max_abs"]
        heads = s.get("heads") or max((len(r) for r in rows if r), default=1)
        grid = np.array([[_num(v) for v in r] if r else [math.nan] * heads for r in rows], float)
        finite = np.isfinite(grid)
        if np.isinf(grid).any():                      # non-finite output elements
            top = float(np.max(grid[finite])) * 10 if finite.any() else 1.0
            grid = np.where(np.isinf(grid), top, grid)
        ax = fig.add_subplot(1, len(panels), i)
        lo = _positive_floor(grid)
        hi = max(lo * 10, float(np.nanmax(grid)) if np.isfinite(grid).any() else lo * 10)
        shown = np.ma.masked_invalid(np.where(np.isnan(grid), np.nan, np.maximum(grid, lo)))
        image = ax.imshow(shown, cmap=_cmap(), norm=LogNorm(vmin=lo, vmax=hi), aspect="auto",
                          interpolation="nearest")
        bound = _num(o.get("fa_bound"))
        if math.isfinite(bound):                      # cells above the bound outlined
            for (bi, hi_), v in np.ndenumerate(grid):
                if np.isfinite(v) and v > bound:
                    ax.add_patch(Rectangle((hi_ - 0.5, bi - 0.5), 1, 1, fill=False,
                                           edgecolor="black", linewidth=2))
        ax.set_title(f"{name}: max |y-g|", fontsize=9)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("batch", fontsize=8)
        ax.set_xticks(_ticks(grid.shape[1]))
        ax.set_yticks(_ticks(grid.shape[0]))
        ax.tick_params(labelsize=7)
        fig.colorbar(image, ax=ax, shrink=0.9).ax.tick_params(labelsize=7)
    return _png(fig)


def _ticks(n: int):
    return range(n) if n <= 16 else np.linspace(0, n - 1, 8, dtype=int)


def _cmap():
    import matplotlib
    return matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")


def _token_series(values, width):
    y = np.array([_num(v) for v in values], float)
    x = np.arange(y.size) * width + (width - 1) / 2.0
    return x, y


def token_errors(outputs: Dict[str, dict], old: Optional[Dict[str, dict]] = None) -> Optional[bytes]:
    """One row per output with a per-token summary; None when none has one."""
    from matplotlib.ticker import NullFormatter
    Figure = require()
    panels = _panels(outputs, "token_max_abs")
    if not panels:
        return None
    height = 1.75 * len(panels) + 0.5
    fig = Figure(figsize=(10, height))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.45 / height, top=1 - 0.4 / height,
                        hspace=0.6)
    for i, (name, o) in enumerate(panels, 1):
        s = o["error_summary"]
        width = int(s.get("token_bin") or 1)
        ax = fig.add_subplot(len(panels), 1, i)
        x, y = _token_series(s["token_max_abs"], width)
        _, r = _token_series(s.get("token_ref_max_abs") or [], width)
        floor = _positive_floor(np.concatenate([y, r])) / 2

        def step(values, **style):
            ax.step(x, np.where(values > 0, values, floor), where="mid", **style)

        if r.size == y.size:                   # underneath, wider: the backend's line on top
            step(r, color=_REFERENCE, linewidth=2.6, alpha=0.55, label="reference")
        step(y, color=_BACKEND, linewidth=1.0, label="backend")
        prev = ((old or {}).get(name) or {}).get("error_summary")
        if isinstance(prev, dict) and prev.get("token_max_abs") and \
                len(prev["token_max_abs"]) == y.size:
            step(_token_series(prev["token_max_abs"], width)[1], color=_OLD, linewidth=1.0,
                 label="OLD backend")
        bound = _bound(o)
        if bound:
            ax.axhline(bound, color=_BOUND, linestyle="--", linewidth=1, label="bound")
        for end in s.get("batch_ends") or []:
            ax.axvline(end - 0.5, color="black", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(-0.5, max(1, int(s.get("tokens") or x.size * width)) - 0.5)
        axis = "key" if s.get("token_axis") == "key" else "query"
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(f"{axis} token" + (f" (bins of {width})" if width > 1 else "")
                      + "; dotted: sequence ends", fontsize=7)
        if i == 1:
            ax.legend(fontsize=7, loc="upper right", ncols=4)
    fig.suptitle("max |y - golden| per token (over heads and the last dim)", fontsize=9)
    return _png(fig)


def histograms(outputs: Dict[str, dict]) -> Optional[bytes]:
    """One panel per output with a histogram summary; None when none has one."""
    Figure = require()
    panels = _panels(outputs, "hist")
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(2.8 * cols, 2.4 * rows))
    fig.subplots_adjust(left=0.35 / cols, right=0.98, bottom=0.45 / (2.4 * rows),
                        top=1 - 0.3 / (2.4 * rows), wspace=0.35, hspace=0.55)
    for i, (name, o) in enumerate(panels, 1):
        h = o["error_summary"]["hist"]
        lo, step, bins = float(h["log10_lo"]), float(h["log10_step"]), int(h["bins"])
        edges = lo + step * np.arange(bins + 1)
        ax = fig.add_subplot(rows, cols, i)
        # the reference filled underneath, the backend's outline on top
        for key, label, style in (("reference", "|ref-g|", dict(fill=True, alpha=0.45)),
                                  ("backend", "|backend-g|", dict(linewidth=1.2))):
            counts = np.array(h.get(key) or [0] * bins, float)
            extra = f", {h.get(key + '_zero', 0)} exact" if h.get(key + "_zero") else ""
            extra += f", {h.get(key + '_over', 0)} >=1e{edges[-1]:g}" if h.get(key + "_over") else ""
            ax.stairs(counts, edges, color=_REFERENCE if key == "reference" else _BACKEND,
                      label=label + extra, **style)
        bound = _bound(o)
        if bound:
            ax.axvline(math.log10(bound), color=_BOUND, linestyle="--", linewidth=1)
        used = np.nonzero(np.array(h.get("backend") or [0]) + np.array(h.get("reference") or [0]))[0]
        if used.size:
            ax.set_xlim(edges[max(0, used[0] - 1)], edges[min(bins, used[-1] + 2)])
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("log10 |error|", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    return _png(fig)
