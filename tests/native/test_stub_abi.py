"""ABI and behaviour tests for the stand-in CANN libraries in native_stubs/.

The stubs are built with native_stubs/build.py and loaded with ctypes; every
prototype is declared locally here from docs/abi.md, so these
tests do not depend on the package's own binding.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
from ctypes import POINTER, byref, c_char_p, c_double, c_int, c_int32, c_int64, c_size_t, c_uint32, c_uint64, c_void_p

import ml_dtypes
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD_PY = ROOT / "native_stubs" / "build.py"

# status codes (docs/abi.md §3)
ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_SYSPARAMOPT_NOT_SET = 107021
ACL_ERROR_RT_MEMORY_ALLOCATION = 207001
ACLNN_ERR_PARAM_NULLPTR = 161001
ACLNN_ERR_PARAM_INVALID = 161002

# enums
DT_FLOAT, DT_UINT8, DT_INT8, DT_BOOL, DT_BF16 = 0, 4, 2, 12, 27
FORMAT_ND = 2
H2H, H2D, D2H, D2D = 0, 1, 2, 3

PHASE1 = "aclnnFlashAttentionUnpaddingScoreGradV3GetWorkspaceSize"
PHASE2 = "aclnnFlashAttentionUnpaddingScoreGradV3"

P_I64 = POINTER(c_int64)

EXPECTED_EXPORTS = {
    "libascendcl.so": {
        "aclInit", "aclFinalize", "aclrtSetDevice", "aclrtResetDevice", "aclrtGetDeviceCount",
        "aclrtCreateStream", "aclrtDestroyStream", "aclrtSynchronizeStream", "aclrtMalloc", "aclrtFree",
        "aclrtMemcpy", "aclrtMemset", "aclrtGetSocName", "aclGetRecentErrMsg", "aclrtCtxSetSysParamOpt",
        "aclrtCtxGetSysParamOpt", "aclrtSetSysParamOpt", "aclrtGetSysParamOpt", "aclrtGetCurrentContext",
        "aclsysGetVersionStr", "aclsysGetCANNVersion", "aclrtGetVersion",     # version queries
        "aclsysGetVersionNum",
        # stub-only
        "stub_release", "aclStubInjectFailure", "aclStubClearFailures", "aclStubGetCounters", "aclStubInternalApi",
        "aclStubSetCallDelay", "aclStubGetBadReleases",
        "aclStubRecordLaunch", "aclStubStreamCounts",
    },
    "libnnopbase.so": {
        "aclCreateTensor", "aclDestroyTensor", "aclCreateIntArray", "aclDestroyIntArray",
        "aclSetAclOpExecutorRepeatable", "aclDestroyAclOpExecutor", "aclSetInputTensorAddr",
        "aclSetOutputTensorAddr", "aclSetTensorAddr", "aclnnInit", "aclnnFinalize",
    },
    "libopapi.so": {PHASE1, PHASE2,
                    # the forward (opapi_fwd_stub.c)
                    "aclnnFlashAttentionVarLenScoreV3GetWorkspaceSize",
                    "aclnnFlashAttentionVarLenScoreV3"},
}


def _load_build_module():
    spec = importlib.util.spec_from_file_location("native_stubs_build", BUILD_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _decl(lib, name, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


class Stubs:
    """The three libraries with locally declared prototypes."""

    def __init__(self, libdir: pathlib.Path):
        mode = os.RTLD_NOW | os.RTLD_GLOBAL
        self.libdir = pathlib.Path(libdir)
        self.asc = ctypes.CDLL(str(self.libdir / "libascendcl.so"), mode=mode)
        self.nn = ctypes.CDLL(str(self.libdir / "libnnopbase.so"), mode=mode)
        self.op = ctypes.CDLL(str(self.libdir / "libopapi.so"), mode=mode)
        a, n, o = self.asc, self.nn, self.op
        self.aclInit = _decl(a, "aclInit", c_int, c_char_p)
        self.aclFinalize = _decl(a, "aclFinalize", c_int)
        self.aclrtSetDevice = _decl(a, "aclrtSetDevice", c_int, c_int32)
        self.aclrtResetDevice = _decl(a, "aclrtResetDevice", c_int, c_int32)
        self.aclrtGetDeviceCount = _decl(a, "aclrtGetDeviceCount", c_int, POINTER(c_uint32))
        self.aclrtCreateStream = _decl(a, "aclrtCreateStream", c_int, POINTER(c_void_p))
        self.aclrtDestroyStream = _decl(a, "aclrtDestroyStream", c_int, c_void_p)
        self.aclrtSynchronizeStream = _decl(a, "aclrtSynchronizeStream", c_int, c_void_p)
        self.aclrtMalloc = _decl(a, "aclrtMalloc", c_int, POINTER(c_void_p), c_size_t, c_int)
        self.aclrtFree = _decl(a, "aclrtFree", c_int, c_void_p)
        self.aclrtMemcpy = _decl(a, "aclrtMemcpy", c_int, c_void_p, c_size_t, c_void_p, c_size_t, c_int)
        self.aclrtMemset = _decl(a, "aclrtMemset", c_int, c_void_p, c_size_t, c_int32, c_size_t)
        self.aclrtGetSocName = _decl(a, "aclrtGetSocName", c_char_p)
        self.aclGetRecentErrMsg = _decl(a, "aclGetRecentErrMsg", c_char_p)
        self.aclrtCtxSetSysParamOpt = _decl(a, "aclrtCtxSetSysParamOpt", c_int, c_int, c_int64)
        self.aclrtCtxGetSysParamOpt = _decl(a, "aclrtCtxGetSysParamOpt", c_int, c_int, P_I64)
        self.aclStubInjectFailure = _decl(a, "aclStubInjectFailure", None, c_char_p, c_int64, c_int32)
        self.aclStubClearFailures = _decl(a, "aclStubClearFailures", None)
        self.aclStubGetCounters = _decl(a, "aclStubGetCounters", None, P_I64, P_I64, P_I64, P_I64, P_I64)
        self.aclCreateTensor = _decl(n, "aclCreateTensor", c_void_p, P_I64, c_uint64, c_int, P_I64, c_int64, c_int,
                                     P_I64, c_uint64, c_void_p)
        self.aclDestroyTensor = _decl(n, "aclDestroyTensor", c_int32, c_void_p)
        self.aclCreateIntArray = _decl(n, "aclCreateIntArray", c_void_p, P_I64, c_uint64)
        self.aclDestroyIntArray = _decl(n, "aclDestroyIntArray", c_int32, c_void_p)
        self.aclSetAclOpExecutorRepeatable = _decl(n, "aclSetAclOpExecutorRepeatable", c_int32, c_void_p)
        self.aclDestroyAclOpExecutor = _decl(n, "aclDestroyAclOpExecutor", c_int32, c_void_p)
        self.aclSetInputTensorAddr = _decl(n, "aclSetInputTensorAddr", c_int32, c_void_p, c_size_t, c_void_p,
                                           c_void_p)
        self.aclSetOutputTensorAddr = _decl(n, "aclSetOutputTensorAddr", c_int32, c_void_p, c_size_t, c_void_p,
                                            c_void_p)
        self.phase1 = _decl(o, PHASE1, c_int32,
                            *([c_void_p] * 19), c_double, c_double, c_int64, c_int64, c_int64, c_char_p,
                            c_int64, c_int64, c_int64, *([c_void_p] * 6), POINTER(c_uint64), POINTER(c_void_p))
        self.phase2 = _decl(o, PHASE2, c_int32, c_void_p, c_uint64, c_void_p, c_void_p)

    # -- helpers ---------------------------------------------------------
    def counters(self):
        vals = [c_int64() for _ in range(5)]
        self.aclStubGetCounters(*[byref(v) for v in vals])
        return tuple(v.value for v in vals)

    def err(self):
        msg = self.aclGetRecentErrMsg()
        return msg.decode() if msg is not None else None

    def malloc(self, nbytes):
        p = c_void_p()
        rc = self.aclrtMalloc(byref(p), nbytes, 0)
        assert rc == 0, (rc, self.err())
        return p.value

    def upload(self, arr):
        arr = np.ascontiguousarray(arr)
        ptr = self.malloc(max(arr.nbytes, 1))
        rc = self.aclrtMemcpy(ptr, arr.nbytes, arr.ctypes.data, arr.nbytes, H2D)
        assert rc == 0, (rc, self.err())
        return ptr

    def download(self, ptr, shape, dtype):
        out = np.empty(shape, dtype)
        rc = self.aclrtMemcpy(out.ctypes.data, out.nbytes, ptr, out.nbytes, D2H)
        assert rc == 0, (rc, self.err())
        return out

    def tensor(self, shape, dtype, ptr, strides=None, offset=0, storage=None):
        shape = list(shape)
        if storage is None:
            storage = [int(np.prod(shape))] if shape else []
        vd = (c_int64 * max(len(shape), 1))(*shape)
        sd = (c_int64 * max(len(storage), 1))(*storage)
        st = (c_int64 * len(strides))(*strides) if strides is not None else None
        return self.aclCreateTensor(vd, len(shape), dtype, st, offset, FORMAT_ND, sd, len(storage), ptr)

    def int_array(self, values):
        arr = (c_int64 * max(len(values), 1))(*values)
        return self.aclCreateIntArray(arr, len(values))


@pytest.fixture(scope="module")
def libdir():
    return _load_build_module().build()


@pytest.fixture(scope="module")
def acl(libdir):
    s = Stubs(libdir)
    rc = s.aclInit(None)
    assert rc in (ACL_SUCCESS, ACL_ERROR_REPEAT_INITIALIZE)
    assert s.aclrtSetDevice(0) == 0, s.err()
    s.aclStubClearFailures()
    yield s
    s.aclStubClearFailures()
    s.aclrtResetDevice(0)


# ---------------------------------------------------------------------------
# build and exports
# ---------------------------------------------------------------------------

def test_build_is_idempotent_and_cli_prints_dir(libdir):
    mod = _load_build_module()
    before = {n: (libdir / n).stat().st_mtime_ns for n in mod.LIBS}
    assert mod.build() == libdir
    assert {n: (libdir / n).stat().st_mtime_ns for n in mod.LIBS} == before  # nothing rebuilt
    out = subprocess.run([sys.executable, str(BUILD_PY)], capture_output=True, text=True, check=True)
    assert pathlib.Path(out.stdout.strip()) == libdir


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm not available")
def test_exported_symbols_per_library(libdir):
    for lib, expected in EXPECTED_EXPORTS.items():
        out = subprocess.run(["nm", "-D", "--defined-only", str(libdir / lib)], capture_output=True, text=True,
                             check=True).stdout
        exported = {line.split()[-1] for line in out.splitlines() if len(line.split()) == 3
                    and line.split()[1] in "TDBRW"}
        assert exported == expected, (lib, exported ^ expected)


def test_opapi_alone_pulls_in_the_stack(libdir):
    code = ("import ctypes,sys; l=ctypes.CDLL(sys.argv[1]); "
            "print(all(hasattr(l,n) for n in ('aclrtMalloc','aclCreateTensor','%s')))" % PHASE1)
    out = subprocess.run([sys.executable, "-c", code, str(libdir / "libopapi.so")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True"


# ---------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------

def test_acl_init_repeat_and_recent_error_message(acl):
    assert acl.aclInit(None) == ACL_ERROR_REPEAT_INITIALIZE
    msg = acl.err()
    assert msg is not None and "aclInit" in msg
    assert acl.err() is None  # read-and-clear


def test_device_count_and_invalid_device(acl):
    n = c_uint32()
    assert acl.aclrtGetDeviceCount(byref(n)) == 0
    assert n.value == 1  # default without ACL_STUB_DEVICE_COUNT
    assert acl.aclrtSetDevice(n.value) == ACL_ERROR_RT_INVALID_DEVICEID
    assert acl.aclrtGetSocName() == b"Ascend910B_stub"


def test_device_count_env_zero(libdir):
    code = ("import ctypes,sys; d=sys.argv[1]; m=ctypes.RTLD_GLOBAL\n"
            "a=ctypes.CDLL(d+'/libascendcl.so',mode=m)\n"
            "a.aclrtGetSocName.restype=ctypes.c_char_p\n"
            "n=ctypes.c_uint32(7); rc=a.aclrtGetDeviceCount(ctypes.byref(n))\n"
            "print(rc, n.value, a.aclrtSetDevice(0), a.aclrtGetSocName())")
    env = dict(os.environ, ACL_STUB_DEVICE_COUNT="0")
    out = subprocess.run([sys.executable, "-c", code, str(libdir)], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.split() == ["0", "0", str(ACL_ERROR_RT_INVALID_DEVICEID), "None"]


def test_thread_without_set_device_gets_context_null(acl):
    results = {}

    def worker():
        p = c_void_p()
        results["malloc"] = acl.aclrtMalloc(byref(p), 64, 0)
        s = c_void_p()
        results["stream"] = acl.aclrtCreateStream(byref(s))
        buf = np.zeros(4, np.uint8)
        results["memcpy"] = acl.aclrtMemcpy(buf.ctypes.data, 4, buf.ctypes.data, 4, H2H)
        results["sync"] = acl.aclrtSynchronizeStream(None)
        ws, ex = c_uint64(), c_void_p()
        results["phase1"] = acl.phase1(*([None] * 19), 1.0, 1.0, 0, 0, 1, b"TND", 0, 3, 1, *([None] * 6),
                                       byref(ws), byref(ex))
        results["phase2"] = acl.phase2(None, 0, None, None)
        results["ctxopt"] = acl.aclrtCtxSetSysParamOpt(0, 1)
        # once the thread sets the device it works, and resetting it does not
        # take the device away from the main thread
        results["set"] = acl.aclrtSetDevice(0)
        results["malloc2"] = acl.aclrtMalloc(byref(p), 64, 0)
        results["free2"] = acl.aclrtFree(p)
        results["reset"] = acl.aclrtResetDevice(0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    for key in ("malloc", "stream", "memcpy", "sync", "phase1", "phase2", "ctxopt"):
        assert results[key] == ACL_ERROR_RT_CONTEXT_NULL, (key, results[key])
    assert (results["set"], results["malloc2"], results["free2"], results["reset"]) == (0, 0, 0, 0)
    ptr = acl.malloc(32)  # main thread still has its device
    assert acl.aclrtFree(ptr) == 0


def test_memcpy_and_memset_kind_checks(acl):
    dev = acl.malloc(64)
    dev2 = acl.malloc(64)
    host = np.arange(64, dtype=np.uint8)
    back = np.zeros(64, np.uint8)
    h, b = host.ctypes.data, back.ctypes.data
    try:
        assert acl.aclrtMemcpy(dev, 64, h, 64, H2D) == 0
        assert acl.aclrtMemcpy(dev2, 64, dev, 64, D2D) == 0
        assert acl.aclrtMemcpy(b, 64, dev2, 64, D2H) == 0
        assert np.array_equal(back, host)
        # wrong direction / host pointers where device memory is needed
        assert acl.aclrtMemcpy(b, 64, h, 64, H2D) == ACL_ERROR_INVALID_PARAM
        assert acl.aclrtMemcpy(dev, 64, dev2, 64, H2D) == ACL_ERROR_INVALID_PARAM
        assert acl.aclrtMemcpy(b, 64, h, 64, D2H) == ACL_ERROR_INVALID_PARAM
        assert acl.aclrtMemcpy(dev, 64, h, 64, D2D) == ACL_ERROR_INVALID_PARAM
        # range beyond the allocation, count > destMax
        assert acl.aclrtMemcpy(dev + 32, 64, h, 64, H2D) == ACL_ERROR_INVALID_PARAM
        assert "dst" in acl.err()
        assert acl.aclrtMemcpy(dev, 16, h, 32, H2D) == ACL_ERROR_INVALID_PARAM
        # memset
        assert acl.aclrtMemset(dev, 64, 0, 64) == 0
        assert acl.aclrtMemset(dev + 8, 64, 0, 64) == ACL_ERROR_INVALID_PARAM
        assert acl.aclrtMemset(h, 64, 0, 64) == ACL_ERROR_INVALID_PARAM
        assert acl.aclrtMemset(dev, 8, 0, 16) == ACL_ERROR_INVALID_PARAM
        # free: host / interior pointer
        assert acl.aclrtFree(h) == ACL_ERROR_RT_PARAM_INVALID
        assert acl.aclrtFree(dev + 8) == ACL_ERROR_RT_PARAM_INVALID
    finally:
        assert acl.aclrtFree(dev) == 0
        assert acl.aclrtFree(dev2) == 0
    assert acl.aclrtFree(dev) == ACL_ERROR_RT_PARAM_INVALID  # double free


def test_ctx_sys_param_has_no_default_in_a_fresh_process(libdir):
    code = ("import ctypes,sys; a=ctypes.CDLL(sys.argv[1]+'/libascendcl.so')\n"
            "v=ctypes.c_int64(-5); a.aclrtSetDevice(0)\n"
            "r1=a.aclrtCtxGetSysParamOpt(0, ctypes.byref(v)); r2=a.aclrtCtxSetSysParamOpt(0, ctypes.c_int64(1))\n"
            "r3=a.aclrtCtxGetSysParamOpt(0, ctypes.byref(v)); print(r1, r2, r3, v.value)")
    out = subprocess.run([sys.executable, "-c", code, str(libdir)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(ACL_ERROR_RT_SYSPARAMOPT_NOT_SET), "0", "0", "1"]


# ---------------------------------------------------------------------------
# tensors, int arrays, counters, failure injection
# ---------------------------------------------------------------------------

def test_create_tensor_device_memory_checks(acl):
    dev = acl.malloc(64)
    host_block = np.zeros(64 + 8, np.float32)
    # a 32-byte-aligned host pointer, so the device-memory check (not alignment) rejects it
    host = host_block[(-host_block.ctypes.data % 32) // 4:][:64]
    assert host.ctypes.data % 32 == 0
    try:
        t = acl.tensor([16], DT_FLOAT, dev)
        assert t
        assert acl.aclDestroyTensor(t) == 0
        # host pointer
        assert not acl.tensor([4], DT_FLOAT, host.ctypes.data)
        assert "device memory" in acl.err()
        # view reaches past the allocation (17 floats in 64 bytes)
        assert not acl.tensor([17], DT_FLOAT, dev)
        assert "allocation" in acl.err()
        # view reaches past storageDims: max index 3*2 = 6 >= 6 elements
        assert not acl.tensor([4], DT_FLOAT, dev, strides=[2], storage=[6])
        assert "storageDims" in acl.err()
        # offset view: offset 12 + 3 = 15 < 16 ok, 13 + 3 = 16 not
        t = acl.tensor([4], DT_FLOAT, dev, offset=12, storage=[16])
        assert t and acl.aclDestroyTensor(t) == 0
        assert not acl.tensor([4], DT_FLOAT, dev, offset=13, storage=[17])
        # misaligned base, unsupported dtype, NULL data with / without elements
        assert not acl.tensor([2], DT_FLOAT, dev + 4)
        assert "aligned" in acl.err()
        assert not acl.tensor([2], DT_INT8, dev)
        assert not acl.tensor([2], DT_FLOAT, None)
        t = acl.tensor([0, 3], DT_BF16, None)
        assert t and acl.aclDestroyTensor(t) == 0
        assert acl.aclDestroyTensor(None) == 0
    finally:
        assert acl.aclrtFree(dev) == 0


def test_counters_return_to_baseline(acl):
    base = acl.counters()
    dev = acl.malloc(96)
    t = acl.tensor([8], DT_FLOAT, dev)
    arr = acl.int_array([3, 5, 9])
    s = c_void_p()
    assert acl.aclrtCreateStream(byref(s)) == 0
    now = acl.counters()
    assert tuple(n - b for n, b in zip(now, base)) == (1, 1, 0, 96, 1)
    assert acl.aclDestroyTensor(t) == 0
    assert acl.aclDestroyIntArray(arr) == 0
    assert acl.aclrtSynchronizeStream(s) == 0
    assert acl.aclrtDestroyStream(s) == 0
    assert acl.aclrtFree(dev) == 0
    assert acl.counters() == base
    # double destroys are reported, not crashes
    assert acl.aclDestroyTensor(t) == ACLNN_ERR_PARAM_NULLPTR
    assert acl.aclDestroyIntArray(arr) == ACLNN_ERR_PARAM_NULLPTR
    assert acl.aclrtDestroyStream(s) == ACL_ERROR_RT_PARAM_INVALID
    assert acl.counters() == base


def test_failure_injection(acl):
    base = acl.counters()
    acl.aclStubInjectFailure(b"aclrtMalloc", 1, ACL_ERROR_RT_MEMORY_ALLOCATION)
    p1 = acl.malloc(32)  # first call passes
    p = c_void_p()
    assert acl.aclrtMalloc(byref(p), 32, 0) == ACL_ERROR_RT_MEMORY_ALLOCATION
    assert "injected" in acl.err()
    p2 = acl.malloc(32)  # fires once only
    acl.aclStubInjectFailure(b"aclCreateTensor", 0, ACLNN_ERR_PARAM_INVALID)
    assert not acl.tensor([2], DT_FLOAT, p1)
    t = acl.tensor([2], DT_FLOAT, p1)
    assert t and acl.aclDestroyTensor(t) == 0
    acl.aclStubInjectFailure(b"aclrtSynchronizeStream", 0, 507015)
    acl.aclStubClearFailures()
    assert acl.aclrtSynchronizeStream(None) == 0
    acl.aclStubInjectFailure(b"aclrtSynchronizeStream", 0, 507015)
    assert acl.aclrtSynchronizeStream(None) == 507015
    assert acl.aclrtFree(p1) == 0 and acl.aclrtFree(p2) == 0
    assert acl.counters() == base


# ---------------------------------------------------------------------------
# the operator
# ---------------------------------------------------------------------------

BF16 = ml_dtypes.bfloat16


class FagCase:
    """A small V3 call with device buffers; inputs as slices of shared buffers.

    query/queryRope are views of one [T,N1,D+Dr] buffer, keyIn/keyInRope of
    one [T,N2,D+Dr] buffer, and dqOut/dqRopeOut, dkOut/dkRopeOut likewise.
    """

    def __init__(self, acl: Stubs, *, T=16, N1=2, N2=1, D=16, Dr=8, Dv=16, cum_q=(5, 16), cum_kv=(7, 16),
                 sparse_mode=3, pre=65536, nxt=65536, mask_kind="compressed", seed=0):
        self.acl = acl
        self.T, self.N1, self.N2, self.D, self.Dr, self.Dv = T, N1, N2, D, Dr, Dv
        self.cum_q, self.cum_kv = list(cum_q), list(cum_kv)
        self.sparse_mode, self.pre, self.nxt, self.mask_kind = sparse_mode, pre, nxt, mask_kind
        self.scale = 1.0 / np.sqrt(D + Dr)
        rng = np.random.default_rng(seed)
        self.qfull = rng.standard_normal((T, N1, D + Dr)).astype(BF16)
        self.kfull = rng.standard_normal((T, N2, D + Dr)).astype(BF16)
        self.v = rng.standard_normal((T, N2, Dv)).astype(BF16)
        self.dy = rng.standard_normal((T, N1, Dv)).astype(BF16)
        self._tokens()
        self._make_mask(rng)
        self._forward()
        self.ptrs, self.tensors, self.arrays = [], [], []
        up = self._up
        self.p_q, self.p_k = up(self.qfull), up(self.kfull)
        self.p_v, self.p_dy, self.p_attn = up(self.v), up(self.dy), up(self.attn)
        self.p_mask, self.p_smax, self.p_ssum = up(self.mask), up(self.smax), up(self.ssum)
        self.p_dq = self._alloc(T * N1 * (D + Dr) * 2)
        self.p_dk = self._alloc(T * N2 * (D + Dr) * 2)
        self.p_dv = self._alloc(T * N2 * Dv * 2)
        W = D + Dr
        qs = [N1 * W, W, 1]
        ks = [N2 * W, W, 1]
        t = self._t
        self.t_q = t([T, N1, D], DT_BF16, self.p_q, qs, 0, [T * N1 * W])
        self.t_qr = t([T, N1, Dr], DT_BF16, self.p_q, qs, D, [T * N1 * W])
        self.t_k = t([T, N2, D], DT_BF16, self.p_k, ks, 0, [T * N2 * W])
        self.t_kr = t([T, N2, Dr], DT_BF16, self.p_k, ks, D, [T * N2 * W])
        self.t_v = t([T, N2, Dv], DT_BF16, self.p_v)
        self.t_dy = t([T, N1, Dv], DT_BF16, self.p_dy)
        self.t_attn = t([T, N1, Dv], DT_BF16, self.p_attn)
        self.t_mask = t(list(self.mask.shape), DT_UINT8, self.p_mask)
        self.t_smax = t([T, N1, 8], DT_FLOAT, self.p_smax)
        self.t_ssum = t([T, N1, 8], DT_FLOAT, self.p_ssum)
        self.t_dq = t([T, N1, D], DT_BF16, self.p_dq, qs, 0, [T * N1 * W])
        self.t_dqr = t([T, N1, Dr], DT_BF16, self.p_dq, qs, D, [T * N1 * W])
        self.t_dk = t([T, N2, D], DT_BF16, self.p_dk, ks, 0, [T * N2 * W])
        self.t_dkr = t([T, N2, Dr], DT_BF16, self.p_dk, ks, D, [T * N2 * W])
        self.t_dv = t([T, N2, Dv], DT_BF16, self.p_dv)
        self.a_q = self._a(self.cum_q)
        self.a_kv = self._a(self.cum_kv)
        # non-NULL start indices, as the binding always passes them (NULL ones may select the
        # stub's model of the rope-blind "MLA basic" templates)
        self.a_qs0 = self._a([0])
        self.a_kvs0 = self._a([0])

    # -- resources -------------------------------------------------------
    def _alloc(self, n):
        p = self.acl.malloc(n)
        self.ptrs.append(p)
        return p

    def _up(self, arr):
        p = self.acl.upload(arr)
        self.ptrs.append(p)
        return p

    def _t(self, *args):
        h = self.acl.tensor(*args)
        assert h, self.acl.err()
        self.tensors.append(h)
        return h

    def _a(self, values):
        h = self.acl.int_array(values)
        assert h
        self.arrays.append(h)
        return h

    def close(self):
        for h in self.tensors:
            assert self.acl.aclDestroyTensor(h) == 0
        for h in self.arrays:
            assert self.acl.aclDestroyIntArray(h) == 0
        for p in self.ptrs:
            assert self.acl.aclrtFree(p) == 0
        self.tensors, self.arrays, self.ptrs = [], [], []

    # -- math (float64), written from docs/semantics.md and docs/sparse_modes.md ---------------
    def _batches(self):
        qs = ks = 0
        for b, (qe, ke) in enumerate(zip(self.cum_q, self.cum_kv)):
            yield b, qs, qe - qs, ks, ke - ks
            qs, ks = qe, ke

    def _tokens(self):
        i32 = 2147483647
        pre, nxt = min(self.pre, i32), min(self.nxt, i32)
        if self.sparse_mode in (2, 3):
            pre, nxt = i32, 0
        elif self.sparse_mode == 1:
            pre, nxt = i32, i32
        self.pre_eff, self.next_eff = pre, nxt
        sq = [n for _, _, n, _, _ in self._batches()]  # (no trailing empty batches in these cases)
        nz = [b for b, n in enumerate(sq) if n != 0] or [0]
        self.band = nz[-1] if self.sparse_mode == 7 else nz[0]

    def _make_mask(self, rng):
        sqs = [n for _, _, n, _, _ in self._batches()]
        skvs = [m for _, _, _, _, m in self._batches()]
        ms, mk, B = max(sqs), max(skvs), len(sqs)
        rand = lambda shape: (rng.random(shape) < 0.3).astype(np.uint8)
        if self.mask_kind == "compressed":
            self.mask = np.triu(np.ones((2048, 2048), np.uint8), 1)
        elif self.mask_kind == "2d":
            self.mask = rand((ms, mk))
        elif self.mask_kind == "11ss":
            self.mask = rand((1, 1, ms, mk))
        elif self.mask_kind == "b1ss":
            self.mask = rand((B, 1, ms, mk))
        elif self.mask_kind == "bnss":
            self.mask = rand((B, self.N1, ms, mk))
        else:
            raise ValueError(self.mask_kind)

    def _mask_block(self, b, h, sq, skv):
        if self.mask_kind in ("2d", "11ss"):
            return self.mask.reshape(self.mask.shape[-2:])[:sq, :skv]
        # 4-D [B,1,..] / [B,N1,..]: packed ragged blocks
        base = sum(n * m for bb, _, n, _, m in self._batches() if bb < b)
        flat = self.mask.reshape(-1)
        if self.mask_kind == "bnss":
            base = self.N1 * base + h * sq * skv
        return flat[base:base + sq * skv].reshape(sq, skv)

    def _kept(self, b, h, sq, skv):
        i = np.arange(sq)[:, None]
        j = np.arange(skv)[None, :]
        d, pre, nxt, mode = skv - sq, self.pre_eff, self.next_eff, self.sparse_mode
        if mode in (0, 1, 5):
            kept = self._mask_block(b, h, sq, skv) == 0
            if mode != 1:
                kept = kept & (j - i >= -pre) & (j - i <= nxt)
            return kept
        if mode == 2:
            return np.broadcast_to(j <= i, (sq, skv))
        if mode == 3:
            return np.broadcast_to(j - i <= d, (sq, skv))
        band = (j - i >= d - pre) & (j - i <= d + nxt)
        if mode == 4 or (mode in (7, 8) and b == self.band):
            return band
        return np.broadcast_to((j - i <= d) if mode == 7 else (j <= i), (sq, skv))

    def _scores(self, qs, sq, ks, skv, h):
        f64 = np.float64
        n2 = h // (self.N1 // self.N2)
        q = self.qfull[qs:qs + sq, h].astype(f64)
        k = self.kfull[ks:ks + skv, n2].astype(f64)
        return q @ k.T * self.scale, n2  # [q|qRope].[k|kRope]^T

    def _forward(self):
        T, N1, Dv = self.T, self.N1, self.Dv
        attn = np.zeros((T, N1, Dv))
        flat_max = np.zeros(T * N1 * 8, np.float32)
        flat_sum = np.ones(T * N1 * 8, np.float32)
        self.P = {}
        for b, qs, sq, ks, skv in self._batches():
            if sq == 0 or skv == 0:
                continue
            for h in range(N1):
                kept = self._kept(b, h, sq, skv)
                s, n2 = self._scores(qs, sq, ks, skv, h)
                s = np.where(kept, s, -np.inf)
                row_ok = kept.any(axis=1)
                m = np.where(row_ok, s.max(axis=1, initial=-np.inf, where=kept), 0.0)
                e = np.where(kept, np.exp(s - m[:, None]), 0.0)
                l = np.where(row_ok, e.sum(axis=1), 1.0)
                p = e / l[:, None]
                self.P[(qs, h)] = p
                attn[qs:qs + sq, h] = p @ self.v[ks:ks + skv, n2].astype(np.float64)
                for i in range(sq):
                    base = qs * N1 * 8 + (h * sq + i) * 8
                    flat_max[base:base + 8] = m[i]
                    flat_sum[base:base + 8] = l[i]
        self.attn = attn.astype(BF16)
        self.smax = flat_max.reshape(T, N1, 8)
        self.ssum = flat_sum.reshape(T, N1, 8)

    def reference(self):
        f64 = np.float64
        T, N1, N2, D, Dr, Dv = self.T, self.N1, self.N2, self.D, self.Dr, self.Dv
        dqf = np.zeros((T, N1, D + Dr))
        dkf = np.zeros((T, N2, D + Dr))
        dv = np.zeros((T, N2, Dv))
        for _, qs, sq, ks, skv in self._batches():
            if sq == 0 or skv == 0:
                continue
            for h in range(N1):
                n2 = h // (N1 // N2)
                p = self.P[(qs, h)]
                dy = self.dy[qs:qs + sq, h].astype(f64)
                o = self.attn[qs:qs + sq, h].astype(f64)
                v = self.v[ks:ks + skv, n2].astype(f64)
                k = self.kfull[ks:ks + skv, n2].astype(f64)
                q = self.qfull[qs:qs + sq, h].astype(f64)
                ds = p * (dy @ v.T - (dy * o).sum(axis=1, keepdims=True))
                dqf[qs:qs + sq, h] += self.scale * ds @ k
                dkf[ks:ks + skv, n2] += self.scale * ds.T @ q
                dv[ks:ks + skv, n2] += p.T @ dy
        return {"dq": dqf[..., :D], "dq_rope": dqf[..., D:], "dk": dkf[..., :D], "dk_rope": dkf[..., D:], "dv": dv}

    def results(self):
        T, N1, N2, D = self.T, self.N1, self.N2, self.D
        dq = self.acl.download(self.p_dq, (T, N1, D + self.Dr), BF16).astype(np.float64)
        dk = self.acl.download(self.p_dk, (T, N2, D + self.Dr), BF16).astype(np.float64)
        dv = self.acl.download(self.p_dv, (T, N2, self.Dv), BF16).astype(np.float64)
        return {"dq": dq[..., :D], "dq_rope": dq[..., D:], "dk": dk[..., :D], "dk_rope": dk[..., D:], "dv": dv}

    # -- calls ---------------------------------------------------------------
    def args(self, **over):
        a = dict(query=self.t_q, queryRope=self.t_qr, keyIn=self.t_k, keyInRope=self.t_kr, value=self.t_v,
                 dy=self.t_dy, pseShift=None, dropMask=None, paddingMask=None, attenMask=self.t_mask,
                 softmaxMax=self.t_smax, softmaxSum=self.t_ssum, softmaxIn=None, attentionIn=self.t_attn,
                 prefix=None, actualSeqQLen=self.a_q, actualSeqKvLen=self.a_kv, qStartIdx=self.a_qs0,
                 kvStartIdx=self.a_kvs0,
                 scaleValue=self.scale, keepProb=1.0, preTokens=self.pre, nextTokens=self.nxt, headNum=self.N1,
                 inputLayout=b"TND", innerPrecise=0, sparseMode=self.sparse_mode, pseType=1, dqOut=self.t_dq,
                 dqRopeOut=self.t_dqr, dkOut=self.t_dk, dkRopeOut=self.t_dkr, dvOut=self.t_dv, dpseOut=None)
        a.update(over)
        return list(a.values())

    def phase1(self, **over):
        ws, ex = c_uint64(12345), c_void_p()
        rc = self.acl.phase1(*self.args(**over), byref(ws), byref(ex))
        return rc, ws.value, ex.value

    def workspace(self, size):
        return self._alloc(size) if size > 0 else None


@pytest.fixture
def case(acl):
    c = FagCase(acl)
    yield c
    c.close()


def _close(got, ref):
    err = np.abs(got - ref).max()
    return err <= 0.02 * np.abs(ref).max() + 1e-3, err


def test_end_to_end_against_float64_reference(acl, case):
    base = acl.counters()
    rc, ws, ex = case.phase1()
    assert rc == 0, acl.err()
    assert ex and ws > 0
    assert acl.counters()[2] == base[2] + 1
    stream = c_void_p()
    assert acl.aclrtCreateStream(byref(stream)) == 0
    assert acl.phase2(case.workspace(ws), ws, ex, stream) == 0, acl.err()
    assert acl.aclrtSynchronizeStream(stream) == 0
    assert acl.aclrtDestroyStream(stream) == 0
    assert acl.counters()[2] == base[2]  # phase 2 freed the executor
    got, ref = case.results(), case.reference()
    for name in ref:
        ok, err = _close(got[name], ref[name])
        assert ok, (name, err, np.abs(ref[name]).max())
        assert np.abs(ref[name]).max() > 0.01  # the comparison is not vacuous
    # rows 0-1 of batch 1 (Sq=11 > Skv=9 under mode 3) are fully masked -> 0
    assert not got["dq"][5:7].any() and not got["dq_rope"][5:7].any()
    # executor double run
    assert acl.phase2(None, 0, ex, None) == ACLNN_ERR_PARAM_NULLPTR
    assert acl.aclDestroyAclOpExecutor(ex) == ACLNN_ERR_PARAM_NULLPTR


MODE_CASES = {
    "mode0-2d-band": dict(sparse_mode=0, mask_kind="2d", pre=3, nxt=2),
    "mode1-bnss-ragged": dict(sparse_mode=1, mask_kind="bnss", N1=2),
    "mode5-b1ss": dict(sparse_mode=5, mask_kind="b1ss", pre=4, nxt=4),
    "mode0-11ss-gqa": dict(sparse_mode=0, mask_kind="11ss", N1=4, N2=2),
    "mode2-gqa-tail-rows": dict(sparse_mode=2, N1=4, N2=2, cum_q=(4, 12), cum_kv=(6, 14)),
    "mode4-band": dict(sparse_mode=4, pre=2, nxt=1),
    "mode7-empty-batch": dict(sparse_mode=7, pre=3, nxt=0, cum_q=(4, 4, 16), cum_kv=(6, 6, 16)),
    "mode8": dict(sparse_mode=8, pre=2, nxt=3, cum_q=(0, 6, 16), cum_kv=(2, 8, 16)),
}


@pytest.mark.parametrize("name", sorted(MODE_CASES))
def test_sparse_modes_and_mask_layouts(acl, name):
    c = FagCase(acl, seed=sorted(MODE_CASES).index(name), **MODE_CASES[name])
    try:
        rc, ws, ex = c.phase1()
        assert rc == 0, acl.err()
        assert acl.phase2(c.workspace(ws), ws, ex, None) == 0, acl.err()
        got, ref = c.results(), c.reference()
        for key in ref:
            ok, err = _close(got[key], ref[key])
            assert ok, (name, key, err, np.abs(ref[key]).max())
            # rows past the last cumulative end are written as exact zeros
            assert not got[key][max(c.cum_q if key.startswith("dq") else c.cum_kv):].any()
    finally:
        c.close()


def test_empty_tensor_paths(acl):
    base = acl.counters()
    # rule 3: every output empty -> workspace 0, an executor that does nothing
    c = FagCase(acl, T=4, cum_q=(4,), cum_kv=(4,))
    empty = [c._t([0, 2, 16], DT_BF16, None) for _ in range(3)]
    rc, ws, ex = c.phase1(dqOut=empty[0], dkOut=empty[1], dvOut=empty[2])
    assert (rc, ws) == (0, 0) and ex
    assert acl.phase2(None, 0, ex, None) == 0
    # empty keyIn/value: dq, dk, dv (which start as NaN garbage) are zero-filled, ws 0
    e_k = c._t([0, 1, 16], DT_BF16, None)
    e_kr = c._t([0, 1, 8], DT_BF16, None)
    e_v = c._t([0, 1, 16], DT_BF16, None)
    rc, ws, ex = c.phase1(keyIn=e_k, keyInRope=e_kr, value=e_v, dkOut=e_k, dkRopeOut=e_kr, dvOut=e_v)
    assert (rc, ws) == (0, 0), acl.err()
    assert acl.phase2(None, 0, ex, None) == 0
    assert not c.results()["dq"].any()
    assert np.isnan(c.results()["dq_rope"]).all()  # rope outputs are not written on this path
    c.close()
    assert acl.counters() == base


def test_repeatable_executor_and_address_rebinding(acl, case):
    base = acl.counters()
    rc, ws, ex = case.phase1()
    assert rc == 0, acl.err()
    assert acl.aclSetAclOpExecutorRepeatable(ex) == 0
    wsp = case.workspace(ws)
    assert acl.phase2(wsp, ws, ex, None) == 0
    first = case.results()
    assert np.abs(first["dq"]).max() > 0
    # inputs (non-NULL, parameter order): q, qRope, k, kRope, v, dy, mask, smax, ssum, attn -> dy is 5
    zeros = case._up(np.zeros_like(case.dy))
    assert acl.aclSetInputTensorAddr(ex, 10, case.t_dy, zeros) == ACLNN_ERR_PARAM_INVALID
    assert "index" in acl.err()
    assert acl.aclSetInputTensorAddr(ex, 5, case.t_dy, zeros) == 0
    # outputs: dq, dqRope, dk, dkRope, dv -> dv is 4; point it at a fresh buffer
    dv2 = case._alloc(case.T * case.N2 * case.Dv * 2)
    assert acl.aclSetOutputTensorAddr(ex, 5, case.t_dv, dv2) == ACLNN_ERR_PARAM_INVALID
    assert acl.aclSetOutputTensorAddr(ex, 4, case.t_dv, dv2) == 0
    assert acl.phase2(wsp, ws, ex, None) == 0
    second = case.results()  # case.t_dv's address moved too: results() reads p_dv, so check dv2
    assert not second["dq"].any() and not second["dk_rope"].any()
    assert not acl.download(dv2, (case.T, case.N2, case.Dv), BF16).astype(np.float64).any()
    assert np.array_equal(second["dv"], first["dv"])  # old dv buffer untouched by the second run
    assert acl.counters()[2] == base[2] + 1  # still alive
    assert acl.aclDestroyAclOpExecutor(ex) == 0
    assert acl.aclDestroyAclOpExecutor(ex) == ACLNN_ERR_PARAM_NULLPTR
    assert acl.phase2(wsp, ws, ex, None) == ACLNN_ERR_PARAM_NULLPTR
    assert acl.counters()[2] == base[2]


def test_phase2_workspace_too_small_consumes_executor(acl, case):
    base = acl.counters()
    rc, ws, ex = case.phase1()
    assert rc == 0
    assert acl.phase2(case.workspace(ws), ws - 4, ex, None) == ACLNN_ERR_PARAM_INVALID
    assert "workspace" in acl.err()
    assert acl.counters()[2] == base[2]


def test_phase2_needs_recorded_tensors_and_buffers_alive(acl, case):
    base = acl.counters()
    # int arrays are copied at phase 1: destroying them early is fine
    rc, ws, ex = case.phase1()
    assert rc == 0
    for h in case.arrays:
        assert acl.aclDestroyIntArray(h) == 0
    case.arrays = []
    wsp = case.workspace(ws)
    assert acl.phase2(wsp, ws, ex, None) == 0, acl.err()
    # a tensor handle destroyed between the phases -> 161001 (a use-after-free on the real executor)
    case.a_q, case.a_kv = case._a(case.cum_q), case._a(case.cum_kv)
    case.a_qs0, case.a_kvs0 = case._a([0]), case._a([0])
    rc, ws, ex = case.phase1()
    assert rc == 0
    assert acl.aclDestroyTensor(case.t_dy) == 0
    case.tensors.remove(case.t_dy)
    assert acl.phase2(wsp, ws, ex, None) == ACLNN_ERR_PARAM_NULLPTR
    assert "dy" in acl.err()
    assert acl.counters()[2] == base[2]  # consumed anyway
    # a device buffer freed between the phases -> 361001
    case.t_dy = case._t([case.T, case.N1, case.Dv], DT_BF16, case.p_dy)
    rc, ws, ex = case.phase1()
    assert rc == 0
    assert acl.aclrtFree(case.p_dv) == 0
    case.ptrs.remove(case.p_dv)
    assert acl.phase2(wsp, ws, ex, None) == 361001
    assert "dvOut" in acl.err()
    assert acl.counters()[2] == base[2]


def test_validation_codes(acl, case):
    base = acl.counters()
    cases = [
        (dict(query=None), ACLNN_ERR_PARAM_NULLPTR, "query"),             # rule 2
        (dict(inputLayout=b"BSH"), ACLNN_ERR_PARAM_INVALID, "inputLayout"),  # rule 1
        (dict(sparseMode=6), ACLNN_ERR_PARAM_INVALID, "sparseMode"),      # rule 11
        (dict(attenMask=None), ACLNN_ERR_PARAM_NULLPTR, "attenMask"),     # rule 12
        (dict(headNum=1), ACLNN_ERR_PARAM_NULLPTR, "headNum"),            # rule 19
        (dict(pseType=0), ACLNN_ERR_PARAM_NULLPTR, "pseType"),            # rule 29
        (dict(keyInRope=None), ACLNN_ERR_PARAM_NULLPTR, "keyInRope"),     # rule 8
    ]
    for over, code, word in cases:
        rc, ws, ex = case.phase1(**over)
        assert rc == code, (over, rc, acl.err())
        msg = acl.err()
        assert msg and word in msg, (over, msg)
        assert ex is None and ws == 12345  # out-params untouched
    # layout is checked before the NULL checks
    rc, _, _ = case.phase1(query=None, inputLayout=b"BSH")
    assert rc == ACLNN_ERR_PARAM_INVALID
    assert acl.counters() == base


def test_phase1_failure_injection_leaves_nothing_live(acl, case):
    base = acl.counters()
    acl.aclStubInjectFailure(PHASE1.encode(), 0, 561002)
    rc, ws, ex = case.phase1()
    assert rc == 561002 and ex is None
    rc, ws, ex = case.phase1()
    assert rc == 0
    acl.aclStubInjectFailure(PHASE2.encode(), 0, 507015)
    assert acl.phase2(case.workspace(ws), ws, ex, None) == 507015
    assert acl.counters()[2] == base[2]


def _determinism_probe(libdir):
    """Run in a fresh process: D=192/Dv=128 passes phase 1 only with determinism off, as the
    op reads the option (the context's before 9.0, the process-wide value from 9.0)."""
    acl = Stubs(libdir)
    acl.aclInit(None)
    assert acl.aclrtSetDevice(0) == 0
    set_process = _decl(acl.asc, "aclrtSetSysParamOpt", c_int32, c_int32, c_int64)
    c = FagCase(acl, T=4, N1=1, N2=1, D=192, Dr=64, Dv=128, cum_q=(4,), cum_kv=(4,))
    rc, ws, ex = c.phase1()
    res = {"unset": rc, "unset_msg": acl.err()}
    if ex:
        acl.aclDestroyAclOpExecutor(ex)
    acl.aclrtCtxSetSysParamOpt(0, 1)
    res["on"] = c.phase1()[0]
    acl.aclrtCtxSetSysParamOpt(0, 0)
    rc, ws, ex = c.phase1()
    res["off"] = rc
    acl.aclDestroyAclOpExecutor(ex)
    assert set_process(0, 1) == 0              # the process value only; the context's stays 0
    rc, ws, ex = c.phase1()
    res["process_on"] = rc
    if ex:
        acl.aclDestroyAclOpExecutor(ex)
    c.close()
    print(json.dumps(res))


@pytest.mark.parametrize("release", ["8.5.0", "9.0.0", "9.1.0"])
def test_d192_dv128_depends_on_the_determinism_the_release_reads(libdir, release):
    code = ("import importlib.util,sys; s=importlib.util.spec_from_file_location('t', sys.argv[1]); "
            "m=importlib.util.module_from_spec(s); s.loader.exec_module(m); m._determinism_probe(sys.argv[2])")
    env = dict(os.environ, ACL_STUB_CANN_VERSION=release)
    out = subprocess.run([sys.executable, "-c", code, __file__, str(libdir)], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if release == "8.5.0":      # the context's option; never set: unreadable -> deterministic
        assert res["unset"] == ACLNN_ERR_PARAM_INVALID and "unreadable" in res["unset_msg"]
        assert res["process_on"] == 0
    else:                       # the process-wide value: 0 by default, and set on its own
        assert res["unset"] == 0
        assert res["process_on"] == ACLNN_ERR_PARAM_INVALID
    assert res["on"] == ACLNN_ERR_PARAM_INVALID       # the context setter works on every release
    assert res["off"] == 0


# ---------------------------------------------------------------------------
# interrupt-test controls: bad-release counter, call delay
# ---------------------------------------------------------------------------

def test_bad_release_counter_counts_double_destroys_and_frees(acl):
    bad = _decl(acl.asc, "aclStubGetBadReleases", c_int64)
    delay = _decl(acl.asc, "aclStubSetCallDelay", None, c_int64)
    before = bad()
    ia = acl.int_array([1, 2])
    assert acl.aclDestroyIntArray(ia) == 0
    assert bad() == before                                   # a normal destroy is fine
    assert acl.aclDestroyIntArray(ia) == ACLNN_ERR_PARAM_NULLPTR
    assert bad() == before + 1                               # the double destroy is counted
    dev = c_void_p()
    assert acl.aclrtMalloc(byref(dev), 64, 0) == 0
    assert acl.aclrtFree(dev) == 0
    assert acl.aclrtFree(dev) == ACL_ERROR_RT_PARAM_INVALID
    assert bad() == before + 2
    acl.err()
    delay(50)                                                # calls still work, only slower
    assert acl.aclDestroyIntArray(None) == 0
    delay(0)


@pytest.mark.parametrize("which", ["softmaxMax", "softmaxSum"])
@pytest.mark.parametrize("copy", [1, 4, 7])
def test_s8_compares_every_one_of_the_8_copies(acl, case, which, copy):
    """S8 (stub addition): statistics whose copies differ are rejected with 161002, whichever
    copy differs -- the last one (7) included -- and in the last (token, head) entry too."""
    stats = (case.smax if which == "softmaxMax" else case.ssum).copy()
    stats[-1, -1, copy] += 0.5
    bad = case._t([case.T, case.N1, 8], DT_FLOAT, case._up(stats))
    base = acl.counters()
    over = {"softmaxMax" if which == "softmaxMax" else "softmaxSum": bad}
    rc, ws, ex = case.phase1(**over)
    msg = acl.err()                    # (reading the message clears it)
    assert rc == ACLNN_ERR_PARAM_INVALID, (rc, msg)
    assert "8 copies" in msg and which in msg and "S8" in msg, msg
    assert ex is None and ws == 12345
    # the unchanged statistics pass the same check
    rc, ws, ex = case.phase1()
    assert rc == 0, acl.err()
    assert acl.aclDestroyAclOpExecutor(ex) == 0
    assert acl.counters() == base
