"""What ``aclnn-fag parity --op`` judges: the backward alone (``backward``, the default), the
forward alone (``forward``) or the device round trip (``roundtrip``). docs/forward.md,
"Parity of the forward and of the round trip", gives the criteria; this module runs the
pipelines and judges their outputs (:mod:`aclnn_fag.tools.parity` runs the suite).

* ``backward``: the NumPy forward's statistics (device precision) into the backward under test;
  the five gradients judged against the fp64 golden backward on the same inputs.
* ``forward``: the forward under test; ``attention_out`` (bf16) and the statistics judged
  against the fp64 NumPy forward, the NumPy device-precision forward as the reference.
* ``roundtrip``: the forward under test, its ``attention_out`` and statistics fed to the
  backward under test; judged: the three forward outputs (as in ``forward``) and the five
  gradients against the golden/reference of ``backward``. So the backend's whole pipeline must
  stay within k times the error of the NumPy device-precision pipeline.

Statistics: rows that keep no key are the device's invalid lines (max = -FLT_MAX,
sum = FLT_MAX); they must match the golden exactly and are left out of the numeric criteria
(their FLT_MAX would swamp the error scale). Every other element is judged by both criteria
with the float32 thresholds.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from . import accuracy
from ..api import flash_attention_forward, flash_attention_unpadding_score_grad_v3
from ..call import FagForward, FagGrads
from ..constants import FLT_MAX

__all__ = ["OPS", "OUTPUTS_BY_OP", "FORWARD_OUTPUTS", "run_pipelines", "judge_outputs"]

OPS = ("backward", "forward", "roundtrip")
FORWARD_OUTPUTS = FagForward._fields          # attention_out, softmax_max, softmax_sum
OUTPUTS_BY_OP = {"backward": FagGrads._fields, "forward": FORWARD_OUTPUTS,
                 "roundtrip": FORWARD_OUTPUTS + FagGrads._fields}
FORWARD_KEYS = ("query", "query_rope", "key", "key_rope", "value", "atten_mask",
                "actual_seq_qlen", "actual_seq_kvlen", "scale_value", "pre_tokens",
                "next_tokens", "sparse_mode", "deterministic")


def _forward(inputs: dict, backend: str, precision: str) -> FagForward:
    return flash_attention_forward(**{k: inputs[k] for k in FORWARD_KEYS if k in inputs},
                                   backend=backend, precision=precision)


def _with_stats(inputs: dict, fwd: FagForward) -> dict:
    """The backward's inputs from a forward's results: float32 statistics and attention_in in
    the query's dtype (an fp32/fp64 NumPy forward under test is rounded to them, as the op's
    types require)."""
    out = dict(inputs)
    out.update(attention_in=np.asarray(fwd.attention_out).astype(inputs["query"].dtype, copy=False),
               softmax_max=np.asarray(fwd.softmax_max, np.float32),
               softmax_sum=np.asarray(fwd.softmax_sum, np.float32))
    return out


def _backward(inputs: dict, backend: str, precision: str) -> FagGrads:
    return flash_attention_unpadding_score_grad_v3(**inputs, backend=backend, precision=precision)


def run_pipelines(op: str, inputs: dict, backend: Optional[str], precision: str,
                  timed: Callable, stage: Callable) -> tuple:
    """(result, golden, reference), each a dict output name -> array, for ``op`` on the
    backward's inputs without forward results (``cases.make_inputs``). ``backend`` None: the
    NumPy device-precision backend (the result is the reference)."""
    stage("forward reference (numpy, device)")
    ref_fwd = timed("forward_s", _forward, inputs, "numpy", "device")
    golden, reference, result = {}, {}, {}
    stage("forward golden (numpy, fp64)")
    gold_fwd = timed("forward_golden_s", _forward, inputs, "numpy", "fp64")
    golden.update(gold_fwd._asdict())
    reference.update(ref_fwd._asdict())
    if backend is None:
        res_fwd = ref_fwd
    else:
        stage(f"forward ({backend})")
        res_fwd = timed("backend_forward_s", _forward, inputs, backend, precision)
    result.update(res_fwd._asdict())
    if op == "forward":
        return result, golden, reference
    # roundtrip: golden and reference gradients as in "backward" (the NumPy forward's stats)
    bwd_in = _with_stats(inputs, ref_fwd)
    stage("golden (numpy, fp64)")
    golden.update(timed("golden_s", _backward, bwd_in, "numpy", "fp64")._asdict())
    stage("reference (numpy, device)")
    reference.update(timed("reference_s", _backward, bwd_in, "numpy", "device")._asdict())
    if backend is None:
        result.update({k: reference[k] for k in FagGrads._fields})
    else:
        stage(f"backward ({backend}) on its own forward")
        result.update(timed("backend_s", _backward, _with_stats(inputs, res_fwd), backend,
                            precision)._asdict())
    return result, golden, reference


def backend_outputs(op: str, inputs: dict, backend: str, precision: str) -> dict:
    """The backend's own outputs of ``op`` once more (no golden, no reference): what
    ``parity --repeat`` compares run to run."""
    fwd = _forward(inputs, backend, precision)
    out = dict(fwd._asdict())
    if op == "roundtrip":
        out.update(_backward(_with_stats(inputs, fwd), backend, precision)._asdict())
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
    """Each output of ``op`` judged (accuracy.judge; statistics as _judge_stats)."""
    out = {}
    for name in OUTPUTS_BY_OP[op]:
        if name in ("softmax_max", "softmax_sum"):
            out[name] = _judge_stats(name, result[name], golden[name], reference[name],
                                     golden["softmax_max"], k)
        else:
            out[name] = accuracy.judge(result[name], golden[name], reference[name], k=k)
    return out
