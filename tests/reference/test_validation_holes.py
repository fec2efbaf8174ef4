"""Validation boundaries the mutation audit (issue 14) found untested: the documented limits
(S3) at limit and limit + 1, the int32 block-skip bound (S7) at its exact edge, pre/next
tokens beyond INT32_MAX clamped like the device, and the D <= 128 edge of the rope-ignoring
'MLA basic' kernel steering. Arrays are zero-stride views: validation never copies them."""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest

from aclnn_fag import errors, masks
from aclnn_fag.validate import LIMITS, validate_backward

BF16 = np.dtype(ml_dtypes.bfloat16)
INT32_MAX = 2147483647


def z(shape, dtype=BF16):
    return np.broadcast_to(np.zeros((1,) * len(shape), dtype), shape)


def call(*, t1=8, t2=None, n1=1, n2=1, d=16, dr=8, dv=None, q_ends=None, kv_ends=None,
         mode=0, pre=INT32_MAX, nxt=INT32_MAX, **extra):
    t2 = t1 if t2 is None else t2
    dv = d if dv is None else dv
    q_ends = [t1] if q_ends is None else q_ends
    kv_ends = [t2] if kv_ends is None else kv_ends
    if mode in (0, 1, 5):
        sq = max(e - s for s, e in zip([0] + q_ends[:-1], q_ends))
        skv = max(e - s for s, e in zip([0] + kv_ends[:-1], kv_ends))
        mask = z((sq, skv), np.uint8)
    else:
        mask = masks.compressed_causal_mask()
    stats = np.broadcast_to(np.ones((1, 1, 1), np.float32), (t1, n1, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return validate_backward(z((t1, n1, d)), z((t1, n1, dr)), z((t2, n2, d)), z((t2, n2, dr)),
                                 z((t2, n2, dv)), z((t1, n1, dv)), atten_mask=mask,
                                 softmax_max=stats, softmax_sum=stats, attention_in=z((t1, n1, dv)),
                                 actual_seq_qlen=q_ends, actual_seq_kvlen=kv_ends, scale_value=0.1,
                                 sparse_mode=mode, pre_tokens=pre, next_tokens=nxt, **extra)


def rejected(code=161002, **kw):
    with pytest.raises(errors.AclnnError) as info:
        call(**kw)
    assert info.value.code == code
    return info.value


def test_head_limit():
    assert LIMITS["max_heads"] == 256
    call(n1=256)
    err = rejected(n1=257)
    assert err.stricter and err.param == "query"


def test_batch_limit():
    assert LIMITS["max_batch"] == 2048
    call(t1=2048, q_ends=list(range(1, 2049)), kv_ends=list(range(1, 2049)))
    err = rejected(t1=2049, q_ends=list(range(1, 2050)), kv_ends=list(range(1, 2050)))
    assert err.stricter and err.param == "actual_seq_qlen"


def test_token_limit():
    call(t1=1 << 20, t2=8, kv_ends=[8])
    err = rejected(t1=(1 << 20) + 1, t2=8, kv_ends=[8])
    assert err.stricter and err.param == "query"
    err = rejected(t1=8, t2=(1 << 20) + 1, kv_ends=[(1 << 20) + 1])
    assert err.param == "key"


def test_head_dim_limit():
    call(d=768, dr=64)
    err = rejected(d=896, dr=64)                 # the next D rule 16 accepts
    assert err.stricter and err.param == "query"


@pytest.mark.parametrize("mode", [4, 7, 8])
def test_block_skip_bound_edge(mode):
    """S7: pre + Sq - Skv must stay below INT32_MAX (Sq = 10, Skv = 6 here)."""
    kw = dict(t1=10, t2=6, mode=mode, nxt=0)
    call(pre=INT32_MAX - 5, **kw)                # INT32_MAX - 1
    err = rejected(pre=INT32_MAX - 4, **kw)      # exactly INT32_MAX
    assert err.stricter and err.param == "pre_tokens"


def test_tokens_beyond_int32_are_clamped():
    """pre_tokens = 2**40 is clamped to INT32_MAX first: with Sq < Skv the S7 bound holds."""
    c = call(t1=6, t2=10, mode=4, pre=1 << 40, nxt=1 << 40)
    assert (c.pre_eff, c.next_eff) == (INT32_MAX, INT32_MAX)
    c = call(t1=6, t2=10, mode=0, pre=1 << 40, nxt=5)
    assert (c.pre_eff, c.next_eff) == (INT32_MAX, 5)


@pytest.mark.parametrize("d,steered", [(128, True), (112, True), (256, False)])
def test_mla_basic_kernel_edge(d, steered):
    """Causal, equal lengths, 2-D compressed mask, D = Dv <= 128 (multiple of 16): the call
    is steered off the rope-ignoring kernel with start indices [0]; D = 256 is not."""
    c = call(t1=16, d=d, dr=64, mode=3)
    assert (c.q_start_idx == (0,) and c.kv_start_idx == (0,)) is steered
    if not steered:
        assert c.q_start_idx is None and c.kv_start_idx is None
