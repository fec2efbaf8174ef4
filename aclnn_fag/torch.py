"""Varlen attention with rope parts as a torch autograd Function (optional: needs torch).

``varlen_attention(q, q_rope, k, k_rope, v, actual_seq_qlen=..., scale_value=...)`` returns
the attention output and, on ``backward()``, the gradients of q, q_rope, k, k_rope and v,
computed by this package: the forward and the backward op (aclnnFlashAttentionUnpadding-
ScoreGradV3) on the NPU for NPU tensors, the NumPy reference (device precision: the
device's bf16 rounding points) for CPU tensors. It is a drop-in for a model's attention::

    from aclnn_fag.torch import varlen_attention
    out = varlen_attention(q, q_rope, k, k_rope, v, actual_seq_qlen=ends,
                           actual_seq_kvlen=ends, scale_value=1 / (192 ** 0.5), sparse_mode=3)
    loss = f(out); loss.backward()                # q.grad, q_rope.grad, ... filled

Tensors: bf16 ``[T, N, D]`` (TND, cumulative ends without a leading 0, see the README);
GQA when k/v have fewer heads. ``atten_mask`` None gives the compressed causal mask for
sparse modes 2/3/4/7/8 and an all-zero ``[maxSq, maxSkv]`` mask for modes 0/1. The softmax
statistics are kept for the backward (saved tensors), as flash-attention does.

Importing this module imports torch; ``import aclnn_fag`` does not.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import api, masks
from .call import INT32_MAX
from .semantics.sparse import COMPRESSED_MODES

__all__ = ["FlashAttentionVarlenRope", "varlen_attention"]

_MASK_CACHE: dict = {}


def _default_mask(q: torch.Tensor, sparse_mode: int, qlen, kvlen) -> torch.Tensor:
    if sparse_mode in COMPRESSED_MODES:
        key = (str(q.device), "compressed")
        m = _MASK_CACHE.get(key)
        if m is None:
            m = torch.from_numpy(masks.compressed_causal_mask().copy()).to(q.device)
            _MASK_CACHE[key] = m
        return m
    lens_q = np.diff(np.concatenate([[0], np.asarray(qlen, dtype=np.int64)]))
    lens_kv = np.diff(np.concatenate([[0], np.asarray(kvlen, dtype=np.int64)]))
    return torch.zeros((int(max(lens_q.max(), 1)), int(max(lens_kv.max(), 1))),
                       dtype=torch.uint8, device=q.device)


class FlashAttentionVarlenRope(torch.autograd.Function):
    """forward(q, q_rope, k, k_rope, v, atten_mask, options) -> attention output; the
    backward returns dq, dq_rope, dk, dk_rope, dv (None for the mask and options)."""

    @staticmethod
    def forward(ctx, q, q_rope, k, k_rope, v, atten_mask, options: dict):
        fwd = api.flash_attention_forward(
            q, q_rope, k, k_rope, v, atten_mask=atten_mask,
            actual_seq_qlen=options["actual_seq_qlen"],
            actual_seq_kvlen=options["actual_seq_kvlen"], scale_value=options["scale_value"],
            pre_tokens=options["pre_tokens"], next_tokens=options["next_tokens"],
            sparse_mode=options["sparse_mode"], check_data=options["check_data"])
        ctx.save_for_backward(q, q_rope, k, k_rope, v, atten_mask, fwd.attention_out,
                              fwd.softmax_max, fwd.softmax_sum)
        ctx.options = options
        return fwd.attention_out

    @staticmethod
    def backward(ctx, grad_out):
        q, q_rope, k, k_rope, v, mask, out, smax, ssum = ctx.saved_tensors
        o = ctx.options
        dy = grad_out.to(q.dtype).contiguous()
        g = api.flash_attention_unpadding_score_grad_v3(
            q.detach(), q_rope.detach(), k.detach(), k_rope.detach(), v.detach(), dy,
            atten_mask=mask, softmax_max=smax, softmax_sum=ssum, attention_in=out,
            actual_seq_qlen=o["actual_seq_qlen"], actual_seq_kvlen=o["actual_seq_kvlen"],
            scale_value=o["scale_value"], pre_tokens=o["pre_tokens"],
            next_tokens=o["next_tokens"], sparse_mode=o["sparse_mode"], backend=o["backend"],
            check_data=o["check_data"], stream=o["stream"])
        return g.dq, g.dq_rope, g.dk, g.dk_rope, g.dv, None, None


def varlen_attention(q, q_rope, k, k_rope, v, *, actual_seq_qlen, actual_seq_kvlen=None,
                     scale_value: float, sparse_mode: int = 0,
                     atten_mask: Optional[torch.Tensor] = None, pre_tokens: int = INT32_MAX,
                     next_tokens: int = INT32_MAX, backend: str = "auto",
                     check_data=None, stream=None) -> torch.Tensor:
    """Attention output [T1, N1, Dv] of varlen attention with rope parts; differentiable in
    q, q_rope, k, k_rope and v (see the module docstring). ``actual_seq_kvlen`` None means
    the query ends. ``backend``/``check_data``/``stream`` go to the backward op."""
    qlen = [int(x) for x in actual_seq_qlen]
    kvlen = qlen if actual_seq_kvlen is None else [int(x) for x in actual_seq_kvlen]
    if atten_mask is None:
        atten_mask = _default_mask(q, sparse_mode, qlen, kvlen)
    options = dict(actual_seq_qlen=qlen, actual_seq_kvlen=kvlen, scale_value=float(scale_value),
                   sparse_mode=int(sparse_mode), pre_tokens=int(pre_tokens),
                   next_tokens=int(next_tokens), backend=backend, check_data=check_data,
                   stream=stream)
    return FlashAttentionVarlenRope.apply(q, q_rope, k, k_rope, v, atten_mask, options)
