"""The public calls: validate -> choose backend -> run -> FagGrads / FagForward."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from . import acl, blas, device_run, operands
from .call import INT32_MAX, FagForward, FagGrads
from .errors import AclnnError, BackendUnavailableError, NpuFallbackWarning, caller_stacklevel
from .reference import PRECISIONS, attention_backward, attention_forward
from .rules import validate_backward_args, validate_forward
from .rules.arguments import names
from .spec import BACKWARD_V3
from .constants import BF16

__all__ = ["flash_attention_unpadding_score_grad_v3", "flash_attention_forward",
           "resolve_backend", "last_backend", "BACKENDS", "NpuFallbackWarning"]

BACKENDS = ("auto", "numpy", "npu")
_TORCH_KINDS = (operands.TORCH, operands.NPU)
_last = threading.local()
_TENSORS, _SCALARS, _LISTS = names(BACKWARD_V3)
assert _TENSORS == ("query", "query_rope", "key", "key_rope", "value", "dy", "pse_shift",
                    "drop_mask", "padding_mask", "atten_mask", "softmax_max", "softmax_sum",
                    "softmax_in", "attention_in")
assert _SCALARS == ("scale_value", "keep_prob", "pre_tokens", "next_tokens", "head_num",
                    "input_layout", "inner_precise", "sparse_mode", "pse_type", "deterministic")
assert _LISTS == ("prefix", "actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "kv_start_idx")


_warned_lock = threading.Lock()
_warned: set = set()


def _warn_fallback(status) -> None:
    """Warn once per process and reason that "auto" falls back to NumPy (see NpuFallbackWarning)."""
    if not getattr(status, "installed", False):
        return
    key = status.reason
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    dev = status.device_id
    if dev is None:
        dev = os.environ.get("ACLNN_FAG_DEVICE", "").strip() or "0"
    warnings.warn(f"backend='auto': the CANN libraries are installed but NPU device {dev} cannot "
                  f"be used: {status.reason}; running the NumPy reference instead (pass "
                  f"backend='npu' to get an error, or backend='numpy' to silence this)",
                  NpuFallbackWarning, stacklevel=caller_stacklevel())


def last_backend():
    """The backend ("numpy" or "npu") that ran the last call on this thread (None before any)."""
    return getattr(_last, "name", None)


def resolve_backend(backend: str = "auto", precision: str = "device") -> str:
    """The concrete backend for a request.

    "auto" takes ``$ACLNN_FAG_BACKEND`` when set, else "npu" when the CANN libraries load and
    a device is present (and precision is "device"), else "numpy". "npu" raises
    BackendUnavailableError (with the loader's list of places tried) when it cannot run.
    """
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
    if backend == "auto":
        if precision != "device":
            return "numpy"
        status = acl.availability()
        if status.ok:
            return "npu"
        _warn_fallback(status)
        return "numpy"
    if backend == "npu":
        status = acl.availability()
        if not status.ok:
            forked = acl.runtime.forked_child_reason()
            if forked is not None:      # a subclass of BackendUnavailableError
                raise acl.ForkedProcessError(forked, code=361001, param="backend")
            raise BackendUnavailableError(f"backend 'npu' is not available: {status.reason}",
                                          code=361001, param="backend")
    return backend


def flash_attention_unpadding_score_grad_v3(
        query, query_rope, key, key_rope, value, dy, *, atten_mask, softmax_max, softmax_sum,
        attention_in, actual_seq_qlen, actual_seq_kvlen, scale_value, keep_prob=1.0,
        pre_tokens=INT32_MAX, next_tokens=INT32_MAX, head_num=None, input_layout="TND",
        inner_precise=0, sparse_mode=0, pse_type=1, pse_shift=None, drop_mask=None,
        padding_mask=None, softmax_in=None, prefix=None, q_start_idx=None, kv_start_idx=None,
        backend="auto", precision="device", deterministic=False, check_data=None,
        stream=None, progress=None) -> FagGrads:
    """aclnnFlashAttentionUnpaddingScoreGradV3: gradients of TND varlen attention with rope parts.

    The arguments mirror the C op one to one (docs/semantics.md; docs/porting.md for
    torch_npu's names). Tensors are numpy arrays; T1/T2 count the packed query/key tokens,
    N1/N2 the query/KV heads (N1 a multiple of N2), D the head dim, Dr the rope head dim, Dv
    the value head dim.

    Tensors:
        query [T1, N1, D], query_rope [T1, N1, Dr], key [T2, N2, D], key_rope [T2, N2, Dr],
        value [T2, N2, Dv]: bfloat16 (``ml_dtypes.bfloat16``); the scores are
        q·k + q_rope·k_rope.
        dy, attention_in [T1, N1, Dv]: bfloat16, the output gradient and the forward's output.
        softmax_max, softmax_sum [T1, N1, 8]: float32 statistics of the forward **in the
        device's layout** (per batch [N1, Sq_b, 8] blocks, 8 equal copies), as
        ``flash_attention_forward`` returns them; convert token-major statistics with
        ``aclnn_fag.softmax_layout.device_stats_from_token_major``.
        atten_mask: bool/uint8, nonzero = masked. Sparse modes 0/1/5: [maxSq, maxSkv] (or
        [1|B, 1|N1, maxSq, maxSkv]; ``aclnn_fag.masks.band_mask`` builds one from tokens);
        modes 2/3/4/7/8: the compressed 2048x2048 ``aclnn_fag.masks.compressed_causal_mask()``.
        Kinds (``aclnn_fag.operands``), one per call: numpy arrays; torch CPU tensors (the
        results are torch CPU tensors over the results' memory, no copies either way); or
        device-resident ``aclnn_fag.acl.DeviceArray`` / NPU tensors (torch_npu), used in place
        on the NPU (the caller's addresses and strides; results are DeviceArrays, or NPU
        tensors made with ``query.new_empty``).

    Sequences and sparsity:
        actual_seq_qlen, actual_seq_kvlen: cumulative end offsets of the sequences (lengths
        [2, 2, 0, 2, 2] -> [2, 4, 4, 6, 8]; ``aclnn_fag.seqlens`` converts).
        sparse_mode: 0 (mask and token band), 1 (mask only), 2 (causal, top-left), 3 (causal,
        bottom-right), 4 (band, bottom-right), 5 (as 0), 7/8 (context-parallel mixes); 6 is
        rejected. docs/sparse_modes.md draws each.
        pre_tokens, next_tokens: the token band of modes 0/4/5/7/8 (keys i - pre .. i + next
        are kept, shifted to the bottom-right origin in modes 4/7/8); clamped to 2^31 - 1;
        ignored by modes 1/2/3.

    Scalars:
        scale_value: the real scale of the scores (no 1/sqrt(d) is applied; MLA uses
        1/sqrt(D + Dr)). keep_prob must be 1.0 and pse_shift/drop_mask None (V3 has no
        dropout and no pse). head_num: None means query.shape[1] (any other value must equal
        it). input_layout: "TND". inner_precise: passed through, unused. pse_type: must be 1.
        padding_mask, softmax_in, prefix: accepted and ignored (IgnoredArgumentWarning).
        q_start_idx, kv_start_idx: no effect on V3's math; the binding passes [0] where the
        device would otherwise pick a rope-blind kernel (docs/abi.md §7, rope-blind kernels).

    Execution:
        backend: "auto", "numpy" or "npu" (see ``resolve_backend``). precision: "device"
        (bf16 results with the device's rounding points), "fp32" or "fp64" (the same math
        without bf16 rounding; NumPy only; float32/float64 results). deterministic: sets
        ACL_OPT_DETERMINISTIC for the call on the NPU; on any backend it also selects the
        deterministic-mode padding rule (docs/validation.md, rule 16). Device-resident inputs
        always run on the NPU.
        check_data: whether to run the rules that read tensor data (docs/validation.md, S6,
        S8, S9); on device-resident inputs they read back a bounded sample (at most 16 KiB).
        None (default) means True, except for device-resident inputs with ``stream``: their
        data may still be being written by work queued on that stream, so the checks are
        skipped there; True then synchronises the stream once and samples.
        stream: the caller's aclrtStream (an int, or an object with ``npu_stream`` such as
        ``torch.npu.current_stream()``). With device-resident inputs the call only enqueues
        the op on it and returns (no synchronisation; the workspace is kept per stream for
        later calls on it); with host inputs the stream is synchronised before the results
        are read. Without it the NPU backend uses its own stream and synchronises.
        progress: on the NumPy backend, report progress (blocks done, rate, ETA) on stderr
        when the call is estimated to take over 10 s: True/False, or None for
        ``$ACLNN_FAG_PROGRESS`` (the CLI turns it on; ``aclnn_fag.progress``).

    Returns:
        FagGrads(dq, dq_rope, dk, dk_rope, dv), a named tuple in that order, each shaped like
        its input (query, query_rope, key, key_rope, value); dk/dk_rope/dv sum over the G =
        N1/N2 query heads of a KV head.

    Raises:
        ParamInvalidError (161002) / ParamNullptrError (161001): invalid arguments, with the
        status code the device returns, ``.param`` and ``.rule`` (docs/validation.md lists
        every rule); TypeError / ValueError for arguments of the wrong Python type;
        BackendUnavailableError when backend="npu" cannot run; AclnnError subclasses for
        failures of the native op.

    Warns:
        SequenceEndWarning (the last cumulative end is below T), FullyMaskedRowWarning (a
        query row with no kept key: zero gradients), SoftmaxStatsMismatchWarning (the
        statistics cannot be those of these scores), IgnoredArgumentWarning.
    """
    # the arguments in the spec's orders (rules.arguments.names), the tensors converted in
    # one pass (operands)
    kind, t = operands.convert_args(_TENSORS, (
        query, query_rope, key, key_rope, value, dy, pse_shift, drop_mask, padding_mask,
        atten_mask, softmax_max, softmax_sum, softmax_in, attention_in))
    on_device, name, check_data = _call_setup(kind, t[0], backend, precision, check_data, stream)
    try:
        call = validate_backward_args(
            t, (scale_value, keep_prob, pre_tokens, next_tokens, head_num, input_layout,
                inner_precise, sparse_mode, pse_type, deterministic),
            (prefix, actual_seq_qlen, actual_seq_kvlen, q_start_idx, kv_start_idx), check_data)
    except AclnnError as e:
        if kind in _TORCH_KINDS:          # dtypes and conversions in torch's terms
            raise operands.in_torch_terms(e) from None
        raise
    _last.name = name
    if on_device:
        return device_run.run_backward_on_device(call, kind, query, stream)
    if call.empty_result or name == "numpy":
        with blas.capped():              # set_reference_threads / $ACLNN_FAG_BLAS_THREADS
            grads = attention_backward(call, precision, progress=progress)
    else:
        grads = acl.run_backward(call, stream=stream)
    if kind == operands.TORCH:
        grads = FagGrads(*(operands.to_torch(g) for g in grads))
    return grads


def _call_setup(kind, query, backend, precision, check_data, stream):
    """(on_device, backend name, check_data) of one public call: device-resident inputs
    always run on the NPU; ``check_data`` None means True except for device-resident inputs
    with a caller's stream (their data may still be being written by queued work), and True
    there synchronises that stream once first."""
    on_device = kind in operands.DEVICE_KINDS
    name = _device_backend(backend, precision) if on_device else resolve_backend(backend, precision)
    if check_data is None:
        check_data = not (on_device and stream is not None)
    elif check_data and on_device and stream is not None:
        acl.runtime.synchronize_stream(stream, query.device_id)   # the data must be ready
    return on_device, name, check_data


def _device_backend(backend, precision) -> str:
    """The backend for device-resident inputs: always "npu" (they cannot run on NumPy)."""
    if backend not in BACKENDS:
        raise ValueError(f"parameter 'backend' must be one of {BACKENDS}, got {backend!r}")
    if backend == "numpy":
        raise ValueError("parameter 'backend'='numpy' cannot take device-resident tensors "
                         "(DeviceArray or NPU tensors); pass backend='npu' or 'auto', or numpy "
                         "arrays / torch CPU tensors")
    return resolve_backend("npu", precision)


def flash_attention_forward(query, query_rope, key, key_rope, value, *, atten_mask,
                            actual_seq_qlen, actual_seq_kvlen, scale_value, keep_prob=1.0,
                            pre_tokens=INT32_MAX, next_tokens=INT32_MAX, head_num=None,
                            input_layout="TND", inner_precise=0, sparse_mode=0, pse_type=1,
                            pse_shift=None, drop_mask=None, padding_mask=None, prefix=None,
                            q_start_idx=None, kv_start_idx=None, backend="auto",
                            precision="device", deterministic=False, check_data=None,
                            stream=None, progress=None) -> FagForward:
    """aclnnFlashAttentionVarLenScoreV3: the forward the backward differentiates, on the NPU
    or the NumPy reference (docs/forward.md).

    query [T1, N1, D], query_rope [T1, N1, Dr], key [T2, N2, D], key_rope [T2, N2, Dr], value
    [T2, N2, Dv]: bfloat16. Kinds, one per call, as for the backward: numpy arrays, torch CPU
    tensors (torch CPU results, no copies), or device-resident ``aclnn_fag.acl.DeviceArray``
    / NPU tensors, used in place on the NPU (results are DeviceArrays, or NPU tensors made
    with ``query.new_empty``: attention_out bf16, the statistics float32). check_data and
    stream: as for ``flash_attention_unpadding_score_grad_v3`` (with a caller's stream and
    device-resident inputs the call only enqueues; the results are ready when that stream
    gets there). atten_mask, actual_seq_qlen, actual_seq_kvlen, scale_value,
    pre_tokens, next_tokens, head_num, sparse_mode, inner_precise, input_layout, keep_prob
    (must be 1), pse_type (must be 1): as for ``flash_attention_unpadding_score_grad_v3``.
    pse_shift and drop_mask must be None; padding_mask and prefix are accepted and ignored
    (IgnoredArgumentWarning). q_start_idx / kv_start_idx: None passes [0] (docs/forward.md,
    "Start indices"); your own values are passed unchanged.

    backend: "auto", "numpy" or "npu", chosen like the backward's (resolve_backend); "npu"
    needs a CANN that exports the forward op, "auto" then runs NumPy (NpuFallbackWarning).
    precision: "device" returns bf16 output and float32 statistics; "fp32"/"fp64" (NumPy
    only) return everything in that dtype (cast the statistics to float32 before passing
    them to the backward). deterministic: sets ACL_OPT_DETERMINISTIC for the call on the NPU.
    progress: as for ``flash_attention_unpadding_score_grad_v3``.

    Returns FagForward(attention_out, softmax_max, softmax_sum): attention_out [T1, N1, Dv];
    the statistics [T1, N1, 8] in the device's layout (per batch [N1, Sq_b, 8] blocks, 8 equal
    copies; docs/semantics.md, Softmax statistics) -- on the NPU exactly what the device
    wrote, ready for the backward. Rows with no kept key get max = -FLT_MAX, sum = FLT_MAX,
    output 0 (FullyMaskedRowWarning on the NumPy backend). Invalid arguments raise the
    forward's status codes (161001/161002) in its order (docs/forward.md, "Validation").
    """
    kind, t = operands.convert_inputs(dict(query=query, query_rope=query_rope, key=key,
                                           key_rope=key_rope, value=value, atten_mask=atten_mask,
                                           pse_shift=pse_shift, drop_mask=drop_mask,
                                           padding_mask=padding_mask))
    on_device, name, check_data = _call_setup(kind, t["query"], backend, precision, check_data,
                                              stream)
    try:
        call = validate_forward(t["query"], t["query_rope"], t["key"], t["key_rope"], t["value"],
                                atten_mask=t["atten_mask"], actual_seq_qlen=actual_seq_qlen,
                                actual_seq_kvlen=actual_seq_kvlen, scale_value=scale_value,
                                keep_prob=keep_prob, pre_tokens=pre_tokens, next_tokens=next_tokens,
                                head_num=head_num, input_layout=input_layout,
                                inner_precise=inner_precise, sparse_mode=sparse_mode,
                                pse_type=pse_type, pse_shift=t["pse_shift"],
                                drop_mask=t["drop_mask"], padding_mask=t["padding_mask"],
                                prefix=prefix, q_start_idx=q_start_idx,
                                kv_start_idx=kv_start_idx, deterministic=deterministic,
                                check_data=check_data)
    except AclnnError as e:
        if kind in _TORCH_KINDS:          # dtypes and conversions in torch's terms
            raise operands.in_torch_terms(e) from None
        raise
    if on_device:
        _last.name = name
        return device_run.run_forward_on_device(call, kind, query, stream)
    if name == "npu" and backend != "npu":
        if not acl.forward_available():
            # "auto" on a CANN without the forward op: the NumPy forward, said once
            _warn_fallback(_NoForward())
            name = "numpy"
    _last.name = name
    if call.empty_result:
        out = _empty_forward(call, precision)
    elif name == "numpy":
        with blas.capped():
            out = attention_forward(call, precision, progress=progress)
    else:
        out = acl.run_forward(call, stream=stream)
    if kind == operands.TORCH:
        out = FagForward(*(operands.to_torch(x) for x in out))
    return out


class _NoForward:
    installed = True
    device_id = None
    reason = ("the loaded CANN libraries do not export aclnnFlashAttentionVarLenScoreV3 (the "
              "device forward); the backward still runs on the NPU")


def _empty_forward(call, precision) -> FagForward:
    """F2: every output empty (T1 * N1 == 0): nothing is computed."""
    t1, n1 = call.query.shape[0], call.query.shape[1]
    dv = call.value.shape[-1] if call.value.ndim else 0
    if precision == "device":
        out_dtype, stat_dtype = BF16, np.float32
    else:
        out_dtype = stat_dtype = np.float32 if precision == "fp32" else np.float64
    return FagForward(np.zeros((t1, n1, dv), out_dtype), np.zeros((t1, n1, 8), stat_dtype),
                      np.zeros((t1, n1, 8), stat_dtype))
