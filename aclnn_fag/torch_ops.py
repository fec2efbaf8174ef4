"""The torch custom ops behind ``aclnn_fag.torch.varlen_attention`` on CPU tensors (needs torch).

* ``torch.ops.aclnn_fag.varlen_fwd(q, q_rope, k, k_rope, v, atten_mask, actual_seq_qlen,
  actual_seq_kvlen, scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
  check_data) -> (out, softmax_max, softmax_sum)``
* ``torch.ops.aclnn_fag.varlen_bwd(grad_out, q, q_rope, k, k_rope, v, atten_mask, out,
  softmax_max, softmax_sum, grad_max, grad_sum, <the same options>) -> (dq, dq_rope, dk,
  dk_rope, dv)``

Both are opaque to torch.compile (``torch.library.custom_op``); their fake implementations
give the output shapes and dtypes, and ``varlen_fwd``'s autograd formula calls
``varlen_bwd``. ``varlen_bwd``'s own backward raises (``DOUBLE_BACKWARD_ERROR``): the
function is once differentiable. A nonzero gradient reaching the statistics raises
(``STATS_GRADIENT_ERROR``) inside ``varlen_bwd``.

Precision "device" calls the public ops (``aclnn_fag.api``) on numpy views of the tensors
(no copies; validation errors reworded for torch): bf16 inputs, the backend ``backend``
chooses. A mask of None is the default one as numpy (the package's read-only compressed
mask, which validation recognises without reading it). The golden precisions "fp32"/"fp64" run the NumPy reference
in that dtype on bf16, float32 or float64 inputs (all five of one dtype): the call is
validated with the forward's rules on zero-stride bf16 stand-ins of the inputs' shapes (the
mask and every attribute as given), and the reference then reads the caller's arrays. The
backward reuses the forward's validated call with the forward's own output and statistics
(in the precision's dtype, never rounded), so that the gradients are those of the forward.
"""

import dataclasses
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import api, blas, masks, operands
from .call import FagCall, FwdCall
from .errors import AclnnError
from .reference import attention_backward, attention_forward
from .reference.rounding import BF16
from .semantics.sparse import COMPRESSED_MODES
from .rules import validate_forward

__all__ = ["varlen_fwd", "varlen_bwd", "GOLDEN_DTYPES"]

DOUBLE_BACKWARD_ERROR = (
    "aclnn_fag.torch.varlen_attention is once differentiable: its backward (the "
    "aclnnFlashAttentionUnpaddingScoreGradV3 op or its NumPy reference) has no derivative, so "
    "second-order gradients (torch.autograd.grad(..., create_graph=True) followed by a "
    "backward through the result, e.g. a gradient penalty) are not supported; compute the "
    "penalty on another part of the model or use a plain torch attention there")
STATS_GRADIENT_ERROR = (
    "aclnn_fag.torch.varlen_attention(return_stats=True): a gradient reached softmax_max / "
    "softmax_sum, which are not differentiable here; detach() them before using them in a "
    "differentiable computation (a context-parallel merge needs its own backward)")


GOLDEN_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
_INPUT_NAMES = ("query", "query_rope", "key", "key_rope", "value")
_GOLDEN_INPUT_DTYPES = (torch.bfloat16, torch.float32, torch.float64)


def _result_dtypes(precision):
    """(output dtype, statistics dtype) of a precision."""
    if precision == "device":
        return torch.bfloat16, torch.float32
    return GOLDEN_DTYPES[precision], GOLDEN_DTYPES[precision]


def _golden_call(q, q_rope, k, k_rope, v, atten_mask, qlen, kvlen, scale_value, sparse_mode,
                 pre_tokens, next_tokens, backend, precision, check_data) -> FwdCall:
    """The validated forward call of a golden precision over the caller's arrays (module
    docstring)."""
    api.resolve_backend(backend, precision)       # "npu" with a golden precision raises
    tensors = (q, q_rope, k, k_rope, v)
    for name, t in zip(_INPUT_NAMES, tensors):
        if t.dtype not in _GOLDEN_INPUT_DTYPES or t.dtype != q.dtype:
            want = GOLDEN_DTYPES[precision]
            raise TypeError(f"parameter '{name}' has dtype {t.dtype} (query: {q.dtype}); "
                            f"precision={precision!r} takes torch.bfloat16, torch.float32 or "
                            f"torch.float64 tensors, all five of one dtype: convert with "
                            f"{name}.to({want})")
    arrays = _arrays(tensors, atten_mask, sparse_mode, qlen, kvlen)
    stand_ins = [np.broadcast_to(np.zeros((), BF16), a.shape) for a in arrays[:5]]
    call = validate_forward(*stand_ins, atten_mask=arrays[5], actual_seq_qlen=qlen,
                            actual_seq_kvlen=kvlen, scale_value=scale_value,
                            pre_tokens=pre_tokens, next_tokens=next_tokens,
                            sparse_mode=sparse_mode,
                            check_data=True if check_data is None else check_data)
    return dataclasses.replace(call, **dict(zip(_INPUT_NAMES, arrays[:5])))


def _arrays(tensors, atten_mask, sparse_mode, qlen, kvlen) -> tuple:
    """numpy views of the input tensors and of the mask (no copies); a mask of None becomes
    the default one as numpy: the package's read-only compressed causal mask, which
    validation recognises without reading its 4 MiB, or an all-zero [maxSq, maxSkv] mask."""
    _, arrays = operands.convert_args(_INPUT_NAMES + ("atten_mask",), tensors + (atten_mask,))
    if atten_mask is None:
        if sparse_mode in COMPRESSED_MODES:
            mask = masks.compressed_causal_mask()
        else:
            mask = np.zeros((max(max(_lengths(qlen), default=0), 1),
                             max(max(_lengths(kvlen), default=0), 1)), np.uint8)
        arrays = arrays[:5] + (mask,)
    return arrays


def _lengths(ends) -> list:
    return [b - a for a, b in zip([0] + list(ends[:-1]), ends)]


def _in_torch_terms(fn, *args, **kwargs):
    """``fn`` (a public call on numpy views of the caller's tensors) with its validation
    errors worded for torch (``operands.in_torch_terms``)."""
    try:
        return fn(*args, **kwargs)
    except AclnnError as e:
        raise operands.in_torch_terms(e) from None


@torch.library.custom_op("aclnn_fag::varlen_fwd", mutates_args=())
def varlen_fwd(q: Tensor, q_rope: Tensor, k: Tensor, k_rope: Tensor, v: Tensor,
               atten_mask: Optional[Tensor], actual_seq_qlen: list[int],
               actual_seq_kvlen: list[int], scale_value: float, sparse_mode: int,
               pre_tokens: int, next_tokens: int, backend: str, precision: str,
               check_data: Optional[bool]) -> tuple[Tensor, Tensor, Tensor]:
    if precision == "device":
        arrays = _arrays((q, q_rope, k, k_rope, v), atten_mask, sparse_mode, actual_seq_qlen,
                         actual_seq_kvlen)
        fwd = _in_torch_terms(
            api.flash_attention_forward, *arrays[:5], atten_mask=arrays[5],
            actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen,
            scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
            sparse_mode=sparse_mode, backend=backend, check_data=check_data)
        return tuple(operands.to_torch(x) for x in fwd)
    call = _golden_call(q, q_rope, k, k_rope, v, atten_mask, actual_seq_qlen, actual_seq_kvlen,
                        scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
                        check_data)
    if call.empty_result:
        fwd = api._empty_forward(call, precision)
    else:
        with blas.capped():
            fwd = attention_forward(call, precision)
    return tuple(operands.to_torch(x) for x in fwd)


@varlen_fwd.register_fake
def _varlen_fwd_fake(q, q_rope, k, k_rope, v, atten_mask, actual_seq_qlen, actual_seq_kvlen,
                     scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
                     check_data):
    out_dtype, stat_dtype = _result_dtypes(precision)
    t1, n1 = q.shape[0], q.shape[1]
    return (q.new_empty((t1, n1, v.shape[2]), dtype=out_dtype),
            q.new_empty((t1, n1, 8), dtype=stat_dtype),
            q.new_empty((t1, n1, 8), dtype=stat_dtype))


@torch.library.custom_op("aclnn_fag::varlen_bwd", mutates_args=())
def varlen_bwd(grad_out: Tensor, q: Tensor, q_rope: Tensor, k: Tensor, k_rope: Tensor,
               v: Tensor, atten_mask: Optional[Tensor], out: Tensor, softmax_max: Tensor,
               softmax_sum: Tensor, grad_max: Optional[Tensor], grad_sum: Optional[Tensor],
               actual_seq_qlen: list[int], actual_seq_kvlen: list[int], scale_value: float,
               sparse_mode: int, pre_tokens: int, next_tokens: int, backend: str,
               precision: str, check_data: Optional[bool]
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    for g in (grad_max, grad_sum):
        if g is not None and bool(g.any()):
            raise RuntimeError(STATS_GRADIENT_ERROR)
    if precision == "device":
        arrays = _arrays((q, q_rope, k, k_rope, v), atten_mask, sparse_mode, actual_seq_qlen,
                         actual_seq_kvlen)
        _, extra = operands.convert_args(
            ("dy", "attention_in", "softmax_max", "softmax_sum"),
            (grad_out.to(q.dtype).contiguous(), out, softmax_max, softmax_sum))
        g = _in_torch_terms(
            api.flash_attention_unpadding_score_grad_v3, *arrays[:5], extra[0],
            atten_mask=arrays[5], softmax_max=extra[2], softmax_sum=extra[3],
            attention_in=extra[1], actual_seq_qlen=actual_seq_qlen,
            actual_seq_kvlen=actual_seq_kvlen, scale_value=scale_value, pre_tokens=pre_tokens,
            next_tokens=next_tokens, sparse_mode=sparse_mode, backend=backend,
            check_data=check_data)
        return tuple(operands.to_torch(x) for x in g)
    call = _golden_call(q, q_rope, k, k_rope, v, atten_mask, actual_seq_qlen, actual_seq_kvlen,
                        scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
                        check_data)
    _, extra = operands.convert_args(("dy", "attention_in", "softmax_max", "softmax_sum"),
                                     (grad_out.contiguous(), out, softmax_max, softmax_sum))
    fields = {f.name: getattr(call, f.name) for f in dataclasses.fields(FwdCall)}
    bcall = FagCall(**fields, dy=extra[0], attention_in=extra[1], softmax_max=extra[2],
                    softmax_sum=extra[3])
    with blas.capped():
        grads = attention_backward(bcall, precision)
    return tuple(operands.to_torch(x) for x in grads)


@varlen_bwd.register_fake
def _varlen_bwd_fake(grad_out, q, q_rope, k, k_rope, v, atten_mask, out, softmax_max,
                     softmax_sum, grad_max, grad_sum, actual_seq_qlen, actual_seq_kvlen,
                     scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
                     check_data):
    dtype = _result_dtypes(precision)[0]
    return tuple(x.new_empty(x.shape, dtype=dtype) for x in (q, q_rope, k, k_rope, v))


def _setup_forward(ctx, inputs, output):
    q, q_rope, k, k_rope, v, atten_mask = inputs[:6]
    ctx.save_for_backward(q, q_rope, k, k_rope, v, atten_mask, *output)
    ctx.options = inputs[6:]


def _backward(ctx, grad_out, grad_max, grad_sum):
    q, q_rope, k, k_rope, v, atten_mask, out, smax, ssum = ctx.saved_tensors
    grads = torch.ops.aclnn_fag.varlen_bwd(grad_out, q, q_rope, k, k_rope, v, atten_mask, out,
                                           smax, ssum, grad_max, grad_sum, *ctx.options)
    return (*grads, None) + (None,) * len(ctx.options)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD_ERROR)


varlen_fwd.register_autograd(_backward, setup_context=_setup_forward)
varlen_bwd.register_autograd(_no_double_backward)
