"""``aclnn-fag parity ... --repro DIR``: a standalone C reproducer per failing case, shrunk
first unless ``--no-shrink`` (docs/parity.md, "4. Reproduce")."""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import List, Optional

import numpy as np

from ... import __version__
from ...acl.loader import ROLES
from ...call import device_int_array
from ...rules import validate_backward
from ...spec import BACKWARD_V3
from .. import accuracy, cases as cases_mod
from ..envinfo import summary as version_summary
from ..parity import golden_grads, reference_grads, run_case, under_test
from . import csource
from .shrink import DEFAULT_BUDGET, shrink as shrink_case

__all__ = ["write_reproducers", "write_case", "case_directory_name", "target_problem",
           "backend_under_test", "backend_error"]

JUDGED = ("dq", "dq_rope", "dk", "dk_rope", "dv")
README_VERSIONS = ("cann", "cann_source", "runtime", "ops_transformer", "cann_rules", "acl_api",
                   "toolkit_install", "driver", "soc", "opapi_library",
                   "aclnn_fag", "numpy", "ml_dtypes", "blas", "blas_threads", "python")


def case_directory_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def target_problem(path) -> Optional[str]:
    """Why ``path`` cannot become the reproducers' directory, or None."""
    p = pathlib.Path(path)
    for q in [p, *p.parents]:
        what = f"{q}" if q == p else f"its parent {q}"
        if q.is_symlink() and not q.exists():
            return f"{what} is a symbolic link to a missing target ({os.readlink(q)})"
        if q.exists():
            if q.is_dir():
                return None
            return f"{q} exists and is not a directory" if q == p else f"{what} is not a directory"
    return None


def backend_under_test(backend_fn, backend_name=None) -> tuple:
    """(name, whether it is aclnn_fag's own call of the C op, the "npu" backend) of the backend
    under test."""
    if backend_fn is None:
        return backend_name or "numpy", backend_name == "npu"
    name = getattr(backend_fn, "backend_name", None) or backend_name or "custom"
    module = getattr(backend_fn, "backend_module", None)
    return (f"{name} (--backend-module {module})" if module and module not in name else name,
            module is None and name == "npu")


def backend_error(entry: dict) -> bool:
    """True when a case errored in the backend under test (the validator accepted the call)."""
    t = entry.get("timings") or {}
    return entry.get("verdict") == "ERROR" and "reference_s" in t and "backend_s" in t


def _error_class(entry: dict) -> str:
    return str(entry.get("error") or "").split(":", 1)[0]


def _tensor_spec(a) -> Optional[dict]:
    if a is None:
        return None
    return {"shape": [int(d) for d in np.shape(a)], "dtype": a.dtype.name, "itemsize": a.itemsize}


def _write_bin(path: pathlib.Path, a) -> None:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(a.tobytes())


def write_case(out_dir, spec, *, backend_fn=None, k=accuracy.DEFAULT_K, environment=None,
               original=None, shrink_steps=(), shrink_runs=0, original_entry=None,
               backend_name=None) -> pathlib.Path:
    """Write ``out_dir/<case>/`` for ``spec`` (already shrunk); returns the directory."""
    inputs = cases_mod.with_forward(cases_mod.make_inputs(spec))
    call = validate_backward(**inputs)
    golden, reference = golden_grads(**inputs), reference_grads(**inputs)
    error = None
    try:
        result = reference if backend_fn is None else backend_fn(**inputs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:   # the backend raised on a valid call: reproduce the call
        result, error = reference, f"{type(exc).__name__}: {exc}"
    metrics = {n: accuracy.judge(getattr(result, n), getattr(golden, n), getattr(reference, n), k=k)
               for n in JUDGED}
    backend_name, c_op = backend_under_test(backend_fn, backend_name)
    d = pathlib.Path(out_dir) / case_directory_name(spec.name)
    d.mkdir(parents=True, exist_ok=True)
    in_specs = [_tensor_spec(getattr(call, slot, None)) for slot in BACKWARD_V3.inputs]
    for slot in BACKWARD_V3.inputs:
        if getattr(call, slot, None) is not None:
            _write_bin(d / "inputs" / f"{slot}.bin", getattr(call, slot))
    out_specs = [None if slot not in BACKWARD_V3.output_like else
                 {"shape": list(np.shape(getattr(call, BACKWARD_V3.output_like[slot]))),
                  "dtype": "bfloat16", "itemsize": 2} for slot in BACKWARD_V3.outputs]
    for name in JUDGED:
        _write_bin(d / "golden" / f"{name}.bin", np.asarray(getattr(golden, name), dtype=np.float32))
    # what the binding gives the device (the ends with the release's end-of-data padding)
    int_arrays = {n: (None if device_int_array(call, n) is None
                      else [int(v) for v in device_int_array(call, n)])
                  for n in BACKWARD_V3.int_arrays}
    attrs = {n: getattr(call, n) for n in BACKWARD_V3.attrs}
    criteria = {n: {key: metrics[n][key] for key in ("ref_max_abs_err", "rtol", "share_limit")}
                for n in JUDGED if "rtol" in metrics[n]}
    (d / "repro.c").write_text(csource.c_source(
        case=spec.name, version=__version__, inputs=in_specs, int_arrays=int_arrays, attrs=attrs,
        outputs=out_specs, deterministic=1 if call.deterministic else 0, criteria=criteria,
        k=k, floor_rel=accuracy.FA_FLOOR_REL, floor_min=accuracy.FA_FLOOR_MIN), encoding="utf-8")
    build = d / "build.sh"
    build.write_text(csource.build_script(ROLES["opapi"][0]), encoding="utf-8")
    os.chmod(build, 0o755)
    case_doc = {"case": spec.to_dict(), "original_case": (original or spec).to_dict(),
                "shrink_steps": list(shrink_steps),
                "arguments": {**attrs, **int_arrays, "deterministic": bool(call.deterministic)},
                "inputs": {n: s for n, s in zip(BACKWARD_V3.inputs, in_specs) if s is not None},
                "criteria": {"k": k, **criteria}, "backend_error": error,
                "backend_under_test": backend_name,
                "tests": "the C op, as aclnn_fag calls it" if c_op else
                         f"the C op only, not the backend the failure came from ({backend_name})",
                "python_verdicts": None if error else {n: metrics[n]["verdict"] for n in JUDGED}}
    (d / "case.json").write_text(json.dumps(case_doc, indent=1) + "\n", encoding="utf-8")
    readme = _readme(spec, original, shrink_steps, shrink_runs, metrics, attrs, int_arrays,
                     in_specs, call, environment, original_entry, k, backend_name, error, c_op)
    (d / "README.md").write_text(readme, encoding="utf-8")
    return d


C_OP_ONLY = """
## This program tests the C op only

The failure was found with `{name}`, not with aclnn_fag's own call of the C op. `repro.c` \
calls `aclnnFlashAttentionUnpaddingScoreGradV3` directly, with the arguments aclnn_fag \
passes: it tests the C op only. If it passes, the failure lies in the path of the backend \
under test (its conversion of the arguments, its binding, the framework around the op), \
which this program cannot show.
"""

RAISED = """The call raised `{error}` although the arguments pass aclnn_fag's validator \
(which mirrors the op's documented checks). repro.c prints the status code and \
`aclGetRecentErrMsg` and exits 2. Should the call succeed, repro.c judges the outputs as \
below; the NumPy reference's own figures for this input:

"""


def _readme(spec, original, steps, runs, metrics, attrs, int_arrays, in_specs, call, env,
            original_entry, k, backend_name, error=None, c_op=True) -> str:
    """README.md from the template aclnn_fag/tools/data/repro_README.md.in."""
    v = version_summary(env)
    who, which = (("`aclnnFlashAttentionUnpaddingScoreGradV3`", f" (backend under test: `{backend_name}`)")
                  if c_op else (f"The backend under test `{backend_name}`", ""))
    call_rows = [f"| {name} | " + ("NULL" if s is None else f"{s['dtype']} {s['shape']} (`inputs/{name}.bin`)")
                 + " |" for name, s in zip(BACKWARD_V3.inputs, in_specs)]
    call_rows += [f"| {name} | {'NULL' if vals is None else vals} |" for name, vals in int_arrays.items()]
    call_rows += [f"| {name} | {val!r} |" for name, val in attrs.items()]
    if original is None or original == spec:
        shrunk = ["Nothing: the case is the suite's case as it is (`--no-shrink`, or no smaller "
                  "variant failed)."]
    else:
        shrunk = [f"The suite's case `{original.name}` (lengths_q {list(original.lengths_q)}, "
                  f"lengths_kv {list(original.kv_lengths)}, heads {original.heads}/{original.n2}) was "
                  f"shrunk while it still failed ({runs} runs; the seed is kept, so the smaller "
                  "shapes get freshly drawn data):"]
        shrunk += [f"{i}. {s}" for i, s in enumerate(steps, 1)]
        shrunk.append(f"\nResult: lengths_q {list(spec.lengths_q)}, lengths_kv {list(spec.kv_lengths)}, "
                      f"heads {spec.heads}/{spec.n2}.")
        if original_entry and original_entry.get("failed_outputs"):
            shrunk.append(f"The original case failed on: {', '.join(original_entry['failed_outputs'])}.")
    return csource.template("repro_README.md.in").substitute(
        case=spec.name, version=__version__,
        finding=(f"{who} fails on this valid input{which}: `{error}`." if error else
                 f"{who} gives gradients that fail the parity criteria on this input{which}."),
        c_op_only="" if c_op else C_OP_ONLY.format(name=backend_name),
        versions="\n".join(f"| {key} | {v.get(key) if v.get(key) is not None else '-'} |"
                           for key in README_VERSIONS),
        call="\n".join(call_rows), deterministic=1 if call.deterministic else 0, seed=spec.seed,
        raised=RAISED.format(error=error) if error else "", k=f"{k:g}",
        figures="\n".join(f"| {name} | {o['max_abs_err']:.4e} | {o['fa_bound']:.4e} | "
                          f"{o['fa_ratio']:.2f} | {o['share_above']:.4e} | {o['share_limit']:.0e} | "
                          f"{o['verdict']} |" for name, o in metrics.items() if "max_abs_err" in o),
        shrunk="\n".join(shrunk))


def write_reproducers(report: dict, specs, out_dir, *, shrink: bool = True, backend_fn=None,
                      progress=None, budget: int = DEFAULT_BUDGET, errors=None) -> List[str]:
    """One reproducer per failing case; the directories written. A case is shrunk while it
    fails the same way (a FAIL on one of the same outputs, or the same exception class)."""
    k = (report.get("criteria") or {}).get("flash_attention", {}).get("k", accuracy.DEFAULT_K)
    by_name = {s.name: s for s in specs}
    fn = under_test(backend_fn, report.get("backend") or "auto",
                    report.get("precision") or "device")[0]
    written = []
    for entry in report["cases"]:
        if entry.get("name") not in by_name or not (entry.get("verdict") == "FAIL" or backend_error(entry)):
            continue
        original = by_name[entry["name"]]
        spec, steps, runs = original, [], 0
        if shrink:
            def still_fails(cand, entry=entry):
                got = run_case(cand, fn, k=k)
                if entry["verdict"] == "FAIL":
                    failed = set(entry.get("failed_outputs") or ())
                    return got["verdict"] == "FAIL" and (
                        not failed or bool(failed & set(got.get("failed_outputs") or ())))
                return backend_error(got) and _error_class(got) == _error_class(entry)
            spec, steps, runs = shrink_case(original, still_fails, budget)
        if progress:
            progress.write(f"repro: {original.name}: " + (f"shrunk in {runs} runs ({len(steps)} steps)"
                                                          if shrink else "not shrunk") + "\n")
        try:
            d = write_case(out_dir, spec, backend_fn=fn, k=k, environment=report.get("environment"),
                           original=original, shrink_steps=steps, shrink_runs=runs,
                           original_entry=entry, backend_name=report.get("backend"))
        except Exception as exc:        # one case must not cost the others their reproducer
            stream = errors or progress
            if stream:
                stream.write(f"repro: {original.name}: not written: {type(exc).__name__}: {exc}\n")
            continue
        written.append(str(d))
    return written
