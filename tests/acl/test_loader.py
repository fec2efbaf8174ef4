"""Library discovery: search order, the missing-library path, lazy thread-safe caching."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

import aclnn_fag.acl as acl
from aclnn_fag.acl import loader
from aclnn_fag.errors import LibraryNotFoundError

ROOT = pathlib.Path(__file__).resolve().parents[2]
REAL_CANN = pathlib.Path(loader.DEFAULT_TOOLKIT_LIB64, "libascendcl.so")


def _run(script: str, lib_dir, **extra_env) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ASCEND_") and k not in ("LD_LIBRARY_PATH", "ACLNN_FAG_BACKEND",
                                                       "ACLNN_FAG_DEVICE")}
    env["ACLNN_FAG_LIB_DIR"] = str(lib_dir)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra_env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


PROBE = """
    import json
    import aclnn_fag, aclnn_fag.acl as acl          # importing never fails
    from aclnn_fag.errors import LibraryNotFoundError
    out = {}
    a = acl.availability()
    out["ok"], out["reason"], out["libraries"] = a.ok, a.reason, a.libraries
    out["tried"] = [[t.role, t.path, t.outcome, t.error] for t in a.tried]
    try:
        acl.DeviceBuffer(64)
        out["first_use"] = "no error"
    except Exception as exc:
        out["first_use"] = type(exc).__name__
        out["message"] = str(exc)
    print(json.dumps(out))
"""


@pytest.fixture
def no_real_cann():
    if REAL_CANN.exists():
        pytest.skip("a real CANN toolkit is installed here; the missing-library path needs none")


def test_search_order_is_fixed_and_reported():
    env = {"ACLNN_FAG_LIB_DIR": "/opt/a", "ASCEND_HOME_PATH": "/opt/home",
           "ASCEND_TOOLKIT_HOME": "/opt/tk"}
    places, notes = loader.search_places(env)
    assert [p.directory for p in places] == ["/opt/a", "/opt/home/lib64", "/opt/tk/lib64",
                                             loader.DEFAULT_TOOLKIT_LIB64, None]
    assert places[0].source == "$ACLNN_FAG_LIB_DIR"
    assert places[-1].describe() == "system loader"
    assert notes == []
    places, notes = loader.search_places({})
    assert [p.directory for p in places] == [loader.DEFAULT_TOOLKIT_LIB64, None]
    assert any("ACLNN_FAG_LIB_DIR" in n for n in notes)
    assert any("ASCEND_HOME_PATH" in n for n in notes)
    # the same directory twice is searched once
    places, notes = loader.search_places({"ASCEND_HOME_PATH": "/x", "ASCEND_TOOLKIT_HOME": "/x"})
    assert [p.directory for p in places] == ["/x/lib64", loader.DEFAULT_TOOLKIT_LIB64, None]


def test_missing_libraries_raise_on_first_use_listing_every_place(tmp_path, no_real_cann):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _run(PROBE, empty)
    assert out["ok"] is False
    assert out["first_use"] == "LibraryNotFoundError"
    msg = out["message"]
    for needle in (str(empty), loader.DEFAULT_TOOLKIT_LIB64, "system loader", "ACLNN_FAG_LIB_DIR",
                   "set_env.sh", "libascendcl.so", "libnnopbase.so", "libopapi_transformer.so",
                   "libopapi.so", "ASCEND_HOME_PATH: not set"):
        assert needle in msg, needle
    outcomes = {(role, outcome) for role, _, outcome, _ in out["tried"]}
    assert outcomes == {("runtime", "not found"), ("nnopbase", "not found"), ("opapi", "not found")}
    assert str(empty / "libascendcl.so") in [t[1] for t in out["tried"]]
    assert set(out["libraries"]) == {"runtime", "nnopbase", "opapi"}
    assert all(v.startswith("not loaded") for v in out["libraries"].values())


def test_public_api_without_cann(tmp_path, no_real_cann):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _run("""
        import json, warnings
        import numpy as np, ml_dtypes
        import aclnn_fag as af
        from aclnn_fag.errors import BackendUnavailableError
        bf = ml_dtypes.bfloat16
        rng = np.random.default_rng(0)
        q, qr, k, kr, v, dy = (rng.standard_normal((8, 1, d)).astype(bf) for d in (16, 8, 16, 8, 16, 16))
        mask = np.zeros((8, 8), np.uint8)
        f = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=mask, actual_seq_qlen=[8],
                                       actual_seq_kvlen=[8], scale_value=0.2)
        kw = dict(atten_mask=mask, softmax_max=f.softmax_max, softmax_sum=f.softmax_sum,
                  attention_in=f.attention_out, actual_seq_qlen=[8], actual_seq_kvlen=[8],
                  scale_value=0.2)
        af.flash_attention_unpadding_score_grad_v3(q, qr, k, kr, v, dy, **kw)
        out = {"auto": af.last_backend()}
        try:
            af.flash_attention_unpadding_score_grad_v3(q, qr, k, kr, v, dy, backend="npu", **kw)
        except BackendUnavailableError as exc:
            out["npu"] = str(exc)
        print(json.dumps(out))
    """, empty)
    assert out["auto"] == "numpy"
    assert "ACLNN_FAG_LIB_DIR" in out["npu"] and str(empty) in out["npu"]


def test_found_but_failed_to_load_is_distinguished(tmp_path, no_real_cann):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "libascendcl.so").write_bytes(b"this is not an ELF file\n")
    out = _run(PROBE, bad)
    assert out["first_use"] == "LibraryNotFoundError"
    first = out["tried"][0]
    assert first[:3] == ["runtime", str(bad / "libascendcl.so"), "failed to load"]
    assert first[3]                                     # the OSError text
    assert "failed to load" in out["message"] and "not found" in out["message"]


def test_library_without_the_op_is_skipped(tmp_path, stub_lib_dir):
    d = tmp_path / "old_cann"
    d.mkdir()
    for name in ("libascendcl.so", "libnnopbase.so"):
        shutil.copy(stub_lib_dir / name, d / name)
    shutil.copy(stub_lib_dir / "libnnopbase.so", d / "libopapi_transformer.so")   # no V3 op
    shutil.copy(stub_lib_dir / "libopapi.so", d / "libopapi.so")
    out = _run(PROBE, d)
    assert out["ok"] is True, out["reason"]
    assert out["libraries"]["opapi"] == str(d / "libopapi.so")
    skipped = [t for t in out["tried"] if t[1] == str(d / "libopapi_transformer.so")]
    assert skipped and skipped[0][2] == "missing symbol"


def test_opapi_transformer_is_preferred(tmp_path, stub_lib_dir):
    d = tmp_path / "split_cann"
    d.mkdir()
    for name in ("libascendcl.so", "libnnopbase.so", "libopapi.so"):
        shutil.copy(stub_lib_dir / name, d / name)
    shutil.copy(stub_lib_dir / "libopapi.so", d / "libopapi_transformer.so")
    out = _run(PROBE, d)
    assert out["ok"] is True
    assert out["libraries"]["opapi"] == str(d / "libopapi_transformer.so")
    assert out["first_use"] == "no error"


def test_no_device_means_not_available(stub_lib_dir):
    out = _run(PROBE, stub_lib_dir, ACL_STUB_DEVICE_COUNT="0")
    assert out["ok"] is False
    assert "no device" in out["reason"]
    assert out["first_use"] == "AclRtInvalidDeviceIdError"   # 107001 from aclrtSetDevice


def test_switching_lib_dir_in_process(tmp_path, monkeypatch, stub_lib_dir):
    assert acl.availability().ok
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ACLNN_FAG_LIB_DIR", str(empty))
    try:
        assert acl.availability().ok            # cached until reset
        status = acl.availability(refresh=True)
        # the stubs stay mapped in this process, but they are not offered by the system
        # loader step once their directory is no longer searched
        assert not status.ok
        assert "no longer searched" in status.reason
        with pytest.raises(LibraryNotFoundError):
            loader.bindings()
    finally:
        monkeypatch.setenv("ACLNN_FAG_LIB_DIR", str(stub_lib_dir))
        acl.reset()
    assert acl.availability().ok


def test_lazy_load_is_thread_safe_and_cached():
    acl.reset()
    results, errors = [], []
    barrier = threading.Barrier(8)

    def worker():
        try:
            barrier.wait()
            results.append(loader.bindings())
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert loader.bindings() is results[0]


def test_info_reports_libraries_and_features():
    report = acl.info()
    assert report["available"] is True
    assert set(report["libraries"]) == {"runtime", "nnopbase", "opapi"}
    assert report["libraries"]["runtime"].endswith("libascendcl.so")
    assert report["device_count"] == 1
    assert report["soc_name"] == "Ascend910B_stub"
    assert report["features"] == {"determinism_setter": True, "determinism_getter": True,
                                  "repeatable_executor": True, "tensor_addr_setters": True,
                                  "recent_error_message": True, "soc_name": True,
                                  "forward_op": True}
    assert report["stand_in"] is True and "STAND-IN" in report["stand_in_note"]
    assert report["search_order"][0].startswith("$ACLNN_FAG_LIB_DIR")
    assert report["symbols_found_in"]["aclCreateTensor"] == "opapi"
    assert report["symbols_found_in"]["aclrtMalloc"] == "runtime"


def test_default_device_beyond_the_device_count(stub_lib_dir):
    out = _run(PROBE, stub_lib_dir, ACLNN_FAG_DEVICE="3")
    assert out["ok"] is False and "ACLNN_FAG_DEVICE=3" in out["reason"]
    out = _run(PROBE, stub_lib_dir, ACLNN_FAG_DEVICE="1", ACL_STUB_DEVICE_COUNT="2")
    assert out["ok"] is True and out["first_use"] == "no error"


def test_import_loads_nothing(stub_lib_dir):
    out = _run("""
        import json
        import aclnn_fag, aclnn_fag.acl
        maps = open("/proc/self/maps").read()
        before = "libascendcl" in maps
        aclnn_fag.acl.availability()
        after = "libascendcl" in open("/proc/self/maps").read()
        print(json.dumps({"before": before, "after": after}))
    """, stub_lib_dir)
    assert out == {"before": False, "after": True}


def test_optional_op_compiler_library_is_probed_when_the_runtime_lacks_the_setter(
        monkeypatch, stub_lib_dir):
    # stand-in: pretend the setter is a symbol libascendcl lacks and libopapi.so provides
    monkeypatch.setattr(loader, "OPTIONAL_ROLE",
                        ("op_compiler", ("libopapi.so",), "aclnnFlashAttentionUnpaddingScoreGradV3"))
    libs = loader.load_libraries(places=[loader.Place("test", str(stub_lib_dir))])
    assert libs.paths["op_compiler"] == str(stub_lib_dir / "libopapi.so")
    assert [a.outcome for a in libs.tried if a.role == "op_compiler"] == ["loaded"]
    monkeypatch.undo()
    libs = loader.load_libraries(places=[loader.Place("test", str(stub_lib_dir))])
    assert "op_compiler" not in libs.paths          # the stub runtime exports the setter
