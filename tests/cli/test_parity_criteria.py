"""The two parity criteria at their documented thresholds (docs/parity.md, "Criteria",
``aclnn_fag.tools.accuracy``), for every output dtype the thresholds table names.

Each scenario builds a synthetic (output y, golden g, reference r) triple whose errors sit
just inside (verdict PASS) or just outside (FAIL) exactly one threshold while the other
criterion holds with a wide margin:

* ``fa``: max|y - g| at 0.99 / 1.01 x (k x max|r - g| + 1e-6 x max|g|), for k = 2 and 3;
* ``rtol``: more elements than the share limit allows, each at 0.99 / 1.01 x rtol relative;
* ``share``: elements far above rtol, one fewer than / exactly as many as the share limit
  allows (the limit is strict: share < limit);
* ``floor``: elements much smaller than RMS(g), judged by |y - g| against rtol x RMS(g) at
  0.9 / 1.1 (a peak-based floor would pass the "outside" case, no floor would fail the
  "inside" one).

The expected verdict is computed here from the documented formulas, not from the package.
The same triples are then fed through the ``aclnn-fag parity`` command with the golden, the
reference and the backend replaced by the synthetic ones: the report's ``ok``, its counts
and the exit status must follow the verdict.
"""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest

from aclnn_fag.tools import accuracy, parity
from aclnn_fag.call import FagGrads

# the documented thresholds (docs/parity.md, "Criteria", accuracy module docstring)
DOCUMENTED = {
    "bfloat16": (2.0 ** -6, 1e-3),
    "float16": (2.0 ** -9, 1e-3),
    "float32": (1e-4, 1e-4),
    "float64": (1e-10, 1e-4),
}
DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16),
          "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
SCENARIOS = ("fa", "rtol", "share", "floor")
N = 20000


def _count_at_limit(n: int, limit: float) -> int:
    """The smallest count m with m / n >= limit (the first count that fails)."""
    m = 0
    while m / n < limit:
        m += 1
    return m


def synthetic(dtype_name: str, scenario: str, inside: bool, n: int = N, k: float = 2.0,
              seed: int = 0):
    """(y, g, r) for one scenario; y in the output dtype on its grid, g and r float64."""
    rtol, limit = DOCUMENTED[dtype_name]
    dt = DTYPES[dtype_name]
    rng = np.random.default_rng(seed)
    y = np.ones(n)                      # exactly representable in every dtype
    e = np.zeros(n)                     # y - g
    er = np.zeros(n)                    # r - g
    idx = rng.permutation(n)
    if scenario == "fa":
        # the reference's error R at one element, the backend's at another; both far below
        # rtol relative so the double-thousandths criterion holds whatever happens here
        big = rtol / 4
        er[idx[0]] = big
        g_peak = 1.0
        bound = k * big + 1e-6 * g_peak
        e[idx[1]] = (0.99 if inside else 1.01) * bound
    else:
        er[idx[0]] = 1.0                # a huge reference error: criterion 1 always holds
        m_fail = _count_at_limit(n, limit)
        if scenario == "rtol":
            chosen = idx[1:1 + m_fail + 5]
            rel = (0.99 if inside else 1.01) * rtol
            y[chosen] = 2.0
            e[chosen] = 2.0 * rel / (1 + rel)       # g = y / (1 + rel): |y-g|/|g| = rel
        elif scenario == "share":
            chosen = idx[1:1 + (m_fail - 1 if inside else m_fail)]
            y[chosen] = 2.0
            e[chosen] = 2.0 * (10 * rtol) / (1 + 10 * rtol)
        elif scenario == "floor":
            chosen = idx[1:1 + m_fail + 5]
            small = 2.0 ** -6                       # |g| far below RMS(g) ~ 1
            y[chosen] = small
            y[idx[-1]] = 8.0                        # peak 8 x RMS: a peak floor would be lax
            g_tmp = y.copy()
            rms = math.sqrt(float(np.mean(g_tmp ** 2)))
            e[chosen] = (0.9 if inside else 1.1) * rtol * rms
            # RMS of g = y - e moves by ~1e-6 relative: far inside the 10 % margin
        else:
            raise ValueError(scenario)
    y_arr = y.astype(dt)
    assert np.array_equal(y_arr.astype(np.float64), y)          # on the grid
    g = y - e
    r = g + er
    return y_arr, g, r


def documented_verdict(y, g, r, dtype_name: str, k: float = 2.0) -> dict:
    """Both criteria from their documented formulas (an independent re-statement)."""
    rtol, limit = DOCUMENTED[dtype_name]
    y64 = np.asarray(y, dtype=np.float64)
    fa = np.max(np.abs(y64 - g)) <= k * np.max(np.abs(r - g)) + 1e-6 * np.max(np.abs(g))
    rms = math.sqrt(float(np.mean(g * g)))
    rel = np.abs(y64 - g) / np.maximum(np.abs(g), rms)
    dt = np.count_nonzero(rel > rtol) / g.size < limit
    return {"fa": bool(fa), "dt": bool(dt)}


CASES = [(d, s, inside) for d in DTYPES for s in SCENARIOS for inside in (True, False)]


@pytest.mark.parametrize("dtype_name,scenario,inside", CASES)
def test_judge_at_each_threshold(dtype_name, scenario, inside):
    y, g, r = synthetic(dtype_name, scenario, inside)
    expected = documented_verdict(y, g, r, dtype_name)
    # the construction really sits on the intended side of the intended threshold only
    if scenario == "fa":
        assert expected == {"fa": inside, "dt": True}
    else:
        assert expected == {"fa": True, "dt": inside}
    got = accuracy.judge(y, g, r)
    assert got["dtype"] == dtype_name
    assert (got["rtol"], got["share_limit"]) == DOCUMENTED[dtype_name]
    assert got["fa_pass"] is expected["fa"], got
    assert got["dt_pass"] is expected["dt"], got
    assert got["verdict"] == ("PASS" if inside else "FAIL"), got


@pytest.mark.parametrize("k", [1.0, 3.0])
@pytest.mark.parametrize("inside", [True, False])
def test_fa_factor_k(k, inside):
    y, g, r = synthetic("bfloat16", "fa", inside, k=k)
    got = accuracy.judge(y, g, r, k=k)
    assert got["fa_pass"] is inside and got["k"] == k
    # the same output judged with the default k = 2 lands where the documented formula says
    assert accuracy.judge(y, g, r)["fa_pass"] is documented_verdict(y, g, r, "bfloat16")["fa"]


def test_reference_share_is_judged_by_the_reference_dtype():
    """ref_share_above uses the thresholds of the reference's own dtype (bf16 here)."""
    y, g, _ = synthetic("float32", "share", True)
    r = y.astype(np.float64).astype(DTYPES["bfloat16"])       # = 1.0 / 2.0 exactly
    rel = np.abs(r.astype(np.float64) - g) / np.maximum(np.abs(g),
                                                        math.sqrt(float(np.mean(g * g))))
    got = accuracy.judge(y, g, r)
    assert got["ref_share_above"] == np.count_nonzero(rel > 2.0 ** -6) / g.size


# ----------------------------------------------------------------------------- end to end
OUT_NAMES = FagGrads._fields
SHAPE_OF = {"dq": "query", "dq_rope": "query_rope", "dk": "key", "dk_rope": "key_rope",
            "dv": "value"}


class Synthetic:
    """Golden, reference and backend functions returning the synthetic triple of one
    scenario for every output of every case (``bad`` names the outputs that get the
    scenario's errors; the others get the 'inside' version)."""

    def __init__(self, dtype_name, scenario, inside, bad=("dk_rope",)):
        self.args = dtype_name, scenario, inside
        self.bad = bad
        self._cache = {}

    def _triple(self, name, shape):
        if (name, shape) not in self._cache:
            self._cache[name, shape] = self._make(name, shape)
        return self._cache[name, shape]

    def _make(self, name, shape):
        n = int(np.prod(shape))
        dtype_name, scenario, inside = self.args
        if name not in self.bad:
            inside = True
        y, g, r = synthetic(dtype_name, scenario, inside, n=max(n, 1),
                            seed=OUT_NAMES.index(name))
        return y.reshape(shape), g.reshape(shape), r.reshape(shape)

    def _grads(self, which, kwargs):
        return FagGrads(*(self._triple(n, kwargs[SHAPE_OF[n]].shape)[which] for n in OUT_NAMES))

    def golden(self, **kwargs):
        return self._grads(1, kwargs)

    def reference(self, **kwargs):
        return self._grads(2, kwargs)

    def backend(self, **kwargs):
        return self._grads(0, kwargs)


BIG_SUITE = {
    "schema": "aclnn_fag.suite/1",
    "description": "outputs of >= 10000 elements so one element is below every share limit",
    "defaults": {"d": 64, "d_rope": 64, "d_v": 64},
    "cases": [
        {"name": "big-a", "tags": ["quick"], "seed": 1, "lengths_q": [160], "heads": 1,
         "sparse_mode": 0, "mask": "zeros"},
        {"name": "big-b", "tags": ["quick"], "seed": 2, "lengths_q": [100, 60], "heads": 1,
         "sparse_mode": 3},
    ],
}


@pytest.fixture
def big_suite(tmp_path):
    path = tmp_path / "big_suite.json"
    path.write_text(json.dumps(BIG_SUITE), encoding="utf-8")
    return path


def _patch(monkeypatch, syn: Synthetic):
    monkeypatch.setattr(parity, "golden_grads", syn.golden)
    monkeypatch.setattr(parity, "reference_grads", syn.reference)

    def make_backend_fn(backend="auto", precision="device"):
        fn = syn.backend
        fn.__func__.backend_name = "synthetic"
        return fn
    monkeypatch.setattr(parity, "make_backend_fn", make_backend_fn)


@pytest.mark.parametrize("dtype_name,scenario,inside", CASES)
def test_report_ok_and_exit_status_follow_the_verdict(dtype_name, scenario, inside, big_suite,
                                                      numpy_only, run_cli, monkeypatch, tmp_path):
    syn = Synthetic(dtype_name, scenario, inside)
    _patch(monkeypatch, syn)
    path = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--suite", big_suite, "--report", path, "-q")
    assert code == (0 if inside else 1), out + err
    report = json.loads(path.read_text())
    assert report["ok"] is inside
    s = report["summary"]
    assert (s["passed"], s["failed"], s["errors"]) == ((2, 0, 0) if inside else (0, 2, 0))
    for case in report["cases"]:
        assert case["failed_outputs"] == ([] if inside else ["dk_rope"])
        assert case["outputs"]["dk_rope"]["dtype"] == dtype_name
    assert ("FAIL" in out) is (not inside)


@pytest.mark.parametrize("scenario", ["fa", "share"])
def test_cli_k_option_moves_the_fa_bound(scenario, big_suite, numpy_only, run_cli, monkeypatch):
    """--k 3 accepts an output at 1.01 x the k = 2 bound (fa); --k does not touch rule 2."""
    _patch(monkeypatch, Synthetic("bfloat16", scenario, False))
    code2, _, _ = run_cli("parity", "--suite", big_suite, "--report", "-", "-q")
    code3, _, _ = run_cli("parity", "--suite", big_suite, "--report", "-", "-q", "--k", "3")
    assert code2 == 1
    assert code3 == (0 if scenario == "fa" else 1)
