"""The report side of ``aclnn-fag parity``: output options, comparison, custom backends,
reproducers (kept apart from :mod:`aclnn_fag.parity`, which runs and judges the cases).

Options added to ``parity`` (docs/parity.md):

* ``--json FILE`` — the JSON report (``-`` = stdout; the table then goes to stderr);
  ``--report FILE`` is the old spelling (``--report -`` = no report, as before);
* ``--junit FILE`` — JUnit XML (:mod:`aclnn_fag.junit`; ``-`` = stdout);
* ``--compare OLD.json NEW.json`` [``--factor F``] — compare two reports instead of running
  (:mod:`aclnn_fag.report_compare`);
* ``--backend-module pkg.mod:function`` — the backend under test is that callable
  (:mod:`aclnn_fag.backend_module`);
* ``--repro DIR`` [``--no-shrink``] — a C reproducer per failing case
  (:mod:`aclnn_fag.repro`).
"""

from __future__ import annotations

import argparse
import os
import sys

from .cliargs import positive_float
from .output import STDOUT, human_stream, write_json, write_text

__all__ = ["add_arguments", "compare_requested", "run_compare", "load_backend_fn", "finish"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the JSON report to FILE ('-' = stdout; the table then goes to stderr)")
    p.add_argument("--report", metavar="FILE", default=None,
                   help="old spelling of --json FILE ('-' = no report, as before)")
    p.add_argument("--junit", metavar="FILE", default=None,
                   help="write JUnit XML to FILE ('-' = stdout): one testcase per case")
    p.add_argument("--compare", nargs=2, metavar=("OLD.json", "NEW.json"), default=None,
                   help="compare two reports case by case instead of running; exit 1 when NEW regressed")
    p.add_argument("--factor", type=positive_float, default=None,
                   help="with --compare: error growth that counts as a change (default: 2)")
    p.add_argument("--repro", metavar="DIR", default=None,
                   help="write a standalone C reproducer for each failing case to DIR/<case>/")
    p.add_argument("--no-shrink", action="store_true",
                   help="with --repro: keep the failing case whole (default: shrink it first)")
    p.add_argument("--backend-module", metavar="PKG.MOD:FUNCTION", default=None,
                   help="judge this callable (the public call's keyword arguments -> dq, dq_rope, "
                        "dk, dk_rope, dv) instead of --backend")
    from .tools.report_cli import add_html_argument
    add_html_argument(p, "the results (with --compare: the comparison)")


def compare_requested(args) -> bool:
    return bool(getattr(args, "compare", None))


def run_compare(args) -> int:
    from . import report_compare
    factor = report_compare.FACTOR if args.factor is None else args.factor
    return report_compare.main(args.compare[0], args.compare[1], factor=factor, json_dest=args.json,
                               html_dest=getattr(args, "html", None))


def load_backend_fn(args):
    """(backend_fn or None, error text or None) for ``--backend-module``."""
    spec = getattr(args, "backend_module", None)
    if not spec:
        return None, None
    from .backend_module import BackendModuleError, load_backend
    try:
        return load_backend(spec), None
    except BackendModuleError as exc:
        return None, str(exc)


def _json_dest(args):
    if args.json:
        return args.json
    if args.report and args.report != STDOUT:
        return args.report
    return None


def usage_problem(args):
    """A usage error of the options above, or None."""
    if args.factor is not None and not compare_requested(args):
        return "--factor only goes with --compare"
    if args.json == STDOUT and args.junit == STDOUT:
        return "--json - and --junit - cannot both write to stdout"
    if args.no_shrink and not args.repro:
        return "--no-shrink only goes with --repro"
    if getattr(args, "html", None) == STDOUT:
        return "--html takes a file name, not '-'"
    return None


def finish(report: dict, table: str, args, specs=(), backend_fn=None) -> int:
    """Print the table, write the report / JUnit / reproducers (for failing cases and for cases
    whose backend call raised on arguments the validator accepts); the exit status."""
    json_dest = _json_dest(args)
    text = human_stream(json_dest, args.junit)
    print(table, file=text)
    if args.repro:            # first, so that the report records where the reproducers are
        from . import repro
        failing = [c for c in report["cases"] if c["verdict"] == "FAIL" or repro.backend_error(c)]
        written = repro.write_reproducers(report, specs, args.repro, shrink=not args.no_shrink,
                                          backend_fn=backend_fn, progress=None if args.quiet else sys.stderr)
        print(f"reproducers: {len(written)} of {len(failing)} failing case(s) in {args.repro}"
              + "".join(f"\n  {w}" for w in written), file=text)
        by_dir = {repro.case_directory_name(c["name"]): c["name"] for c in failing}
        report["reproducers"] = {"dir": str(args.repro), "cases": {
            by_dir[os.path.basename(w)]: w for w in written if os.path.basename(w) in by_dir}}
    if json_dest:
        write_json(report, json_dest)
        if json_dest != STDOUT:
            print(f"report: {json_dest}", file=text)
    if args.junit:
        from .junit import junit_xml
        write_text(junit_xml(report), args.junit)
        if args.junit != STDOUT:
            print(f"junit: {args.junit}", file=text)
    status = 0 if report["ok"] else 1
    if getattr(args, "html", None):
        from .tools.report_cli import write_run_page
        status = write_run_page(report, args.html, stream=text) or status
    return status
