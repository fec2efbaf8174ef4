"""``aclnn-fag parity``: run a case suite on a backend and judge every output.

For each case the inputs are drawn from its seed (``aclnn_fag.tools.cases``), the NumPy forward
(device precision) supplies attention_in and the softmax statistics, and then three backward
runs get identical inputs:

* the **golden**: the NumPy backend in precision "fp64";
* the **reference**: the NumPy backend in precision "device" (the device's rounding points);
* the **backend** under test (``--backend``; or any ``backend_fn`` given to ``run_suite``).

Every output (dq, dq_rope, dk, dk_rope, dv) is judged by ``aclnn_fag.tools.accuracy.judge``:
flash-attention's criterion (max abs error <= k x the reference's, plus a tiny floor) and
Ascend's double-thousandths with per-dtype thresholds (bf16: share of elements with
|y - g| / max(|g|, RMS(g)) > 2**-6 below 1e-3). See ``aclnn_fag.tools.accuracy`` for the
thresholds and why. A case passes when all its outputs pass; an exception is an ERROR (any
exception but KeyboardInterrupt: a backend raising SystemExit errs its case, the run goes on).

When the backend under test is the NumPy backend in device precision, its result *is* the
reference, so it is computed once (it passes criterion 1 trivially and criterion 2 by the
thresholds' design; the run still checks the suite and the criteria end to end).

The JSON report (``--json FILE``, ``-`` = stdout; ``--report FILE`` is the old spelling; none by
default; JUnit, comparison and reproducers: ``aclnn_fag.tools.parity_cli``; schema
``aclnn_fag.parity_report/1``) holds per case the exact arguments, shapes, dtypes and seed,
the timings, the warnings raised, and per output the metrics of ``accuracy.judge``; plus the
environment (package version, backend, library paths, numpy version, ...) and the criteria.

Exit status of the command: 0 all passed, 1 any case failed or errored, 2 usage errors (bad
suite file, no case selected, backend unavailable).
"""

from __future__ import annotations

import datetime
import json
import math
import time
import traceback
import warnings
from typing import Callable, Optional

import numpy as np

from . import accuracy, cases as cases_mod, error_summary, parity_ops
from ..api import flash_attention_unpadding_score_grad_v3, resolve_backend
from ..call import FagGrads
from .envinfo import environment

__all__ = ["make_backend_fn", "run_case", "run_suite", "format_table", "write_report",
           "REPORT_SCHEMA", "OUTPUTS"]

REPORT_SCHEMA = "aclnn_fag.parity_report/1"
OUTPUTS = FagGrads._fields
BackendFn = Callable[..., FagGrads]
SELF_CHECK_NOTE = ("SELF-CHECK: the backend under test is the NumPy reference itself (ratio 1.00 by "
                   "construction); this run tests the reference against the fp64 golden, not a "
                   "device. Use --backend npu on an Ascend host.")


def make_backend_fn(backend: str = "auto", precision: str = "device") -> BackendFn:
    """The backend under test as a function of the backward's keyword arguments.

    Raises BackendUnavailableError (or ValueError) when ``backend`` cannot run here. The
    returned function carries the resolved name in ``.backend_name``."""
    name = resolve_backend(backend, precision)

    def run(**kwargs) -> FagGrads:
        return flash_attention_unpadding_score_grad_v3(**kwargs, backend=name, precision=precision)

    run.backend_name = name
    run.precision = precision
    return run


def golden_grads(**kwargs) -> FagGrads:
    return flash_attention_unpadding_score_grad_v3(**kwargs, backend="numpy", precision="fp64")


def reference_grads(**kwargs) -> FagGrads:
    return flash_attention_unpadding_score_grad_v3(**kwargs, backend="numpy", precision="device")


class _Progress:
    """Progress lines on a stream (stderr): one line per case, stage updates on a TTY."""

    def __init__(self, stream, total: int):
        self.stream, self.total = stream, total
        self.tty = bool(stream) and hasattr(stream, "isatty") and stream.isatty()
        self.index, self.name = 0, ""
        self.elapsed = 0.0            # seconds of the cases done, for the ETA

    def start(self, index: int, name: str):
        self.index, self.name = index, name
        self.stage("inputs")

    def stage(self, what: str):
        if self.stream and self.tty:
            self.stream.write(f"\r\033[K[{self.index}/{self.total}] {self.name}: {what} ...")
            self.stream.flush()

    def done(self, verdict: str, seconds: float, detail: str = ""):
        if not self.stream:
            return
        prefix = "\r\033[K" if self.tty else ""
        width = len(str(self.total))
        self.elapsed += seconds
        eta = self.elapsed / max(self.index, 1) * (self.total - self.index)
        self.stream.write(f"{prefix}[{self.index:>{width}}/{self.total}] {self.name:<32s} "
                          f"{verdict:<5s} {seconds:7.2f} s  (ETA {eta:.0f} s)"
                          f"{('  ' + detail) if detail else ''}\n")
        self.stream.flush()


def _bits(a) -> bytes:
    a = np.ascontiguousarray(np.asarray(a))
    return a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes()


def _repeat_check(first: dict, again: Callable[[], dict], runs: int) -> dict:
    """Run the backend ``runs - 1`` more times on the same inputs; which outputs ever differed
    from the first run in any bit (``parity --repeat``: a race or a non-deterministic
    accumulation shows here even when every run passes the criteria)."""
    ref = {n: _bits(v) for n, v in first.items() if v is not None}
    differing: dict = {}
    for _ in range(runs - 1):
        for n, v in again().items():
            if n in ref and _bits(v) != ref[n]:
                differing[n] = differing.get(n, 0) + 1
    return {"runs": runs, "bit_identical": not differing, "differing_runs": differing}


def run_case(spec, backend_fn: Optional[BackendFn], k: float = accuracy.DEFAULT_K,
             progress: Optional[_Progress] = None, op: str = "backward", repeat: int = 1) -> dict:
    """Run and judge one case. ``backend_fn=None`` means the NumPy device-precision backend
    (its result is the reference, computed once). ``op`` "forward"/"roundtrip"
    (:mod:`aclnn_fag.tools.parity_ops`): ``backend_fn`` is then only read for its
    ``backend_name``/``precision``. ``repeat`` > 1 runs the backend that many times in all and
    records in ``entry["repeat"]`` whether its outputs were bit-identical."""
    entry = {"name": spec.name, "tags": list(spec.tags), "note": spec.note, "verdict": "ERROR",
             "error": None, "backend": getattr(backend_fn, "backend_name", None) or
             ("numpy" if backend_fn is None else "custom"), "timings": {}, "warnings": [],
             "outputs": {}}
    timings = entry["timings"]
    stage = progress.stage if progress else (lambda what: None)

    def timed(label, fn, /, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[label] = time.perf_counter() - t0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            inputs = timed("inputs_s", cases_mod.make_inputs, spec)
            entry.update(cases_mod.case_arguments(spec, inputs))
            if op != "backward":
                result, golden, reference = parity_ops.run_pipelines(
                    op, inputs, None if backend_fn is None else entry["backend"],
                    getattr(backend_fn, "precision", "device"), timed, stage)
                if backend_fn is None:
                    entry["backend_reused_reference"] = True
                    timings["backend_s"] = timings.get("reference_s", timings["forward_s"])
                else:
                    timings["backend_s"] = (timings.get("backend_forward_s", 0.0)
                                            + timings.get("backend_s", 0.0))
                stage("judging")
                entry["outputs"] = parity_ops.judge_outputs(op, result, golden, reference, k=k)
                error_summary.attach(entry["outputs"], result, golden, reference, inputs)
            else:
                stage("forward (numpy, device)")
                inputs = timed("forward_s", cases_mod.with_forward, inputs)
                stage("golden (numpy, fp64)")
                golden = timed("golden_s", golden_grads, **inputs)
                stage("reference (numpy, device)")
                reference = timed("reference_s", reference_grads, **inputs)
                if backend_fn is None:
                    result, timings["backend_s"] = reference, timings["reference_s"]
                    entry["backend_reused_reference"] = True
                else:
                    stage(f"backend ({entry['backend']})")
                    result = timed("backend_s", backend_fn, **inputs)
                stage("judging")
                for name in OUTPUTS:
                    entry["outputs"][name] = accuracy.judge(getattr(result, name),
                                                            getattr(golden, name),
                                                            getattr(reference, name), k=k)
                error_summary.attach(entry["outputs"], result, golden, reference, inputs)
            failed = [n for n, o in entry["outputs"].items() if o["verdict"] != "PASS"]
            entry["verdict"] = "FAIL" if failed else "PASS"
            entry["failed_outputs"] = failed
            if repeat > 1:
                stage(f"repeat x{repeat}")
                entry["repeat"] = _repeat_check(
                    result if isinstance(result, dict) else result._asdict(),
                    _again(op, inputs, backend_fn, entry["backend"]), repeat)
        except KeyboardInterrupt:
            raise
        # one broken case must not stop the suite: nor may a backend's SystemExit(0) (or any
        # other BaseException) end the run with exit status 0 and no table
        except BaseException as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=6)
    entry["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return entry


def _again(op: str, inputs: dict, backend_fn: Optional[BackendFn], backend: str) -> Callable:
    """One more run of the backend under test on ``inputs``, as a dict of outputs."""
    if op != "backward":
        precision = getattr(backend_fn, "precision", "device")
        name = "numpy" if backend_fn is None else backend
        return lambda: parity_ops.backend_outputs(op, inputs, name, precision)
    fn = backend_fn or reference_grads
    return lambda: fn(**inputs)._asdict()


def run_suite(specs, backend: str = "auto", precision: str = "device", k: float = accuracy.DEFAULT_K,
              backend_fn: Optional[BackendFn] = None, progress=None, suite=None,
              selection: Optional[dict] = None, op: str = "backward", repeat: int = 1) -> dict:
    """Run ``specs`` (CaseSpec list) and return the report dict.

    The backend under test is ``backend_fn`` when given (called with the backward's keyword
    arguments, returning FagGrads; its ``backend_name`` attribute, if any, is reported),
    else ``make_backend_fn(backend, precision)``. ``progress``: a stream (e.g. sys.stderr)
    for progress lines, or None."""
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    if backend_fn is None:
        fn = make_backend_fn(backend, precision)
        backend_name = fn.backend_name
        if backend_name == "numpy" and precision == "device":
            fn = None                                      # identical to the reference
    else:
        fn = backend_fn
        backend_name = getattr(backend_fn, "backend_name", "custom")
    # The NumPy backend in device precision *is* the reference: such a run checks the suite
    # and the criteria end to end (and the reference against the fp64 golden), not a device.
    self_check = backend_name == "numpy" and precision == "device"
    specs = list(specs)
    bar = _Progress(progress, len(specs)) if progress else None
    results = []
    for i, spec in enumerate(specs, 1):
        if bar:
            bar.start(i, spec.name)
        c0 = time.perf_counter()
        entry = run_case(spec, fn, k=k, progress=bar, op=op, repeat=repeat)
        if fn is None:
            entry["backend"] = backend_name
        results.append(entry)
        if bar:
            detail = entry["error"] or ", ".join(entry.get("failed_outputs", []))
            bar.done(entry["verdict"], time.perf_counter() - c0, detail)
    counts = {v: sum(1 for r in results if r["verdict"] == v) for v in ("PASS", "FAIL", "ERROR")}
    report = {
        "schema": REPORT_SCHEMA,
        "ok": bool(results) and counts["PASS"] == len(results),
        "summary": {"cases": len(results), "passed": counts["PASS"], "failed": counts["FAIL"],
                    "errors": counts["ERROR"],
                    "outputs_judged": sum(len(r["outputs"]) for r in results)},
        "backend": backend_name,
        "op": op,
        "repeat": repeat,
        "outputs": list(parity_ops.OUTPUTS_BY_OP[op]),
        "precision": precision,
        "self_check": self_check,
        "criteria": accuracy.criteria_description(k),
        "environment": environment(backend_name, precision),
        "suite": {"path": getattr(suite, "path", None), "sha256": getattr(suite, "raw_sha256", None),
                  "description": getattr(suite, "description", None),
                  "selection": selection or {}, "cases": [s.name for s in specs]},
        "started": started.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "cases": results,
    }
    return report


# --------------------------------------------------------------------------- output
def _fmt(x, spec=".2e"):
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def _badness(o: dict) -> float:
    """How close an output came to failing: the larger of its two criteria's usage (1 = limit)."""
    fa = (o.get("max_abs_err") or 0.0) / o["fa_bound"] if o.get("fa_bound") else 0.0
    dt = (o.get("share_above") or 0.0) / o["share_limit"] if o.get("share_limit") else 0.0
    return max(fa, dt)


def format_table(report: dict, verbose: bool = False) -> str:
    """A text table: one row per case (worst output), or per output with ``verbose``;
    the outputs of failing cases are always listed."""
    head = (f"{'case':<32s} {'output':<13s} {'max_abs_err':>11s} {'ref_err':>9s} {'ratio':>6s} "
            f"{'share>rtol':>10s} {'ref_share':>9s} {'time_s':>7s} verdict")
    lines = [head, "-" * len(head)]
    for case in report["cases"]:
        outs = case["outputs"]
        t = case["timings"].get("backend_s")
        if not outs:
            lines.append(f"{case['name']:<32s} {'-':<13s} {'':>11s} {'':>9s} {'':>6s} {'':>10s} "
                         f"{'':>9s} {_fmt(t, '7.3f'):>7s} {case['verdict']}  {case['error'] or ''}")
            continue
        rows = list(outs.items())
        if not verbose and case["verdict"] == "PASS":
            worst = max(rows, key=lambda kv: _badness(kv[1]))[0]
            rows = [(f"worst:{worst}", outs[worst])]
        for i, (name, o) in enumerate(rows):
            label = case["name"] if i == 0 else ""
            time_s = _fmt(t, "7.3f") if i == 0 else ""
            lines.append(f"{label:<32s} {name:<13s} {_fmt(o.get('max_abs_err')):>11s} "
                         f"{_fmt(o.get('ref_max_abs_err'), '.2e'):>9s} {_fmt(o.get('fa_ratio'), '6.2f'):>6s} "
                         f"{_fmt(o.get('share_above'), '.1e'):>10s} {_fmt(o.get('ref_share_above'), '.1e'):>9s} "
                         f"{time_s:>7s} {o['verdict'] if len(rows) > 1 or verbose else case['verdict']}"
                         f"{'  ' + o['problem'] if o.get('problem') else ''}")
    s = report["summary"]
    lines.append("-" * len(head))
    if report.get("self_check"):
        lines.append(SELF_CHECK_NOTE)
    from .envinfo import backend_label
    stand_in = (report.get("environment") or {})
    label = backend_label(report["backend"], stand_in) if stand_in.get("stand_in") else report["backend"]
    lines.append(f"{report.get('op', 'backward')} on backend {label} (precision {report['precision']}): "
                 f"{s['passed']}/{s['cases']} cases passed, {s['failed']} failed, {s['errors']} errors; "
                 f"criteria: max_abs_err <= {report['criteria']['flash_attention']['k']:g} x ref_err "
                 f"+ floor, and share>rtol below the dtype's limit (bf16: rtol 2^-6, limit 1e-3)")
    repeated = [c for c in report["cases"] if c.get("repeat")]
    if repeated:
        differ = [c for c in repeated if not c["repeat"]["bit_identical"]]
        lines.append(f"repeat x{report.get('repeat')}: {len(repeated) - len(differ)}/{len(repeated)} "
                     "cases bit-identical from run to run" + "".join(
                         f"\n  NOT bit-identical: {c['name']} ("
                         + ", ".join(f"{n} differed in {k} run(s)"
                                     for n, k in sorted(c["repeat"]["differing_runs"].items())) + ")"
                         for c in differ))
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict, path) -> None:
    """Write the report as strict JSON (non-finite floats become strings)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(_json_safe(report), fh, indent=1, allow_nan=False)
        fh.write("\n")
