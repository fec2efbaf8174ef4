"""info, bench and parity record numpy's BLAS library and its thread count."""

from __future__ import annotations

import json

from aclnn_fag import blas


def test_info_prints_the_blas(numpy_only, run_cli):
    code, out, _ = run_cli("info")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("BLAS"))
    assert f"threads {blas.blas_threads()}" in line
    code, out, _ = run_cli("info", "--json")
    assert json.loads(out)["environment"]["versions"]["blas"]["threads"] == blas.blas_threads()


def test_bench_records_the_blas_it_ran_with(numpy_only, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv(blas.ENV_VAR, "1")
    path = tmp_path / "b.json"
    code, out, err = run_cli("bench", "--suite", "smoke", "--repeat", "1", "--json", path, "-q")
    assert code == 0, out + err
    data = json.loads(path.read_text())
    assert data["blas"]["cap"] == 1 and data["blas"]["library"]
    if blas.blas_threads() is not None:
        assert data["blas"]["threads"] == 1                  # measured inside the cap
    assert out.splitlines()[0].startswith("BLAS: ") and "capped at 1" in out.splitlines()[0]


def test_parity_report_records_the_blas(numpy_only, run_cli, tiny_suite, tmp_path):
    path = tmp_path / "r.json"
    code, _, _ = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--report", path, "-q")
    assert code == 0
    b = json.loads(path.read_text())["environment"]["versions"]["blas"]
    assert b["threads"] == blas.blas_threads() and "usable_cpus" in b and "cap" in b
