"""The public calls: validate -> choose backend -> run -> FagGrads / FagForward."""

from __future__ import annotations

import os
import threading

from .call import INT32_MAX, FagForward, FagGrads
from .errors import BackendUnavailableError
from .reference import PRECISIONS, attention_backward, attention_forward
from .validate import validate_backward, validate_forward

__all__ = ["flash_attention_unpadding_score_grad_v3", "flash_attention_forward",
           "resolve_backend", "last_backend", "BACKENDS"]

BACKENDS = ("auto", "numpy", "npu")
_last = threading.local()


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
        from . import acl
        return "npu" if acl.availability().ok else "numpy"
    if backend == "npu":
        from . import acl
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
        backend="auto", precision="device", deterministic=False) -> FagGrads:
    """aclnnFlashAttentionUnpaddingScoreGradV3: gradients of TND varlen attention with rope parts.

    Arguments mirror the C op (docs/semantics.md): bf16 ``query`` [T1, N1, D], ``query_rope``
    [T1, N1, Dr], ``key`` [T2, N2, D], ``key_rope`` [T2, N2, Dr], ``value`` [T2, N2, Dv],
    ``dy`` and ``attention_in`` [T1, N1, Dv]; ``atten_mask`` bool/uint8 (nonzero = masked;
    [maxSq, maxSkv] for sparse modes 0/1, the compressed 2048x2048 mask for 2/3/4/7/8);
    ``softmax_max``/``softmax_sum`` float32 [T1, N1, 8] in the device layout (as
    flash_attention_forward returns them); ``actual_seq_qlen``/``actual_seq_kvlen`` cumulative
    ends; ``scale_value`` the real scale (no 1/sqrt(d) is applied). ``head_num=None`` means
    query.shape[1].

    ``backend``: "auto", "numpy" or "npu" (see resolve_backend). ``precision``: "device" (bf16
    outputs with the device's rounding points), "fp32" or "fp64" (golden; numpy only).
    ``deterministic``: sets ACL_OPT_DETERMINISTIC for the call on the NPU; on any backend it
    also applies the deterministic-mode padding rule (docs/validation.md, rule 16).

    Returns FagGrads(dq, dq_rope, dk, dk_rope, dv). Invalid arguments raise AclnnError
    subclasses carrying the aclnn status code the device returns (161001/161002), or
    TypeError/ValueError for arguments of the wrong Python type.
    """
    name = resolve_backend(backend, precision)
    call = validate_backward(
        query, query_rope, key, key_rope, value, dy, atten_mask=atten_mask,
        softmax_max=softmax_max, softmax_sum=softmax_sum, attention_in=attention_in,
        actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen,
        scale_value=scale_value, keep_prob=keep_prob, pre_tokens=pre_tokens,
        next_tokens=next_tokens, head_num=head_num, input_layout=input_layout,
        inner_precise=inner_precise, sparse_mode=sparse_mode, pse_type=pse_type,
        pse_shift=pse_shift, drop_mask=drop_mask, padding_mask=padding_mask,
        softmax_in=softmax_in, prefix=prefix, q_start_idx=q_start_idx,
        kv_start_idx=kv_start_idx, deterministic=deterministic)
    _last.name = name
    if call.empty_result or name == "numpy":
        return attention_backward(call, precision)
    from . import acl
    return acl.run_backward(call)


def flash_attention_forward(query, query_rope, key, key_rope, value, *, atten_mask,
                            actual_seq_qlen, actual_seq_kvlen, scale_value, pre_tokens=INT32_MAX,
                            next_tokens=INT32_MAX, head_num=None, sparse_mode=0, inner_precise=0,
                            precision="device") -> FagForward:
    """The forward the backward differentiates (NumPy): FagForward(attention_out, softmax_max,
    softmax_sum), the statistics in the device layout ([T1, N1, 8], per batch [N1, Sq_b, 8]
    blocks, 8 equal copies). "device" precision returns bf16 output and float32 statistics;
    "fp32"/"fp64" return everything in that dtype (cast the statistics to float32 before
    passing them to the backward)."""
    if precision not in PRECISIONS:
        raise ValueError(f"parameter 'precision' must be one of {PRECISIONS}, got {precision!r}")
    call = validate_forward(query, query_rope, key, key_rope, value, atten_mask=atten_mask,
                            actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen,
                            scale_value=scale_value, pre_tokens=pre_tokens,
                            next_tokens=next_tokens, head_num=head_num, sparse_mode=sparse_mode,
                            inner_precise=inner_precise)
    return attention_forward(call, precision)
