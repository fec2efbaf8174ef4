"""The ``aclnn-fag parity`` and ``aclnn-fag report`` commands (docs/parity.md): the options,
the case selection and the report side; running the cases is :mod:`aclnn_fag.tools.parity`'s."""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import accuracy, cases as cases_mod, report_compare, repro
from ..api import resolve_backend
from .backend_module import BackendModuleError, load_backend
from .cliargs import positive_float, positive_int
from .html_report import HtmlError, prepare, render_compare, render_report
from .junit import junit_xml
from .output import STDOUT, human_stream, usage_error, write_json, write_text
from .parity import OPS, format_table, run_suite

PROG = "aclnn-fag parity"
__all__ = ["add_arguments", "main", "finish", "add_report_command", "cmd_report", "run_compare"]

HTML_HELP = ("write {} as one self-contained HTML page (environment, verdicts, the case "
             "table failing first, heat maps and token plots of the failing and borderline "
             "cases) to FILE; needs matplotlib: pip install 'aclnn_fag[report]'")


def add_html_argument(p, what: str = "the results") -> None:
    p.add_argument("--html", metavar="FILE", default=None, help=HTML_HELP.format(what))


def prepare_html(args, prog: str) -> int:
    """0, or 2 after a message when ``--html`` cannot be honoured (checked before any work)."""
    if getattr(args, "html", None) is None:
        return 0
    try:
        prepare(args.html)
    except HtmlError as exc:
        return usage_error(prog, str(exc))
    return 0


def _write_page(page_and_notices, dest, prog: str, stream) -> int:
    """Write an HTML page: 0, or 2 (cannot write, or the page lacks pictures)."""
    page, notices = page_and_notices
    try:
        write_text(page, dest)          # whole or not at all
    except OSError as exc:
        return usage_error(prog, f"--html {dest}: cannot write: {exc.strerror or exc}")
    print(f"html: {dest}", file=stream or sys.stdout)
    for notice in notices:
        print(f"{prog}: {notice}", file=sys.stderr)
    return 2 if notices else 0


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
    prog = "aclnn-fag report"
    if args.html == STDOUT:
        return usage_error(prog, "--html takes a file name, not '-'")
    try:
        report = report_compare.load_report(args.report_json)
    except report_compare.ReportError as exc:
        hint = (" (a comparison: render it with 'aclnn-fag parity --compare OLD.json NEW.json "
                "--html FILE')" if "parity_compare" in str(exc) else "")
        return usage_error(prog, f"{exc}{hint}")
    if prepare_html(args, prog):
        return 2
    text = human_stream(args.junit)
    if not args.quiet:
        try:
            print(format_table(report, verbose=args.verbose), file=text)
        except (KeyError, TypeError) as exc:
            return usage_error(prog, f"{args.report_json}: the report lacks {exc} for its table")
    return _junit_and_page(report, args, text, f"report {args.report_json}", prog)


def run_compare(old_path, new_path, factor=None, json_dest=None, html_dest=None) -> int:
    """Print the comparison; exit status 0, 1 (NEW regressed) or 2 (bad input, no pictures)."""
    try:
        old, new = report_compare.load_report(old_path), report_compare.load_report(new_path)
        cmp = report_compare.compare_reports(old, new, report_compare.FACTOR if factor is None
                                             else factor)
    except (report_compare.ReportError, ValueError) as exc:
        return usage_error("aclnn-fag parity --compare", str(exc))
    text = human_stream(json_dest)
    print(report_compare.format_comparison(cmp, str(old_path), str(new_path)), file=text)
    if json_dest:
        write_json(cmp, json_dest)
        if json_dest != STDOUT:
            print(f"comparison: {json_dest}", file=text)
    if html_dest:
        page = render_compare(old, new, cmp, str(old_path), str(new_path), html_path=html_dest)
        if _write_page(page, html_dest, "aclnn-fag parity --compare", text):
            return 2
    return 1 if cmp["regressed"] else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add = p.add_argument
    add("--backend", choices=("auto", "numpy", "npu"), default="auto",
        help="backend under test (default: auto)")
    add("--precision", choices=("device", "fp32", "fp64"), default="device",
        help="precision of the backend under test (fp32/fp64: NumPy only; default: device)")
    add("--suite", metavar="FILE", default=None,
        help="case suite JSON (default: the shipped aclnn_fag/tools/data/parity_suite.json)")
    add("--tags", metavar="TAGS", action="append", default=[],
        help="run the cases carrying any of these tags (comma-separated; repeatable)")
    add("--quick", action="store_true", help="run the cases tagged 'quick' (= --tags quick)")
    add("--case", metavar="NAME", action="append", default=[],
        help="run the cases whose name matches this glob pattern (repeatable)")
    add("--all", action="store_true",
        help="include the cases the suite excludes by default (tags 'long', 'heavy', ...)")
    add("--list", action="store_true", help="list the selected cases and exit")
    add("--k", type=positive_float, default=accuracy.DEFAULT_K,
        help="factor k of the flash-attention criterion, a finite number > 0 (default: 2)")
    add("--op", choices=OPS, default="backward",
        help="what to judge: 'backward' (the NumPy forward's statistics into the backend's "
             "backward; default), 'forward' (the backend's forward: attention_out and "
             "statistics) or 'roundtrip' (the backend's forward fed to its backward; "
             "all eight outputs). Criteria: docs/forward.md")
    add("--repeat", type=positive_int, default=1, metavar="N",
        help="run the backend under test N times per case on the same inputs and "
             "report whether its outputs were bit-identical (default: 1)")
    add("--json", metavar="FILE", default=None,
        help="write the JSON report to FILE ('-' = stdout; the table then goes to stderr)")
    add("--report", metavar="FILE", default=None,
        help="old spelling of --json FILE ('-' = no report, as before)")
    add("--junit", metavar="FILE", default=None,
        help="write JUnit XML to FILE ('-' = stdout): one testcase per case")
    add("--compare", nargs=2, metavar=("OLD.json", "NEW.json"), default=None,
        help="compare two reports case by case instead of running; exit 1 when NEW regressed")
    add("--factor", type=positive_float, default=None,
        help="with --compare: error growth that counts as a change (default: 2)")
    add("--repro", metavar="DIR", default=None,
        help="write a standalone C reproducer for each failing case to DIR/<case>/")
    add("--no-shrink", action="store_true",
        help="with --repro: keep the failing case whole (default: shrink it first)")
    add("--backend-module", metavar="PKG.MOD:FUNCTION", default=None,
        help="judge this callable (the public call's keyword arguments -> dq, dq_rope, "
             "dk, dk_rope, dv) instead of --backend")
    add_html_argument(p, "the results (with --compare: the comparison)")
    add("-v", "--verbose", action="store_true", help="one table row per output")
    add("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _usage_problem(args):
    """A usage error of the report options, or None."""
    if args.factor is not None and not args.compare:
        return "--factor only goes with --compare"
    if args.json == STDOUT and args.junit == STDOUT:
        return "--json - and --junit - cannot both write to stdout"
    if args.no_shrink and not args.repro:
        return "--no-shrink only goes with --repro"
    if getattr(args, "html", None) == STDOUT:
        return "--html takes a file name, not '-'"
    if args.repro and not args.compare:
        why = repro.target_problem(args.repro)
        if why:
            return f"--repro {args.repro}: cannot write reproducers there: {why}"
    return None


def _write_reproducers(report: dict, args, specs, backend_fn, text) -> None:
    """The reproducers of the failing cases (and backend errors), recorded in the report."""
    failing = [c for c in report["cases"] if c["verdict"] == "FAIL" or repro.backend_error(c)]
    written = repro.write_reproducers(report, specs, args.repro, shrink=not args.no_shrink,
                                      backend_fn=backend_fn, progress=None if args.quiet else sys.stderr,
                                      errors=sys.stderr)
    print(f"reproducers: {len(written)} of {len(failing)} failing case(s) in {args.repro}"
          + "".join(f"\n  {w}" for w in written), file=text)
    name, c_op = repro.backend_under_test(backend_fn, report.get("backend"))
    if failing and not c_op:
        print(f"note: the failures come from {name}; the reproducers call the C op directly "
              "and test the C op only (their README says so)", file=sys.stderr)
    by_dir = {repro.case_directory_name(c["name"]): c["name"] for c in failing}
    report["reproducers"] = {"dir": str(args.repro), "cases": {
        by_dir[os.path.basename(w)]: w for w in written if os.path.basename(w) in by_dir}}


def _junit_and_page(report: dict, args, text, source: str, prog: str) -> int:
    """Write ``--junit`` and ``--html`` of ``report``; the exit status."""
    if args.junit:
        write_text(junit_xml(report), args.junit)
        if args.junit != STDOUT:
            print(f"junit: {args.junit}", file=text)
    status = 0 if report.get("ok") else 1
    if getattr(args, "html", None):
        page = render_report(report, source=source, html_path=args.html)
        status = _write_page(page, args.html, prog, text) or status
    return status


def finish(report: dict, table: str, args, specs=(), backend_fn=None) -> int:
    """Print the table, write the reproducers, the report, JUnit and HTML; the exit status."""
    json_dest = args.json or (args.report if args.report != STDOUT else None)
    text = human_stream(json_dest, args.junit)
    print(table, file=text)
    if args.repro:            # first, so that the report records where the reproducers are
        _write_reproducers(report, args, specs, backend_fn, text)
    if json_dest:
        write_json(report, json_dest)
        if json_dest != STDOUT:
            print(f"report: {json_dest}", file=text)
    source = f"report {json_dest}" if json_dest and json_dest != STDOUT else "this run"
    return _junit_and_page(report, args, text, source, "aclnn-fag parity")


def main(args) -> int:
    """The ``parity`` subcommand (``args`` from ``add_arguments``)."""
    problem = _usage_problem(args)
    if problem:
        return usage_error(PROG, problem)
    if prepare_html(args, "aclnn-fag parity"):      # before any work: destination, matplotlib
        return 2
    if args.compare:
        return run_compare(args.compare[0], args.compare[1], factor=args.factor,
                           json_dest=args.json, html_dest=getattr(args, "html", None))
    backend_fn = None
    if getattr(args, "backend_module", None):
        try:
            backend_fn = load_backend(args.backend_module)
        except BackendModuleError as exc:
            return usage_error(PROG, str(exc))
    if args.op != "backward" and (backend_fn is not None or args.repro):
        other = "--backend-module" if backend_fn is not None else "--repro"
        return usage_error(PROG, f"--op {args.op} judges the package's own forward: it does not "
                                 f"go with {other}")
    try:
        suite = cases_mod.load_suite(args.suite)
    except cases_mod.SuiteError as exc:
        return usage_error(PROG, str(exc))
    tags = [t.strip() for group in args.tags for t in group.split(",") if t.strip()]
    sel = {"tags": tags + ["quick"] * args.quick, "names": list(args.case), "all": bool(args.all)}
    specs = cases_mod.select_cases(suite, tags=sel["tags"], names=sel["names"], include_all=sel["all"])
    if args.list:
        for s in specs:
            print(f"{s.name:<32s} T={s.t1:<6d} N={s.heads}/{s.n2} D={s.d}+{s.d_rope} Dv={s.dv} "
                  f"mode={s.sparse_mode} tags={','.join(s.tags)}")
        return 0
    if not specs:
        return usage_error(PROG, f"no case of {suite.path} matches the selection {sel}")
    if not (math.isfinite(args.k) and args.k > 0):          # args built without the parser
        return usage_error(PROG, f"--k must be a finite number > 0, got {args.k}")
    try:
        if backend_fn is None:
            resolve_backend(args.backend, args.precision)      # fail early when it cannot run
    except Exception as exc:
        return usage_error(PROG, str(exc))
    report = run_suite(specs, backend=args.backend, precision=args.precision, k=args.k,
                       backend_fn=backend_fn, progress=None if args.quiet else sys.stderr,
                       suite=suite, selection=sel, op=args.op, repeat=args.repeat)
    return finish(report, format_table(report, verbose=args.verbose), args, specs, backend_fn)
