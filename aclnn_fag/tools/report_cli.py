"""``--html FILE`` on ``parity`` and ``parity --compare``, the comparison's text, and the
``aclnn-fag report`` command (a saved JSON report as a table, an HTML page or JUnit XML; the
pages: :mod:`aclnn_fag.tools.html_report`).

Exit status of ``report``: 0 every case passed, 1 a case failed or errored, 2 bad input (not
a parity report of this format, ``--html`` not writable, no matplotlib, or no per-position
error summaries: the page is then written without its pictures).
"""

from __future__ import annotations

import sys

from . import report_compare
from .output import STDOUT, human_stream, write_json, write_text

__all__ = ["add_html_argument", "prepare_html", "write_run_page", "add_report_command",
           "cmd_report", "run_compare"]

HTML_HELP = ("write {} as one self-contained HTML page (environment, verdicts, the case "
             "table failing first, heat maps and token plots of the failing and borderline "
             "cases) to FILE; needs matplotlib: pip install 'aclnn_fag[report]'")


def add_html_argument(p, what: str = "the results") -> None:
    p.add_argument("--html", metavar="FILE", default=None, help=HTML_HELP.format(what))


def prepare_html(args, prog: str) -> int:
    """0, or 2 after a message when ``--html`` cannot be honoured (checked before any work)."""
    if getattr(args, "html", None) is None:
        return 0
    from .html_report import HtmlError, prepare
    try:
        prepare(args.html)
    except HtmlError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0


def _write(page_and_notices, dest, prog: str, stream) -> int:
    from .html_report import HtmlError, write_page
    page, notices = page_and_notices
    try:
        write_page(dest, page)
    except HtmlError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(f"html: {dest}", file=stream or sys.stdout)
    for notice in notices:
        print(f"{prog}: {notice}", file=sys.stderr)
    return 2 if notices else 0


def write_run_page(report: dict, dest, prog: str = "aclnn-fag parity", source: str = "",
                   stream=None) -> int:
    """Render ``report`` to ``dest``: 0, or 2 (cannot write, or the page lacks pictures)."""
    from .html_report import render_report
    return _write(render_report(report, source=source, html_path=dest), dest, prog, stream)


def add_report_command(sub) -> None:
    p = sub.add_parser(
        "report", help="a saved parity report as a table, an HTML page or JUnit XML (runs nothing)",
        description="Read a JSON report written by 'aclnn-fag parity --json' and print its table; "
                    "--html FILE renders the same self-contained page as 'parity --html', "
                    "--junit FILE the JUnit XML. Runs nothing: no backend, no NPU.",
        epilog="Exit status: 0 every case passed, 1 a case failed or errored, 2 bad input (not a "
               "parity report of this format, --html not writable, no matplotlib, or a report "
               "without per-position error summaries: the page is then written without its "
               "pictures).")
    p.add_argument("report_json", metavar="REPORT.json", help="a report of 'aclnn-fag parity --json'")
    add_html_argument(p, "the report")
    p.add_argument("--junit", metavar="FILE", default=None,
                   help="write JUnit XML to FILE ('-' = stdout): one testcase per case")
    p.add_argument("-v", "--verbose", action="store_true", help="one table row per output")
    p.add_argument("-q", "--quiet", action="store_true", help="no table (only what the options write)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from .parity import format_table
    prog = "aclnn-fag report"
    if args.html == STDOUT:
        print(f"{prog}: --html takes a file name, not '-'", file=sys.stderr)
        return 2
    try:
        report = report_compare.load_report(args.report_json)
    except report_compare.ReportError as exc:
        hint = (" (a comparison: render it with 'aclnn-fag parity --compare OLD.json NEW.json "
                "--html FILE')" if "parity_compare" in str(exc) else "")
        print(f"{prog}: {exc}{hint}", file=sys.stderr)
        return 2
    if prepare_html(args, prog):
        return 2
    text = human_stream(args.junit)
    if not args.quiet:
        try:
            print(format_table(report, verbose=args.verbose), file=text)
        except (KeyError, TypeError) as exc:
            print(f"{prog}: {args.report_json}: the report lacks {exc} for its table", file=sys.stderr)
            return 2
    if args.junit:
        from .junit import junit_xml
        write_text(junit_xml(report), args.junit)
        if args.junit != STDOUT:
            print(f"junit: {args.junit}", file=text)
    status = 0 if report.get("ok") else 1
    if args.html:
        status = write_run_page(report, args.html, prog, source=f"report {args.report_json}",
                                stream=text) or status
    return status


def run_compare(old_path, new_path, factor=None, json_dest=None, html_dest=None) -> int:
    """Print the comparison; exit status 0 (no regression), 1 (NEW regressed), 2 (bad input;
    also when ``html_dest``'s page lacks pictures because NEW has no error summaries)."""
    try:
        old, new = report_compare.load_report(old_path), report_compare.load_report(new_path)
        cmp = report_compare.compare_reports(old, new, report_compare.FACTOR if factor is None
                                             else factor)
    except (report_compare.ReportError, ValueError) as exc:
        print(f"aclnn-fag parity --compare: {exc}", file=sys.stderr)
        return 2
    text = human_stream(json_dest)
    print(report_compare.format_comparison(cmp, str(old_path), str(new_path)), file=text)
    if json_dest:
        write_json(cmp, json_dest)
        if json_dest != STDOUT:
            print(f"comparison: {json_dest}", file=text)
    if html_dest:
        from .html_report import render_compare
        page = render_compare(old, new, cmp, str(old_path), str(new_path), html_path=html_dest)
        if _write(page, html_dest, "aclnn-fag parity --compare", text):
            return 2
    return 1 if cmp["regressed"] else 0
