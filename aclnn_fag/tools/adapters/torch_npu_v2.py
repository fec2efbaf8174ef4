"""torch_npu's ``npu_fusion_attention_grad_v2`` (the same C op) behind the public call's
signature, tensors on ``DEVICE`` (``npu:$ACLNN_FAG_DEVICE``, default ``npu:0``):
``aclnn-fag parity --backend-module aclnn_fag.tools.adapters.torch_npu_v2:backward``
(docs/parity.md, "Judging another implementation")."""

from __future__ import annotations

import os

import numpy as np
from ...constants import BF16

__all__ = ["backward", "DEVICE", "to_torch", "to_numpy"]

DEVICE = f"npu:{os.environ.get('ACLNN_FAG_DEVICE', '').strip() or 0}"


def to_torch(a, torch, device):
    """A numpy array as a torch tensor on ``device`` (bf16 through an int16 view)."""
    a = np.ascontiguousarray(a)
    if a.dtype == BF16:
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif a.dtype == np.uint8:
        t = torch.from_numpy(a).to(torch.bool)
    else:
        t = torch.from_numpy(a)
    return t.to(device)


def to_numpy(t, torch):
    """A torch tensor back to numpy (bf16 through an int16 view)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16)
    return t.numpy()


def backward(*, query, query_rope, key, key_rope, value, dy, atten_mask=None, softmax_max=None,
             softmax_sum=None, attention_in=None, actual_seq_qlen=None, actual_seq_kvlen=None,
             scale_value=1.0, pre_tokens=2147483647, next_tokens=2147483647, sparse_mode=0,
             deterministic=False, **ignored):
    import torch
    import torch_npu

    def t(a):
        return None if a is None else to_torch(a, torch, DEVICE)

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(bool(deterministic))
    try:
        res = torch_npu.npu_fusion_attention_grad_v2(
            t(query), t(key), t(value), t(dy), int(query.shape[1]), "TND",
            atten_mask=t(atten_mask), softmax_max=t(softmax_max), softmax_sum=t(softmax_sum),
            attention_in=t(attention_in), query_rope=t(query_rope), key_rope=t(key_rope),
            scale_value=float(scale_value), keep_prob=1.0, pre_tokens=int(pre_tokens),
            next_tokens=int(next_tokens), inner_precise=0,
            actual_seq_qlen=list(actual_seq_qlen), actual_seq_kvlen=list(actual_seq_kvlen),
            sparse_mode=int(sparse_mode), pse_type=1)
    finally:
        torch.use_deterministic_algorithms(previous)
    dq, dk, dv, _dpse, dq_rope, dk_rope = res[:6]
    return tuple(to_numpy(x, torch) for x in (dq, dq_rope, dk, dk_rope, dv))


backward.backend_name = "torch_npu.npu_fusion_attention_grad_v2"
