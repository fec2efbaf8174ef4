"""Varlen attention with rope parts for torch: autograd, torch.compile, golden precisions
(optional: needs torch; docs/torch.md).

``varlen_attention(q, q_rope, k, k_rope, v, actual_seq_qlen=..., scale_value=...)`` returns
the attention output; ``backward()`` gives the gradients of q, q_rope, k, k_rope and v.

* **CPU tensors** run the backend ``backend`` chooses (the NumPy reference without an NPU):
  under ``torch.compile`` through the custom ops ``torch.ops.aclnn_fag.varlen_fwd`` /
  ``varlen_bwd`` (``aclnn_fag.torch_ops``), traced without graph breaks; in eager mode
  through ``_VarlenCpu``, the same bodies without the dispatcher.
* **NPU tensors** (torch_npu, used only through ``aclnn_fag.operands``; never imported) run
  both ops on the NPU in place, enqueued on the caller's current stream, the statistics kept
  on the device between them (``FlashAttentionVarlenRope``).
* **Once differentiable**: a second-order use raises ``RuntimeError``.
* **precision** ``"device"`` (bf16 tensors, the device's rounding points), ``"fp32"`` or
  ``"fp64"`` (NumPy backend, CPU tensors of one dtype: bf16, float32 or float64).
* **return_stats=True** returns ``(out, softmax_max, softmax_sum)`` in the device layout;
  a gradient reaching the statistics raises.

``atten_mask`` None gives the compressed causal mask for sparse modes 2/3/4/7/8 and an
all-zero ``[maxSq, maxSkv]`` mask for modes 0/1 (on the NPU made once per device and shape,
``_default_mask``). Importing this module imports torch; ``import aclnn_fag`` does not.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import api, operands
from .call import INT32_MAX
from .reference import PRECISIONS
from .semantics.sparse import COMPRESSED_MODES
from .seqlens import int_list
from .torch_ops import (DOUBLE_BACKWARD_ERROR, STATS_GRADIENT_ERROR, default_mask,
                        first_order_only, run_backward, run_forward)

__all__ = ["FlashAttentionVarlenRope", "varlen_attention", "DOUBLE_BACKWARD_ERROR",
           "STATS_GRADIENT_ERROR"]

_MASK_CACHE: dict = {}
_NPU_ZERO_MASKS = 16          # all-zero NPU masks kept per process (the newest shapes)


def current_stream(t):
    """torch_npu's current stream of an NPU tensor's device (``torch.npu.current_stream``,
    found by duck typing), or None: on CPU tensors or without torch_npu."""
    if not operands.is_npu_tensor(t):
        return None
    current = getattr(getattr(torch, "npu", None), "current_stream", None)
    return None if current is None else current(t.device)


def _npu_mask(q: torch.Tensor, host: np.ndarray, stream) -> torch.Tensor:
    """A uint8 NPU tensor holding ``host``: made with ``q.new_empty`` (the caller's allocator)
    and filled by a host-to-device copy. The new block may have been freed by work still
    queued on ``stream`` (caching allocators reuse blocks in stream order), and the copy is
    not stream-ordered, so that stream is synchronised first -- once per cached mask."""
    from . import acl
    m = q.new_empty(host.shape, dtype=torch.uint8)
    dev = 0 if m.device.index is None else int(m.device.index)
    if stream is not None:
        acl.runtime.synchronize_stream(stream, dev)
    acl.DeviceArray.from_pointer(int(m.data_ptr()), host.shape, np.uint8,
                                 tuple(int(x) for x in m.stride()), device_id=dev,
                                 owner=m).copy_from_numpy(host)
    return m


def _default_mask(q: torch.Tensor, sparse_mode: int, qlen, kvlen, stream=None) -> torch.Tensor:
    """The default mask (``torch_ops.default_mask``) of an NPU tensor's call on its device,
    kept per device: the compressed one, and the newest ``_NPU_ZERO_MASKS`` all-zero ones."""
    host = default_mask(sparse_mode, qlen, kvlen)
    compressed = sparse_mode in COMPRESSED_MODES
    key = (q.device.type, q.device.index, "compressed" if compressed else host.shape)
    m = _MASK_CACHE.pop(key, None)
    if m is None:
        m = _npu_mask(q, host, stream)
        zero_keys = [k for k in _MASK_CACHE if k[2] != "compressed"]
        for old in zero_keys[:0 if compressed else max(0, len(zero_keys) - _NPU_ZERO_MASKS + 1)]:
            del _MASK_CACHE[old]     # the oldest (torch_npu frees in stream order)
    _MASK_CACHE[key] = m             # (re)inserted as the newest
    return m


class FlashAttentionVarlenRope(torch.autograd.Function):
    """The NPU-tensor path: forward(q, q_rope, k, k_rope, v, atten_mask, options, stream) ->
    (attention output, softmax_max, softmax_sum), ``options`` the keywords both public ops
    take; the backward returns dq, dq_rope, dk, dk_rope, dv. Once differentiable."""

    @staticmethod
    def forward(ctx, q, q_rope, k, k_rope, v, atten_mask, options: dict, stream=None):
        fwd = api.flash_attention_forward(
            q, q_rope, k, k_rope, v, atten_mask=atten_mask, **options,
            stream=stream if stream is not None else current_stream(q))
        ctx.save_for_backward(q, q_rope, k, k_rope, v, atten_mask, *fwd)
        ctx.options, ctx.stream = options, stream
        ctx.set_materialize_grads(False)      # unused statistics get None, not zeros
        return tuple(fwd)

    @staticmethod
    def backward(ctx, grad_out, grad_max=None, grad_sum=None):
        if grad_max is not None or grad_sum is not None:
            raise RuntimeError(STATS_GRADIENT_ERROR)
        q, q_rope, k, k_rope, v, mask, out, smax, ssum = ctx.saved_tensors
        if grad_out is None:
            return (None,) * 8
        stream = ctx.stream if ctx.stream is not None else current_stream(q)
        with torch.no_grad():
            g = api.flash_attention_unpadding_score_grad_v3(
                q, q_rope, k, k_rope, v, grad_out.to(q.dtype).contiguous(), atten_mask=mask,
                softmax_max=smax, softmax_sum=ssum, attention_in=out, **ctx.options,
                stream=stream)
        return (*first_order_only(tuple(g), grad_out, q, q_rope, k, k_rope, v), None, None, None)


class _VarlenCpu(torch.autograd.Function):
    """The eager path of CPU tensors: forward(q, q_rope, k, k_rope, v, atten_mask, options) ->
    (out, softmax_max, softmax_sum), ``options`` the custom ops' remaining arguments in order.
    It runs the custom ops' bodies (``torch_ops.run_forward`` / ``run_backward``) without the
    dispatcher and its autograd wrapper (~0.3 ms of host time per training step); under
    torch.compile ``varlen_attention`` calls the custom ops themselves."""

    @staticmethod
    def forward(ctx, q, q_rope, k, k_rope, v, atten_mask, options: tuple):
        fwd = run_forward(q, q_rope, k, k_rope, v, atten_mask, *options)
        ctx.save_for_backward(q, q_rope, k, k_rope, v, atten_mask, *fwd)
        ctx.options = options
        ctx.set_materialize_grads(False)      # unused statistics get None, not zeros
        return fwd

    @staticmethod
    def backward(ctx, grad_out, grad_max=None, grad_sum=None):
        q, q_rope, k, k_rope, v, mask, out, smax, ssum = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)      # only the statistics got a gradient
        with torch.no_grad():
            g = run_backward(grad_out, q, q_rope, k, k_rope, v, mask, out, smax, ssum,
                             grad_max, grad_sum, *ctx.options)
        return (*first_order_only(g, grad_out, q, q_rope, k, k_rope, v), None, None)


def _ends(name, value) -> list:
    """Cumulative ends as a list of ints: a list/tuple, a 1-D numpy array or a CPU torch
    tensor, checked as the public calls check them (seqlens.int_list)."""
    if type(value) is list and all(type(x) is int for x in value):
        return value                       # the common case, also under torch.compile
    ends = int_list(name, value)
    if ends is None:
        raise TypeError(f"parameter '{name}' must be a 1-D sequence of integers, got None")
    return list(ends)


def varlen_attention(q, q_rope, k, k_rope, v, *, actual_seq_qlen, actual_seq_kvlen=None,
                     scale_value: float, sparse_mode: int = 0,
                     atten_mask: Optional[torch.Tensor] = None, pre_tokens: int = INT32_MAX,
                     next_tokens: int = INT32_MAX, backend: str = "auto",
                     precision: str = "device", return_stats: bool = False,
                     check_data=None, stream=None):
    """Attention output [T1, N1, Dv] of varlen attention with rope parts; differentiable (once)
    in q, q_rope, k, k_rope and v (see the module docstring). ``actual_seq_kvlen`` None means
    the query ends. ``backend``/``check_data``/``stream`` go to both ops; ``stream`` None
    means torch_npu's current stream for NPU tensors (at the time each op runs).
    ``precision``: "device", "fp32" or "fp64" (the last two: NumPy backend, CPU tensors).
    ``return_stats``: return ``(out, softmax_max, softmax_sum)`` (device layout)."""
    if precision not in PRECISIONS:
        raise ValueError(f"parameter 'precision' must be one of {PRECISIONS}, got {precision!r}")
    qlen = _ends("actual_seq_qlen", actual_seq_qlen)
    kvlen = qlen if actual_seq_kvlen is None else _ends("actual_seq_kvlen", actual_seq_kvlen)
    if operands.is_npu_tensor(q):
        if precision != "device":
            raise ValueError(f"parameter 'precision'={precision!r} needs CPU tensors and the "
                             "NumPy backend: the NPU computes only the device precision")
        if atten_mask is None:
            atten_mask = _default_mask(q, sparse_mode, qlen, kvlen,
                                       stream if stream is not None else current_stream(q))
        options = dict(actual_seq_qlen=qlen, actual_seq_kvlen=kvlen,
                       scale_value=float(scale_value), sparse_mode=int(sparse_mode),
                       pre_tokens=int(pre_tokens), next_tokens=int(next_tokens), backend=backend,
                       check_data=check_data)
        out, smax, ssum = FlashAttentionVarlenRope.apply(q, q_rope, k, k_rope, v, atten_mask,
                                                         options, stream)
    else:
        if stream is not None:
            raise ValueError("parameter 'stream' applies to NPU tensors only")
        options = (qlen, kvlen, float(scale_value), int(sparse_mode), int(pre_tokens),
                   int(next_tokens), backend, precision, check_data)
        if torch.compiler.is_compiling():
            out, smax, ssum = torch.ops.aclnn_fag.varlen_fwd(q, q_rope, k, k_rope, v,
                                                             atten_mask, *options)
        else:
            out, smax, ssum = _VarlenCpu.apply(q, q_rope, k, k_rope, v, atten_mask, options)
    return (out, smax, ssum) if return_stats else out
