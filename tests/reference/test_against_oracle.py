"""The package (all three precisions, NumPy backend) against the dense float64 oracle.

Random configurations cover every supported sparse mode (0, 1, 2, 3, 4, 5 as 0, 7, 8), every
mask addressing of modes 0/1/5 (2-D, [1,1,..], packed [B,1,..] and [B,N1,..]), GQA G = 1, 2,
4, 8, D != Dv (192/128) and D = Dv = 64, rope Dr 64 and 16, zero-length and trailing empty
batches, Sq != Skv, rows after the last cumulative end and fully masked rows.

Tolerances (normwise per output, max|diff| <= rtol * max|ref|): fp64 1e-10, fp32 2e-5;
"device" is compared with the oracle's emulation of the device's rounding points
(oracle.assert_device_close) and, loosely, with the fp64 oracle.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aclnn_fag as af
import oracle as O

BACKEND = "numpy"

CASES = {
    # mode 0, 2-D mask, GQA 2, zero-length batches on both sides, Skv_b = 0 with Sq_b > 0
    "m0_2d_gqa2_zero_len": dict(seed=1, q_lens=[5, 0, 7, 3], kv_lens=[6, 4, 0, 3], n1=4, n2=2,
                                d=64, dr=16, mode=0),
    # mode 0 with tokens (mask consistent with the band), [1,1,..] mask, trailing [0, 0],
    # rows after the last end on both sides
    "m0_tokens_11_trailing": dict(seed=2, q_lens=[9, 0, 12, 0, 0], kv_lens=[11, 3, 8, 0, 0],
                                  n1=2, n2=2, d=32, dr=16, mode=0, pre=4, nxt=2,
                                  mask_kind="11", extra_q=3, extra_kv=2),
    # mode 0, packed [B,1,..] mask (ragged, Sq != Skv per batch), GQA 4, rope 64
    "m0_b1_packed_gqa4": dict(seed=3, q_lens=[6, 9, 4], kv_lens=[8, 5, 7], n1=4, n2=1, d=64,
                              dr=64, mode=0, mask_kind="b1"),
    # mode 1, packed [B,N1,..] mask, a zero-length query batch, bool mask
    "m1_bn_packed_bool": dict(seed=4, q_lens=[7, 0, 10], kv_lens=[5, 6, 12], n1=2, n2=1, d=16,
                              dr=16, mode=1, mask_kind="bn", density=0.3, mask_dtype=np.bool_),
    # mode 1, 2-D mask: tokens must be ignored (pre = next = 1 would cut the band otherwise)
    "m1_2d_tokens_ignored": dict(seed=5, q_lens=[8, 13], kv_lens=[14, 6], n1=2, n2=1, d=32,
                                 dr=16, mode=1, pre=1, nxt=1),
    # mode 2 (top-left causal), Sq != Skv, GQA 4, trailing empty batches
    "m2_sq_ne_skv": dict(seed=6, q_lens=[20, 0, 31, 12, 0, 0], kv_lens=[25, 3, 31, 9, 0, 0],
                         n1=4, n2=1, d=64, dr=64, mode=2),
    # mode 3 (bottom-right causal), MLA shape D=192/Dv=128/Dr=64, GQA 8
    "m3_mla_gqa8": dict(seed=7, q_lens=[30, 0, 41, 25], kv_lens=[30, 0, 50, 25], n1=8, n2=1,
                        d=192, dv=128, dr=64, mode=3, extra_q=2),
    # mode 3 with Sq_b > Skv_b: fully masked rows (invalid lines), tokens ignored
    "m3_fully_masked_rows": dict(seed=8, q_lens=[12, 5], kv_lens=[8, 9], n1=2, n2=2, d=32,
                                 dr=16, mode=3, pre=3, nxt=7),
    # mode 4 band with bottom-right origin, MLA shape, GQA 2
    "m4_band_mla": dict(seed=9, q_lens=[16, 0, 22, 9], kv_lens=[20, 5, 18, 9], n1=4, n2=2,
                        d=192, dv=128, dr=64, mode=4, pre=5, nxt=2),
    # mode 4 with a negative next (band strictly below the diagonal)
    "m4_negative_next": dict(seed=10, q_lens=[10, 7], kv_lens=[12, 7], n1=2, n2=1, d=64,
                             dv=64, dr=16, mode=4, pre=6, nxt=-2),
    # mode 7: bandIdx = last b < B with Sq_b != 0 (b=1; b=2 has keys only; trailing (0,0) cut)
    "m7_band_last": dict(seed=11, q_lens=[10, 14, 0, 0], kv_lens=[12, 20, 6, 0], n1=2, n2=1,
                         d=64, dr=64, mode=7, pre=6, nxt=0),
    # mode 8: bandIdx = first b with Sq_b != 0 (b=1, batch 0 has keys only)
    "m8_band_first": dict(seed=12, q_lens=[0, 11, 9, 13], kv_lens=[4, 15, 9, 13], n1=4, n2=2,
                          d=32, dr=16, mode=8, pre=4, nxt=3),
    # mode 5 behaves like mode 0 (2-D mask + top-left tokens)
    "m5_as_m0": dict(seed=13, q_lens=[9, 0, 11], kv_lens=[10, 2, 11], n1=2, n2=1, d=32, dr=16,
                     mode=5, pre=3, nxt=3),
    # GQA 8 with D = Dv = 64, rope 64, mode 0 without tokens, per-head packed mask
    "m0_gqa8_bn": dict(seed=14, q_lens=[7, 5], kv_lens=[6, 9], n1=8, n2=1, d=64, dr=64,
                       mode=0, mask_kind="bn", density=0.2),
    # the largest case: MLA causal, T ~ 190, GQA 2, zero and trailing batches, extra rows
    "m3_mla_big": dict(seed=15, q_lens=[60, 0, 70, 50, 0, 0], n1=4, n2=2, d=192, dv=128,
                       dr=64, mode=3, extra_q=3, extra_kv=3),
}

_CACHE: dict = {}


def get_case(name) -> O.Case:
    if name not in _CACHE:
        _CACHE[name] = O.make_case(label=name, **CASES[name])
    return _CACHE[name]


def run_backward(case: O.Case, precision, **over):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(**over),
            precision=precision, backend=BACKEND)
    return grads, caught


def run_forward(case: O.Case, precision):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fwd = af.flash_attention_forward(case.q, case.qr, case.k, case.kr, case.v,
                                         **case.api_common(), precision=precision)
    return fwd, caught


def check_fully_masked_warning(case: O.Case, caught, what):
    warned = any(issubclass(w.category, af.FullyMaskedRowWarning) for w in caught)
    if case.fully_masked():
        assert warned, f"{what}: rows {case.fully_masked()[:5]} have no kept key but no " \
                       "FullyMaskedRowWarning was emitted"
    elif not case.has_q_rows_without_keys():
        assert not warned, f"{what}: FullyMaskedRowWarning although every row has a kept key"


OUT_DTYPES = {"device": np.dtype(ml_dtypes.bfloat16), "fp32": np.dtype(np.float32),
              "fp64": np.dtype(np.float64)}


@pytest.mark.parametrize("precision", ["fp64", "fp32", "device"])
@pytest.mark.parametrize("name", list(CASES))
def test_backward_matches_oracle(name, precision):
    case = get_case(name)
    grads, caught = run_backward(case, precision)
    assert isinstance(grads, af.FagGrads)
    for gname, g, x in zip(O.GRAD_NAMES, grads, (case.q, case.qr, case.k, case.kr, case.v)):
        assert g.shape == x.shape, f"{gname} shape {g.shape} != input shape {x.shape}"
        assert g.dtype == OUT_DTYPES[precision], f"{gname} dtype {g.dtype} for {precision}"
    ref = case.oracle_backward()
    if precision == "fp64":
        O.assert_grads_close(grads, ref, rtol=1e-10, what=f"{name} fp64",
                             touched_rows=case.touched())
    elif precision == "fp32":
        O.assert_grads_close(grads, ref, rtol=2e-5, what=f"{name} fp32",
                             touched_rows=case.touched())
    else:
        O.assert_device_close(grads, case.device_emulation(), what=f"{name} device")
        # and loosely against the exact gradients (bf16 outputs, bf16 P and dS)
        O.assert_grads_close(grads, ref, rtol=2 ** -6, what=f"{name} device vs fp64",
                             touched_rows=case.touched())
    check_fully_masked_warning(case, caught, f"{name} backward {precision}")


def test_rows_outside_sequences_are_zero():
    """Rows after the last end, KV rows of Sq_b=0 batches, query rows of Skv_b=0 batches."""
    case = get_case("m0_tokens_11_trailing")   # q_lens [9,0,12,0,0] kv_lens [11,3,8,0,0]
    for precision in ("fp64", "device"):
        g, _ = run_backward(case, precision)
        dq, dqr, dk, dkr, dv = (np.asarray(x, dtype=np.float64) for x in g)
        assert np.all(dq[21:] == 0) and np.all(dqr[21:] == 0)          # after the last q end
        assert np.all(dk[22:] == 0) and np.all(dv[22:] == 0) and np.all(dkr[22:] == 0)
        assert np.all(dk[11:14] == 0) and np.all(dv[11:14] == 0)       # batch 1: Sq=0, Skv=3
        assert np.any(dq[:9] != 0) and np.any(dv[:11] != 0)
    _, caught = run_backward(case, "fp64")
    assert any(issubclass(w.category, af.SequenceEndWarning) for w in caught)
    case = get_case("m0_2d_gqa2_zero_len")      # q_lens [5,0,7,3] kv_lens [6,4,0,3]
    g, _ = run_backward(case, "fp64")
    assert np.all(g.dq[5:12] == 0) and np.all(g.dq_rope[5:12] == 0)   # batch 2: Skv=0
    assert np.all(g.dk[6:10] == 0) and np.all(g.dv[6:10] == 0)        # batch 1: Sq=0


@pytest.mark.parametrize("precision", ["fp64", "fp32", "device"])
@pytest.mark.parametrize("name", ["m0_2d_gqa2_zero_len", "m0_tokens_11_trailing",
                                  "m1_bn_packed_bool", "m2_sq_ne_skv", "m3_mla_gqa8",
                                  "m3_fully_masked_rows", "m4_band_mla", "m7_band_last",
                                  "m8_band_first", "m5_as_m0"])
def test_forward_matches_oracle(name, precision):
    case = get_case(name)
    fwd, caught = run_forward(case, precision)
    assert isinstance(fwd, af.FagForward)
    t1, n1 = case.q.shape[:2]
    assert fwd.attention_out.shape == (t1, n1, case.v.shape[2])
    assert fwd.softmax_max.shape == (t1, n1, 8) and fwd.softmax_sum.shape == (t1, n1, 8)
    stat_dtype = np.dtype(np.float64) if precision == "fp64" else np.dtype(np.float32)
    assert fwd.attention_out.dtype == OUT_DTYPES[precision]
    assert fwd.softmax_max.dtype == stat_dtype and fwd.softmax_sum.dtype == stat_dtype
    # statistics in the device layout: compare with the oracle's own layout (every element,
    # including the zeros of untouched rows and the NEG / FLT_MAX of invalid lines) ...
    exp_max = O.to_device_layout(case.max64, case.q_ends, np.float64)
    exp_sum = O.to_device_layout(case.sum64, case.q_ends, np.float64)
    rtol = {"fp64": 1e-12, "fp32": 2e-6, "device": 2e-6}[precision]
    atol_max = rtol * max(1.0, float(np.max(np.abs(case.max64[case.max64 != O.NEG]), initial=0)))
    np.testing.assert_allclose(fwd.softmax_max.astype(np.float64), exp_max, rtol=rtol,
                               atol=atol_max, err_msg=f"{name} softmax_max")
    np.testing.assert_allclose(fwd.softmax_sum.astype(np.float64), exp_sum, rtol=rtol * 10,
                               atol=0, err_msg=f"{name} softmax_sum")
    # ... and through the package's converter (token-major view)
    tm = af.softmax_layout.token_major_from_device_stats(fwd.softmax_max, case.q_ends)
    np.testing.assert_allclose(tm.astype(np.float64), case.max64, rtol=rtol, atol=atol_max)
    o = fwd.attention_out.astype(np.float64)
    if precision == "device":
        # docs/semantics.md, Forward: fixes no rounding points inside the forward; judge it like flash-attention's
        # tests: max|out - ref| <= 2 * max|bf16(plain fp32 out) - ref| (+ a tiny floor)
        o32, _, _ = O.forward(case.q, case.qr, case.k, case.kr, case.v, case.mask, case.q_ends,
                              case.kv_ends, case.scale, case.mode, case.pre, case.nxt,
                              dtype=np.float32)
        plain_err = np.max(np.abs(O.round_bf16_away(o32).astype(np.float64) - case.o64))
        dev_err = np.max(np.abs(o - case.o64))
        assert dev_err <= 2 * plain_err + 1e-6 * np.max(np.abs(case.o64)), (dev_err, plain_err)
    else:
        tol = 1e-12 if precision == "fp64" else 2e-6
        assert O.normwise_error(o, case.o64) <= tol
    for row, h in case.fully_masked():
        assert np.all(o[row, h] == 0)
    # rows outside every sequence and rows of Skv_b = 0 batches: output 0, statistics 0
    lay = case.lay
    live = np.zeros(t1, dtype=bool)
    for b in range(lay.B):
        if lay.skv[b] > 0:
            live[lay.q_starts[b]:lay.q_ends[b]] = True
    assert np.all(o[~live] == 0)
    tm_max = O.from_device_layout(fwd.softmax_max, case.q_ends)
    tm_sum = O.from_device_layout(fwd.softmax_sum, case.q_ends)
    assert np.all(tm_max[~live] == 0) and np.all(tm_sum[~live] == 0)
    flat_rows = np.ones(t1, dtype=bool)
    flat_rows[:case.q_ends[-1]] = False          # after the last end: untouched memory
    assert np.all(fwd.softmax_max[flat_rows] == 0) and np.all(fwd.softmax_sum[flat_rows] == 0)
    check_fully_masked_warning(case, caught, f"{name} forward {precision}")


def test_mode5_is_mode0():
    """docs/sparse_modes.md: the code accepts mode 5 and treats it like mode 0 (mask + top-left tokens)."""
    case = get_case("m5_as_m0")
    as0 = O.Case(**{**case.__dict__, "mode": 0})
    for precision in ("fp64", "device"):
        g5, _ = run_backward(case, precision)
        g0, _ = run_backward(as0, precision)
        for a, b in zip(g5, g0):
            np.testing.assert_array_equal(a, b)
    f5, _ = run_forward(case, "fp64")
    f0, _ = run_forward(as0, "fp64")
    for a, b in zip(f5, f0):
        np.testing.assert_array_equal(a, b)


def test_deterministic_flag_changes_no_math():
    """docs/semantics.md, Deterministic mode: deterministic and non-deterministic paths differ only in accumulation order."""
    case = get_case("m0_b1_packed_gqa4")
    g, _ = run_backward(case, "fp64", deterministic=True)
    O.assert_grads_close(g, case.oracle_backward(), rtol=1e-10, what="deterministic",
                         touched_rows=case.touched())


def test_forward_fully_masked_rows_are_invalid_lines():
    """Invalid lines (docs/semantics.md, Softmax statistics): max = -FLT_MAX, sum = +FLT_MAX, output 0; Skv_b = 0 batches: 0, 0, 0."""
    case = O.make_case(21, [6, 4, 3], [3, 0, 5], n1=2, n2=1, d=32, dr=16, mode=3)
    fwd, caught = run_forward(case, "device")
    tm_max = O.from_device_layout(fwd.softmax_max, case.q_ends)
    tm_sum = O.from_device_layout(fwd.softmax_sum, case.q_ends)
    # batch 0: Sq=6, Skv=3 -> rows 0..2 have no key (j <= i - 3)
    assert np.all(tm_max[0:3] == np.float32(O.NEG)) and np.all(tm_sum[0:3] == np.float32(O.FLT_MAX))
    assert np.all(fwd.attention_out[0:3].astype(np.float32) == 0)
    assert np.all(tm_max[3:6] > O.NEG / 2)
    # batch 1: Skv = 0 -> stats 0 and output 0
    assert np.all(tm_max[6:10] == 0) and np.all(tm_sum[6:10] == 0)
    assert np.all(fwd.attention_out[6:10].astype(np.float32) == 0)
    assert any(issubclass(w.category, af.FullyMaskedRowWarning) for w in caught)
    assert issubclass(af.FullyMaskedRowWarning, UserWarning)
    # backward from these statistics: rows 0..2 contribute nothing, batch 1 rows get zeros
    case.softmax_max, case.softmax_sum = fwd.softmax_max, fwd.softmax_sum
    case.attention_in = fwd.attention_out
    g, caught = run_backward(case, "fp64")
    assert np.all(g.dq[0:3] == 0) and np.all(g.dq[6:10] == 0)
    assert any(issubclass(w.category, af.FullyMaskedRowWarning) for w in caught)


def test_scale_is_float32_of_scale_value():
    """docs/semantics.md, Forward: the op applies float32(scaleValue), not the double (fp64 precision included)."""
    case = O.make_case(22, [9, 7], n1=2, n2=1, d=64, dr=16, mode=0, scale=0.1)
    assert float(np.float32(0.1)) != 0.1
    g, _ = run_backward(case, "fp64")
    O.assert_grads_close(g, case.oracle_backward(), rtol=1e-12, what="scale 0.1")
    # the effect of using the double 0.1 instead (relative 1.5e-8) is far above that tolerance
    wrong = O.backward(case.q, case.qr, case.k, case.kr, case.v, case.dy, case.attention_in,
                       case.max_tm, case.sum_tm, case.mask, case.q_ends, case.kv_ends, 0.1,
                       case.mode, raw_scale=True)
    for a, b in zip(wrong, case.oracle_backward()):
        assert O.normwise_error(a, b) > 1e-10


# ----------------------------------------------------------------------------- property test
@st.composite
def configs(draw):
    mode = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8]))
    nb = draw(st.integers(1, 4))
    q_lens = draw(st.lists(st.integers(0, 9), min_size=nb, max_size=nb))
    kv_lens = draw(st.lists(st.integers(0, 9), min_size=nb, max_size=nb))
    trailing = draw(st.integers(0, 2))
    q_lens, kv_lens = q_lens + [0] * trailing, kv_lens + [0] * trailing
    if sum(q_lens) == 0:
        q_lens[0] = 1
    if sum(kv_lens) == 0:
        kv_lens[-1] = 1
    g = draw(st.sampled_from([1, 2, 4]))
    n2 = draw(st.sampled_from([1, 2]))
    pre = draw(st.integers(-3, 12))
    nxt = draw(st.integers(-3, 12))
    mask_kind = draw(st.sampled_from(["2d", "11", "b1", "bn"]))
    extra_q, extra_kv = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2 ** 31))
    return dict(seed=seed, q_lens=q_lens, kv_lens=kv_lens, n1=g * n2, n2=n2, d=16, dr=8,
                mode=mode, pre=pre, nxt=nxt, mask_kind=mask_kind, extra_q=extra_q,
                extra_kv=extra_kv)


def tokens_valid(cfg) -> bool:
    """Rule 28 (docs/validation.md) for the drawn tokens."""
    lay = O.layout(O.cumulative(cfg["q_lens"]), O.cumulative(cfg["kv_lens"]))
    mode = cfg["mode"]
    pre, nxt = O.normalize_tokens(mode, cfg["pre"], cfg["nxt"])
    if mode == 0:
        return all(not (-pre > lay.skv[b] or -nxt > lay.sq[b] or pre + nxt <= 0)
                   for b in range(lay.B))
    if mode in (4, 7, 8):
        bs = range(lay.B) if mode == 4 else [O.band_index(mode, lay)]
        return all(not (-pre > lay.sq[b] or -nxt > lay.skv[b] or pre + nxt <= 0) for b in bs)
    return True


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_random_configurations_fp64(cfg):
    case = O.make_case(**cfg)
    if tokens_valid(cfg):
        grads, caught = run_backward(case, "fp64")
        O.assert_grads_close(grads, case.oracle_backward(), rtol=1e-10, what=str(cfg),
                             touched_rows=case.touched())
        check_fully_masked_warning(case, caught, str(cfg))
    else:
        with pytest.raises(af.ParamNullptrError) as exc:
            run_backward(case, "fp64")
        assert exc.value.code == 161001


@pytest.mark.parametrize("mode,pre,nxt", [(0, 2 ** 40, 2 ** 35), (4, 2 ** 40, 1), (4, 3, 2 ** 62),
                                          (8, 2 ** 40, 0)])
def test_tokens_above_int32_are_clamped(mode, pre, nxt):
    """docs/sparse_modes.md: pre/next are int64 and clamped from above to INT32_MAX before use."""
    cfg = dict(seed=61, q_lens=[7, 0, 9], kv_lens=[9, 2, 12], n1=2, n2=1, d=32, dr=16,
               mode=mode, pre=pre, nxt=nxt)
    case = O.make_case(**cfg)
    clamped = O.make_case(**{**cfg, "pre": min(pre, O.INT32_MAX), "nxt": min(nxt, O.INT32_MAX)})
    g, _ = run_backward(case, "fp64")
    g_clamped, _ = run_backward(clamped, "fp64")
    for a, b in zip(g, g_clamped):
        np.testing.assert_array_equal(a, b)
    O.assert_grads_close(g, case.oracle_backward(), rtol=1e-10, what=f"clamp {mode}",
                         touched_rows=case.touched())
