"""JUnit XML for ``aclnn-fag parity --junit FILE``: what CI systems (Jenkins, GitLab, GitHub
test reporters) read.

One ``<testsuite name="aclnn_fag.tools.parity">`` with the environment as ``<properties>`` (backend,
precision, CANN version, SoC, library paths, ...), one ``<testcase>`` per case:

* PASS: an empty testcase (``time`` = the backend's seconds), the worst output's figures in
  ``<system-out>``;
* FAIL: ``<failure type="ParityFailure" message="...">`` whose message names the worst output
  and its errors against the criteria; the text lists every failing output;
* ERROR: ``<error type="<exception class>" message="...">`` with the traceback.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from .envinfo import summary as version_summary

__all__ = ["junit_xml", "output_figures", "worst_output"]


def _num(x, spec=".3e") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def _float(x):
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return x


def badness(o: dict) -> float:
    """How close one output came to failing (1 = at a limit), the larger of the two criteria."""
    if o.get("verdict") != "PASS" and (o.get("problem") or o.get("nonfinite")):
        return math.inf
    err, bound = _float(o.get("max_abs_err")), _float(o.get("fa_bound"))
    share, limit = _float(o.get("share_above")), _float(o.get("share_limit"))
    fa = (err or 0.0) / bound if bound else 0.0
    dt = (share or 0.0) / limit if limit else 0.0
    return max(fa, dt)


def worst_output(case: dict):
    """(name, metrics) of the case's worst output (a failing one first), or (None, None)."""
    outs = case.get("outputs") or {}
    if not outs:
        return None, None
    failing = [kv for kv in outs.items() if kv[1].get("verdict") != "PASS"]
    name, o = max(failing or outs.items(), key=lambda kv: badness(kv[1]))
    return name, o


def output_figures(name: str, o: dict) -> str:
    """``dk_rope: max_abs_err 1.2e-02 (bound 8.0e-03 = 2 x ref 4.0e-03 + floor; FAIL), share>rtol
    3.1e-03 (limit 1.0e-03; FAIL)``."""
    if o.get("problem") and "max_abs_err" not in o:
        return f"{name}: {o['problem']}"
    fa = "pass" if o.get("fa_pass") else "FAIL"
    dt = "pass" if o.get("dt_pass") else "FAIL"
    text = (f"{name}: max_abs_err {_num(o.get('max_abs_err'))} (bound {_num(o.get('fa_bound'))} = "
            f"{_num(o.get('k'), 'g')} x ref {_num(o.get('ref_max_abs_err'))} + floor, ratio "
            f"{_num(o.get('fa_ratio'), '.2f')}; {fa}), share>rtol {_num(o.get('share_above'))} "
            f"(rtol {_num(o.get('rtol'))}, limit {_num(o.get('share_limit'))}; {dt}), max_rel_err "
            f"{_num(o.get('max_rel_err'))}")
    if o.get("problem"):
        text += f"; {o['problem']}"
    return text


def _case_time(case: dict) -> float:
    t = (case.get("timings") or {}).get("backend_s")
    if not isinstance(t, (int, float)):
        t = sum(v for v in (case.get("timings") or {}).values() if isinstance(v, (int, float)))
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
    facts = {"backend": backend, "precision": report.get("precision")}
    facts.update(version_summary(report.get("environment")))
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
                "type": "ParityFailure",
                "message": f"worst output {output_figures(name, worst)}"})
            el.text = "\n".join([f"failing outputs: {', '.join(failing)}"]
                                + [output_figures(n, case['outputs'][n]) for n in failing])
        elif name is not None:
            ET.SubElement(tc, "system-out").text = f"worst output {output_figures(name, worst)}"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
