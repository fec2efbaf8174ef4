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
from aclnn_fag.rules import LIMITS, validate_backward

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


@pytest.mark.parametrize("d", [128, 112, 256])
def test_mla_basic_kernel_edge(d):
    """Start indices are [0] on every call (docs/forward.md, "Start indices"): inside the
    rope-ignoring kernel's conditions (D = Dv <= 128) and outside them (D = 256) alike; the
    caller's own values are passed unchanged."""
    c = call(t1=16, d=d, dr=64, mode=3)
    assert c.q_start_idx == (0,) and c.kv_start_idx == (0,)
    c = call(t1=16, d=d, dr=64, mode=3, q_start_idx=[5], kv_start_idx=[2])
    assert c.q_start_idx == (5,) and c.kv_start_idx == (2,)


@pytest.mark.parametrize("mode,pre,nxt", [(2, 5, 7), (3, 1 << 40, -3), (3, 9, 9)])
def test_causal_modes_normalise_tokens(mode, pre, nxt):
    """Modes 2/3 ignore the tokens: (pre, next) become (INT32_MAX, 0) as on the device;
    mode 1 makes them (INT32_MAX, INT32_MAX)."""
    c = call(t1=8, mode=mode, pre=pre, nxt=nxt)
    assert (c.pre_eff, c.next_eff) == (INT32_MAX, 0)
    c = call(t1=8, mode=1, pre=3, nxt=2)
    assert (c.pre_eff, c.next_eff) == (INT32_MAX, INT32_MAX)


def test_trailing_batches_with_keys_count_in_b():
    """B drops only the trailing batches whose query AND key lengths are 0: a last batch
    with Sq = 0 but Skv = 5 counts, so a packed 4-D mask needs B = 3 blocks."""
    q_ends, kv_ends = [4, 7, 7], [4, 7, 12]
    stats = np.broadcast_to(np.ones((1, 1, 1), np.float32), (7, 1, 8))

    def with_mask(b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return validate_backward(z((7, 1, 16)), z((7, 1, 8)), z((12, 1, 16)), z((12, 1, 8)),
                                     z((12, 1, 16)), z((7, 1, 16)), atten_mask=z((b, 1, 4, 5), np.uint8),
                                     softmax_max=stats, softmax_sum=stats, attention_in=z((7, 1, 16)),
                                     actual_seq_qlen=q_ends, actual_seq_kvlen=kv_ends,
                                     scale_value=0.1, sparse_mode=0)
    c = with_mask(3)
    assert c.seqs.batch == 3
    with pytest.raises(errors.ParamNullptrError, match="B=3"):
        with_mask(2)
    # while a trailing (0, 0) batch does not count
    c = call(t1=7, t2=7, q_ends=[4, 7, 7], kv_ends=[4, 7, 7])
    assert c.seqs.batch == 2


@pytest.mark.parametrize("d,ok", [(112, True), (128, True), (144, False), (192, False), (256, True)])
def test_deterministic_head_dim_alignment(d, ok):
    """Rule 16 in deterministic mode: D < 128 must be a multiple of 16, D >= 128 of 128."""
    if ok:
        call(d=d, dr=64, deterministic=True)
    else:
        err = rejected(d=d, dr=64, deterministic=True)
        assert err.param == "query" and "multiple of 128" in str(err)


def test_mode4_token_bounds_use_sq_for_pre_and_skv_for_next():
    """Rule 28, modes 4/7/8: -pre <= Sq and -next <= Skv (Sq = 10, Skv = 6 here); mode 0
    has them the other way round (-pre <= Skv, -next <= Sq)."""
    call(t1=10, t2=6, mode=4, pre=-10, nxt=14)              # -pre = Sq: accepted
    err = rejected(code=161001, t1=10, t2=6, mode=4, pre=-11, nxt=14)
    assert err.param == "pre_tokens"
    call(t1=10, t2=6, mode=4, pre=14, nxt=-6)               # -next = Skv: accepted
    rejected(code=161001, t1=10, t2=6, mode=4, pre=14, nxt=-7)
    call(t1=10, t2=6, mode=0, pre=-6, nxt=14)               # mode 0: -pre <= Skv
    rejected(code=161001, t1=10, t2=6, mode=0, pre=-7, nxt=14)


@pytest.mark.parametrize("ends", [[5, 4, 8], [3, 8, 7, 8]])
def test_ends_decreasing_by_one_rejected(ends):
    err = rejected(t1=8, q_ends=ends, kv_ends=[8] * len(ends))
    assert err.param == "actual_seq_qlen" and err.stricter


@pytest.mark.parametrize("dr,ok", [(8, True), (16, True), (4, False), (12, False), (20, False)])
def test_rope_dim_multiple_of_8(dr, ok):
    if ok:
        call(d=32, dr=dr)
    else:
        err = rejected(d=32, dr=dr)
        assert err.param == "query_rope" and err.stricter


@pytest.mark.parametrize("dv", [40, 48, 64])
def test_rule7_value_dim_above_d_names_value(dv):
    """Rule 7 (Dv <= D) fires before rule 16's padding rule: the error names 'value'."""
    err = rejected(d=32, dr=8, dv=dv)
    assert err.param == "value" and "must be <= query head dim" in str(err)


@pytest.mark.parametrize("mode", [2, 3, 4, 7, 8])
def test_non_canonical_compressed_mask_rejected_in_every_compressed_mode(mode):
    """S6: the compressed modes read the 2048x2048 mask at shifted offsets; any other
    content than the canonical one is refused (161002, stricter), in every mode."""
    bad = masks.compressed_causal_mask().copy()
    bad[5, 1000] = 0                                  # one masked cell cleared
    stats = np.broadcast_to(np.ones((1, 1, 1), np.float32), (8, 1, 8))
    kw = dict(atten_mask=bad, softmax_max=stats, softmax_sum=stats, attention_in=z((8, 1, 16)),
              actual_seq_qlen=[8], actual_seq_kvlen=[8], scale_value=0.1, sparse_mode=mode,
              pre_tokens=8, next_tokens=8)
    args = (z((8, 1, 16)), z((8, 1, 8)), z((8, 1, 16)), z((8, 1, 8)), z((8, 1, 16)), z((8, 1, 16)))
    with pytest.raises(errors.ParamInvalidError) as info:
        validate_backward(*args, **kw)
    assert info.value.param == "atten_mask" and info.value.stricter
    kw["atten_mask"] = masks.compressed_causal_mask()
    validate_backward(*args, **kw)


def _stats_case():
    import oracle as O
    return O.make_case(seed=121, q_lens=[9, 0, 7], n1=4, n2=2, d=32, dr=16, mode=0)


def _validate_with(case, smax, ssum):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return validate_backward(case.q, case.qr, case.k, case.kr, case.v, case.dy,
                                 **case.bwd_kwargs(softmax_max=smax, softmax_sum=ssum))


def test_token_major_statistics_rejected():
    """S9: [T, N] statistics broadcast to [T, N, 8] (the token-major reading) are refused;
    the same values in the device layout pass; values that fit neither reading pass too
    (the caller's business)."""
    case = _stats_case()
    _validate_with(case, case.softmax_max, case.softmax_sum)            # device layout
    tm_max = np.ascontiguousarray(np.repeat(case.max_tm[:, :, None], 8, axis=2))
    tm_sum = np.ascontiguousarray(np.repeat(case.sum_tm[:, :, None], 8, axis=2))
    with pytest.raises(errors.ParamInvalidError, match="token-major") as info:
        _validate_with(case, tm_max, tm_sum)
    assert info.value.stricter and info.value.param == "softmax_max"
    # log-sum-exp with sum 1 in the token-major layout: refused as well
    lse = case.max_tm + np.log(case.sum_tm)
    with pytest.raises(errors.ParamInvalidError, match="token-major"):
        _validate_with(case, np.ascontiguousarray(np.repeat(lse[:, :, None], 8, axis=2)),
                       np.ones_like(tm_sum))
    # a max off by 0.5 in both readings: neither fits, not this check's business
    _validate_with(case, (tm_max + np.float32(0.5)).astype(np.float32), tm_sum)


def test_a_negative_zero_scale_is_not_served_the_positive_zero_call():
    """Validated calls are cached by their arguments; 0.0 == -0.0 in Python, so the cache
    must tell the two apart by their bits or the op would get the other attribute."""
    import math
    stats = np.broadcast_to(np.ones((1, 1, 1), np.float32), (8, 1, 8))
    args = (z((8, 1, 16)), z((8, 1, 8)), z((8, 1, 16)), z((8, 1, 8)), z((8, 1, 16)),
            z((8, 1, 16)))
    kw = dict(atten_mask=z((8, 8), np.uint8), softmax_max=stats, softmax_sum=stats,
              attention_in=z((8, 1, 16)), actual_seq_qlen=[8], actual_seq_kvlen=[8])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = validate_backward(*args, scale_value=0.0, **kw)
        second = validate_backward(*args, scale_value=-0.0, **kw)
    assert math.copysign(1.0, first.scale_value) == 1.0
    assert math.copysign(1.0, second.scale_value) == -1.0
