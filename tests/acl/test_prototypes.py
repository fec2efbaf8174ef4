"""The prototype table: every native function used is declared, with exact types."""

from __future__ import annotations

import ctypes
import inspect
import pathlib
import re
from ctypes import (POINTER, c_char_p, c_double, c_int, c_int32, c_int64, c_size_t, c_uint32,
                    c_uint64, c_void_p)

import pytest

import aclnn_fag.acl as acl
from aclnn_fag.acl import loader, prototypes
from aclnn_fag.errors import LibraryNotFoundError
from aclnn_fag.spec import BACKWARD_V3, FORWARD_V3

PKG = pathlib.Path(acl.__file__).resolve().parent


def test_c_type_widths_lp64():
    assert ctypes.sizeof(c_int64) == 8
    assert ctypes.sizeof(c_uint64) == 8
    assert ctypes.sizeof(c_size_t) == 8
    assert ctypes.sizeof(c_double) == 8
    assert ctypes.sizeof(c_void_p) == 8
    assert ctypes.sizeof(c_int) == ctypes.sizeof(c_int32) == 4
    assert prototypes.c_widths()["size_t"] == 8


def test_every_bound_function_has_exact_argtypes_and_restype():
    b = loader.bindings()
    for proto in prototypes.PROTOTYPES:
        fn = getattr(b, proto.name)
        if proto.optional and fn is None:
            continue
        assert fn is not None, proto.name
        assert fn.argtypes is not None, f"{proto.name}: argtypes not set"
        assert list(fn.argtypes) == list(proto.argtypes), proto.name
        assert fn.restype is proto.restype, proto.name


def test_pointer_returning_functions_return_pointers():
    table = prototypes.PROTOTYPE_BY_NAME
    for name in ("aclCreateTensor", "aclCreateIntArray"):
        assert table[name].restype is c_void_p
    for name in ("aclGetRecentErrMsg", "aclrtGetSocName"):
        assert table[name].restype is c_char_p
    for name in ("aclrtMalloc", "aclrtMemcpy", "aclrtSetDevice", "aclInit"):
        assert table[name].restype is c_int          # aclError
    for name in ("aclDestroyTensor", prototypes.PHASE1, prototypes.PHASE2):
        assert table[name].restype is c_int32        # aclnnStatus


def test_phase1_has_36_exactly_typed_arguments():
    args = prototypes.PROTOTYPE_BY_NAME[prototypes.PHASE1].argtypes
    assert len(args) == prototypes.PHASE1_NARGS == 36
    assert all(a is c_void_p for a in args[:19])            # 14 tensors + 5 int arrays
    assert args[19] is c_double and args[20] is c_double     # scaleValue, keepProb
    assert args[21:24] == (c_int64, c_int64, c_int64)        # preTokens, nextTokens, headNum
    assert args[24] is c_char_p                              # inputLayout
    assert args[25:28] == (c_int64, c_int64, c_int64)        # innerPrecise, sparseMode, pseType
    assert all(a is c_void_p for a in args[28:34])           # 6 outputs
    assert args[34] is POINTER(c_uint64) and args[35] is POINTER(c_void_p)
    assert prototypes.PROTOTYPE_BY_NAME[prototypes.PHASE2].argtypes == (
        c_void_p, c_uint64, c_void_p, c_void_p)


def test_forward_phase1_has_29_exactly_typed_arguments():
    t = prototypes.PROTOTYPE_BY_NAME
    args = t[prototypes.FWD_PHASE1].argtypes
    assert prototypes.FWD_PHASE1 == "aclnnFlashAttentionVarLenScoreV3GetWorkspaceSize"
    assert len(args) == prototypes.FWD_PHASE1_NARGS == 29
    assert all(a is c_void_p for a in args[:14])            # 9 tensors + 5 int arrays
    assert args[14] is c_double and args[15] is c_double     # scaleValue, keepProb
    assert args[16:19] == (c_int64, c_int64, c_int64)        # preTokens, nextTokens, headNum
    assert args[19] is c_char_p                              # inputLayout
    assert args[20:23] == (c_int64, c_int64, c_int64)        # innerPrecise, sparseMode, pseType
    assert all(a is c_void_p for a in args[23:27])           # 4 outputs
    assert args[27] is POINTER(c_uint64) and args[28] is POINTER(c_void_p)
    assert t[prototypes.FWD_PHASE1].restype is c_int32 and t[prototypes.FWD_PHASE2].restype is c_int32
    assert t[prototypes.FWD_PHASE2].argtypes == (c_void_p, c_uint64, c_void_p, c_void_p)


def test_runtime_argument_widths():
    t = prototypes.PROTOTYPE_BY_NAME
    assert t["aclrtMalloc"].argtypes == (POINTER(c_void_p), c_size_t, c_int)
    assert t["aclrtMemcpy"].argtypes == (c_void_p, c_size_t, c_void_p, c_size_t, c_int)
    assert t["aclrtMemset"].argtypes == (c_void_p, c_size_t, c_int32, c_size_t)
    assert t["aclrtSetDevice"].argtypes == (c_int32,)
    assert t["aclrtGetDeviceCount"].argtypes == (POINTER(c_uint32),)
    assert t["aclrtCtxSetSysParamOpt"].argtypes == (c_int, c_int64)
    assert t["aclrtCtxGetSysParamOpt"].argtypes == (c_int, POINTER(c_int64))
    assert t["aclCreateTensor"].argtypes == (POINTER(c_int64), c_uint64, c_int, POINTER(c_int64),
                                             c_int64, c_int, POINTER(c_int64), c_uint64, c_void_p)
    assert t["aclCreateIntArray"].argtypes == (POINTER(c_int64), c_uint64)
    assert t["aclSetInputTensorAddr"].argtypes == (c_void_p, c_size_t, c_void_p, c_void_p)


def test_every_native_name_used_in_the_package_is_declared():
    used = set()
    pattern = re.compile(r"\b(?:b|st\.b)\.(acl[A-Za-z0-9]+)\b")
    for path in PKG.glob("*.py"):
        used.update(pattern.findall(path.read_text(encoding="utf-8")))
        # names passed as strings (getattr(b, "..."), error reports)
        used.update(n for n in re.findall(r'"(acl[A-Za-z0-9]+)"', path.read_text(encoding="utf-8"))
                    if n != "aclrt")
    assert {"aclrtMalloc", "aclDestroyTensor", "aclDestroyAclOpExecutor",
            "aclGetRecentErrMsg"} <= used, "the scan missed known uses"
    missing = sorted(n for n in used if n not in prototypes.PROTOTYPE_BY_NAME)
    assert not missing, f"used without a prototype: {missing}"


def test_optional_symbols_are_probed():
    assert set(prototypes.OPTIONAL) == {
        "aclrtGetSocName", "aclGetRecentErrMsg", "aclrtCtxSetSysParamOpt", "aclrtCtxGetSysParamOpt",
        "aclrtGetCurrentContext",
        "aclSetAclOpExecutorRepeatable", "aclSetInputTensorAddr", "aclSetOutputTensorAddr",
        "aclsysGetVersionStr", "aclsysGetCANNVersion", "aclrtGetVersion", "aclsysGetVersionNum",
        "aclrtSetSysParamOpt", "aclrtGetSysParamOpt",
        prototypes.FWD_PHASE1, prototypes.FWD_PHASE2, "aclStubGetCounters"}
    b = loader.bindings()
    for name in prototypes.OPTIONAL:
        assert b.has(name), name      # the stubs export all of them


class _Hiding:
    """A CDLL stand-in that hides some names (as an older CANN would not export them)."""

    def __init__(self, lib, hidden):
        self._lib, self._hidden, self._handle = lib, set(hidden), lib._handle

    def __getitem__(self, name):
        if name in self._hidden:
            raise AttributeError(name)
        return self._lib[name]


def test_bind_reports_missing_required_symbols():
    libm = ctypes.CDLL("libm.so.6")     # dlsym on it searches libm and its dependencies only
    fake = loader.Libraries({"runtime": libm, "nnopbase": libm, "opapi": libm},
                            {"runtime": "libm", "nnopbase": "libm", "opapi": "libm"})
    with pytest.raises(LibraryNotFoundError) as info:
        prototypes.bind(fake)
    msg = str(info.value)
    assert "aclrtMalloc" in msg and prototypes.PHASE1 in msg and "ACLNN_FAG_LIB_DIR" in msg


def test_bind_tolerates_missing_optional_symbols():
    libs = loader.libraries()
    hidden = prototypes.OPTIONAL
    fake = loader.Libraries({r: _Hiding(h, hidden) for r, h in libs.handles.items()},
                            dict(libs.paths))
    b = prototypes.bind(fake)
    for name in hidden:
        assert getattr(b, name) is None and not b.has(name)
    assert b.aclrtMalloc is not None
    hide_required = loader.Libraries({r: _Hiding(h, ["aclDestroyTensor"])
                                      for r, h in libs.handles.items()}, dict(libs.paths))
    with pytest.raises(LibraryNotFoundError, match="aclDestroyTensor"):
        prototypes.bind(hide_required)


def test_function_pointers_are_private_to_the_bindings():
    """Binding uses handle[name]: other users of the same CDLL keep their own argtypes."""
    b = loader.bindings()
    lib = loader.libraries().handles["runtime"]
    other = lib.aclrtMalloc          # attribute access: cached on the CDLL, untyped here
    assert other is not b.aclrtMalloc
    assert other.argtypes is None


@pytest.mark.parametrize("op, raw, result", [(BACKWARD_V3, "call_raw", "FagGrads"),
                                             (FORWARD_V3, "call_raw_forward", "FagForward")])
def test_raw_calls_take_the_parameters_of_the_spec_in_order(op, raw, result):
    """call_raw / call_raw_forward: one keyword per C parameter of the op's spec, in the C
    order, the attributes with the spec's defaults; then the raw call's own options."""
    params = inspect.signature(getattr(acl, raw)).parameters
    c_params = [p for p in op.params if p.role in ("input", "int_array", "attr", "output")]
    assert list(params)[:len(c_params)] == [p.name for p in c_params]
    assert list(params)[len(c_params):] == ["workspace_size_out", "executor_out",
                                            "deterministic", "device_id", "timings"]
    for p in c_params:
        want = p.default if p.role == "attr" else params[p.name].default
        assert params[p.name].default == want or params[p.name].default is want, p.name
        assert params[p.name].kind is inspect.Parameter.KEYWORD_ONLY
    assert all(params[n].default is None for n in op.inputs + op.int_arrays)
    assert getattr(acl, raw).__name__ == raw and result in (getattr(acl, raw).__doc__ or "")


def test_op_prototypes_follow_the_spec():
    for op in (BACKWARD_V3, FORWARD_V3):
        p1, p2 = prototypes.PROTOTYPE_BY_NAME[op.phase1], prototypes.PROTOTYPE_BY_NAME[op.phase2]
        assert len(p1.argtypes) == len(op.params) and len(p2.argtypes) == 4
        assert (p1.optional, p2.optional) == (op.optional_symbols,) * 2
