"""JUnit XML for ``aclnn-fag parity --junit FILE`` (and ``report --junit``): one testcase per
case, a FAIL as ``<failure>``, an ERROR as ``<error>``."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .accuracy import budget_used
from .envinfo import summary as version_summary
from .output import figure

__all__ = ["junit_xml", "output_figures", "worst_output"]


def worst_output(case: dict):
    """(name, metrics) of the case's worst output (a failing one first), or (None, None)."""
    outs = case.get("outputs") or {}
    if not outs:
        return None, None
    failing = [kv for kv in outs.items() if kv[1].get("verdict") != "PASS"]
    return max(failing or outs.items(), key=lambda kv: budget_used(kv[1]))


def output_figures(name: str, o: dict) -> str:
    """``dk_rope: max_abs_err ... (bound ...; FAIL), share>rtol ... (limit ...; FAIL)``."""
    if o.get("problem") and "max_abs_err" not in o:
        return f"{name}: {o['problem']}"

    def f(key, spec=".3e"):
        return figure(o.get(key), spec)

    text = (f"{name}: max_abs_err {f('max_abs_err')} (bound {f('fa_bound')} = {f('k', 'g')} x "
            f"ref {f('ref_max_abs_err')} + floor, ratio {f('fa_ratio', '.2f')}; "
            f"{'pass' if o.get('fa_pass') else 'FAIL'}), share>rtol {f('share_above')} (rtol "
            f"{f('rtol')}, limit {f('share_limit')}; {'pass' if o.get('dt_pass') else 'FAIL'}), "
            f"max_rel_err {f('max_rel_err')}")
    return text + (f"; {o['problem']}" if o.get("problem") else "")


def _case_time(case: dict) -> float:
    timings = case.get("timings") or {}
    t = timings.get("backend_s")
    if not isinstance(t, (int, float)):
        t = sum(v for v in timings.values() if isinstance(v, (int, float)))
    return float(t or 0.0)


def junit_xml(report: dict) -> str:
    """The report as a JUnit XML document (a str, with the XML declaration)."""
    cases = report.get("cases") or []
    backend = report.get("backend") or "unknown"
    counts = {v: sum(1 for c in cases if c.get("verdict") == v) for v in ("FAIL", "ERROR")}
    suite = ET.Element("testsuite", {
        "name": "aclnn_fag.tools.parity", "tests": str(len(cases)), "failures": str(counts["FAIL"]),
        "errors": str(counts["ERROR"]), "skipped": "0",
        "time": f"{float(report.get('wall_s') or 0.0):.3f}",
        "timestamp": str(report.get("started") or "")})
    props = ET.SubElement(suite, "properties")
    facts = {"backend": backend, "precision": report.get("precision"),
             **version_summary(report.get("environment"))}
    for key, value in facts.items():
        if value is not None:
            ET.SubElement(props, "property", {"name": key, "value": str(value)})
    for case in cases:
        tc = ET.SubElement(suite, "testcase", {
            "classname": f"aclnn_fag.tools.parity.{backend}", "name": str(case.get("name")),
            "time": f"{_case_time(case):.3f}"})
        verdict = case.get("verdict")
        if verdict == "ERROR":
            err = str(case.get("error") or "error")
            el = ET.SubElement(tc, "error", {"type": err.split(":", 1)[0], "message": err})
            el.text = str(case.get("traceback") or err)
            continue
        name, worst = worst_output(case)
        if verdict == "FAIL":
            failing = [n for n, o in case["outputs"].items() if o.get("verdict") != "PASS"]
            el = ET.SubElement(tc, "failure", {
                "type": "ParityFailure", "message": f"worst output {output_figures(name, worst)}"})
            el.text = "\n".join([f"failing outputs: {', '.join(failing)}"]
                                + [output_figures(n, case['outputs'][n]) for n in failing])
        elif name is not None:
            ET.SubElement(tc, "system-out").text = f"worst output {output_figures(name, worst)}"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
