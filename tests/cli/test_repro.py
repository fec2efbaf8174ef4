"""``parity --repro DIR``: the reproducer is built with ``cc`` against the stub include tree
and libraries (laid out like ``$ASCEND_HOME_PATH``), run, and checked to pass exactly the
binding's arguments (the stub op's ACL_STUB_TRACE of both phases, data hashes included) and
to get exactly the binding's outputs; plus the shrinker and the passing/failing exit codes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import ml_dtypes
import numpy as np
import pytest

import aclnn_fag
from aclnn_fag.tools import cases
from aclnn_fag.tools.repro import shrink as shrink_mod, write_case

ROOT = pathlib.Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "native_stubs" / "include"
BF16 = np.dtype(ml_dtypes.bfloat16)
OUTS = ("dq", "dq_rope", "dk", "dk_rope", "dv")


@pytest.fixture
def ascend_home(tmp_path, stub_lib_dir):
    """A directory shaped like a CANN install: include/ (the stub headers), lib64/ (the stubs)."""
    home = tmp_path / "ascend-home"
    home.mkdir()
    (home / "include").symlink_to(INCLUDE)
    (home / "lib64").symlink_to(stub_lib_dir)
    return home


def _build_and_run(case_dir: pathlib.Path, home: pathlib.Path, trace: pathlib.Path):
    env = dict(os.environ, ASCEND_HOME_PATH=str(home), ACL_STUB_TRACE=str(trace))
    env.pop("ACLNN_FAG_LIB_DIR", None)
    build = subprocess.run(["sh", str(case_dir / "build.sh")], env=env, capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "warning" not in build.stderr.lower(), build.stderr
    return subprocess.run([str(case_dir / "repro")], cwd=case_dir, env=env, capture_output=True,
                          text=True, timeout=300)


def _fnv1a(data: bytes) -> str:
    """The stub trace's hash of a buffer (FNV-1a, 64 bit)."""
    h = 0xcbf29ce484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _trace(path: pathlib.Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _binding_run(spec, trace: pathlib.Path, monkeypatch):
    """The binding's call for ``spec`` exactly as the parity suite makes it, traced."""
    inputs = cases.with_forward(cases.make_inputs(spec))
    # the parity run before kept this signature's executor: without clearing the executor
    # cache, this call would be a hit that runs phase 2 only, and the trace compares phase 1
    import aclnn_fag.acl
    aclnn_fag.acl.clear_executor_cache()
    monkeypatch.setenv("ACL_STUB_TRACE", str(trace))
    try:
        return aclnn_fag.flash_attention_unpadding_score_grad_v3(**inputs, backend="npu")
    finally:
        monkeypatch.delenv("ACL_STUB_TRACE")


def test_repro_failing_case_matches_binding(npu_stub, run_cli, tiny_suite, tmp_path, ascend_home,
                                            monkeypatch):
    out = tmp_path / "repro"
    # k = 0.5: the stub NPU (as accurate as the bf16 reference) fails criterion 1
    code, text, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-gqa-causal", "--backend",
                              "npu", "--k", "0.5", "--repro", out, "-q")
    assert code == 1, text + err
    case_dir = out / "tiny-gqa-causal"
    assert f"reproducers: 1 of 1 failing case(s) in {out}" in text
    names = {p.name for p in case_dir.iterdir()}
    assert {"repro.c", "build.sh", "README.md", "case.json", "inputs", "golden"} <= names
    assert sorted(p.stem for p in (case_dir / "inputs").iterdir()) == sorted(
        ["query", "query_rope", "key", "key_rope", "value", "dy", "atten_mask", "softmax_max",
         "softmax_sum", "attention_in"])
    assert sorted(p.stem for p in (case_dir / "golden").iterdir()) == sorted(OUTS)
    src = (case_dir / "repro.c").read_text()
    assert '#include "acl/acl.h"' in src and '#include "aclnnop/aclnn_flash_attention_score_grad.h"' in src
    doc = json.loads((case_dir / "case.json").read_text())
    spec = cases.CaseSpec.from_dict(doc["case"])
    original = cases.CaseSpec.from_dict(doc["original_case"])
    assert spec.t1 < original.t1 or spec.heads < original.heads      # it was shrunk
    readme = (case_dir / "README.md").read_text()
    assert "What was shrunk" in readme and "9.1.0.stub" in readme and "FAIL" in readme

    repro_trace = tmp_path / "repro_trace.jsonl"
    proc = _build_and_run(case_dir, ascend_home, repro_trace)
    assert proc.returncode == 1, proc.stdout + proc.stderr         # fails the same criteria
    assert "CANN version: 9.1.0.stub" in proc.stdout and "FAIL" in proc.stdout
    assert "ops_transformer version: 9.1.0.stub (aclsysGetVersionStr)" in proc.stdout
    assert "runtime version: 9.1.0.stub" in proc.stdout

    binding_trace = tmp_path / "binding_trace.jsonl"
    grads = _binding_run(spec, binding_trace, monkeypatch)
    a, b = _trace(repro_trace), _trace(binding_trace)
    assert [x["call"] for x in a] == ["phase1", "phase2"] == [x["call"] for x in b]
    # The output buffers' contents before the call are not arguments: the reproducer zero-fills
    # them; the binding zero-fills them or leaves fresh device memory (the stub fills that 0xFF).
    for name, t in a[0]["outputs"].items():
        if t is not None:
            nbytes = 2 * int(np.prod(t["storage"]))
            assert t["data"] == _fnv1a(bytes(nbytes)), name
            assert b[0]["outputs"][name]["data"] in (_fnv1a(bytes(nbytes)), _fnv1a(b"\xff" * nbytes))
            t["data"] = b[0]["outputs"][name]["data"] = "checked"
    assert a == b                                      # every argument, descriptor and data hash
    assert a[0]["inputs"]["query"]["data"] and a[0]["int_arrays"]["actual_seq_qlen"]
    for name in OUTS:
        got = np.fromfile(case_dir / "outputs" / f"{name}.bin", dtype=BF16)
        want = np.ascontiguousarray(getattr(grads, name)).reshape(-1)
        assert got.tobytes() == want.tobytes(), name    # bit for bit the binding's outputs
    # the golden files are the fp64 golden as float32
    inputs = cases.with_forward(cases.make_inputs(spec))
    golden = aclnn_fag.flash_attention_unpadding_score_grad_v3(**inputs, backend="numpy", precision="fp64")
    assert np.array_equal(np.fromfile(case_dir / "golden" / "dv.bin", dtype=np.float32),
                          golden.dv.astype(np.float32).reshape(-1))


def test_repro_passing_case_exits_0_and_no_shrink(npu_stub, run_cli, tiny_suite, tmp_path, ascend_home):
    suite = cases.load_suite(tiny_suite)
    spec = next(s for s in suite.cases if s.name == "tiny-mode0")
    from aclnn_fag.tools.parity import make_backend_fn
    d = write_case(tmp_path / "ok", spec, backend_fn=make_backend_fn("npu"), k=2.0)
    proc = _build_and_run(d, ascend_home, tmp_path / "t.jsonl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("PASS")
    assert "Nothing: the case is the suite's case" in (d / "README.md").read_text()
    # --no-shrink keeps the failing case whole
    code, text, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--backend", "npu",
                              "--k", "0.5", "--repro", tmp_path / "whole", "--no-shrink", "-q")
    assert code == 1
    doc = json.loads((tmp_path / "whole" / "tiny-mode0" / "case.json").read_text())
    assert doc["case"] == doc["original_case"] and doc["shrink_steps"] == []
    code, _, err = run_cli("parity", "--quick", "--no-shrink")
    assert code == 2 and "--repro" in err


def test_shrinker_finds_a_small_failing_case():
    spec = cases.CaseSpec(name="s", lengths_q=(300, 0, 212, 40), heads=12, kv_heads=4, seed=1)
    calls = []

    def fails(c):           # "the op fails when some sequence has >= 20 tokens and N1 >= 2"
        calls.append(c)
        return max(c.lengths_q) >= 20 and c.heads >= 2
    small, steps, runs = shrink_mod.shrink(spec, fails, budget=100)
    assert len(small.lengths_q) == 1 and 20 <= small.lengths_q[0] < 40
    assert 2 <= small.heads < 12 and small.heads % small.n2 == 0
    assert fails(small) and runs == len(calls) - 1 and steps
    assert all(c.heads % c.n2 == 0 for c in calls)
    # head candidates keep N1 % N2 == 0 even when the KV heads cannot shrink
    tried = []
    small, _, _ = shrink_mod.shrink(spec, lambda c: tried.append(c) or c.n2 >= 4, budget=100)
    assert small.n2 == 4 and small.heads == 4
    assert all(c.heads % c.n2 == 0 for c in tried)
    # the budget bounds the runs
    _, _, runs = shrink_mod.shrink(spec, fails, budget=3)
    assert runs == 3


ERRORING = """
import aclnn_fag

class OpFailure(RuntimeError):
    pass

def backward(**kw):
    if kw["query"].shape[0] >= 20:
        raise OpFailure("phase 1 returned 561002 (stand-in failure)")
    return aclnn_fag.flash_attention_unpadding_score_grad_v3(**kw, backend="npu")
"""


def test_repro_of_a_backend_error(npu_stub, run_cli, tiny_suite, tmp_path, ascend_home, monkeypatch):
    """A call that raises in the backend (not in the validator) is reproduced too, shrunk while
    it raises the same error class; the program reports I/O problems with exit status 2."""
    (tmp_path / "erroring.py").write_text(ERRORING)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "erroring", raising=False)
    code, text, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--backend-module",
                              "erroring:backward", "--repro", tmp_path / "rp", "-q")
    assert code == 1 and "reproducers: 1 of 1" in text, text + err
    d = tmp_path / "rp" / "tiny-mode0"
    doc = json.loads((d / "case.json").read_text())
    assert doc["backend_error"].startswith("OpFailure: phase 1 returned 561002")
    assert 20 <= cases.CaseSpec.from_dict(doc["case"]).t1 < 40          # shrunk, still raising
    assert "The call raised `OpFailure" in (d / "README.md").read_text()
    proc = _build_and_run(d, ascend_home, tmp_path / "t.jsonl")
    assert proc.returncode == 0, proc.stdout + proc.stderr           # the stub op itself is fine
    data = (d / "inputs" / "dy.bin").read_bytes()
    (d / "inputs" / "dy.bin").write_bytes(data[:-2])
    proc = subprocess.run([str(d / "repro")], cwd=d, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "expected exactly" in proc.stderr
