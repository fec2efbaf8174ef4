"""aclnn_fag.masks: the [maxSq, maxSkv] masks of sparse modes 0/1 built from tokens, checked
against the kept sets of the independent oracle (tests/oracle.py) and through the public call."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

INT32_MAX = 2147483647
Q_LENS, KV_LENS = [5, 0, 7, 3], [6, 4, 5, 3]


def oracle_kept(mode, mask, pre, nxt, q_lens=Q_LENS, kv_lens=KV_LENS):
    lay = O.layout(O.cumulative(q_lens), O.cumulative(kv_lens))
    pre, nxt = O.normalize_tokens(mode, pre, nxt)
    flat = mask.reshape(-1)
    return [np.array([[O.kept(mode, b, i, j, lay, pre, nxt, mask_flat=flat, mask_shape=mask.shape)
                       for j in range(lay.skv[b])] for i in range(lay.sq[b])], dtype=bool)
            for b in range(lay.B)]


@pytest.mark.parametrize("pre,nxt", [(2, 1), (0, 3), (INT32_MAX, 0), (1, INT32_MAX), (-1, 3),
                                     (3, -2), (10**12, 10**12)])
def test_band_mask_keeps_exactly_the_token_band(pre, nxt):
    lay = O.layout(O.cumulative(Q_LENS), O.cumulative(KV_LENS))
    mask = af.masks.band_mask(lay.max_sq, lay.max_skv, pre, nxt)
    assert mask.shape == (lay.max_sq, lay.max_skv) and mask.dtype == np.uint8
    zero = np.zeros_like(mask)
    band = oracle_kept(0, zero, pre, nxt)            # mode 0: the tokens alone
    with_mask_mode0 = oracle_kept(0, mask, pre, nxt)   # mask agrees with the tokens
    with_mask_mode1 = oracle_kept(1, mask, pre, nxt)   # tokens ignored: the mask alone
    for b in range(lay.B):
        assert np.array_equal(with_mask_mode0[b], band[b])
        assert np.array_equal(with_mask_mode1[b], band[b])


def test_band_mask_by_hand():
    want = np.array([[0, 0, 1, 1, 1],
                     [0, 0, 0, 1, 1],
                     [1, 0, 0, 0, 1]], dtype=np.uint8)     # pre 1, next 1
    assert np.array_equal(af.masks.band_mask(3, 5, 1, 1), want)
    assert np.array_equal(af.masks.band_mask(3, 5, 1, 1, dtype=bool), want.astype(bool))


def test_causal_mask_is_the_kept_set_of_mode_2():
    lay = O.layout(O.cumulative(Q_LENS), O.cumulative(KV_LENS))
    mask = af.masks.causal_mask(lay.max_sq, lay.max_skv)
    mode1 = oracle_kept(1, mask, 0, 0)
    mode2 = oracle_kept(2, O.compressed_mask(np.uint8), 0, 0)
    for b in range(lay.B):
        assert np.array_equal(mode1[b], mode2[b])
    assert np.array_equal(af.masks.causal_mask(2, 3), np.array([[0, 1, 1], [0, 0, 1]], np.uint8))


def test_band_mask_through_the_public_call():
    """Mode 1 with band_mask gives the gradients of mode 0 with the same tokens."""
    case = O.make_case(3, Q_LENS, KV_LENS, n1=2, n2=1, d=16, dr=8, mode=0, pre=2, nxt=1)
    lay = O.layout(case.q_ends, case.kv_ends)
    mask = af.masks.band_mask(lay.max_sq, lay.max_skv, 2, 1)
    args = (case.q, case.qr, case.k, case.kr, case.v, case.dy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd = af.flash_attention_forward(*args[:5], atten_mask=mask, actual_seq_qlen=case.q_ends,
                                         actual_seq_kvlen=case.kv_ends, scale_value=case.scale,
                                         sparse_mode=0, pre_tokens=2, next_tokens=1)
        common = dict(atten_mask=mask, softmax_max=fwd.softmax_max, softmax_sum=fwd.softmax_sum,
                      attention_in=fwd.attention_out, actual_seq_qlen=case.q_ends, actual_seq_kvlen=case.kv_ends,
                      scale_value=case.scale, backend="numpy", precision="fp64")
        g0 = af.flash_attention_unpadding_score_grad_v3(*args, sparse_mode=0, pre_tokens=2,
                                                        next_tokens=1, **common)
        g1 = af.flash_attention_unpadding_score_grad_v3(*args, sparse_mode=1, **common)
    for a, b in zip(g0, g1):
        np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(g1.dq)) > 0


@pytest.mark.parametrize("bad,exc", [
    (dict(max_sq=-1), ValueError), (dict(max_sq=2.0), TypeError), (dict(pre_tokens=True), TypeError),
    (dict(pre_tokens=-3, next_tokens=2), ValueError), (dict(max_sq=1 << 20, max_skv=1 << 20), ValueError),
])
def test_band_mask_rejects_bad_arguments(bad, exc):
    kw = dict(max_sq=4, max_skv=4, pre_tokens=1, next_tokens=1)
    kw.update(bad)
    with pytest.raises(exc) as info:
        af.masks.band_mask(**kw)
    assert next(iter(bad)) in str(info.value) or "pre_tokens + next_tokens" in str(info.value)
