"""Exceptions and warnings: one class per aclnn status code and per ACL runtime error code
(``error_class_for(code)``; those validation raises written out, the others made from the code
tables), each carrying the ``code``, ``param``, ``rule`` and, for a native call's errors, the
``function`` and ``aclGetRecentErrMsg()``."""

from __future__ import annotations

import functools
import os
import sys

__all__ = ["AclnnError", "AclRuntimeError", "LibraryNotFoundError", "BackendUnavailableError",
           "ResourceReleaseWarning", "DeterminismWarning", "IgnoredArgumentWarning",
           "SequenceEndWarning", "SoftmaxStatsMismatchWarning", "FullyMaskedRowWarning",
           "NpuFallbackWarning", "caller_stacklevel", "UnknownReleaseWarning", "ACLNN_STATUS",
           "ACL_ERRORS", "error_class_for"]

# aclnnStatus values (opdev/op_errno.h) -> (class name, meaning)
ACLNN_STATUS = {
    161001: ("ParamNullptrError", "ACLNN_ERR_PARAM_NULLPTR: a required argument is null or a shape/attribute check in tiling failed"),
    161002: ("ParamInvalidError", "ACLNN_ERR_PARAM_INVALID: a dtype, format, shape or attribute check failed"),
    361001: ("RuntimeErrorStatus", "ACLNN_ERR_RUNTIME_ERROR: an NPU runtime call failed"),
    561000: ("InnerError", "ACLNN_ERR_INNER: internal error"),
    561001: ("InferShapeError", "ACLNN_ERR_INNER_INFERSHAPE_ERROR: shape inference failed"),
    561002: ("TilingError", "ACLNN_ERR_INNER_TILING_ERROR: tiling failed"),
    561003: ("FindKernelError", "ACLNN_ERR_INNER_FIND_KERNEL_ERROR: no kernel for these arguments (kernel package missing?)"),
    561101: ("CreateExecutorError", "ACLNN_ERR_INNER_CREATE_EXECUTOR: executor creation failed"),
    561102: ("NotTransExecutorError", "ACLNN_ERR_INNER_NOT_TRANS_EXECUTOR"),
    561103: ("InnerNullptrError", "ACLNN_ERR_INNER_NULLPTR: an internal pointer was null"),
    561104: ("WrongAttrInfoSizeError", "ACLNN_ERR_INNER_WRONG_ATTR_INFO_SIZE"),
    561105: ("KeyConflictError", "ACLNN_ERR_INNER_KEY_CONFLICT"),
    561106: ("InvalidImplModeError", "ACLNN_ERR_INNER_INVALID_IMPL_MODE"),
    561107: ("OppPathNotFoundError", "ACLNN_ERR_INNER_OPP_PATH_NOT_FOUND: ASCEND_OPP_PATH is not set"),
    561108: ("LoadJsonFailedError", "ACLNN_ERR_INNER_LOAD_JSON_FAILED: op-info JSON could not be loaded"),
    561109: ("JsonValueNotFoundError", "ACLNN_ERR_INNER_JSON_VALUE_NOT_FOUND"),
    561110: ("JsonFormatInvalidError", "ACLNN_ERR_INNER_JSON_FORMAT_INVALID"),
    561111: ("JsonDtypeInvalidError", "ACLNN_ERR_INNER_JSON_DTYPE_INVALID"),
    561112: ("OppKernelPkgNotFoundError", "ACLNN_ERR_INNER_OPP_KERNEL_PKG_NOT_FOUND: the op kernel package is not installed"),
    561113: ("OpFileInvalidError", "ACLNN_ERR_INNER_OP_FILE_INVALID"),
    561114: ("AttrNumOutOfBoundError", "ACLNN_ERR_INNER_ATTR_NUM_OUT_OF_BOUND"),
    561115: ("AttrLenNotEnoughError", "ACLNN_ERR_INNER_ATTR_LEN_NOT_ENOUGH"),
    561116: ("InputNumOutOfBoundError", "ACLNN_ERR_INNER_INPUT_NUM_OUT_OF_BOUND"),
    561117: ("InputLenNotEnoughError", "ACLNN_ERR_INNER_INPUT_LEN_NOT_ENOUGH"),
    561118: ("StaticWorkspaceInvalidError", "ACLNN_ERR_INNER_STATIC_WORKSPACE_INVALID"),
    561119: ("StaticBlockDimInvalidError", "ACLNN_ERR_INNER_STATIC_BLOCK_DIM_INVALID"),
}

# aclError values (acl_base_rt.h, rt_error_codes.h) -> (class name, meaning)
ACL_ERRORS = {
    100000: ("AclInvalidParamError", "ACL_ERROR_INVALID_PARAM: invalid parameter"),
    100001: ("AclUninitializeError", "ACL_ERROR_UNINITIALIZE: aclInit was not called"),
    100002: ("AclRepeatInitializeError", "ACL_ERROR_REPEAT_INITIALIZE: aclInit called twice"),
    100037: ("AclRepeatFinalizeError", "ACL_ERROR_REPEAT_FINALIZE: aclFinalize called twice"),
    107000: ("AclRtParamInvalidError", "ACL_ERROR_RT_PARAM_INVALID: invalid runtime parameter"),
    107001: ("AclRtInvalidDeviceIdError", "ACL_ERROR_RT_INVALID_DEVICEID: invalid device id"),
    107002: ("AclRtContextNullError", "ACL_ERROR_RT_CONTEXT_NULL: no context on this thread (aclrtSetDevice not called)"),
    200000: ("AclBadAllocError", "ACL_ERROR_BAD_ALLOC: host allocation failed"),
    207001: ("AclRtMemoryAllocationError", "ACL_ERROR_RT_MEMORY_ALLOCATION: device out of memory"),
    507015: ("AclRtAicoreExceptionError", "ACL_ERROR_RT_AICORE_EXCEPTION: AI Core kernel fault"),
    507035: ("AclRtVectorCoreExceptionError", "ACL_ERROR_RT_VECTOR_CORE_EXCEPTION: vector core kernel fault"),
    507899: ("AclRtDrvInternalError", "ACL_ERROR_RT_DRV_INTERNAL_ERROR: driver internal error"),
}


class AclnnError(Exception):
    """An error with an aclnn status code (or ACL runtime error code); ``stricter``: the device
    would not reject this input but crash or compute garbage."""

    code: int = 0
    meaning: str = "unknown status code"

    def __init__(self, rule: str = "", *, code: int | None = None, param: str | None = None,
                 function: str | None = None, recent_msg: str | None = None,
                 stricter: bool = False):
        if code is not None:
            self.code = int(code)
            known = ACLNN_STATUS.get(self.code) or ACL_ERRORS.get(self.code)
            if known is not None:
                self.meaning = known[1]
        self.param, self.rule, self.function = param, rule, function
        self.recent_msg, self.stricter = recent_msg, stricter
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.function:
            parts.append(f"{self.function} returned {self.code}")
        elif self.code:
            parts.append(f"status {self.code}")
        if self.param:
            parts.append(f"parameter '{self.param}'")
        head = ", ".join(parts)
        text = f"{head}: {self.rule}" if head and self.rule else (self.rule or head)
        text += f" [{self.meaning}]"
        if self.stricter:
            text += (" (aclnn_fag is stricter than the device here: the device would crash or "
                     "compute garbage)")
        if self.recent_msg:
            text += f"\n  aclGetRecentErrMsg: {self.recent_msg}"
        return text

    def __reduce__(self):  # keep pickling (multiprocessing) working
        return functools.partial(type(self), self.rule, code=self.code, param=self.param,
                                 function=self.function, recent_msg=self.recent_msg,
                                 stricter=self.stricter), ()


class AclRuntimeError(AclnnError):
    """An ACL runtime call (aclrt*, aclInit) returned a non-zero aclError."""


class LibraryNotFoundError(AclnnError, OSError):
    """The CANN libraries could not be found or loaded; the message lists every place tried."""

    meaning = "CANN libraries not available"


class BackendUnavailableError(AclnnError, RuntimeError):
    """The requested backend cannot run here (no library, no device, unknown name)."""

    meaning = "backend unavailable"


class ParamNullptrError(AclnnError):
    """Status 161001: a required argument is null or a shape/attribute check in tiling failed."""

    code, meaning = 161001, ACLNN_STATUS[161001][1]


class ParamInvalidError(AclnnError):
    """Status 161002: a dtype, format, shape or attribute check failed."""

    code, meaning = 161002, ACLNN_STATUS[161002][1]


class ResourceReleaseWarning(RuntimeWarning):
    """Releasing a native handle failed; ``acl.shutdown()`` tries again (docs/faults.md)."""


class DeterminismWarning(RuntimeWarning):
    """ACL_OPT_DETERMINISTIC could not be read, so not restored after a call (docs/faults.md)."""


class IgnoredArgumentWarning(UserWarning):
    """An argument the op accepts but does not use (paddingMask, softmaxIn, prefix)."""


class SoftmaxStatsMismatchWarning(UserWarning):
    """Sampled softmax statistics were not computed from these scores (docs/validation.md)."""


class SequenceEndWarning(UserWarning):
    """The last cumulative end is below T: the rows after it get zero gradients."""


class FullyMaskedRowWarning(UserWarning):
    """A query row has no kept key (the docs call this unsupported)."""


class NpuFallbackWarning(UserWarning):
    """backend="auto" ran NumPy: CANN is installed but the NPU cannot be used (docs/npu.md)."""


class UnknownReleaseWarning(UserWarning):
    """The CANN version is unknown: the nearest known release's rules apply (docs/releases.md)."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def caller_stacklevel() -> int:
    """The ``stacklevel`` of a warning that points at the first frame outside this package."""
    level, f = 1, sys._getframe(1)
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_PACKAGE + os.sep):
        f = f.f_back
        level += 1
    return level


_CLASSES: dict[int, type] = {}
for _table, _base in ((ACLNN_STATUS, AclnnError), (ACL_ERRORS, AclRuntimeError)):
    for _code, (_name, _meaning) in _table.items():
        _CLASSES[_code] = globals()[_name] = globals().get(_name) or type(_name, (_base,), {
            "code": _code, "meaning": _meaning, "__doc__": f"Status {_code}: {_meaning}.",
            "__module__": __name__})
        __all__.append(_name)


def error_class_for(code: int) -> type:
    """The exception class for a status/error code (AclnnError for unknown codes)."""
    return _CLASSES.get(int(code), AclnnError)
