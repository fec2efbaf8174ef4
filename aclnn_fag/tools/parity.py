"""``aclnn-fag parity``: run a case suite on a backend and judge every output against the fp64
golden and the NumPy device-precision reference (docs/parity.md; ``--op``: docs/forward.md)."""

from __future__ import annotations

import datetime
import time
import traceback
import warnings
from typing import Callable, Dict, Optional

import numpy as np

from . import accuracy, cases as cases_mod, error_summary
from ..api import flash_attention_unpadding_score_grad_v3, resolve_backend
from ..call import FagForward, FagGrads
from ..constants import FLT_MAX
from .envinfo import backend_label, environment
from .output import figure

__all__ = ["make_backend_fn", "run_case", "run_suite", "format_table", "REPORT_SCHEMA", "OPS",
           "OUTPUTS_BY_OP", "golden_grads", "reference_grads"]

REPORT_SCHEMA = "aclnn_fag.parity_report/1"
OPS = ("backward", "forward", "roundtrip")
OUTPUTS_BY_OP = {"backward": FagGrads._fields, "forward": FagForward._fields,
                 "roundtrip": FagForward._fields + FagGrads._fields}
BackendFn = Callable[..., FagGrads]
SELF_CHECK_NOTE = ("SELF-CHECK: the backend under test is the NumPy reference itself (ratio 1.00 by "
                   "construction); this run tests the reference against the fp64 golden, not a "
                   "device. Use --backend npu on an Ascend host.")


def make_backend_fn(backend: str = "auto", precision: str = "device") -> BackendFn:
    """The backend under test (the backward's keyword arguments -> FagGrads), carrying
    ``backend_name`` and ``precision``; raises when ``backend`` cannot run here."""
    name = resolve_backend(backend, precision)

    def run(**kwargs) -> FagGrads:
        return flash_attention_unpadding_score_grad_v3(**kwargs, backend=name, precision=precision)

    run.backend_name = name
    run.precision = precision
    return run


def under_test(backend_fn, backend: str, precision: str) -> tuple:
    """(``backend_fn`` or ``make_backend_fn(backend, precision)``, its name); the function is
    None for the NumPy backend in device precision: it *is* the reference (a self-check)."""
    if backend_fn is not None:
        return backend_fn, getattr(backend_fn, "backend_name", "custom")
    fn = make_backend_fn(backend, precision)
    return (None if fn.backend_name == "numpy" and precision == "device" else fn), fn.backend_name


def golden_grads(**kwargs) -> FagGrads:
    return flash_attention_unpadding_score_grad_v3(**kwargs, backend="numpy", precision="fp64")


def reference_grads(**kwargs) -> FagGrads:
    return flash_attention_unpadding_score_grad_v3(**kwargs, backend="numpy", precision="device")


def _backend_outputs(op: str, inputs: dict, ref_fwd, backend_fn, timed=None,
                     stage=lambda what: None) -> dict:
    """The outputs of ``op`` from the backend under test (not None); ``timed`` records times."""
    timed = timed or (lambda label, fn, /, *args, **kwargs: fn(*args, **kwargs))
    name = getattr(backend_fn, "backend_name", None) or "custom"
    out, fwd = {}, ref_fwd
    if op != "backward":
        stage(f"forward ({name})")
        fwd = timed("backend_forward_s", cases_mod.forward, inputs, name,
                    getattr(backend_fn, "precision", "device"))
        out.update(fwd._asdict())
    if op != "forward":
        stage(f"backend ({name})" if op == "backward" else f"backward ({name}) on its own forward")
        out.update(timed("backend_s", backend_fn, **cases_mod.with_stats(inputs, fwd))._asdict())
    return out


def _judge_stats(name: str, y, g, r, golden_max, k: float) -> dict:
    """Statistics: invalid lines exact, the rest by both criteria (float32 thresholds)."""
    y, g, r = (np.ravel(np.asarray(a)) for a in (y, g, r))
    invalid = np.ravel(np.asarray(golden_max)) <= -FLT_MAX
    if y.shape != g.shape:
        return accuracy.judge(y, g, r, k=k)
    res = accuracy.judge(y[~invalid], g[~invalid], r[~invalid], k=k,
                         thresholds=accuracy.thresholds_for(np.dtype(np.float32)))
    res["shape"] = list(np.shape(g))
    res["invalid_lines"] = int(np.count_nonzero(invalid)) // 8
    want = -FLT_MAX if name == "softmax_max" else FLT_MAX
    wrong = int(np.count_nonzero(y[invalid].astype(np.float64) != want))
    if wrong:
        res.update(verdict="FAIL", problem=f"{wrong} invalid-line elements are not {want:g}")
    return res


def judge_outputs(op: str, result: dict, golden: dict, reference: dict,
                  k: float = accuracy.DEFAULT_K) -> Dict[str, dict]:
    """Each output of ``op`` judged (accuracy.judge; the statistics as _judge_stats)."""
    out = {}
    for name in OUTPUTS_BY_OP[op]:
        if name in ("softmax_max", "softmax_sum"):
            out[name] = _judge_stats(name, result[name], golden[name], reference[name],
                                     golden["softmax_max"], k)
        else:
            out[name] = accuracy.judge(result[name], golden[name], reference[name], k=k)
    return out


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
        self.elapsed += seconds
        eta = self.elapsed / max(self.index, 1) * (self.total - self.index)
        prefix = "\r\033[K" if self.tty else ""
        self.stream.write(f"{prefix}[{self.index:>{len(str(self.total))}}/{self.total}] "
                          f"{self.name:<32s} {verdict:<5s} {seconds:7.2f} s  (ETA {eta:.0f} s)"
                          f"{('  ' + detail) if detail else ''}\n")
        self.stream.flush()


def _bits(a) -> bytes:
    a = np.ascontiguousarray(np.asarray(a))
    return a.dtype.str.encode() + repr(a.shape).encode() + a.tobytes()


def _repeat_check(first: dict, again: Callable[[], dict], runs: int) -> dict:
    """Run the backend ``runs - 1`` more times: which outputs ever differed in any bit."""
    ref = {n: _bits(v) for n, v in first.items() if v is not None}
    differing: dict = {}
    for _ in range(runs - 1):
        for n, v in again().items():
            if n in ref and _bits(v) != ref[n]:
                differing[n] = differing.get(n, 0) + 1
    return {"runs": runs, "bit_identical": not differing, "differing_runs": differing}


def run_case(spec, backend_fn: Optional[BackendFn], k: float = accuracy.DEFAULT_K,
             progress: Optional[_Progress] = None, op: str = "backward", repeat: int = 1) -> dict:
    """Run and judge one case. ``backend_fn=None``: the NumPy reference itself (computed once);
    ``repeat`` > 1: ``entry["repeat"]`` says whether the backend's outputs were bit-identical."""
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
            stage("forward (numpy, device)")
            ref_fwd = timed("forward_s", cases_mod.forward, inputs, "numpy", "device")
            golden, reference = {}, {}
            if op != "backward":
                stage("forward golden (numpy, fp64)")
                golden.update(timed("forward_golden_s", cases_mod.forward, inputs, "numpy",
                                    "fp64")._asdict())
                reference.update(ref_fwd._asdict())
            if op != "forward":
                bwd_inputs = cases_mod.with_stats(inputs, ref_fwd)
                stage("golden (numpy, fp64)")
                golden.update(timed("golden_s", golden_grads, **bwd_inputs)._asdict())
                stage("reference (numpy, device)")
                reference.update(timed("reference_s", reference_grads, **bwd_inputs)._asdict())
            if backend_fn is None:
                result = dict(reference)
                entry["backend_reused_reference"] = True
                timings["backend_s"] = timings.get("reference_s", timings["forward_s"])
            else:
                result = _backend_outputs(op, inputs, ref_fwd, backend_fn, timed, stage)
                timings["backend_s"] = (timings.get("backend_forward_s", 0.0)
                                        + timings.get("backend_s", 0.0))
            stage("judging")
            entry["outputs"] = judge_outputs(op, result, golden, reference, k=k)
            error_summary.attach(entry["outputs"], result, golden, reference, inputs)
            failed = [n for n, o in entry["outputs"].items() if o["verdict"] != "PASS"]
            entry["verdict"] = "FAIL" if failed else "PASS"
            entry["failed_outputs"] = failed
            if repeat > 1:
                stage(f"repeat x{repeat}")
                entry["repeat"] = _repeat_check(result, lambda: dict(reference) if backend_fn is None
                                                else _backend_outputs(op, inputs, ref_fwd, backend_fn),
                                                repeat)
        except KeyboardInterrupt:
            raise
        # one broken case must not stop the suite: nor may a backend's SystemExit(0) (or any
        # other BaseException) end the run with exit status 0 and no table
        except BaseException as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=6)
    entry["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return entry


def run_suite(specs, backend: str = "auto", precision: str = "device", k: float = accuracy.DEFAULT_K,
              backend_fn: Optional[BackendFn] = None, progress=None, suite=None,
              selection: Optional[dict] = None, op: str = "backward", repeat: int = 1) -> dict:
    """Run ``specs`` (CaseSpec list) on ``under_test(backend_fn, backend, precision)``; the
    report dict. ``progress``: a stream for progress lines, or None."""
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    fn, backend_name = under_test(backend_fn, backend, precision)
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
            bar.done(entry["verdict"], time.perf_counter() - c0,
                     entry["error"] or ", ".join(entry.get("failed_outputs", [])))
    counts = {v: sum(1 for r in results if r["verdict"] == v) for v in ("PASS", "FAIL", "ERROR")}
    return {
        "schema": REPORT_SCHEMA,
        "ok": bool(results) and counts["PASS"] == len(results),
        "summary": {"cases": len(results), "passed": counts["PASS"], "failed": counts["FAIL"],
                    "errors": counts["ERROR"],
                    "outputs_judged": sum(len(r["outputs"]) for r in results)},
        "backend": backend_name, "op": op, "repeat": repeat, "outputs": list(OUTPUTS_BY_OP[op]),
        "precision": precision,
        "self_check": backend_name == "numpy" and precision == "device",
        "criteria": accuracy.criteria_description(k),
        "environment": environment(backend_name, precision),
        "suite": {"path": getattr(suite, "path", None), "sha256": getattr(suite, "raw_sha256", None),
                  "description": getattr(suite, "description", None),
                  "selection": selection or {}, "cases": [s.name for s in specs]},
        "started": started.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "cases": results,
    }


def format_table(report: dict, verbose: bool = False) -> str:
    """A text table: a row per case (worst output) or per output; failing outputs always."""
    head = (f"{'case':<32s} {'output':<13s} {'max_abs_err':>11s} {'ref_err':>9s} {'ratio':>6s} "
            f"{'share>rtol':>10s} {'ref_share':>9s} {'time_s':>7s} verdict")
    lines = [head, "-" * len(head)]
    for case in report["cases"]:
        outs = case["outputs"]
        t = figure(case["timings"].get("backend_s"), "7.3f")
        if not outs:
            lines.append(f"{case['name']:<32s} {'-':<13s} {'':>11s} {'':>9s} {'':>6s} {'':>10s} "
                         f"{'':>9s} {t:>7s} {case['verdict']}  {case['error'] or ''}")
            continue
        rows = list(outs.items())
        if not verbose and case["verdict"] == "PASS":
            worst = max(rows, key=lambda kv: accuracy.budget_used(kv[1]))[0]
            rows = [(f"worst:{worst}", outs[worst])]
        for i, (name, o) in enumerate(rows):
            lines.append(f"{case['name'] if i == 0 else '':<32s} {name:<13s} "
                         f"{figure(o.get('max_abs_err')):>11s} {figure(o.get('ref_max_abs_err')):>9s} "
                         f"{figure(o.get('fa_ratio'), '6.2f'):>6s} "
                         f"{figure(o.get('share_above'), '.1e'):>10s} "
                         f"{figure(o.get('ref_share_above'), '.1e'):>9s} {t if i == 0 else '':>7s} "
                         f"{o['verdict'] if len(rows) > 1 or verbose else case['verdict']}"
                         f"{'  ' + o['problem'] if o.get('problem') else ''}")
    s = report["summary"]
    lines.append("-" * len(head))
    if report.get("self_check"):
        lines.append(SELF_CHECK_NOTE)
    env = report.get("environment") or {}
    label = backend_label(report["backend"], env) if env.get("stand_in") else report["backend"]
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
