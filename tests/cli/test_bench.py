"""``aclnn-fag bench``: work accounting, JSON schema, NumPy and stub NPU runs, targets/--check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aclnn_fag.tools import bench, cases
from aclnn_fag.rules import validate_forward

FAKE_SGEMM = {"gflops": 100.0, "per_size_gflops": {"1024": 100.0}, "repeats": 1}


@pytest.fixture
def fast_sgemm(monkeypatch):
    monkeypatch.setattr(bench, "measure_sgemm", lambda *a, **k: dict(FAKE_SGEMM))


def _brute_kept(spec, mask):
    """Kept pairs per batch straight from docs/sparse_modes.md's table."""
    lq, lk = spec.lengths_q, spec.kv_lengths
    nonempty = [b for b in range(len(lq)) if lq[b]]
    band = (nonempty[-1] if spec.sparse_mode == 7 else nonempty[0]) if nonempty else 0
    pre, nxt = spec.pre_tokens, spec.next_tokens
    out = []
    for b, (sq, skv) in enumerate(zip(lq, lk)):
        delta, n = skv - sq, 0
        for i in range(sq):
            for j in range(skv):
                m = spec.sparse_mode
                if m in (7, 8):
                    m = 4 if b == band else (3 if m == 7 else 2)
                if m == 0:
                    k = mask[i, j] == 0 and -pre <= j - i <= nxt
                elif m == 1:
                    k = mask[i, j] == 0
                elif m == 2:
                    k = j <= i
                elif m == 3:
                    k = j <= i + delta
                else:
                    k = delta - pre <= j - i <= delta + nxt
                n += bool(k)
        out.append(n)
    return out


SPECS = [
    cases.CaseSpec(name="m0", lengths_q=(12, 0, 9), lengths_kv=(10, 5, 9), heads=1, d=16, d_rope=8,
                   sparse_mode=0, mask="random", pre_tokens=4, next_tokens=2, seed=3),
    cases.CaseSpec(name="m1", lengths_q=(12, 7), heads=1, d=16, d_rope=8, sparse_mode=1, mask="random"),
    cases.CaseSpec(name="m2", lengths_q=(9, 12), lengths_kv=(12, 12), heads=1, d=16, d_rope=8, sparse_mode=2),
    cases.CaseSpec(name="m3", lengths_q=(5, 12), lengths_kv=(12, 12), heads=1, d=16, d_rope=8, sparse_mode=3),
    cases.CaseSpec(name="m4", lengths_q=(12, 6), lengths_kv=(12, 15), heads=1, d=16, d_rope=8, sparse_mode=4,
                   pre_tokens=3, next_tokens=1),
    cases.CaseSpec(name="m7", lengths_q=(8, 6, 0), lengths_kv=(8, 14, 3), heads=1, d=16, d_rope=8,
                   sparse_mode=7, pre_tokens=4, next_tokens=0),
    cases.CaseSpec(name="m8", lengths_q=(0, 6, 8), lengths_kv=(3, 14, 8), heads=1, d=16, d_rope=8,
                   sparse_mode=8, pre_tokens=5, next_tokens=2),
]


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_kept_pairs_exact(spec):
    inputs = cases.make_inputs(spec)
    keys = ("query", "query_rope", "key", "key_rope", "value", "atten_mask", "actual_seq_qlen",
            "actual_seq_kvlen", "scale_value", "pre_tokens", "next_tokens", "sparse_mode")
    call = validate_forward(**{k: inputs[k] for k in keys})
    got = bench.kept_pairs(call)
    want = _brute_kept(spec, inputs["atten_mask"])[:len(got)]
    assert got == want


def test_flop_count_formula():
    spec = cases.CaseSpec(name="f", lengths_q=(64,), heads=3, d=128, d_rope=64, d_v=128, mask="zeros")
    inputs = cases.make_inputs(spec)
    call = validate_forward(**{k: inputs[k] for k in ("query", "query_rope", "key", "key_rope", "value",
                                                      "atten_mask", "actual_seq_qlen", "actual_seq_kvlen",
                                                      "scale_value")})
    assert bench.flop_count(call, "bwd") == 64 * 64 * 3 * 2 * (3 * 192 + 2 * 128)
    assert bench.flop_count(call, "fwd") == 64 * 64 * 3 * 2 * (192 + 128)


def test_measure_sgemm_small():
    r = bench.measure_sgemm(sizes=(128,), repeats=1)
    assert r["gflops"] > 0 and set(r["per_size_gflops"]) == {"128"}


def test_peak_extra_memory_counts_temporaries():
    def work():
        tmp = np.ones(1 << 20)          # 8 MiB temporary
        return np.zeros(1 << 10) + tmp[: 1 << 10]
    _, extra = bench.peak_extra_memory(work)
    assert 7.5 * (1 << 20) <= extra <= 9 * (1 << 20)


def test_bench_smoke_numpy_json(numpy_only, fast_sgemm, run_cli, tmp_path):
    path = tmp_path / "b.json"
    code, out, err = run_cli("bench", "--suite", "smoke", "--repeat", "1", "--json", path)
    assert code == 0, out + err
    assert "GFLOP/s" in out and "x sgemm" in out
    data = json.loads(path.read_text())
    assert data["schema"] == "aclnn_fag.tools.bench/1" and data["backend"] == "numpy"
    assert data["sgemm"]["gflops"] == 100.0
    for r in data["results"]:
        assert {"gflop", "best_s", "median_s", "gflops", "ratio_to_sgemm", "kept_pairs",
                "area_share", "backend", "precision"} <= set(r)
        assert r["backend"] == "numpy"
    assert any("peak_extra_mib" in r for r in data["results"])
    assert data["targets"] == []


def test_bench_smoke_npu_stub(npu_stub, fast_sgemm, run_cli, tmp_path):
    path = tmp_path / "b.json"
    code, out, err = run_cli("bench", "--suite", "smoke", "--backend", "npu", "--repeat", "2",
                             "--json", path, "-q")
    assert code == 0, out + err
    assert "host per call" in out
    data = json.loads(path.read_text())
    bwd = [r for r in data["results"] if r["direction"] == "bwd"]
    assert bwd and all(r["backend"] == "npu" for r in bwd)
    for r in bwd:
        host = r["host_timings_s"]
        assert {"marshal", "phase1", "phase2", "host_excluding_copies"} <= set(host)
    assert all(r["backend"] == "numpy" for r in data["results"] if r["direction"] == "fwd")


def _tiny_targets():
    tiny = dict(heads=2, d=64, d_rope=32, d_v=64, seed=1)
    un = cases.CaseSpec(name="u", lengths_q=(64, 64), mask="zeros", **tiny)
    causal = cases.CaseSpec(name="c", lengths_q=(64, 64), sparse_mode=3, **tiny)
    band = cases.CaseSpec(name="b", lengths_q=(64, 64), sparse_mode=4, pre_tokens=8, next_tokens=8, **tiny)
    R = bench.Row
    return [R("bwd:unmasked:fp32", "u32", un, "bwd", "fp32", False),
            R("bwd:unmasked:device", "ud", un, "bwd", "device", False),
            R("bwd:causal:device", "cd", causal, "bwd", "device", False),
            R("bwd:band:device", "bd", band, "bwd", "device", False),
            R("bwd:unmasked:fp64", "u64", un, "bwd", "fp64", False),
            R("fwd:unmasked:fp32", "f32", un, "fwd", "fp32", False),
            R("fwd:unmasked:device", "fd", un, "fwd", "device", False),
            R("mem:32k", "mem", band, "bwd", "device", True)]


def test_bench_targets_check(numpy_only, run_cli, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "measure_sgemm", lambda *a, **k: {"gflops": 1e6, "per_size_gflops": {"1024": 1e6},
                                                                 "repeats": 1})     # unreachable
    monkeypatch.setitem(bench.SUITES, "targets", _tiny_targets)
    path = tmp_path / "t.json"
    code, out, _ = run_cli("bench", "--suite", "targets", "--repeat", "1", "--json", path, "-q")
    assert code == 0                                  # missed targets: reported only
    assert "MISSED" in out and ">= 0.65 x sgemm" in out and "<= 64 MiB" in out
    data = json.loads(path.read_text())
    names = [t["target"] for t in data["targets"]]
    assert len(names) == 8 and data["all_targets_met"] is False
    code, _, _ = run_cli("bench", "--suite", "targets", "--repeat", "1", "--check", "-q")
    assert code == 1


def test_goal_rows_logic():
    def r(best, gflops=None, area=1.0, ratio=None):
        return {"best_s": best, "gflops": gflops or 0.0, "area_share": area, "ratio_to_sgemm": ratio,
                "backend": "numpy", "precision": "device"}
    results = {"bwd:unmasked:fp32": r(1.0, 70, ratio=0.70), "bwd:unmasked:device": r(1.0, 60, ratio=0.60),
               "bwd:causal:device": r(0.55, area=0.5), "bwd:band:device": r(0.30, area=0.25),
               "bwd:unmasked:fp64": r(2.6), "fwd:unmasked:fp32": r(1, 61, ratio=0.61),
               "fwd:unmasked:device": r(1, 59, ratio=0.59),
               "mem:32k": dict(r(1), peak_extra_mib=63.0)}
    met = [t["met"] for t in bench._goal_rows(results)]
    assert met == [True, False, True, True, True, False, True, False]


def test_bench_usage_errors(numpy_only, run_cli):
    code, _, err = run_cli("bench", "--repeat", "0")
    assert code == 2
    code, _, err = run_cli("bench", "--backend", "npu")
    assert code == 2 and "not available" in err
