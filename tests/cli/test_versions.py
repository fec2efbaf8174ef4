"""Versions in ``info`` and in every report: the CANN version through the three optional
queries (and their fallback order, on the stub libraries and on hand-made bindings), the
toolkit's install-info file, the driver's version.info, BLAS, packages."""

from __future__ import annotations

import ctypes
import json
import re
import types

import numpy as np
import pytest

import aclnn_fag
from aclnn_fag.tools import envinfo as host_versions
from aclnn_fag.acl import versions as acl_versions


def _stub_controls(lib_dir):
    lib = ctypes.CDLL(str(lib_dir / "libascendcl.so"), mode=ctypes.RTLD_GLOBAL)
    inject = lib["aclStubInjectFailure"]
    inject.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int32]
    inject.restype = None
    clear = lib["aclStubClearFailures"]
    clear.argtypes, clear.restype = [], None
    return inject, clear


def test_info_shows_stub_versions(npu_stub, run_cli):
    code, out, _ = run_cli("info")
    assert code == 0
    assert re.search(r"CANN version:\s+9\.1\.0\.stub \(aclsysGetCANNVersion\)", out), out
    assert re.search(r'runtime:\s+9\.1\.0\.stub \(aclsysGetVersionStr\("runtime"\)\)', out), out
    assert re.search(r"ops_transformer:\s+9\.1\.0\.stub", out), out
    assert re.search(r"rules of CANN:\s+9\.1\.0 \(from ops_transformer\)", out), out
    assert re.search(r"ACL API version:\s+1\.0\.0", out)
    assert re.search(r"BLAS:\s+\S+", out)


def test_info_json_file_and_stdout(npu_stub, run_cli, tmp_path):
    code, out, _ = run_cli("info", "--json")                    # old spelling: stdout
    assert code == 0
    data = json.loads(out)
    cann = data["environment"]["versions"]["cann"]
    assert cann["cann_version"] == "9.1.0.stub" and "stub" in cann["cann_version"]
    assert data["npu"]["versions"]["cann_version_source"] == "aclsysGetCANNVersion"
    assert (cann["runtime_version"], cann["ops_transformer_version"]) == ("9.1.0.stub", "9.1.0.stub")
    assert cann["version_num"] == {"runtime": 9010000, "ops_transformer": 9010000}
    assert data["environment"]["cann_rules"]["release"] == "9.1.0"
    target = tmp_path / "info.json"
    code, out, _ = run_cli("info", "--json", target)            # new: a file, text on stdout
    assert code == 0 and "CANN version:" in out
    assert json.loads(target.read_text())["environment"]["versions"]["packages"]["numpy"] == np.__version__


def test_fallback_order_on_stub(npu_stub):
    """aclsysGetCANNVersion failing -> aclsysGetVersionStr("CANN"); both failing ->
    aclrtGetVersion; the package versions are queried on their own either way."""
    from aclnn_fag.acl import loader, runtime
    b = loader.bindings()
    runtime.initialise()
    inject, clear = _stub_controls(npu_stub)
    try:
        inject(b"aclsysGetCANNVersion", 0, 100000)
        v = acl_versions.query_cann_version(b)
        assert v["cann_version"] == "9.1.0.stub"
        assert v["cann_version_source"] == "aclsysGetVersionStr"
        assert "aclsysGetCANNVersion returned 100000" in v["attempts"][0]
        inject(b"aclsysGetCANNVersion", 0, 100000)
        inject(b"aclsysGetVersionStr", 0, 100000)
        v = acl_versions.query_cann_version(b)
        assert v["cann_version"] == "acl-api 1.0.0" and v["cann_version_source"] == "aclrtGetVersion"
        assert len(v["attempts"]) == 2
        assert v["ops_transformer_version"] == "9.1.0.stub"          # its own query answered
    finally:
        clear()
    v = acl_versions.query_cann_version(b)
    assert v["cann_version_source"] == "aclsysGetCANNVersion"
    assert v["cann_version_parts"] == {"major": "9", "minor": "1", "release": "0", "patch": "stub"}


@pytest.mark.parametrize("release", ["8.5.0", "9.0.0", "9.1.0"])
def test_stub_emulates_each_release(npu_stub, monkeypatch, release):
    """ACL_STUB_CANN_VERSION selects what every version query of the stubs answers, and the
    binding reads the release whose rules apply from the ops_transformer version."""
    from aclnn_fag.acl import loader, runtime
    monkeypatch.setenv("ACL_STUB_CANN_VERSION", release)
    b = loader.bindings()
    runtime.initialise()
    v = acl_versions.query_cann_version(b)
    text = release + ".stub"
    assert (v["cann_version"], v["runtime_version"], v["ops_transformer_version"]) == (text,) * 3
    major, minor, patch = (int(x) for x in release.split("."))
    assert v["version_num"]["ops_transformer"] == major * 1000000 + minor * 10000 + patch * 100
    assert (v["release"], v["release_from"], v["release_note"]) == (release, "ops_transformer", None)


def test_package_query_uses_a_128_byte_buffer_and_names_the_package():
    """aclsysGetVersionStr is given exactly ACL_PKG_VERSION_MAX_SIZE bytes and the package
    names "runtime" and "ops_transformer"; a package that is not installed is recorded."""
    seen = []

    def get_str(pkg, buf):
        seen.append((pkg, ctypes.sizeof(buf)))
        if pkg == b"runtime":
            ctypes.memmove(buf, b"9.0.0\0", 6)
            return 0
        return 100000

    b = types.SimpleNamespace(aclsysGetVersionStr=get_str, aclsysGetCANNVersion=None,
                              aclrtGetVersion=None, aclGetRecentErrMsg=lambda: b"not installed")
    v = acl_versions.query_cann_version(b)
    assert seen == [(b"CANN", 128), (b"runtime", 128), (b"ops_transformer", 128)]
    assert (v["runtime_version"], v["ops_transformer_version"]) == ("9.0.0", None)
    assert "aclsysGetVersionStr('ops_transformer') returned 100000: not installed" in v["attempts"]
    assert (v["release"], v["release_from"]) == ("9.0.0", "runtime")


@pytest.mark.parametrize("text,release,note", [
    ("9.1.0", "9.1.0", None), ("8.5.RC1", "8.5.0", None), ("9.0.0.alpha001", "9.0.0", None),
    ("9.3.0", "9.1.0", "newer than"), ("8.0.0", "8.5.0", "older than"),
    ("8.7.0", "8.5.0", "not a release"), ("V100R001", "9.1.0", "not a version"),
    ("", "9.1.0", "not a version"), ("\xff\x00garbage", "9.1.0", "not a version")])
def test_release_read_from_any_version_text(text, release, note):
    """A malformed or unknown version never crashes: the nearest known rules and a note."""
    got = acl_versions.release_of({"ops_transformer_version": text or None})
    assert got["release"] == release
    assert (got["release_note"] is None) if note is None else (note in got["release_note"])


def _fake_bindings(version_str=None, cann=None, api=None):
    """Bindings whose version functions behave as given (None = symbol not exported)."""
    def get_str(pkg, buf):
        if pkg != b"CANN" or isinstance(version_str, int):
            return 100000 if pkg != b"CANN" else version_str
        ctypes.memmove(buf, version_str.encode() + b"\0", len(version_str) + 1)
        return 0

    def get_cann(name, ref):
        assert name == acl_versions.ACL_PKG_NAME_CANN
        if isinstance(cann, int):
            return cann
        ver = ctypes.cast(ref, ctypes.POINTER(acl_versions.PackageVersion)).contents
        ver.version = cann.encode()
        return 0

    def get_api(ma, mi, pa):
        if isinstance(api, int):
            return api
        for ptr, val in zip((ma, mi, pa), api):
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_int32)).contents.value = val
        return 0

    return types.SimpleNamespace(
        aclsysGetVersionStr=None if version_str is None else get_str,
        aclsysGetCANNVersion=None if cann is None else get_cann,
        aclrtGetVersion=None if api is None else get_api,
        aclGetRecentErrMsg=lambda: b"why")


def test_fallback_order_hand_made():
    """torch_npu's order: the CANN struct first, then the string query, then the API version."""
    v = acl_versions.query_cann_version(_fake_bindings("8.3.RC1", "8.1.RC1", (1, 2, 3)))
    assert (v["cann_version"], v["cann_version_source"], v["acl_api_version"]) == \
        ("8.1.RC1", "aclsysGetCANNVersion", "1.2.3")
    v = acl_versions.query_cann_version(_fake_bindings("8.3.RC1", None, (1, 2, 3)))
    assert (v["cann_version"], v["cann_version_source"]) == ("8.3.RC1", "aclsysGetVersionStr")
    assert v["attempts"][0] == "aclsysGetCANNVersion: not exported"
    v = acl_versions.query_cann_version(_fake_bindings(507000, "", (1, 2, 3)))
    assert (v["cann_version"], v["cann_version_source"]) == ("acl-api 1.2.3", "aclrtGetVersion")
    assert v["attempts"][:2] == ["aclsysGetCANNVersion: returned an empty string",
                                 "aclsysGetVersionStr('CANN') returned 507000: why"]
    assert v["release_from"] is None and "not a version" in v["release_note"]   # acl-api is no release
    v = acl_versions.query_cann_version(_fake_bindings(None, None, None))
    assert v["cann_version"] is None and len(v["attempts"]) == 5
    assert acl_versions.version_summary_line(v).startswith("unknown (")


def test_toolkit_install_info_and_driver(tmp_path):
    root = tmp_path / "Ascend"
    latest = root / "ascend-toolkit" / "latest"
    (latest / "lib64").mkdir(parents=True)
    (latest / "ascend_toolkit_install.info").write_text(
        "package_name=Ascend-cann-toolkit\nversion=8.0.RC3\ninnerversion=V100R001C19SPC001B100\n"
        "arch=aarch64\n")
    (root / "driver").mkdir()
    (root / "driver" / "version.info").write_text("Version=24.1.rc3\nascendhal_version=7.35.23\n")
    env = {"ASCEND_HOME_PATH": str(latest)}
    tk = host_versions.toolkit_install_info(env)
    assert tk["path"] == str(latest / "ascend_toolkit_install.info")
    assert tk["version"] == "8.0.RC3" and tk["fields"]["innerversion"] == "V100R001C19SPC001B100"
    drv = host_versions.driver_version(env)
    assert drv["version"] == "24.1.rc3" and drv["path"] == str(root / "driver" / "version.info")
    # found next to the loaded library too (no environment variable)
    tk = host_versions.toolkit_install_info({}, library_paths=[str(latest / "lib64" / "libascendcl.so")])
    assert tk["version"] == "8.0.RC3"
    missing = host_versions.toolkit_install_info({"ASCEND_HOME_PATH": str(tmp_path / "none")})
    if missing["path"] is None:                 # (a machine with a real toolkit finds that one)
        assert str(tmp_path / "none" / "ascend_toolkit_install.info") in missing["searched"]


def test_report_environment_records_versions(npu_stub, tmp_path, monkeypatch, tiny_suite, run_cli):
    root = tmp_path / "Ascend" / "ascend-toolkit" / "latest"
    root.mkdir(parents=True)
    (root / "ascend_toolkit_install.info").write_text("version=8.2.RC1\n")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(root))
    out_json = tmp_path / "r.json"
    code, out, err = run_cli("parity", "--suite", tiny_suite, "--case", "tiny-mode0", "--backend", "npu",
                             "--json", out_json, "-q")
    assert code == 0, out + err
    env = json.loads(out_json.read_text())["environment"]
    v = env["versions"]
    assert v["cann"]["cann_version"] == "9.1.0.stub"
    assert v["toolkit_install"]["version"] == "8.2.RC1"
    assert v["packages"] == {"aclnn_fag": aclnn_fag.__version__, "numpy": np.__version__,
                             "ml_dtypes": __import__("ml_dtypes").__version__,
                             "python": env["python"]}
    assert v["blas"]["library"] and (v["blas"]["threads"] is None or v["blas"]["threads"] >= 1)
    assert env["soc_name"] and env["library_paths"]["opapi"].startswith(str(npu_stub))
    summary = host_versions.summary(env)
    assert summary["cann"] == "9.1.0.stub" and summary["toolkit_install"] == "8.2.RC1"


def test_parse_key_values():
    assert host_versions.parse_key_values("# c\nVersion=1.2\n\nx: y\nversion=ignored\n") == \
        {"version": "1.2", "x": "y"}
