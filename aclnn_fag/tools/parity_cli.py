"""The ``aclnn-fag parity`` command: its options, the case selection, and the report side
(output options, comparison, custom backends, reproducers). Running and judging the cases is
:mod:`aclnn_fag.tools.parity`'s job; this module only calls it.

Report options (docs/parity.md):

* ``--json FILE`` — the JSON report (``-`` = stdout; the table then goes to stderr);
  ``--report FILE`` is the old spelling (``--report -`` = no report, as before);
* ``--junit FILE`` — JUnit XML (:mod:`aclnn_fag.tools.junit`; ``-`` = stdout);
* ``--compare OLD.json NEW.json`` [``--factor F``] — compare two reports instead of running
  (:mod:`aclnn_fag.tools.report_compare`);
* ``--backend-module pkg.mod:function`` — the backend under test is that callable
  (:mod:`aclnn_fag.tools.backend_module`);
* ``--repro DIR`` [``--no-shrink``] — a C reproducer per failing case
  (:mod:`aclnn_fag.tools.repro`); a DIR that cannot be made is a usage error before the run,
  and a reproducer that cannot be written is reported on stderr even with ``-q``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import accuracy, cases as cases_mod, parity_ops
from ..api import resolve_backend
from .cliargs import positive_float, positive_int
from .output import STDOUT, human_stream, write_json, write_text
from .parity import format_table, run_suite

__all__ = ["add_arguments", "main", "compare_requested", "run_compare", "load_backend_fn", "finish"]


def _add_report_arguments(p: argparse.ArgumentParser) -> None:
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
    from .report_cli import add_html_argument
    add_html_argument(p, "the results (with --compare: the comparison)")


def compare_requested(args) -> bool:
    return bool(getattr(args, "compare", None))


def run_compare(args) -> int:
    from . import report_cli, report_compare
    factor = report_compare.FACTOR if args.factor is None else args.factor
    return report_cli.run_compare(args.compare[0], args.compare[1], factor=factor,
                                  json_dest=args.json, html_dest=getattr(args, "html", None))


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
    if args.repro and not compare_requested(args):
        from .repro import target_problem
        why = target_problem(args.repro)
        if why:
            return f"--repro {args.repro}: cannot write reproducers there: {why}"
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
        from .report_cli import write_run_page
        source = f"report {json_dest}" if json_dest and json_dest != STDOUT else "this run"
        status = write_run_page(report, args.html, source=source, stream=text) or status
    return status


# --------------------------------------------------------------------------- the command
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "numpy", "npu"), default="auto",
                   help="backend under test (default: auto)")
    p.add_argument("--precision", choices=("device", "fp32", "fp64"), default="device",
                   help="precision of the backend under test (fp32/fp64: NumPy only; default: device)")
    p.add_argument("--suite", metavar="FILE", default=None,
                   help="case suite JSON (default: the shipped aclnn_fag/tools/data/parity_suite.json)")
    p.add_argument("--tags", metavar="TAGS", action="append", default=[],
                   help="run the cases carrying any of these tags (comma-separated; repeatable)")
    p.add_argument("--quick", action="store_true", help="run the cases tagged 'quick' (= --tags quick)")
    p.add_argument("--case", metavar="NAME", action="append", default=[],
                   help="run the cases whose name matches this glob pattern (repeatable)")
    p.add_argument("--all", action="store_true",
                   help="include the cases the suite excludes by default (tags 'long', 'heavy', ...)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--k", type=positive_float, default=accuracy.DEFAULT_K,
                   help="factor k of the flash-attention criterion, a finite number > 0 (default: 2)")
    p.add_argument("--op", choices=parity_ops.OPS, default="backward",
                   help="what to judge: 'backward' (the NumPy forward's statistics into the backend's "
                        "backward; default), 'forward' (the backend's forward: attention_out and "
                        "statistics) or 'roundtrip' (the backend's forward fed to its backward; "
                        "all eight outputs). Criteria: docs/forward.md")
    p.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                   help="run the backend under test N times per case on the same inputs and "
                        "report whether its outputs were bit-identical (default: 1)")
    _add_report_arguments(p)     # --json/--report, --junit, --compare, --backend-module, --repro
    p.add_argument("-v", "--verbose", action="store_true", help="one table row per output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _selection(args) -> dict:
    tags = [t.strip() for group in args.tags for t in group.split(",") if t.strip()]
    if args.quick:
        tags.append("quick")
    return {"tags": tags, "names": list(args.case), "all": bool(args.all)}


def main(args) -> int:
    """The ``parity`` subcommand (``args`` from ``add_arguments``)."""
    problem = usage_problem(args)
    if problem:
        print(f"aclnn-fag parity: {problem}", file=sys.stderr)
        return 2
    from .report_cli import prepare_html
    if prepare_html(args, "aclnn-fag parity"):      # before any work: destination, matplotlib
        return 2
    if compare_requested(args):
        return run_compare(args)
    backend_fn, problem = load_backend_fn(args)
    if not problem and args.op != "backward" and (backend_fn is not None or args.repro):
        problem = f"--op {args.op} judges the package's own forward: it does not go with " + (
            "--backend-module" if backend_fn is not None else "--repro")
    if problem:
        print(f"aclnn-fag parity: {problem}", file=sys.stderr)
        return 2
    try:
        suite = cases_mod.load_suite(args.suite)
    except cases_mod.SuiteError as exc:
        print(f"aclnn-fag parity: {exc}", file=sys.stderr)
        return 2
    sel = _selection(args)
    specs = cases_mod.select_cases(suite, tags=sel["tags"], names=sel["names"], include_all=sel["all"])
    if args.list:
        for s in specs:
            print(f"{s.name:<32s} T={s.t1:<6d} N={s.heads}/{s.n2} D={s.d}+{s.d_rope} Dv={s.dv} "
                  f"mode={s.sparse_mode} tags={','.join(s.tags)}")
        return 0
    if not specs:
        print(f"aclnn-fag parity: no case of {suite.path} matches the selection {sel}", file=sys.stderr)
        return 2
    if not (math.isfinite(args.k) and args.k > 0):          # args built without the parser
        print(f"aclnn-fag parity: --k must be a finite number > 0, got {args.k}", file=sys.stderr)
        return 2
    try:
        if backend_fn is None:
            resolve_backend(args.backend, args.precision)      # fail early when it cannot run
    except Exception as exc:
        print(f"aclnn-fag parity: {exc}", file=sys.stderr)
        return 2
    report = run_suite(specs, backend=args.backend, precision=args.precision, k=args.k,
                       backend_fn=backend_fn, progress=None if args.quiet else sys.stderr,
                       suite=suite, selection=sel, op=args.op, repeat=args.repeat)
    return finish(report, format_table(report, verbose=args.verbose), args, specs,
                             backend_fn)
