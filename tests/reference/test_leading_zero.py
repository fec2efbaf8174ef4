"""The leading-0 form of the cumulative ends (flash-attn's cu_seqlens): accepted, as the device
accepts it -- it reads entry 0 as the end of an empty first sequence -- and documented
(docs/semantics.md, The leading-0 form): the same gradients, the same statistics layout; a 4-D
mask counts the empty sequence in B; mode 0/4 tokens are validated for it too."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

CASES = [
    dict(mode=0, pre=3, nxt=2), dict(mode=1), dict(mode=2), dict(mode=3), dict(mode=4, pre=4, nxt=1),
    dict(mode=5, pre=3, nxt=2), dict(mode=7, pre=4, nxt=0), dict(mode=8, pre=4, nxt=0),
]


def _grads(case, q_ends, kv_ends, **over):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy,
            **case.bwd_kwargs(actual_seq_qlen=q_ends, actual_seq_kvlen=kv_ends, **over),
            backend="numpy", precision="fp64")


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: f"mode{kw['mode']}")
def test_leading_zero_gives_the_same_gradients(kw):
    case = O.make_case(11, [7, 0, 9, 5], [8, 4, 9, 6], n1=2, n2=1, d=16, dr=8, **kw)
    plain = _grads(case, case.q_ends, case.kv_ends)
    led = _grads(case, [0] + list(case.q_ends), [0] + list(case.kv_ends))
    for a, b in zip(plain, led):
        np.testing.assert_array_equal(a, b)
    # and both equal the oracle, which knows nothing of leading zeros
    O.assert_grads_close(plain, case.oracle_backward(), rtol=1e-10, what=f"mode {kw['mode']}",
                         touched_rows=case.touched())


def test_statistics_layout_is_unchanged():
    tm = np.arange(26 * 3, dtype=np.float32).reshape(26, 3)
    ends = [7, 7, 16, 26]
    np.testing.assert_array_equal(af.softmax_layout.device_stats_from_token_major(tm, ends),
                                  af.softmax_layout.device_stats_from_token_major(tm, [0] + ends))
    assert af.seqlens.cumulative_to_lengths([0] + ends).tolist() == [0, 7, 0, 9, 10]


def test_4d_mask_counts_the_empty_first_sequence():
    case = O.make_case(12, [6, 6], [6, 6], n1=2, n2=1, d=16, dr=8, mode=1, mask_kind="b1")
    assert case.mask.shape[0] == 2
    with pytest.raises(af.ParamNullptrError) as info:
        _grads(case, [0, 6, 12], [0, 6, 12])
    assert "leading 0" in str(info.value) or "cu_seqlens" in str(info.value)
    # dim0 must count B = 3, but the kernel reads packed blocks and the empty sequence takes no
    # space: the real sequences' data come first, one extra block at the end
    padded = np.concatenate([case.mask, np.ones((1,) + case.mask.shape[1:], case.mask.dtype)])
    led = _grads(case, [0, 6, 12], [0, 6, 12], atten_mask=padded)
    plain = _grads(case, case.q_ends, case.kv_ends)
    for a, b in zip(plain, led):
        np.testing.assert_array_equal(a, b)


def test_negative_tokens_fail_for_the_empty_first_sequence():
    """Mode 0 validates the tokens for every batch: -pre <= Skv_b fails for the empty one."""
    case = O.make_case(13, [6, 8], [9, 8], n1=2, n2=1, d=16, dr=8, mode=0, pre=-1, nxt=4)
    _grads(case, case.q_ends, case.kv_ends)                      # fine without the 0
    with pytest.raises(af.ParamNullptrError) as info:
        _grads(case, [0] + list(case.q_ends), [0] + list(case.kv_ends))
    assert "rule 28" in str(info.value) and "batch 0" in str(info.value)
