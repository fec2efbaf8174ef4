"""precision="device" (docs/semantics.md, "Backward"): judged like flash-attention's tests, and against an
independent emulation of the device's rounding points.

1. Accuracy, flash-attention style: for each output,
       max|device - fp64| <= 3 * max|bf16(plain fp32) - fp64| + 1e-6 * max|fp64|
   "plain fp32" = fp32 matmuls and softmax on the same bf16 inputs, no intermediate
   rounding, fp32 outputs -- then rounded to bf16 once at the end.  That last rounding is
   what makes the comparison fair: the device must return bf16, so its error contains one
   output rounding whatever it does inside; against unrounded fp32 (error ~1e-7) a factor 3
   would demand the impossible.  What the factor then bounds is the extra error of the
   internal bf16 rounding of P and dS.
2. Rounding points: the package's "device" output equals oracle.device_backward (fp32
   matmuls on bf16 values, P and dS rounded to bf16 ties-away, fp32 accumulation, final
   ties-away rounding) up to fp32 summation-order differences: within 2 bf16 ulps
   (+ 1e-5 * max as a floor for cancellations) everywhere, and differing at all on <= 1 %
   of the elements.
3. Exact ties: inputs built so that P32, dS32 or the fp32 accumulator is exactly halfway
   between two bf16 numbers show the rounding is ties-away (CAST_ROUND), not ties-to-even.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

CONFIGS = {
    "mla_causal_gqa2": dict(seed=51, q_lens=[60, 0, 70, 50, 0, 0], n1=4, n2=2, d=192, dv=128,
                            dr=64, mode=3),
    "mla_band_gqa8": dict(seed=52, q_lens=[40, 33], kv_lens=[48, 33], n1=8, n2=1, d=192,
                          dv=128, dr=64, mode=4, pre=20, nxt=3),
    "d64_mask_gqa4": dict(seed=53, q_lens=[25, 0, 31], kv_lens=[30, 4, 22], n1=4, n2=1, d=64,
                          dr=64, mode=0, density=0.3),
    "d64_mode8_rope16": dict(seed=54, q_lens=[0, 20, 35, 17], kv_lens=[6, 28, 35, 17], n1=2,
                             n2=1, d=64, dr=16, mode=8, pre=10, nxt=4),
    "d16_mode2_scaled": dict(seed=55, q_lens=[19, 23], kv_lens=[23, 19], n1=2, n2=2, d=16,
                             dr=16, mode=2, std=2.0),
}

_CACHE: dict = {}


def case_and_grads(name):
    if name not in _CACHE:
        case = O.make_case(label=name, **CONFIGS[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = af.flash_attention_unpadding_score_grad_v3(
                case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(),
                precision="device", backend="numpy")
        _CACHE[name] = (case, g, case.oracle_backward())
    return _CACHE[name]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_device_error_within_three_times_plain_fp32(name):
    case, dev, ref = case_and_grads(name)
    plain = case.device_emulation(round_points=False)
    for gname, d, p, r in zip(O.GRAD_NAMES, dev, plain, ref):
        assert d.dtype == np.dtype(ml_dtypes.bfloat16), f"{gname}: dtype {d.dtype}"
        r = np.asarray(r)
        top = np.max(np.abs(r))
        assert top > 0
        # plain fp32 itself is ~1e-7 accurate: the budget below comes from the final rounding
        assert np.max(np.abs(p - r)) <= 1e-5 * top
        plain_err = np.max(np.abs(O.round_bf16_away(p).astype(np.float64) - r))
        dev_err = np.max(np.abs(d.astype(np.float64) - r))
        assert dev_err <= 3 * plain_err + 1e-6 * top, (
            f"{name} {gname}: device error {dev_err:.3e} > 3 x {plain_err:.3e}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_device_matches_rounding_point_emulation(name):
    case, dev, _ = case_and_grads(name)
    O.assert_device_close(dev, case.device_emulation(), what=name)


def test_emulation_comparison_detects_missing_internal_rounding():
    """Power check: without the internal bf16 rounding of P and dS (output rounding only)
    the result is visibly different, so test 2 pins the rounding points down."""
    case, dev, _ = case_and_grads("mla_causal_gqa2")
    only_final = [O.round_bf16_away(x) for x in case.device_emulation(round_points=False)]
    with pytest.raises(AssertionError):
        O.assert_device_close(dev, only_final, what="final rounding only")


# ----------------------------------------------------------------------------- exact ties
TIE = 1.0 + 2.0 ** -8            # halfway between bf16 1.0 and 1.0078125
AWAY, EVEN = 1.0 + 2.0 ** -7, 1.0


def tie_case(sq, skv, *, l_value=1.0, v=None, dy=None, o=None):
    """q = 0 (all scores 0), max = 0, sum = l_value: P32 = 1 / l_value on every kept pair."""
    d = dr = dv = 16
    q = np.zeros((sq, 1, d), dtype=O.BF16)
    qr = np.zeros((sq, 1, dr), dtype=O.BF16)
    k = np.zeros((skv, 1, d), dtype=O.BF16)
    k[:, 0, 0] = 1                                   # dQ[:, 0] = sum_j dS16[i, j]
    kr = np.zeros((skv, 1, dr), dtype=O.BF16)
    v = np.zeros((skv, 1, dv), dtype=O.BF16) if v is None else v
    dy = np.zeros((sq, 1, dv), dtype=O.BF16) if dy is None else dy
    o = np.zeros((sq, 1, dv), dtype=O.BF16) if o is None else o
    smax = np.zeros((sq, 1, 8), dtype=np.float32)
    ssum = np.full((sq, 1, 8), np.float32(l_value), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.flash_attention_unpadding_score_grad_v3(
            q, qr, k, kr, v, dy, atten_mask=np.zeros((sq, skv), dtype=np.uint8),
            softmax_max=smax, softmax_sum=ssum, attention_in=o, actual_seq_qlen=[sq],
            actual_seq_kvlen=[skv], scale_value=1.0, sparse_mode=1, precision="device",
            backend="numpy")


def test_tie_in_p_rounds_away():
    """P32 = 1 / fl32(1 / TIE) = TIE exactly: P16 = 1.0078125 (ties-away), not 1.0."""
    l_value = np.float32(1.0 / TIE)
    assert np.float32(1.0) / l_value == np.float32(TIE)
    dy = np.zeros((1, 1, 16), dtype=O.BF16)
    dy[0, 0, 3] = 1
    g = tie_case(1, 1, l_value=l_value, dy=dy)
    assert float(g.dv[0, 0, 3]) == AWAY            # dv = P16^T dy


def test_tie_in_ds_rounds_away():
    """P = 1, dP = dy.v = 1, Dterm = dy.O = -2^-8: dS32 = TIE, dq = dS16 * k = 1.0078125."""
    v = np.zeros((1, 1, 16), dtype=O.BF16)
    v[0, 0, 0] = 1
    dy = np.zeros((1, 1, 16), dtype=O.BF16)
    dy[0, 0, 0] = 1
    o = np.zeros((1, 1, 16), dtype=O.BF16)
    o[0, 0, 0] = -(2.0 ** -8)
    g = tie_case(1, 1, v=v, dy=dy, o=o)
    assert float(g.dq[0, 0, 0]) == AWAY
    # and negative: dS32 = -TIE -> -1.0078125
    g = tie_case(1, 1, v=-v.astype(np.float32).astype(O.BF16), dy=dy, o=-o.astype(np.float32).astype(O.BF16))
    assert float(g.dq[0, 0, 0]) == -AWAY


def test_tie_in_output_rounds_away():
    """Two query rows on one key with P = 1: dV = dy_0 + dy_1 = +-TIE exactly in fp32."""
    dy = np.zeros((2, 1, 16), dtype=O.BF16)
    dy[0, 0, 0], dy[1, 0, 0] = 1, 2.0 ** -8
    dy[0, 0, 1], dy[1, 0, 1] = -1, -(2.0 ** -8)
    dy[0, 0, 2], dy[1, 0, 2] = 1, 3 * 2.0 ** -9     # not a tie: nearest is 1.0078125 anyway
    g = tie_case(2, 1, dy=dy)
    assert float(g.dv[0, 0, 0]) == AWAY
    assert float(g.dv[0, 0, 1]) == -AWAY
    assert float(g.dv[0, 0, 2]) == AWAY
    # ml_dtypes' own cast would give ties-to-even: the check above really distinguishes
    assert float(np.float32(TIE).astype(ml_dtypes.bfloat16)) == EVEN


def test_round_bf16_away_helper():
    x = np.array([TIE, -TIE, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -9, 0.0, -0.0, np.inf],
                 dtype=np.float32)
    y = O.round_bf16_away(x)
    np.testing.assert_array_equal(y, np.array([AWAY, -AWAY, 1.0 + 2.0 ** -6, 1.0, 0.0, 0.0,
                                               np.inf], dtype=np.float32))
