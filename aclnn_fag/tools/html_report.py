"""Parity reports and comparisons as one self-contained HTML page from the JSON report alone
(docs/parity.md, "5. Look at it"); a report without error summaries renders without pictures."""

from __future__ import annotations

import base64
import datetime
import html
import os
import pathlib
import re
import tempfile
from typing import List, Optional

from . import report_plots
from .accuracy import budget_used
from .envinfo import shorten, summary as version_summary
from .output import STDOUT, figure
from .report_compare import IMPROVED

__all__ = ["HtmlError", "BORDERLINE", "prepare", "case_status", "missing_summaries",
           "render_report", "render_compare"]

BORDERLINE = 0.75
STATUS_ORDER = {"ERROR": 0, "FAIL": 1, "BORDERLINE": 2, "PASS": 3}
_NOTICE = ("{what} has no per-position error summaries (made by an aclnn_fag older than the "
           "--html pages, or by another tool): the page has the environment, the verdicts, the "
           "case table and every output's figures, but no heat maps, token plots or histograms "
           "for {cases}. Re-run `aclnn-fag parity` with this version to get them.")


class HtmlError(ValueError):
    """An HTML page cannot be made: bad destination, unreadable report, no matplotlib."""


def prepare(path) -> None:
    """Raise HtmlError unless ``--html path`` can be written and matplotlib imported."""
    if path is None or str(path) == STDOUT or not str(path).strip():
        raise HtmlError(f"--html takes a file name, got {path!r}")
    full = os.path.abspath(os.fspath(path))
    if os.path.isdir(full):
        raise HtmlError(f"--html {path}: is a directory")
    directory = os.path.dirname(full)
    if not os.path.isdir(directory):
        raise HtmlError(f"--html {path}: the directory {directory} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".html-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise HtmlError(f"--html {path}: cannot write in {directory}: {exc.strerror or exc}") from None
    try:
        report_plots.require()
    except report_plots.MissingMatplotlib as exc:
        raise HtmlError(str(exc)) from None


def case_usage(case: dict) -> float:
    return max((budget_used(o) for o in (case.get("outputs") or {}).values()), default=0.0)


def case_status(case: dict) -> str:
    """ERROR, FAIL, BORDERLINE (a PASS at >= BORDERLINE of a budget) or PASS."""
    verdict = case.get("verdict")
    if verdict in ("ERROR", "FAIL"):
        return verdict
    return "BORDERLINE" if case_usage(case) >= BORDERLINE else "PASS"


def _worst(case: dict) -> Optional[str]:
    outs = case.get("outputs") or {}
    return max(outs, key=lambda n: budget_used(outs[n])) if outs else None


def missing_summaries(report: dict) -> List[str]:
    """Cases with a judged output that carries no error summary (and no reason why)."""
    return [str(case.get("name")) for case in report.get("cases") or []
            if any(isinstance(o, dict) and "max_abs_err" in o and "error_summary" not in o
                   and "error_summary_error" not in o for o in (case.get("outputs") or {}).values())]


def _e(x) -> str:
    return html.escape("-" if x is None else str(x), quote=True)


def _num(x, spec=".2e") -> str:
    return _e(figure(x, spec))


def _sort_key(v: float) -> str:
    return "1e308" if v == float("inf") else f"{v:.6g}"


def anchor(name) -> str:
    return "case-" + re.sub(r"[^A-Za-z0-9_.-]", "-", str(name))


def _page(title: str, body: List[str]) -> str:
    """The page around ``body``, with the style and the sorting script of aclnn_fag/tools/data/."""
    data = pathlib.Path(__file__).resolve().parent / "data"
    css, js = ((data / name).read_text(encoding="utf-8") for name in ("report.css", "report.js"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{_e(title)}</title><style>\n{css}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>\n{js}</script>\n</body></html>\n")


def _environment_rows(report: dict) -> list:
    """(label, short value, full value) of the environment block."""
    env = report.get("environment") or {}
    v = version_summary(env)
    blas = (env.get("versions") or {}).get("blas") or {}
    rows = [
        ("CANN", v.get("cann") and f"{v['cann']} (via {v.get('cann_source') or '?'})"),
        ("runtime", v.get("runtime")), ("ops_transformer", v.get("ops_transformer")),
        ("ACL API", v.get("acl_api")), ("rules of CANN release", v.get("cann_rules")),
        ("toolkit install", v.get("toolkit_install")), ("driver", v.get("driver")),
        ("SoC", v.get("soc")), ("op-API library", v.get("opapi_library")),
        ("aclnn_fag", v.get("aclnn_fag")),
        ("numpy / ml_dtypes / python", " / ".join(_e(v.get(k)) for k in ("numpy", "ml_dtypes", "python"))),
        ("BLAS and threads", (v.get("blas") or "unknown") + f", {v.get('blas_threads') or 'unknown'} threads"),
        ("backend / op / precision", f"{report.get('backend')} / {report.get('op', 'backward')} / "
                                     f"{report.get('precision')}"),
        ("started / wall time", f"{report.get('started')} / {_num(report.get('wall_s'), '.1f')} s"),
        ("suite", (report.get("suite") or {}).get("path")),
    ]
    full = {"BLAS and threads": f"{blas.get('path') or blas.get('library')} (threads via "
                                f"{blas.get('threads_via') or blas.get('threads_source')})"}
    return [(label, shorten(value, 72), full.get(label) or ("-" if value is None else str(value)))
            for label, value in rows]


def _counts(report: dict) -> dict:
    statuses = [case_status(c) for c in report.get("cases") or []]
    return {s: statuses.count(s) for s in ("PASS", "BORDERLINE", "FAIL", "ERROR")}


def _badges(pairs) -> str:
    return "<p>" + "".join(f'<span class="badge{f" v-{cls}" if cls else ""}">{text}</span>'
                           for cls, text in pairs) + "</p>"


def _banners(report: dict) -> List[str]:
    env = report.get("environment") or {}
    out = []
    if env.get("stand_in"):
        out.append(f'<div class="standin">STAND-IN stub libraries (native_stubs/), not an NPU: '
                   f'{_e(env.get("stand_in_note"))}</div>')
    if report.get("self_check"):
        from .parity import SELF_CHECK_NOTE
        out.append(f'<div class="notice">{_e(SELF_CHECK_NOTE)}</div>')
    return out


def _output_cell(o: Optional[dict]) -> str:
    if not o:
        return '<td class="num" data-sort="-1">-</td>'
    if "max_abs_err" not in o:
        return f'<td class="bad" data-sort="1e308">{_e(o.get("problem") or o.get("verdict"))}</td>'
    fa = "" if o.get("fa_pass") else ' class="bad"'
    dt = "" if o.get("dt_pass") else ' class="bad"'
    return (f'<td class="num" data-sort="{_sort_key(budget_used(o))}">'
            f'<span{fa}>{_num(o.get("max_abs_err"))}</span> / {_num(o.get("fa_bound"))}<br>'
            f'<span{dt}>{_num(o.get("share_above"), ".1e")}</span> / '
            f'{_num(o.get("share_limit"), ".0e")}</td>')


def _ordered(cases: list) -> list:
    return sorted(cases, key=lambda c: (STATUS_ORDER[case_status(c)], -case_usage(c)))


def _name_cell(name, linked: bool) -> str:
    label = f'<a href="#{anchor(name)}">{_e(name)}</a>' if linked else _e(name)
    return f'<td class="name">{label}</td>'


def _case_table(report: dict, outputs: List[str], with_sections: set) -> List[str]:
    head = "".join(f"<th>{_e(n)}<br><span class=small>err / bound<br>share / limit</span></th>"
                   for n in outputs)
    lines = ['<table class="sortable" id="cases"><thead><tr><th>#</th><th>case</th><th>verdict</th>'
             f'<th>worst output</th><th>budget used</th>{head}<th>time s</th></tr></thead><tbody>']
    for i, case in enumerate(_ordered(report.get("cases") or []), 1):
        status, usage, outs = case_status(case), case_usage(case), case.get("outputs") or {}
        lines.append(
            f'<tr class="case-row" data-status="{status}"><td class="num">{i}</td>'
            f'{_name_cell(case.get("name"), case.get("name") in with_sections)}'
            f'<td class="v-{status}" data-sort="{STATUS_ORDER[status]}">{status}</td>'
            f'<td>{_e(_worst(case))}</td>'
            f'<td class="num" data-sort="{_sort_key(usage)}">{_num(usage * 100, ".0f")}%</td>'
            + "".join(_output_cell(outs.get(n)) for n in outputs)
            + f'<td class="num">{_num((case.get("timings") or {}).get("backend_s"), ".3f")}</td></tr>')
    lines.append("</tbody></table>")
    lines.append(f'<p class="small">Ordered ERROR, FAIL, borderline (a pass that used at least '
                 f'{BORDERLINE:.0%} of a criterion\'s budget), PASS; within each, most budget used '
                 f'first. err / bound: criterion 1 (max |y-g| against k x the reference\'s error + '
                 f'floor); share / limit: criterion 2 (share of elements with relative error above '
                 f'rtol). Red: that criterion failed.</p>')
    return lines


def _arguments(case: dict) -> str:
    spec, args = case.get("spec") or {}, case.get("arguments") or {}
    shapes = case.get("shapes") or {}
    q, qr, k, v = (shapes.get(n) or [None] * 3 for n in ("query", "query_rope", "key", "value"))
    parts = [f"seed {case.get('seed')}", f"sparse_mode {args.get('sparse_mode')}",
             f"lengths q {spec.get('lengths_q')} kv {spec.get('lengths_kv') or spec.get('lengths_q')}",
             f"actual_seq_qlen {args.get('actual_seq_qlen')}",
             f"actual_seq_kvlen {args.get('actual_seq_kvlen')}",
             f"heads N1={q[1]} N2={k[1]}", f"D={q[-1]} Dr={qr[-1]} Dv={v[-1]}",
             f"mask {case.get('mask')}", f"scale {args.get('scale_value')}",
             f"pre/next {args.get('pre_tokens')}/{args.get('next_tokens')}"]
    return "; ".join(_e(p) for p in parts)


METRIC_COLUMNS = (("max_abs_err", ".3e"), ("ref_max_abs_err", ".3e"), ("fa_bound", ".3e"),
                  ("fa_ratio", ".2f"), ("share_above", ".2e"), ("ref_share_above", ".2e"),
                  ("share_limit", ".0e"), ("rtol", ".3g"), ("max_rel_err", ".2e"))


def _metrics_table(outs: dict) -> List[str]:
    lines = ["<table><tr><th>output</th>" + "".join(f"<th>{c}</th>" for c, _ in METRIC_COLUMNS)
             + "<th>verdict</th><th>note</th></tr>"]
    for name, o in outs.items():
        verdict = o.get("verdict")
        note = o.get("problem") or o.get("error_summary_error") or ""
        lines.append(f"<tr><td>{_e(name)}</td>" + "".join(
            f'<td class="num">{_num(o.get(c), spec)}</td>' for c, spec in METRIC_COLUMNS)
            + f'<td class="v-{_e(verdict)}">{_e(verdict)}</td><td>{_e(note)}</td></tr>')
    lines.append("</table>")
    return lines


def _pictures(outs: dict, name: str, old_outs=None) -> List[str]:
    pictures = [(report_plots.heatmaps(outs), "max |y - golden| per (batch, head)",
                 "error per batch and head"),
                (report_plots.token_errors(outs, old_outs), "along the token positions",
                 "error per token"),
                (report_plots.histograms(outs), "|backend - golden| beside |reference - golden|",
                 "error histograms")]
    if not any(png for png, _, _ in pictures):
        return ['<p class="notice">No error summaries for this case in the report: no pictures.</p>']
    return [f'<h4>{title}</h4><img alt="{_e(f"{name}: {alt}")}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">' for png, title, alt in pictures if png]


def _repro_link(report: dict, name, html_dir: str) -> str:
    path = ((report.get("reproducers") or {}).get("cases") or {}).get(name)
    if not path:
        return ""
    rel = os.path.relpath(os.path.abspath(path), html_dir)
    return (f'<p>Reproducer: <a class="repro" href="{_e(rel)}/">{_e(path)}</a> '
            f'(<a href="{_e(rel)}/README.md">README.md</a>: <code>./build.sh &amp;&amp; '
            f'./repro</code>)</p>')


def _case_section(report: dict, case: dict, html_dir: str, old_case=None, extra="") -> List[str]:
    name, status, outs = case.get("name"), case_status(case), case.get("outputs") or {}
    lines = [f'<section class="case" id="{anchor(name)}">',
             f'<h3>{_e(name)} <span class="v-{status}">{status}</span></h3>', extra,
             f'<p class="small">{_arguments(case)}</p>']
    if case.get("note"):
        lines.append(f"<p>{_e(case['note'])}</p>")
    if case.get("error"):
        lines.append(f"<p class=bad>{_e(case['error'])}</p>")
        if case.get("traceback"):
            lines.append(f"<pre>{_e(case['traceback'])}</pre>")
    if outs:
        lines += _metrics_table(outs) + _pictures(outs, name, (old_case or {}).get("outputs"))
    if case.get("warnings"):
        lines.append("<p class=small>warnings: " + "; ".join(_e(w) for w in case["warnings"]) + "</p>")
    return lines + [_repro_link(report, name, html_dir), "</section>"]


def _notices(what: str, report: dict) -> List[str]:
    missing = missing_summaries(report)
    if not missing:
        return []
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return [_NOTICE.format(what=what, cases=f"{len(missing)} case(s): {shown}")]


def render_report(report: dict, source: str = "", html_path: str = "report.html"):
    """(the page, notices) for one parity report; notices say what the page lacks."""
    html_dir = os.path.dirname(os.path.abspath(html_path))
    sections = [c for c in _ordered(report.get("cases") or []) if case_status(c) != "PASS"]
    notices = _notices(source or "the report", report)
    c = _counts(report)
    body = [f"<h1>aclnn_fag parity: {_e(report.get('op', 'backward'))} on {_e(report.get('backend'))}</h1>",
            f'<p class="small">{_e(source)} &mdash; rendered '
            f'{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}</p>']
    body += _banners(report) + [f'<div class="notice">{_e(n)}</div>' for n in notices]
    body.append(_badges([("", f"{len(report.get('cases') or [])} cases"),
                         ("PASS", f"PASS {c['PASS'] + c['BORDERLINE']}"),
                         ("BORDERLINE", f"of which borderline {c['BORDERLINE']}"),
                         ("FAIL", f"FAIL {c['FAIL']}"), ("ERROR", f"ERROR {c['ERROR']}")]))
    body.append("<h2>Environment</h2><table id=environment>")
    body += [f'<tr><th>{_e(k)}</th><td class="mono" title="{_e(full)}">{_e(short)}</td></tr>'
             for k, short, full in _environment_rows(report)]
    body.append("</table><h2>Cases</h2>")
    outputs = list(report.get("outputs") or [])
    for case in report.get("cases") or []:
        outputs += [n for n in case.get("outputs") or {} if n not in outputs]
    body += _case_table(report, outputs, {c.get("name") for c in sections})
    body.append("<h2>Failing and borderline cases</h2>")
    if not sections:
        body.append("<p>None: every case passed with at least "
                    f"{1 - BORDERLINE:.0%} of each criterion's budget to spare.</p>")
    for case in sections:
        body += _case_section(report, case, html_dir)
    crit = report.get("criteria") or {}
    fa, dt = crit.get("flash_attention") or {}, crit.get("double_thousandths") or {}
    criteria = [f"1. {fa.get('rule')}  (k = {fa.get('k')}, floor_abs = {fa.get('floor_abs')}; "
                f"reference: {fa.get('reference')})", f"2. {dt.get('rule')}"]
    criteria += [f"   {dtype}: rtol {th.get('rtol'):.3g}, share_limit {th.get('share_limit'):g}"
                 for dtype, th in (dt.get("per_dtype") or {}).items()]
    criteria.append(f"golden: {crit.get('golden')}")
    body.append("<h2>Criteria</h2><pre>" + _e("\n".join(criteria)) + "</pre>")
    return _page(f"aclnn_fag parity {report.get('backend')}", body), notices


def _kind(row) -> str:
    if row["regression"]:
        return "regression"
    if row["new"] in ("FAIL", "ERROR"):
        return "new-failing"
    return "improved" if row["status"] in IMPROVED else "other"


def render_compare(old: dict, new: dict, cmp: dict, old_label: str, new_label: str,
                   html_path: str = "compare.html"):
    """(the page, notices) for a comparison (``report_compare.compare_reports``)."""
    html_dir = os.path.dirname(os.path.abspath(html_path))
    notices = _notices(f"NEW ({new_label})", new)
    old_cases = {c.get("name"): c for c in old.get("cases") or []}
    new_cases = {c.get("name"): c for c in new.get("cases") or []}
    rank = {"regression": 0, "new-failing": 1, "improved": 2, "other": 3}
    rows = sorted(cmp["cases"], key=lambda r: rank[_kind(r)])
    body = [f"<h1>aclnn_fag parity comparison: {'NEW regressed' if cmp['regressed'] else 'no regression'}</h1>",
            f'<p class="small">OLD: {_e(old_label)} (backend {_e(cmp["old"]["backend"])}, started '
            f'{_e(cmp["old"]["started"])})<br>NEW: {_e(new_label)} (backend {_e(cmp["new"]["backend"])}, '
            f'started {_e(cmp["new"]["started"])})</p>']
    body += [f'<div class="notice">{_e(n)}</div>' for n in notices] + _banners(new)
    s = cmp["summary"]
    body.append(_badges([("FAIL", f"{s['regressed']} regressed"),
                         ("", f"{s['pass_to_fail']} pass&rarr;fail/error"),
                         ("", f"{s['errors_up']} errors up by more than x{cmp['factor']:g}"),
                         ("PASS", f"{s['improved']} improved"),
                         ("", f"only in OLD: {len(s['only_in_old'])}"),
                         ("", f"only in NEW: {len(s['only_in_new'])}")]))
    body.append('<h2>The two runs</h2><table id="runs"><tr><th></th><th>OLD</th><th>NEW</th></tr>')
    for (label, so, fo), (_, sn, fn) in zip(_environment_rows(old), _environment_rows(new)):
        mark = ' class="diff"' if fo != fn and label != "started / wall time" else ""
        body.append(f'<tr{mark}><th>{_e(label)}</th><td class="mono" title="{_e(fo)}">{_e(so)}</td>'
                    f'<td class="mono" title="{_e(fn)}">{_e(sn)}</td></tr>')
    co, cn = _counts(old), _counts(new)
    for key in ("PASS", "BORDERLINE", "FAIL", "ERROR"):
        mark = ' class="diff"' if co[key] != cn[key] else ""
        body.append(f'<tr{mark}><th>{key.lower()} cases</th><td class="num">{co[key]}</td>'
                    f'<td class="num">{cn[key]}</td></tr>')
    body.append("</table>")
    sections = [r["name"] for r in rows if r["name"] in new_cases and (
        r["regression"] or case_status(new_cases[r["name"]]) != "PASS")]
    body.append('<h2>Cases</h2><table class="sortable" id="cases"><thead><tr><th>#</th><th>case</th>'
                '<th>OLD</th><th>NEW</th><th>change</th><th>OLD worst</th><th>NEW worst</th>'
                '<th>details</th></tr></thead><tbody>')
    for i, r in enumerate(rows, 1):
        details = [f"{ch['output']} {ch['metric']} {_num(ch['old'])} &rarr; {_num(ch['new'])} "
                   f"({ch['direction']})" for ch in r["changes"]] + [_e(n) for n in r["notes"]]
        cls = "case-row regression" if r["regression"] else "case-row"
        body.append(
            f'<tr class="{cls}" data-kind="{_kind(r)}"><td class="num">{i}</td>'
            f'{_name_cell(r["name"], r["name"] in sections)}'
            f'<td class="v-{_e(r["old"])}">{_e(r["old"])}</td><td class="v-{_e(r["new"])}">{_e(r["new"])}</td>'
            f'<td class="name" data-sort="{rank[_kind(r)]}">{_e(r["status"])}</td>'
            f'{_worst_cell(old_cases.get(r["name"]))}{_worst_cell(new_cases.get(r["name"]))}'
            f'<td>{"<br>".join(details)}</td></tr>')
    body.append("</tbody></table>")
    body.append('<p class="small">Regressions first, then cases failing in NEW, improvements, the '
                'rest. worst: the output that used most of its criteria\'s budget, its max |y-g| '
                'and the budget used.</p>')
    body.append("<h2>Regressed, failing and borderline cases of NEW</h2>")
    if not sections:
        body.append("<p>None.</p>")
    by_row = {r["name"]: r for r in rows}
    for name in sections:
        r = by_row[name]
        extra = f'<p>OLD {_e(r["old"])} &rarr; NEW {_e(r["new"])}: {_e(r["status"])}</p>'
        body += _case_section(new, new_cases[name], html_dir, old_cases.get(name), extra)
    return _page("aclnn_fag parity comparison", body), notices


def _worst_cell(case: Optional[dict]) -> str:
    if not case:
        return '<td data-sort="-1">-</td>'
    worst = _worst(case)
    if worst is None:
        return f'<td data-sort="1e308">{_e(case.get("verdict"))}</td>'
    o = case["outputs"][worst]
    usage = budget_used(o)
    return (f'<td class="num" data-sort="{_sort_key(usage)}">{_e(worst)} '
            f'{_num(o.get("max_abs_err"))} ({_num(usage * 100, ".0f")}%)</td>')
