"""``parity --repro``: what the reproducer of a deterministic case sets, how far shrinking may
go, the versions in its README, unwritable targets, and reproducers of failures that did not
come from the C op."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import aclnn_fag
from aclnn_fag.tools import cases, parity
from aclnn_fag.tools.repro import write_case, write_reproducers
from test_repro import _build_and_run, _trace, ascend_home  # noqa: F401  (ascend_home: fixture)

DET_SUITE = {
    "schema": "aclnn_fag.suite/1",
    "defaults": {"d": 64, "d_rope": 32, "d_v": 64},
    "cases": [{"name": "det-causal", "seed": 9, "lengths_q": [40, 24], "heads": 2,
               "sparse_mode": 3, "deterministic": True}],
}


# ----------------------------------------------------------------------------- item 9
def test_reproducer_of_a_deterministic_case_sets_determinism(npu_stub, run_cli, tmp_path, ascend_home):
    suite = tmp_path / "det.json"
    suite.write_text(json.dumps(DET_SUITE))
    out = tmp_path / "rp"
    code, text, err = run_cli("parity", "--suite", suite, "--backend", "npu", "--k", "0.5",
                              "--repro", out, "-q")
    assert code == 1 and "reproducers: 1 of 1" in text, text + err
    d = out / "det-causal"
    src = (d / "repro.c").read_text()
    assert "static const int64_t DETERMINISTIC = 1;" in src
    doc = json.loads((d / "case.json").read_text())
    assert doc["arguments"]["deterministic"] is True and doc["case"]["deterministic"] is True
    assert "| ACL_OPT_DETERMINISTIC | 1 " in (d / "README.md").read_text()
    proc = _build_and_run(d, ascend_home, tmp_path / "t.jsonl")
    assert proc.returncode == 1, proc.stdout + proc.stderr       # fails like the binding
    trace = _trace(tmp_path / "t.jsonl")
    assert [t["call"] for t in trace] == ["phase1", "phase2"]
    assert trace[0]["deterministic"] == 1                        # the context the op saw


# ----------------------------------------------------------------------------- item 10
SHRINK_SPEC = {"name": "band", "seed": 5, "lengths_q": [24, 40], "heads": 2, "sparse_mode": 4,
               "pre_tokens": -14, "next_tokens": 20, "d": 64, "d_rope": 32, "d_v": 64}


def _off_by_one(g, name):
    out = dict(g._asdict())
    a = out[name].copy()
    a.reshape(-1)[0] += np.float32(1.0).astype(a.dtype)
    out[name] = a
    return aclnn_fag.FagGrads(**out)


def shape_dependent(**kw):
    """Two batches: dv off by one (the failure under study). One batch: raises (an error,
    not this failure). Halved sequences the validator rejects never get here (mode 4 with
    pre_tokens -14 needs Sq >= 14). One head: dq off instead (another failure)."""
    g = aclnn_fag.flash_attention_unpadding_score_grad_v3(**kw, backend="numpy")
    if len(kw["actual_seq_qlen"]) < 2:
        raise RuntimeError("one batch: the backend under test errs")
    return _off_by_one(g, "dq" if kw["query"].shape[1] == 1 else "dv")


shape_dependent.backend_name = "custom:shape_dependent"


@pytest.mark.filterwarnings("ignore::aclnn_fag.FullyMaskedRowWarning")
def test_shrinking_ends_on_a_case_that_fails_the_same_way(tmp_path):
    spec = cases.CaseSpec.from_dict(SHRINK_SPEC)
    report = parity.run_suite([spec], backend_fn=shape_dependent)
    assert report["cases"][0]["verdict"] == "FAIL"
    assert report["cases"][0]["failed_outputs"] == ["dv"]
    written = write_reproducers(report, [spec], tmp_path / "rp", backend_fn=shape_dependent)
    assert written == [str(tmp_path / "rp" / "band")]
    doc = json.loads((tmp_path / "rp" / "band" / "case.json").read_text())
    small = cases.CaseSpec.from_dict(doc["case"])
    assert doc["shrink_steps"] and small != spec                      # it did shrink
    assert len(small.lengths_q) == 2 and small.heads == 2             # never onto an error or dq
    assert min(small.lengths_q) >= 14                                 # never onto a rejected case
    again = parity.run_case(small, shape_dependent)
    assert again["verdict"] == "FAIL" and again["failed_outputs"] == ["dv"]
    assert doc["backend_error"] is None and doc["python_verdicts"]["dv"] == "FAIL"
    assert doc["python_verdicts"]["dq"] == "PASS"


class OpFailure(RuntimeError):
    pass


def raises_by_shape(**kw):
    """Two batches: OpFailure (the error under study); one batch: ValueError (another error)."""
    if len(kw["actual_seq_qlen"]) < 2:
        raise ValueError("another error")
    raise OpFailure("phase 1 returned 561002 (stand-in failure)")


def test_shrinking_a_backend_error_keeps_its_exception_class(tmp_path):
    spec = cases.CaseSpec.from_dict(dict(SHRINK_SPEC, sparse_mode=0, pre_tokens=2147483647,
                                         next_tokens=2147483647))
    report = parity.run_suite([spec], backend_fn=raises_by_shape)
    assert report["cases"][0]["error"].startswith("OpFailure")
    written = write_reproducers(report, [spec], tmp_path / "rp", backend_fn=raises_by_shape)
    assert len(written) == 1
    doc = json.loads((tmp_path / "rp" / "band" / "case.json").read_text())
    small = cases.CaseSpec.from_dict(doc["case"])
    assert doc["shrink_steps"] and len(small.lengths_q) == 2          # shrunk, not to one batch
    assert doc["backend_error"].startswith("OpFailure: phase 1 returned 561002")


# ----------------------------------------------------------------------------- item 12
@pytest.mark.filterwarnings("ignore::aclnn_fag.FullyMaskedRowWarning")
def test_readme_shows_driver_and_toolkit_each_in_its_field(tmp_path):
    env = {"package_version": "0.1.0", "backend": "npu",
           "versions": {"cann": {"cann_version": "8.1.RC1"},
                        "toolkit_install": {"version": "8.0.RC3"},
                        "driver": {"version": "24.1.rc2"}}}
    spec = cases.CaseSpec.from_dict(dict(SHRINK_SPEC, lengths_q=[24]))
    d = write_case(tmp_path, spec, backend_fn=None, environment=env)
    rows = dict(line.strip("|").split("|")[:2] for line in (d / "README.md").read_text().splitlines()
                if line.startswith("| ") and line.count("|") == 3)
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["driver"] == "24.1.rc2" and rows["toolkit_install"] == "8.0.RC3"
    assert rows["cann"] == "8.1.RC1"


# ----------------------------------------------------------------------------- item 22
BROKEN = '''
import numpy as np
import aclnn_fag

def broken_dv(**kw):
    g = aclnn_fag.flash_attention_unpadding_score_grad_v3(**kw, backend="numpy")
    dv = g.dv.copy()
    dv.reshape(-1)[0] += np.float32(1.0).astype(dv.dtype)
    return g._replace(dv=dv)
'''


@pytest.fixture
def broken_module(local_module):
    return local_module("broken_backend", BROKEN) + ":broken_dv"


def _targets(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    return {"file": (a_file, "exists and is not a directory"),
            "dangling-symlink": (dangling, "symbolic link to a missing target"),
            "file-as-parent": (a_file / "sub" / "dir", f"its parent {a_file} is not a directory")}


@pytest.mark.parametrize("kind", ["file", "dangling-symlink", "file-as-parent"])
def test_unwritable_repro_target_is_refused_with_the_reason_in_quiet_mode(
        numpy_only, run_cli, tiny_suite, tmp_path, broken_module, kind):
    target, why = _targets(tmp_path)[kind]
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0",
                             "--backend-module", broken_module, "--repro", target, "-q")
    assert code == 2, out + err
    assert f"--repro {target}: cannot write reproducers there" in err and why in err
    assert out == ""                                     # refused before anything ran


def test_reproducer_that_cannot_be_written_is_reported_in_quiet_mode(
        numpy_only, run_cli, tiny_suite, tmp_path, broken_module):
    out_dir = tmp_path / "rp"
    out_dir.mkdir()
    (out_dir / "tiny-mode0").write_text("in the way")        # the case's folder is a file
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0",
                             "--backend-module", broken_module, "--repro", out_dir, "-q",
                             "--no-shrink")
    assert code == 1
    assert "reproducers: 0 of 1 failing case(s)" in out
    assert "repro: tiny-mode0: not written: FileExistsError" in err


def test_reproducer_of_a_backend_module_failure_says_it_tests_the_c_op_only(
        numpy_only, run_cli, tiny_suite, tmp_path, broken_module):
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0",
                             "--backend-module", broken_module, "--repro", tmp_path / "rp", "-q",
                             "--no-shrink")
    assert code == 1 and "reproducers: 1 of 1" in out, out + err
    assert "test the C op only" in err and "module:broken_backend:broken_dv" in err
    d = tmp_path / "rp" / "tiny-mode0"
    readme = (d / "README.md").read_text()
    assert "## This program tests the C op only" in readme
    assert "The backend under test `module:broken_backend:broken_dv` gives gradients" in readme
    doc = json.loads((d / "case.json").read_text())
    assert doc["tests"].startswith("the C op only") and doc["backend_under_test"] == \
        "module:broken_backend:broken_dv"


def test_reproducer_of_the_package_binding_does_not_carry_the_note(npu_stub, run_cli, tiny_suite,
                                                                   tmp_path):
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--backend",
                             "npu", "--k", "0.5", "--repro", tmp_path / "rp", "-q", "--no-shrink")
    assert code == 1 and "reproducers: 1 of 1" in out, out + err
    assert "C op only" not in err
    d = tmp_path / "rp" / "tiny-mode0"
    readme = (d / "README.md").read_text()
    assert "C op only" not in readme
    assert readme.count("`aclnnFlashAttentionUnpaddingScoreGradV3` gives gradients") == 1
    assert json.loads((d / "case.json").read_text())["tests"] == "the C op, as aclnn_fag calls it"
    assert os.access(d / "build.sh", os.X_OK)
