"""The public calls: validate -> choose backend -> run -> FagGrads / FagForward."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from . import acl, blas, device_run, operands, releases
from .acl import release as acl_release
from .call import INT32_MAX, FagForward, FagGrads
from .constants import BF16
from .errors import AclnnError, BackendUnavailableError, NpuFallbackWarning, caller_stacklevel
from .reference import PRECISIONS, attention_backward, attention_forward
from .reference.common import precision_dtype
from .rules import validate_backward_args
from .rules.driver import validate
from .rules.arguments import names
from .spec import BACKWARD_V3, FORWARD_V3

__all__ = ["flash_attention_unpadding_score_grad_v3", "flash_attention_forward",
           "resolve_backend", "last_backend", "BACKENDS", "NpuFallbackWarning"]

BACKENDS = ("auto", "numpy", "npu")
_last = threading.local()
# the orders of the tuples the public calls pass (tests/api/test_argument_orders.py)
_TENSORS, _SCALARS, _LISTS = names(BACKWARD_V3)
_FWD_NAMES = FORWARD_V3.inputs + _SCALARS + _LISTS
_NO_FORWARD = ("the loaded CANN libraries do not export aclnnFlashAttentionVarLenScoreV3 (the "
               "device forward); the backward still runs on the NPU")
_warned_lock = threading.Lock()
_warned: set = set()


def _warn_fallback(reason: str, dev=None) -> None:
    """Warn once per process and reason that "auto" falls back to NumPy (NpuFallbackWarning)."""
    with _warned_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    if dev is None:
        dev = os.environ.get("ACLNN_FAG_DEVICE", "").strip() or "0"
    warnings.warn(f"backend='auto': the CANN libraries are installed but NPU device {dev} cannot "
                  f"be used: {reason}; running the NumPy reference instead (pass "
                  f"backend='npu' to get an error, or backend='numpy' to silence this)",
                  NpuFallbackWarning, stacklevel=caller_stacklevel())


def last_backend():
    """The backend ("numpy" or "npu") that ran the last call on this thread (None before any)."""
    return getattr(_last, "name", None)


def resolve_backend(backend: str = "auto", precision: str = "device") -> str:
    """The concrete backend for a request: "auto" takes ``$ACLNN_FAG_BACKEND`` when set, else
    "npu" when the CANN libraries load and a device is present (and precision is "device"),
    else "numpy"; "npu" raises BackendUnavailableError when it cannot run (docs/npu.md)."""
    if backend not in BACKENDS:
        raise ValueError(f"parameter 'backend' must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"parameter 'precision' must be one of {PRECISIONS}, got {precision!r}")
    if backend == "auto":
        env = os.environ.get("ACLNN_FAG_BACKEND", "").strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"ACLNN_FAG_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "npu" and precision != "device":
        raise ValueError(f"parameter 'precision'={precision!r} needs backend='numpy': the NPU "
                         "computes only the device precision")
    if backend == "numpy" or precision != "device":
        return "numpy"
    status = acl.availability()
    if status.ok:
        return "npu"
    if backend == "auto":
        if getattr(status, "installed", False):
            _warn_fallback(status.reason, status.device_id)
        return "numpy"
    forked = acl.runtime.forked_child_reason()
    if forked is not None:      # a subclass of BackendUnavailableError
        raise acl.ForkedProcessError(forked, code=361001, param="backend")
    raise BackendUnavailableError(f"backend 'npu' is not available: {status.reason}",
                                  code=361001, param="backend")


def flash_attention_unpadding_score_grad_v3(
        query, query_rope, key, key_rope, value, dy, *, atten_mask, softmax_max, softmax_sum,
        attention_in, actual_seq_qlen, actual_seq_kvlen, scale_value, keep_prob=1.0,
        pre_tokens=INT32_MAX, next_tokens=INT32_MAX, head_num=None, input_layout="TND",
        inner_precise=0, sparse_mode=0, pse_type=1, pse_shift=None, drop_mask=None,
        padding_mask=None, softmax_in=None, prefix=None, q_start_idx=None, kv_start_idx=None,
        backend="auto", precision="device", deterministic=False, check_data=None,
        stream=None, progress=None) -> FagGrads:
    """aclnnFlashAttentionUnpaddingScoreGradV3: gradients of TND varlen attention with rope parts.

    The arguments mirror the C op (docs/usage.md; docs/porting.md for torch_npu's names):
    query, query_rope, key, key_rope, value, dy, attention_in (bfloat16), softmax_max and
    softmax_sum (the forward's [T1, N1, 8] statistics in the device's layout), atten_mask
    (nonzero = masked), actual_seq_qlen / actual_seq_kvlen (cumulative ends), scale_value (the
    real scale), keep_prob, pre_tokens, next_tokens, head_num (None: query.shape[1]),
    input_layout, inner_precise, sparse_mode, pse_type, pse_shift, drop_mask; padding_mask,
    softmax_in and prefix are ignored; q_start_idx, kv_start_idx (docs/abi.md §7). One tensor
    kind per call: numpy, torch CPU, or device-resident (DeviceArray, NPU tensors). backend,
    precision, deterministic, check_data, stream, progress: docs/npu.md, docs/usage.md.

    Returns FagGrads(dq, dq_rope, dk, dk_rope, dv). Raises ParamInvalidError (161002) /
    ParamNullptrError (161001) with the device's status code (docs/validation.md). Warns
    SequenceEndWarning, FullyMaskedRowWarning, SoftmaxStatsMismatchWarning,
    IgnoredArgumentWarning.
    """
    kind, t = operands.convert_args(_TENSORS, (
        query, query_rope, key, key_rope, value, dy, pse_shift, drop_mask, padding_mask,
        atten_mask, softmax_max, softmax_sum, softmax_in, attention_in))
    on_device, name, check_data, release = _call_setup(kind, t[0], backend, precision,
                                                       check_data, stream)
    call = _validated(kind, validate_backward_args, t, (
        scale_value, keep_prob, pre_tokens, next_tokens, head_num, input_layout, inner_precise,
        sparse_mode, pse_type, deterministic), (
        prefix, actual_seq_qlen, actual_seq_kvlen, q_start_idx, kv_start_idx), check_data, release)
    _last.name = name
    if on_device:
        return device_run.run_backward_on_device(call, kind, query, stream)
    if call.empty_result or name == "numpy":
        with blas.capped():              # set_reference_threads / $ACLNN_FAG_BLAS_THREADS
            return _results(kind, attention_backward(call, precision, progress=progress))
    return _results(kind, acl.run_backward(call, stream=stream))


def flash_attention_forward(query, query_rope, key, key_rope, value, *, atten_mask,
                            actual_seq_qlen, actual_seq_kvlen, scale_value, keep_prob=1.0,
                            pre_tokens=INT32_MAX, next_tokens=INT32_MAX, head_num=None,
                            input_layout="TND", inner_precise=0, sparse_mode=0, pse_type=1,
                            pse_shift=None, drop_mask=None, padding_mask=None, prefix=None,
                            q_start_idx=None, kv_start_idx=None, backend="auto",
                            precision="device", deterministic=False, check_data=None,
                            stream=None, progress=None) -> FagForward:
    """aclnnFlashAttentionVarLenScoreV3: the forward the backward differentiates (docs/forward.md).

    query, query_rope, key, key_rope, value, atten_mask, actual_seq_qlen, actual_seq_kvlen,
    scale_value, keep_prob, pre_tokens, next_tokens, head_num, input_layout, inner_precise,
    sparse_mode, pse_type, pse_shift, drop_mask, padding_mask, prefix, q_start_idx,
    kv_start_idx, backend, precision, deterministic, check_data, stream, progress: as for the
    backward. Returns FagForward(attention_out, softmax_max, softmax_sum), the statistics in
    the device's layout, ready for the backward.
    """
    kind, t = operands.convert_args(FORWARD_V3.inputs, (
        query, query_rope, key, key_rope, value, pse_shift, drop_mask, padding_mask, atten_mask))
    on_device, name, check_data, release = _call_setup(kind, t[0], backend, precision,
                                                       check_data, stream)
    call = _validated(kind, validate, FORWARD_V3, dict(zip(_FWD_NAMES, t + (
        scale_value, keep_prob, pre_tokens, next_tokens, head_num, input_layout, inner_precise,
        sparse_mode, pse_type, deterministic, prefix, actual_seq_qlen, actual_seq_kvlen,
        q_start_idx, kv_start_idx))), check_data, release)
    if not on_device and name == "npu" and backend != "npu" and not acl.forward_available():
        _warn_fallback(_NO_FORWARD)      # "auto" on a CANN without the forward op
        name = "numpy"
    _last.name = name
    if on_device:
        return device_run.run_forward_on_device(call, kind, query, stream)
    if call.empty_result:
        return _results(kind, empty_forward(call, precision))
    if name == "numpy":
        with blas.capped():
            return _results(kind, attention_forward(call, precision, progress=progress))
    return _results(kind, acl.run_forward(call, stream=stream))


def _call_setup(kind, query, backend, precision, check_data, stream):
    """(on_device, backend name, check_data, release) of one public call; ``check_data`` None
    is False only for device-resident inputs on a caller's stream (their data may be pending)."""
    on_device = kind in operands.DEVICE_KINDS
    if on_device and backend == "numpy":
        raise ValueError("parameter 'backend'='numpy' cannot take device-resident tensors "
                         "(DeviceArray or NPU tensors); pass backend='npu' or 'auto', or numpy "
                         "arrays / torch CPU tensors")
    name = resolve_backend("npu" if on_device and backend in BACKENDS else backend, precision)
    if check_data is None:
        check_data = not (on_device and stream is not None)
    elif check_data and on_device and stream is not None:
        acl.runtime.synchronize_stream(stream, query.device_id)   # the data must be ready
    release = acl_release.current() if name == "npu" else releases.numpy_release()
    return on_device, name, check_data, release


def _validated(kind, validate, *args):
    """``validate(*args)``, its errors reworded in torch's terms for torch inputs."""
    try:
        return validate(*args)
    except AclnnError as e:
        if kind in (operands.TORCH, operands.NPU):
            raise operands.in_torch_terms(e) from None
        raise


def _results(kind, results):
    """The results, as torch CPU tensors over their memory for torch CPU inputs."""
    if kind == operands.TORCH:
        return type(results)(*(operands.to_torch(x) for x in results))
    return results


def empty_forward(call, precision) -> FagForward:
    """F2: every output empty (T1 * N1 == 0): nothing is computed."""
    t1, n1 = call.query.shape[0], call.query.shape[1]
    dv = call.value.shape[-1] if call.value.ndim else 0
    stat_dtype = precision_dtype(precision)           # float32 in "device" precision
    return FagForward(np.zeros((t1, n1, dv), BF16 if precision == "device" else stat_dtype),
                      np.zeros((t1, n1, 8), stat_dtype), np.zeros((t1, n1, 8), stat_dtype))
