"""``aclnn-fag parity --compare OLD.json NEW.json``: what changed between two parity reports,
case by case (docs/parity.md, "2. Compare", gives the rules of a regression)."""

from __future__ import annotations

import json
import math
from typing import List

from .envinfo import shorten, summary as version_summary
from .accuracy import as_float
from .junit import output_figures

__all__ = ["compare_reports", "format_comparison", "load_report", "check_report",
           "FACTOR", "ReportError", "IMPROVED"]

FACTOR = 2.0
SHARE_NOISE = 0.1          # of the share limit
ACCEPTED_SCHEMAS = ("aclnn_fag.parity_report/1",)


class ReportError(ValueError):
    """A file that is not a readable parity report."""


def load_report(path) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path} is not UTF-8 text: {exc}") from None
    except RecursionError:
        raise ReportError(f"{path}: the JSON is nested too deeply to be a parity report") from None
    if not isinstance(data, dict) or data.get("schema") not in ACCEPTED_SCHEMAS:
        raise ReportError(f"{path} is not a parity report (schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                          f"expected one of {ACCEPTED_SCHEMAS})")
    check_report(data, str(path))
    return data


VERDICTS = ("PASS", "FAIL", "ERROR")
IMPROVED = ("fail->pass", "error->pass", "error->fail", "errors down")
# the per-output figures the comparison reads or prints (junit.output_figures)
_METRICS = ("max_abs_err", "ref_max_abs_err", "share_above", "share_limit", "fa_bound", "fa_ratio",
            "k", "rtol", "max_rel_err")


def _kind(x) -> str:
    return "null" if x is None else type(x).__name__


# the objects (or nulls) the comparison, a page or the version summary read, parents first
_OBJECTS = ("environment", "environment.versions", "environment.versions.cann",
            "environment.versions.toolkit_install", "environment.versions.driver",
            "environment.versions.blas", "environment.cann_rules", "criteria",
            "criteria.flash_attention")


def check_report(data: dict, label: str) -> None:
    """Raise ReportError naming the first field the comparison (or a page, or the version
    summary) cannot read."""
    cases = data.get("cases")
    if not isinstance(cases, list):
        raise ReportError(f"{label}: no 'cases' list")
    for what in _OBJECTS:
        value = data
        for key in what.split("."):
            value = (value or {}).get(key)
        if value is not None and not isinstance(value, dict):
            raise ReportError(f"{label}: '{what}' must be an object or null, got {_kind(value)}")
    seen = {}
    for i, case in enumerate(cases, 1):
        if not isinstance(case, dict):
            raise ReportError(f"{label}: case {i} is not an object (got {_kind(case)})")
        name = case.get("name")
        if not isinstance(name, str) or not name:
            raise ReportError(f"{label}: case {i}: 'name' must be a non-empty string, got {name!r}")
        if name in seen:
            raise ReportError(f"{label}: case {name!r} appears more than once (cases {seen[name]} "
                              f"and {i}): which verdict counts is ambiguous")
        seen[name] = i
        where = f"{label}: case {i} ({name!r})"
        if case.get("verdict") not in VERDICTS:
            raise ReportError(f"{where}: 'verdict' must be one of {', '.join(VERDICTS)}, got "
                              f"{case.get('verdict')!r}")
        outputs = case.get("outputs")
        if outputs is not None and not isinstance(outputs, dict):
            raise ReportError(f"{where}: 'outputs' must be an object (output name -> figures) or "
                              f"null, got {_kind(outputs)}")
        for out, figures in (outputs or {}).items():
            if not isinstance(figures, dict):
                raise ReportError(f"{where}: output {out!r} must be an object, got {_kind(figures)}")
            for metric in _METRICS:
                value = figures.get(metric)
                if value is not None and not isinstance(value, (int, float, str)):
                    raise ReportError(f"{where}: output {out!r}: {metric!r} must be a number, a "
                                      f"string such as \"nan\", or null, got {_kind(value)}")


def _grew(new, old, factor: float, noise: float) -> bool:
    """new > factor * old, new above the noise floor (inf/NaN-safe)."""
    if new is None or old is None:
        return False
    if math.isnan(new):
        return not math.isnan(old)
    return new > noise and new > factor * old


def _metric_changes(name: str, o_old: dict, o_new: dict, factor: float) -> List[dict]:
    out = []

    def either(key):
        return as_float(o_new.get(key)) or as_float(o_old.get(key)) or 0.0

    noise_abs, limit = either("ref_max_abs_err"), either("share_limit")
    for metric, noise in (("max_abs_err", noise_abs), ("share_above", SHARE_NOISE * limit)):
        a, b = as_float(o_old.get(metric)), as_float(o_new.get(metric))
        if a is None or b is None:
            continue
        if _grew(b, a, factor, noise):
            out.append({"output": name, "metric": metric, "old": a, "new": b, "direction": "up"})
        elif _grew(a, b, factor, noise):
            out.append({"output": name, "metric": metric, "old": a, "new": b, "direction": "down"})
    return out


def _comparable(c_old: dict, c_new: dict) -> bool:
    keys = ("arguments", "shapes", "dtypes", "seed")
    return all(c_old.get(k) == c_new.get(k) for k in keys if k in c_old and k in c_new)


def _ratio(new, old) -> str:
    if old == 0:
        return "x inf" if new else "x 1"
    return f"x {new / old:.2f}"


def compare_reports(old: dict, new: dict, factor: float = FACTOR) -> dict:
    """The comparison as data: ``cases`` (OLD's order, then NEW-only), ``summary``, ``regressed``"""
    if not factor > 1:
        raise ValueError("factor must be > 1")
    check_report(old, "OLD")
    check_report(new, "NEW")
    old_cases = {c.get("name"): c for c in old["cases"]}
    new_cases = {c.get("name"): c for c in new["cases"]}
    names = list(old_cases) + [n for n in new_cases if n not in old_cases]
    rows = []
    for name in names:
        c_old, c_new = old_cases.get(name), new_cases.get(name)
        row = {"name": name, "old": c_old.get("verdict") if c_old else None,
               "new": c_new.get("verdict") if c_new else None, "status": "unchanged",
               "regression": False, "changes": [], "notes": []}
        rows.append(row)
        if c_old is None or c_new is None:
            row["status"] = "only in NEW" if c_old is None else "only in OLD"
            continue
        comparable = _comparable(c_old, c_new)
        if not comparable:
            row["notes"].append("arguments differ (verdicts compared only)")
        vo, vn = row["old"], row["new"]
        if vo != vn:            # PASS -> FAIL/ERROR and FAIL -> ERROR regress
            row.update(status=f"{vo.lower()}->{vn.lower()}",
                       regression=vo == "PASS" or (vo, vn) == ("FAIL", "ERROR"))
        elif vo != "PASS":
            row["status"] = f"still {vn.lower()}"
        if comparable:
            outs_old, outs_new = c_old.get("outputs") or {}, c_new.get("outputs") or {}
            for out in outs_new:
                if out in outs_old:
                    row["changes"].extend(_metric_changes(out, outs_old[out], outs_new[out], factor))
        ups = [ch for ch in row["changes"] if ch["direction"] == "up"]
        if ups and not row["regression"]:
            row["regression"] = True
            if row["status"] in ("unchanged",) or row["status"].startswith("still"):
                row["status"] = "errors up" if row["status"] == "unchanged" else row["status"] + ", errors up"
        elif row["status"] == "unchanged" and row["changes"]:
            row["status"] = "errors down"
        if vn == "FAIL":
            failing = [n for n, o in (c_new.get("outputs") or {}).items() if o.get("verdict") != "PASS"]
            row["failing_outputs"] = failing
            if failing:
                row["notes"].append("NEW " + output_figures(failing[0], c_new["outputs"][failing[0]]))
        if vn == "ERROR" and c_new.get("error"):
            row["notes"].append(f"NEW error: {c_new['error']}")
    summary = {
        "cases_old": len(old_cases), "cases_new": len(new_cases),
        "regressed": sum(r["regression"] for r in rows),
        "pass_to_fail": sum(r["status"] in ("pass->fail", "pass->error", "fail->error") for r in rows),
        "errors_up": sum(any(ch["direction"] == "up" for ch in r["changes"]) for r in rows),
        "improved": sum(r["status"] in IMPROVED for r in rows),
        "only_in_old": [r["name"] for r in rows if r["status"] == "only in OLD"],
        "only_in_new": [r["name"] for r in rows if r["status"] == "only in NEW"],
    }

    def side(report):
        return {"backend": report.get("backend"), "started": report.get("started"),
                "summary": report.get("summary"),
                "versions": version_summary(report.get("environment")),
                "k": (report.get("criteria") or {}).get("flash_attention", {}).get("k")}
    return {"schema": "aclnn_fag.parity_compare/1", "factor": factor, "old": side(old),
            "new": side(new), "cases": rows, "summary": summary,
            "regressed": summary["regressed"] > 0}


def _v(x) -> str:
    return "-" if x is None else str(x)


def format_comparison(cmp: dict, old_label: str = "OLD", new_label: str = "NEW") -> str:
    lines = [f"OLD: {old_label}  (backend {cmp['old']['backend']}, started {cmp['old']['started']})",
             f"NEW: {new_label}  (backend {cmp['new']['backend']}, started {cmp['new']['started']})"]
    if cmp["old"].get("k") != cmp["new"].get("k"):
        lines.append(f"note: the reports used different criteria (k {cmp['old'].get('k')} vs "
                     f"{cmp['new'].get('k')})")
    vo, vn = cmp["old"]["versions"], cmp["new"]["versions"]
    width = max([3] + [len(shorten(vo.get(key))) for key in vo])
    lines += ["", f"  {'version':<15s} {'OLD':<{width}s}  NEW"]
    for key in vo:
        a, b = _v(vo.get(key)), _v(vn.get(key))
        mark = "*" if a != b else " "      # compared in full, shown shortened (JSON: in full)
        lines.append(f"{mark} {key:<15s} {shorten(a):<{width}s}  {shorten(b)}")
    lines += ["", f"  {'case':<32s} {'OLD':<6s} {'NEW':<6s} change"]
    for r in cmp["cases"]:
        mark = "!" if r["regression"] else " "
        detail = [r["status"]]
        for ch in r["changes"]:
            fmt = ".2e" if ch["metric"] == "max_abs_err" else ".1e"
            detail.append(f"{ch['output']} {ch['metric']} {format(ch['old'], fmt)} -> "
                          f"{format(ch['new'], fmt)} ({_ratio(ch['new'], ch['old'])}, {ch['direction']})")
        lines.append(f"{mark} {r['name']:<32s} {_v(r['old']):<6s} {_v(r['new']):<6s} " + "; ".join(detail))
        for note in r["notes"]:
            lines.append(f"  {'':<32s} {'':<6s} {'':<6s}   {note}")
    s = cmp["summary"]
    summary = (f"summary: {s['regressed']} regressed ({s['pass_to_fail']} pass->fail/error, "
               f"{s['errors_up']} with errors up by more than x{cmp['factor']:g}), "
               f"{s['improved']} improved; only in OLD: {', '.join(s['only_in_old']) or 'none'}; "
               f"only in NEW: {', '.join(s['only_in_new']) or 'none'}")
    lines += ["", summary, "NEW regressed" if cmp["regressed"] else "no regression"]
    return "\n".join(lines)
