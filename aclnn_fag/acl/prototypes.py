"""Every native function this package calls, ``restype`` and ``argtypes`` beside its C
prototype (docs/abi.md §1-2; the ops' typed from ``aclnn_fag/spec.py``). Each is taken with
``handle[name]``, a fresh object: other users of the same ``CDLL`` keep their argtypes."""

from __future__ import annotations

import ctypes
from ctypes import (POINTER, c_char_p, c_double, c_int, c_int32, c_int64, c_size_t, c_uint32,
                    c_uint64, c_void_p)
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ..errors import LibraryNotFoundError
from ..spec import BACKWARD_V3, FORWARD_V3, OPS, PHASE2_PARAMS, OpVersion

__all__ = ["Proto", "PROTOTYPES", "PROTOTYPE_BY_NAME", "Bindings", "bind", "PHASE1", "PHASE2",
           "PHASE1_NARGS", "OPTIONAL", "FWD_PHASE1", "FWD_PHASE2", "FWD_PHASE1_NARGS",
           "op_prototypes", "library_error", "c_widths"]

P_I64 = POINTER(c_int64)
P_U64 = POINTER(c_uint64)
P_U32 = POINTER(c_uint32)
P_I32 = POINTER(c_int32)
P_VOIDP = POINTER(c_void_p)
aclError = c_int          # typedef int aclError;
aclnnStatus = c_int32     # typedef int32_t aclnnStatus;
ENUM = c_int              # every ACL enum (aclDataType, aclFormat, aclrtMemcpyKind, ...)
HANDLE = c_void_p         # aclrtStream, aclTensor*, aclIntArray*, aclOpExecutor*

PHASE1, PHASE2 = BACKWARD_V3.phase1, BACKWARD_V3.phase2
FWD_PHASE1, FWD_PHASE2 = FORWARD_V3.phase1, FORWARD_V3.phase2


@dataclass(frozen=True)
class Proto:
    """One native function; ``via``: the handle it is resolved through first (RT or OP)."""

    name: str
    restype: Any
    argtypes: Tuple[Any, ...]
    via: str
    optional: bool = False


RT, OP = "runtime", "opapi"

PROTOTYPES: Tuple[Proto, ...] = (
    # ---- ACL runtime (acl/acl_rt.h, acl/acl_base_rt.h), resolved through libascendcl ----
    # aclError aclInit(const char *configPath);
    Proto("aclInit", aclError, (c_char_p,), RT),
    # aclError aclFinalize(void);
    Proto("aclFinalize", aclError, (), RT),
    # aclError aclrtSetDevice(int32_t deviceId);
    Proto("aclrtSetDevice", aclError, (c_int32,), RT),
    # aclError aclrtResetDevice(int32_t deviceId);
    Proto("aclrtResetDevice", aclError, (c_int32,), RT),
    # aclError aclrtGetDeviceCount(uint32_t *count);
    Proto("aclrtGetDeviceCount", aclError, (P_U32,), RT),
    # aclError aclrtCreateStream(aclrtStream *stream);
    Proto("aclrtCreateStream", aclError, (P_VOIDP,), RT),
    # aclError aclrtDestroyStream(aclrtStream stream);
    Proto("aclrtDestroyStream", aclError, (HANDLE,), RT),
    # aclError aclrtSynchronizeStream(aclrtStream stream);
    Proto("aclrtSynchronizeStream", aclError, (HANDLE,), RT),
    # aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy);
    Proto("aclrtMalloc", aclError, (P_VOIDP, c_size_t, ENUM), RT),
    # aclError aclrtFree(void *devPtr);
    Proto("aclrtFree", aclError, (c_void_p,), RT),
    # aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count,
    #                      aclrtMemcpyKind kind);
    Proto("aclrtMemcpy", aclError, (c_void_p, c_size_t, c_void_p, c_size_t, ENUM), RT),
    # aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count);
    Proto("aclrtMemset", aclError, (c_void_p, c_size_t, c_int32, c_size_t), RT),
    # const char *aclrtGetSocName(void);                       (optional; NULL on failure)
    Proto("aclrtGetSocName", c_char_p, (), RT, optional=True),
    # const char *aclGetRecentErrMsg(void);                    (optional; NULL when none)
    Proto("aclGetRecentErrMsg", c_char_p, (), RT, optional=True),
    # aclError aclrtCtxSetSysParamOpt(aclSysParamOpt opt, int64_t value);   (optional)
    Proto("aclrtCtxSetSysParamOpt", aclError, (ENUM, c_int64), RT, optional=True),
    # aclError aclrtCtxGetSysParamOpt(aclSysParamOpt opt, int64_t *value);  (optional)
    Proto("aclrtCtxGetSysParamOpt", aclError, (ENUM, P_I64), RT, optional=True),
    # aclError aclrtSetSysParamOpt(aclSysParamOpt opt, int64_t value);     (optional)
    Proto("aclrtSetSysParamOpt", aclError, (ENUM, c_int64), RT, optional=True),
    # aclError aclrtGetSysParamOpt(aclSysParamOpt opt, int64_t *value);    (optional)
    Proto("aclrtGetSysParamOpt", aclError, (ENUM, P_I64), RT, optional=True),
    # aclError aclrtGetCurrentContext(aclrtContext *context);             (optional)
    Proto("aclrtGetCurrentContext", aclError, (P_VOIDP,), RT, optional=True),
    # ---- version queries (acl/acl_rt.h; all optional, see aclnn_fag/acl/versions.py) ----
    # aclError aclsysGetVersionStr(char *pkgName, char *versionStr);        (optional)
    Proto("aclsysGetVersionStr", aclError, (c_char_p, c_char_p), RT, optional=True),
    # aclError aclsysGetCANNVersion(aclCANNPackageName name,
    #                               aclCANNPackageVersion *version);        (optional)
    Proto("aclsysGetCANNVersion", aclError, (ENUM, c_void_p), RT, optional=True),
    # aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion,
    #                          int32_t *patchVersion);                      (optional)
    Proto("aclrtGetVersion", aclError, (P_I32, P_I32, P_I32), RT, optional=True),
    # aclError aclsysGetVersionNum(char *pkgName, int32_t *versionNum);       (optional)
    Proto("aclsysGetVersionNum", aclError, (c_char_p, P_I32), RT, optional=True),

    # void aclStubGetCounters(int64_t *live_tensors, int64_t *live_int_arrays,
    #     int64_t *live_executors, int64_t *live_device_bytes, int64_t *live_streams);
    # (optional; exported only by this project's stand-in libraries, native_stubs/: its
    #  presence labels a run as a stub run, see acl.stand_in())
    Proto("aclStubGetCounters", None, (P_I64,) * 5, RT, optional=True),

    # ---- aclnn meta API (aclnn/acl_meta.h, libnnopbase), resolved through the op-API handle ----
    # aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum,
    #     aclDataType dataType, const int64_t *stride, int64_t offset, aclFormat format,
    #     const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData);
    Proto("aclCreateTensor", HANDLE,
          (P_I64, c_uint64, ENUM, P_I64, c_int64, ENUM, P_I64, c_uint64, c_void_p), OP),
    # aclnnStatus aclDestroyTensor(const aclTensor *tensor);
    Proto("aclDestroyTensor", aclnnStatus, (HANDLE,), OP),
    # aclIntArray *aclCreateIntArray(const int64_t *value, uint64_t size);
    Proto("aclCreateIntArray", HANDLE, (P_I64, c_uint64), OP),
    # aclnnStatus aclDestroyIntArray(const aclIntArray *array);
    Proto("aclDestroyIntArray", aclnnStatus, (HANDLE,), OP),
    # aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor *executor);
    Proto("aclDestroyAclOpExecutor", aclnnStatus, (HANDLE,), OP),
    # aclnnStatus aclSetAclOpExecutorRepeatable(aclOpExecutor *executor);   (optional)
    Proto("aclSetAclOpExecutorRepeatable", aclnnStatus, (HANDLE,), OP, optional=True),
    # aclnnStatus aclSetInputTensorAddr(aclOpExecutor *executor, const size_t index,
    #                                   aclTensor *tensor, void *addr);     (optional)
    Proto("aclSetInputTensorAddr", aclnnStatus, (HANDLE, c_size_t, HANDLE, c_void_p), OP,
          optional=True),
    # aclnnStatus aclSetOutputTensorAddr(aclOpExecutor *executor, const size_t index,
    #                                    aclTensor *tensor, void *addr);    (optional)
    Proto("aclSetOutputTensorAddr", aclnnStatus, (HANDLE, c_size_t, HANDLE, c_void_p), OP,
          optional=True),
)

# ---- the ops (aclnn_fag/spec.py: one entry per op version), resolved through libopapi ----
_CTYPES = {"const aclTensor *": HANDLE, "const aclIntArray *": HANDLE, "double": c_double,
           "int64_t": c_int64, "char *": c_char_p, "uint64_t *": P_U64,
           "aclOpExecutor **": P_VOIDP, "void *": c_void_p, "uint64_t": c_uint64,
           "aclOpExecutor *": HANDLE, "const aclrtStream": HANDLE}


def op_prototypes(op: OpVersion) -> Tuple[Proto, Proto]:
    """Phase 1 and phase 2 of one op version, one argtype per C parameter of
    ``op.c_prototype(1)`` and ``op.c_prototype(2)``."""
    return (Proto(op.phase1, aclnnStatus, tuple(_CTYPES[p.c_type] for p in op.params), OP,
                  optional=op.optional_symbols),
            Proto(op.phase2, aclnnStatus, tuple(_CTYPES[p.c_type] for p in PHASE2_PARAMS), OP,
                  optional=op.optional_symbols))


PROTOTYPES = PROTOTYPES + tuple(proto for op in OPS.values() for proto in op_prototypes(op))
PROTOTYPE_BY_NAME: Dict[str, Proto] = {p.name: p for p in PROTOTYPES}
OPTIONAL = tuple(p.name for p in PROTOTYPES if p.optional)
PHASE1_NARGS = len(PROTOTYPE_BY_NAME[PHASE1].argtypes)
FWD_PHASE1_NARGS = len(PROTOTYPE_BY_NAME[FWD_PHASE1].argtypes)
assert PHASE1_NARGS == 36 and len(PROTOTYPE_BY_NAME[PHASE2].argtypes) == 4
assert FWD_PHASE1_NARGS == 29 and len(PROTOTYPE_BY_NAME[FWD_PHASE2].argtypes) == 4

_SEARCH = {RT: ("runtime", "nnopbase", "opapi", "op_compiler"),
           OP: ("opapi", "nnopbase", "runtime")}


class Bindings:
    """Bound functions (``b.aclrtMalloc(...)``), ``b.libraries``, ``b.found_in[name]`` (the
    role whose handle resolved a symbol) and ``b.key`` (identifies the loaded libraries)."""

    def __init__(self, libraries) -> None:
        self.libraries = libraries
        self.found_in: Dict[str, str] = {}
        self.key = libraries.key

    def has(self, name: str) -> bool:
        return getattr(self, name, None) is not None


def library_error(text: str, tried, places, role: str) -> LibraryNotFoundError:
    """A LibraryNotFoundError carrying the load attempts, the places searched and the role."""
    err = LibraryNotFoundError(text)
    err.tried, err.places, err.role = list(tried), list(places), role
    return err


def bind(libraries) -> Bindings:
    """Resolve and type every prototype. A missing required symbol raises LibraryNotFoundError."""
    b = Bindings(libraries)
    for proto in PROTOTYPES:
        setattr(b, proto.name, None)
        for role in _SEARCH[proto.via]:
            try:
                fn = libraries.handles[role][proto.name]
            except (KeyError, AttributeError):     # no such library, or not exported by it
                continue
            fn.restype = proto.restype
            fn.argtypes = list(proto.argtypes)
            setattr(b, proto.name, fn)
            b.found_in[proto.name] = role
            break
    missing = [p.name for p in PROTOTYPES if not p.optional and getattr(b, p.name) is None]
    if missing:
        where = ", ".join(f"{r}={p}" for r, p in libraries.paths.items())
        raise library_error(
            f"the CANN libraries loaded ({where}) do not export {', '.join(missing)}; "
            "this CANN release is too old or incomplete for "
            "aclnnFlashAttentionUnpaddingScoreGradV3. "
            "Set ACLNN_FAG_LIB_DIR or source set_env.sh of a newer toolkit.",
            libraries.tried, libraries.places, "symbols")
    return b


def c_widths() -> Dict[str, int]:
    """Sizes of the C types the table relies on (for diagnostics and tests)."""
    return {name: ctypes.sizeof(t) for name, t in
            (("int", c_int), ("int32_t", c_int32), ("int64_t", c_int64), ("uint64_t", c_uint64),
             ("size_t", c_size_t), ("double", c_double), ("void*", c_void_p))}
