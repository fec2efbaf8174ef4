"""The torch custom ops behind ``aclnn_fag.torch.varlen_attention`` on CPU tensors (needs torch).

* ``torch.ops.aclnn_fag.varlen_fwd(q, q_rope, k, k_rope, v, atten_mask, actual_seq_qlen,
  actual_seq_kvlen, scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
  check_data) -> (out, softmax_max, softmax_sum)``
* ``torch.ops.aclnn_fag.varlen_bwd(grad_out, q, q_rope, k, k_rope, v, atten_mask, out,
  softmax_max, softmax_sum, grad_max, grad_sum, <the same options>) -> (dq, dq_rope, dk,
  dk_rope, dv)``

Both are opaque to torch.compile; their fake implementations give the output shapes and
dtypes, ``varlen_fwd``'s autograd formula calls ``varlen_bwd``, whose own backward raises
(``DOUBLE_BACKWARD_ERROR``); a nonzero gradient of the statistics raises
(``STATS_GRADIENT_ERROR``). Their bodies, ``run_forward`` / ``run_backward``, are what the
eager path of ``aclnn_fag.torch`` calls (the dispatcher costs ~0.3 ms per training step).

Precision "device" calls the public ops on numpy views of the tensors (no copies; errors
worded for torch). The golden precisions "fp32"/"fp64" validate the call with the forward's
rules on zero-stride bf16 stand-ins of the inputs' shapes, then run the NumPy reference on
the caller's arrays; the backward reuses that call with the forward's own output and
statistics (never rounded), so that the gradients are those of the forward.
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

__all__ = ["varlen_fwd", "varlen_bwd", "run_forward", "run_backward", "first_order_only",
           "GOLDEN_DTYPES", "default_mask"]

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
_BWD_NAMES = ("dy", "attention_in", "softmax_max", "softmax_sum")
_GOLDEN_INPUT_DTYPES = (torch.bfloat16, torch.float32, torch.float64)


def default_mask(sparse_mode, qlen, kvlen) -> np.ndarray:
    """The mask of a call without one: the package's read-only compressed causal mask (which
    validation recognises unread) for the compressed modes, else all-zero [maxSq, maxSkv]."""
    if sparse_mode in COMPRESSED_MODES:
        return masks.compressed_causal_mask()
    longest = (max((b - a for a, b in zip([0] + list(e[:-1]), e)), default=0)
               for e in (qlen, kvlen))
    return np.zeros(tuple(max(n, 1) for n in longest), np.uint8)


def _arrays(tensors, atten_mask, sparse_mode, qlen, kvlen) -> tuple:
    """numpy views of the five inputs and the mask (no copies; None: ``default_mask``)."""
    _, arrays = operands.convert_args(_INPUT_NAMES + ("atten_mask",), tensors + (atten_mask,))
    if atten_mask is None:
        arrays = arrays[:5] + (default_mask(sparse_mode, qlen, kvlen),)
    return arrays


def _golden_call(q, q_rope, k, k_rope, v, atten_mask, qlen, kvlen, scale_value, sparse_mode,
                 pre_tokens, next_tokens, backend, precision, check_data) -> FwdCall:
    """The validated forward call of a golden precision over the caller's arrays."""
    api.resolve_backend(backend, precision)       # "npu" with a golden precision raises
    tensors = (q, q_rope, k, k_rope, v)
    for name, t in zip(_INPUT_NAMES, tensors):
        if t.dtype not in _GOLDEN_INPUT_DTYPES or t.dtype != q.dtype:
            raise TypeError(f"parameter '{name}' has dtype {t.dtype} (query: {q.dtype}); "
                            f"precision={precision!r} takes torch.bfloat16, torch.float32 or "
                            f"torch.float64 tensors, all five of one dtype: convert with "
                            f"{name}.to({GOLDEN_DTYPES[precision]})")
    arrays = _arrays(tensors, atten_mask, sparse_mode, qlen, kvlen)
    stand_ins = [np.broadcast_to(np.zeros((), BF16), a.shape) for a in arrays[:5]]
    call = validate_forward(*stand_ins, atten_mask=arrays[5], actual_seq_qlen=qlen,
                            actual_seq_kvlen=kvlen, scale_value=scale_value,
                            pre_tokens=pre_tokens, next_tokens=next_tokens,
                            sparse_mode=sparse_mode,
                            check_data=True if check_data is None else check_data)
    return dataclasses.replace(call, **dict(zip(_INPUT_NAMES, arrays[:5])))


def _device_op(fn, tensors, atten_mask, extra, qlen, kvlen, sparse_mode, **kwargs) -> tuple:
    """The public op ``fn`` on numpy views of the tensors (``extra``: the backward's dy,
    attention_in and statistics), its validation errors worded for torch; torch results."""
    arrays = _arrays(tensors, atten_mask, sparse_mode, qlen, kvlen)
    named = {}
    if extra:
        _, extra = operands.convert_args(_BWD_NAMES, extra)
        named = dict(zip(_BWD_NAMES[1:], extra[1:]))
    try:
        result = fn(*arrays[:5], *extra[:1], atten_mask=arrays[5], actual_seq_qlen=qlen,
                    actual_seq_kvlen=kvlen, sparse_mode=sparse_mode, **named, **kwargs)
    except AclnnError as e:
        raise operands.in_torch_terms(e) from None
    return tuple(operands.to_torch(x) for x in result)


def _result_dtypes(precision):
    """(output dtype, statistics dtype) of a precision."""
    if precision == "device":
        return torch.bfloat16, torch.float32
    return GOLDEN_DTYPES[precision], GOLDEN_DTYPES[precision]


def run_forward(q: Tensor, q_rope: Tensor, k: Tensor, k_rope: Tensor, v: Tensor,
                atten_mask: Optional[Tensor], actual_seq_qlen: list[int],
                actual_seq_kvlen: list[int], scale_value: float, sparse_mode: int,
                pre_tokens: int, next_tokens: int, backend: str, precision: str,
                check_data: Optional[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """(out, softmax_max, softmax_sum) of CPU tensors: the body of ``varlen_fwd``, which
    ``aclnn_fag.torch`` also calls directly in eager mode (without the dispatcher)."""
    if precision == "device":
        return _device_op(api.flash_attention_forward, (q, q_rope, k, k_rope, v), atten_mask,
                          (), actual_seq_qlen, actual_seq_kvlen, sparse_mode,
                          scale_value=scale_value, pre_tokens=pre_tokens,
                          next_tokens=next_tokens, backend=backend, check_data=check_data)
    call = _golden_call(q, q_rope, k, k_rope, v, atten_mask, actual_seq_qlen, actual_seq_kvlen,
                        scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
                        check_data)
    if call.empty_result:
        fwd = api.empty_forward(call, precision)
    else:
        with blas.capped():
            fwd = attention_forward(call, precision)
    return tuple(operands.to_torch(x) for x in fwd)


varlen_fwd = torch.library.custom_op("aclnn_fag::varlen_fwd", run_forward, mutates_args=())


@varlen_fwd.register_fake
def _varlen_fwd_fake(q, q_rope, k, k_rope, v, atten_mask, actual_seq_qlen, actual_seq_kvlen,
                     scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
                     check_data):
    out_dtype, stat_dtype = _result_dtypes(precision)
    t1, n1 = q.shape[0], q.shape[1]
    return (q.new_empty((t1, n1, v.shape[2]), dtype=out_dtype),
            q.new_empty((t1, n1, 8), dtype=stat_dtype),
            q.new_empty((t1, n1, 8), dtype=stat_dtype))


def run_backward(grad_out: Tensor, q: Tensor, q_rope: Tensor, k: Tensor, k_rope: Tensor,
                 v: Tensor, atten_mask: Optional[Tensor], out: Tensor, softmax_max: Tensor,
                 softmax_sum: Tensor, grad_max: Optional[Tensor], grad_sum: Optional[Tensor],
                 actual_seq_qlen: list[int], actual_seq_kvlen: list[int], scale_value: float,
                 sparse_mode: int, pre_tokens: int, next_tokens: int, backend: str,
                 precision: str, check_data: Optional[bool]
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dq_rope, dk, dk_rope, dv) of CPU tensors: the body of ``varlen_bwd`` (also called
    directly in eager mode). A nonzero gradient of the statistics raises."""
    for g in (grad_max, grad_sum):
        if g is not None and bool(g.any()):
            raise RuntimeError(STATS_GRADIENT_ERROR)
    if precision == "device":
        return _device_op(api.flash_attention_unpadding_score_grad_v3,
                          (q, q_rope, k, k_rope, v), atten_mask,
                          (grad_out.to(q.dtype).contiguous(), out, softmax_max, softmax_sum),
                          actual_seq_qlen, actual_seq_kvlen, sparse_mode,
                          scale_value=scale_value, pre_tokens=pre_tokens,
                          next_tokens=next_tokens, backend=backend, check_data=check_data)
    call = _golden_call(q, q_rope, k, k_rope, v, atten_mask, actual_seq_qlen, actual_seq_kvlen,
                        scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
                        check_data)
    _, extra = operands.convert_args(_BWD_NAMES,
                                     (grad_out.contiguous(), out, softmax_max, softmax_sum))
    fields = {f.name: getattr(call, f.name) for f in dataclasses.fields(FwdCall)}
    bcall = FagCall(**fields, **dict(zip(_BWD_NAMES, extra)))
    with blas.capped():
        grads = attention_backward(bcall, precision)
    return tuple(operands.to_torch(x) for x in grads)


varlen_bwd = torch.library.custom_op("aclnn_fag::varlen_bwd", run_backward, mutates_args=())


@varlen_bwd.register_fake
def _varlen_bwd_fake(grad_out, q, q_rope, k, k_rope, v, atten_mask, out, softmax_max,
                     softmax_sum, grad_max, grad_sum, actual_seq_qlen, actual_seq_kvlen,
                     scale_value, sparse_mode, pre_tokens, next_tokens, backend, precision,
                     check_data):
    dtype = _result_dtypes(precision)[0]
    return tuple(x.new_empty(x.shape, dtype=dtype) for x in (q, q_rope, k, k_rope, v))


def _setup_forward(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6], *output)
    ctx.options = inputs[6:]


def _backward(ctx, grad_out, grad_max, grad_sum):
    q, q_rope, k, k_rope, v, atten_mask, out, smax, ssum = ctx.saved_tensors
    grads = torch.ops.aclnn_fag.varlen_bwd(grad_out, q, q_rope, k, k_rope, v, atten_mask, out,
                                           smax, ssum, grad_max, grad_sum, *ctx.options)
    return (*grads, None) + (None,) * len(ctx.options)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD_ERROR)


class _SecondOrderRefused(torch.autograd.Function):
    """Passes a backward's gradients through a node whose own backward raises: their
    ``inputs`` are the tensors the gradients depend on, so that a second-order use reaches
    it."""

    @staticmethod
    def forward(ctx, grads, *inputs):
        return grads

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)


def first_order_only(grads: tuple, *inputs) -> tuple:
    """The gradients of an autograd Function's backward; under ``create_graph=True`` (grad
    mode on in the backward) a backward through them raises ``DOUBLE_BACKWARD_ERROR``."""
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs):
        return _SecondOrderRefused.apply(grads, *inputs)
    return grads


varlen_fwd.register_autograd(_backward, setup_context=_setup_forward)
varlen_bwd.register_autograd(_no_double_backward)
