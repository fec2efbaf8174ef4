"""One test per rule of docs/validation.md (plus the stricter checks the package documents).

Codes: op-API checks (rules 1-16) return 161002 ACLNN_ERR_PARAM_INVALID; null arguments
(rule 2, rule 8, rule 12) and every tiling failure (rules 17-30) return 161001
ACLNN_ERR_PARAM_NULLPTR. Every failing call must raise the class of its code
(ParamInvalidError / ParamNullptrError) with ``.code`` set and ``.param`` naming the
parameter; the rule order of docs/validation.md decides which error wins when several apply.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

BF16 = O.BF16
NULLPTR, INVALID = 161001, 161002
_BASE: dict = {}


def base(kind="default") -> O.Case:
    """A valid call: two batches (Sq 5/3, Skv 6/3), N1 = 2, N2 = 1, D = Dv = 16, Dr = 8."""
    if kind not in _BASE:
        if kind == "default":
            _BASE[kind] = O.make_case(0, [5, 3], [6, 3], n1=2, n2=1, d=16, dr=8, mode=0)
        elif kind == "band":      # for mode 7/8 token checks: Sq = Skv = [2, 10]
            _BASE[kind] = O.make_case(1, [2, 10], [2, 10], n1=2, n2=1, d=16, dr=8, mode=4,
                                      pre=3, nxt=3)
    return _BASE[kind]


POSITIONAL = ("query", "query_rope", "key", "key_rope", "value", "dy")


def call(case=None, **over):
    case = case or base()
    pos = dict(zip(POSITIONAL, (case.q, case.qr, case.k, case.kr, case.v, case.dy)))
    kw = case.bwd_kwargs()
    kw.update(backend="numpy", precision="fp64")
    for key, value in over.items():
        if key in pos:
            pos[key] = value
        else:
            kw[key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.flash_attention_unpadding_score_grad_v3(*(pos[n] for n in POSITIONAL), **kw)


def expect(code, params, case=None, **over):
    params = (params,) if isinstance(params, str) else tuple(params)
    with pytest.raises(af.AclnnError) as info:
        call(case, **over)
    err = info.value
    assert err.code == code, f"expected {code}, got {err.code}: {err}"
    cls = af.ParamNullptrError if code == NULLPTR else af.ParamInvalidError
    assert isinstance(err, cls), f"{type(err).__name__} is not {cls.__name__}"
    assert err.param in params, f"param {err.param!r} not in {params}: {err}"
    assert err.param in str(err)
    return err


def ok(case=None, **over) -> af.FagGrads:
    grads = call(case, **over)
    assert isinstance(grads, af.FagGrads)
    return grads


def arr(shape, dtype=BF16, fill=0.5):
    return np.full(shape, fill, dtype=np.float32).astype(dtype)


def test_base_call_is_valid():
    g = ok()
    assert np.max(np.abs(g.dq)) > 0


# ----------------------------------------------------------------------------- rule 1
@pytest.mark.parametrize("layout", ["BSH", "tnd", "TND ", "BNSD", "SBH", ""])
def test_row1_layout_must_be_exactly_TND(layout):
    expect(INVALID, "input_layout", input_layout=layout)


def test_row1_layout_is_checked_before_the_null_checks():
    expect(INVALID, "input_layout", input_layout="BSH", query=None)
    expect(INVALID, "input_layout", input_layout="BSH", dy=None, attention_in=None)


# ----------------------------------------------------------------------------- rule 2
@pytest.mark.parametrize("name", ["query", "key", "value", "dy", "attention_in"])
def test_row2_required_tensors(name):
    expect(NULLPTR, name, **{name: None})


# ----------------------------------------------------------------------------- rule 3 / empty
def test_row3_all_gradients_empty_succeeds_with_empty_outputs():
    """dq, dk, dv all empty: SUCCESS before every later rule (here keep_prob 0.5, sparse
    mode 9 and a missing mask would each fail otherwise)."""
    q = np.zeros((0, 2, 16), BF16)
    g = call(query=q, query_rope=np.zeros((0, 2, 8), BF16), key=np.zeros((0, 1, 16), BF16),
             key_rope=np.zeros((0, 1, 8), BF16), value=np.zeros((0, 1, 16), BF16),
             dy=np.zeros((0, 2, 16), BF16), attention_in=np.zeros((0, 2, 16), BF16),
             softmax_max=np.zeros((0, 2, 8), np.float32), softmax_sum=np.zeros((0, 2, 8), np.float32),
             actual_seq_qlen=[0], actual_seq_kvlen=[0], keep_prob=0.5, sparse_mode=9,
             atten_mask=None)
    assert g.dq.shape == (0, 2, 16) and g.dk.shape == (0, 1, 16) and g.dv.shape == (0, 1, 16)


def test_empty_key_side_zero_fills_dq_and_skips_tiling_rules():
    """docs/validation.md, 'Empty tensors': any gradient with 0 elements -> dq, dk, dv zero-filled, success;
    rules 17 and 20-29 are skipped on this path (keep_prob 1.5 would be rule 17, sparse mode
    9 rule 26)."""
    case = base()
    empty = dict(key=np.zeros((0, 1, 16), BF16), key_rope=np.zeros((0, 1, 8), BF16),
                 value=np.zeros((0, 1, 16), BF16), actual_seq_kvlen=[0, 0])
    for extra in ({}, dict(keep_prob=1.5), dict(sparse_mode=9)):
        g = call(**empty, **extra)
        assert g.dq.shape == case.q.shape and np.all(np.asarray(g.dq, np.float64) == 0)
        assert g.dk.shape == (0, 1, 16) and g.dv.shape == (0, 1, 16)


def test_empty_path_still_applies_the_op_api_rules():
    """The empty-tensor path comes after rules 1-16: a float32 query is still rejected."""
    expect(INVALID, "query", query=base().q.astype(np.float32), key=np.zeros((0, 1, 16), BF16),
           key_rope=np.zeros((0, 1, 8), BF16), value=np.zeros((0, 1, 16), BF16),
           actual_seq_kvlen=[0, 0])


def test_row22_is_unreachable_T1_zero_takes_the_empty_path():
    """Row 22 (T1, N1 or D == 0 on the non-empty path): T1 = 0 empties dq, so the call
    takes the empty-tensor path instead and succeeds with zero dk, dv."""
    case = base()
    g = call(query=np.zeros((0, 2, 16), BF16), query_rope=np.zeros((0, 2, 8), BF16),
             dy=np.zeros((0, 2, 16), BF16), attention_in=np.zeros((0, 2, 16), BF16),
             softmax_max=np.zeros((0, 2, 8), np.float32),
             softmax_sum=np.zeros((0, 2, 8), np.float32), actual_seq_qlen=[0, 0])
    assert g.dk.shape == case.k.shape and np.all(np.asarray(g.dk, np.float64) == 0)
    assert np.all(np.asarray(g.dv, np.float64) == 0)


# ----------------------------------------------------------------------------- rule 4
@pytest.mark.parametrize("head_num", [0, -1, -2])
def test_row4_head_num_positive(head_num):
    expect(INVALID, "head_num", head_num=head_num)


# ----------------------------------------------------------------------------- rule 5
@pytest.mark.parametrize("name,shape", [("query", (8, 32)), ("key", (9, 16)), ("value", (9, 16)),
                                        ("dy", (8, 32)), ("attention_in", (8, 32)),
                                        ("query_rope", (8, 16)), ("key_rope", (9, 8))])
def test_row5_tensors_need_three_dims(name, shape):
    expect(INVALID, name, **{name: arr(shape)})


# ----------------------------------------------------------------------------- rules 6, 7
def test_row6_query_and_key_head_dims_equal():
    expect(INVALID, ("key", "query"), key=arr((9, 1, 32)))


def test_row7_value_dim_not_above_query_dim():
    expect(INVALID, ("value", "query"), value=arr((9, 1, 32)), dy=arr((8, 2, 32)),
           attention_in=arr((8, 2, 32)))


# ----------------------------------------------------------------------------- rule 8
@pytest.mark.parametrize("name", ["query_rope", "key_rope"])
def test_row8_exactly_one_rope_missing(name):
    expect(NULLPTR, name, **{name: None})


def test_row8_both_ropes_missing_rejected_stricter():
    """The device dereferences a null rope and crashes; the package rejects it (161001)."""
    err = expect(NULLPTR, ("query_rope", "key_rope"), query_rope=None, key_rope=None)
    assert err.stricter is True


def test_row8_comes_before_the_dtype_rule():
    expect(NULLPTR, "key_rope", key_rope=None, query=base().q.astype(np.float32))


# ----------------------------------------------------------------------------- rule 9
def test_row9_rope_dim_not_above_d():
    expect(INVALID, ("query_rope", "key_rope"), query_rope=arr((8, 2, 24)),
           key_rope=arr((9, 1, 24)))


# ----------------------------------------------------------------------------- rule 10
@pytest.mark.parametrize("name,dtype", [("query", np.float32), ("query", np.float16),
                                        ("key", np.float16), ("value", np.float32),
                                        ("query_rope", np.float32), ("key_rope", np.float16)])
def test_row10_inputs_must_be_bf16(name, dtype):
    case = base()
    src = dict(zip(POSITIONAL, (case.q, case.qr, case.k, case.kr, case.v, case.dy)))[name]
    expect(INVALID, name, **{name: src.astype(np.float32).astype(dtype)})


# ----------------------------------------------------------------------------- rules 11-15
def test_row11_sparse_mode_6():
    expect(INVALID, "sparse_mode", sparse_mode=6)


def test_row11_comes_before_row12():
    expect(INVALID, "sparse_mode", sparse_mode=6, atten_mask=None)


@pytest.mark.parametrize("mask", [None, np.array(0, dtype=np.uint8)], ids=["none", "0-dim"])
def test_row12_mask_required(mask):
    expect(NULLPTR, "atten_mask", atten_mask=mask)


def test_row12_comes_before_row13():
    expect(NULLPTR, "atten_mask", atten_mask=None, pse_shift=arr((1, 2, 5, 6)))


def test_row13_pse_shift_not_supported():
    expect(INVALID, "pse_shift", pse_shift=arr((1, 2, 5, 6)))


def test_row14_drop_mask_not_supported():
    expect(INVALID, "drop_mask", drop_mask=np.ones((64,), dtype=np.uint8))


@pytest.mark.parametrize("keep_prob", [0.9, 0.0, 0.99999999])
def test_row15_keep_prob_below_one(keep_prob):
    """A double compare: even 1 - 1e-8 (which is 1.0 as a float32) is < 1."""
    expect(INVALID, "keep_prob", keep_prob=keep_prob)


# ----------------------------------------------------------------------------- rule 16
def _dims(d, dv, dr=8, t2=9, kv_ends=(6, 9)):
    rng = np.random.default_rng(d * 1000 + dv)
    return dict(query=O.bf16_normal(rng, (8, 2, d)), query_rope=O.bf16_normal(rng, (8, 2, dr)),
                key=O.bf16_normal(rng, (t2, 1, d)), key_rope=O.bf16_normal(rng, (t2, 1, dr)),
                value=O.bf16_normal(rng, (t2, 1, dv)), dy=O.bf16_normal(rng, (8, 2, dv)),
                attention_in=O.bf16_normal(rng, (8, 2, dv)), actual_seq_kvlen=list(kv_ends),
                atten_mask=np.zeros((5, max(kv_ends[0], kv_ends[1] - kv_ends[0])), np.uint8))


@pytest.mark.parametrize("d,dv,deterministic", [(64, 32, False), (32, 16, False),
                                                (192, 128, True), (200, 200, True),
                                                (100, 100, False), (12, 12, True),
                                                (24, 24, True)])
def test_row16_head_dims_needing_padding(d, dv, deterministic):
    expect(INVALID, ("query", "value"), deterministic=deterministic, **_dims(d, dv))


@pytest.mark.parametrize("d,dv,deterministic", [(192, 128, False), (200, 200, False),
                                                (12, 12, False), (32, 32, True),
                                                (256, 256, True), (16, 16, True)])
def test_row16_head_dims_accepted(d, dv, deterministic):
    g = ok(deterministic=deterministic, **_dims(d, dv))
    assert g.dq.shape == (8, 2, d) and g.dv.shape == (9, 1, dv)


def test_row16_mla_shape_names_both_reasons_in_deterministic_mode():
    """D=192 with Dv=128 is allowed only in non-deterministic mode: in deterministic mode the
    message names the unaligned D and the D != Dv padding."""
    err = expect(INVALID, ("query", "value"), deterministic=True, **_dims(192, 128))
    assert "D=192 must be a multiple of 128" in str(err)
    assert "D=192 != Dv=128" in str(err)


def test_row16_small_unaligned_d_needs_short_keys():
    """D % 8 != 0 passes in non-deterministic mode only with max Skv <= 1024 (and D < 96)."""
    ok(**_dims(12, 12, t2=1024, kv_ends=(1000, 1024)))
    expect(INVALID, ("query", "value"), **_dims(12, 12, t2=1100, kv_ends=(1025, 1100)))


# ----------------------------------------------------------------------------- rule 17
def test_row17_keep_prob_above_one():
    expect(NULLPTR, "keep_prob", keep_prob=1.1)


def test_row17_compares_after_the_float_cast():
    """1 + 1e-9 is 1.0 as a float32: neither rule 15 (< 1) nor rule 17 (> 1 after the cast)."""
    ok(keep_prob=1.0 + 1e-9)


def test_row10_comes_before_row17():
    expect(INVALID, "query", query=base().q.astype(np.float32), keep_prob=1.1)


# ----------------------------------------------------------------------------- rule 18
@pytest.mark.parametrize("name", ["softmax_max", "softmax_sum"])
def test_row18_statistics_required(name):
    expect(NULLPTR, name, **{name: None})


# ----------------------------------------------------------------------------- rule 19
@pytest.mark.parametrize("head_num", [1, 3, 4])
def test_row19_head_num_equals_query_heads(head_num):
    expect(NULLPTR, "head_num", head_num=head_num)


def test_row19_comes_before_row21():
    expect(NULLPTR, "head_num", head_num=3, softmax_max=np.zeros((2, 8, 8), np.float32))


# ----------------------------------------------------------------------------- rule 20
@pytest.mark.parametrize("name,dtype", [("softmax_max", np.float64), ("softmax_sum", np.float16),
                                        ("softmax_max", BF16)])
def test_row20_statistics_float32(name, dtype):
    stats = getattr(base(), name)
    expect(NULLPTR, name, **{name: stats.astype(dtype)})


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_row20_attention_in_dtype_equals_query(dtype):
    expect(NULLPTR, "attention_in", attention_in=base().attention_in.astype(np.float32).astype(dtype))


# ----------------------------------------------------------------------------- rule 21
@pytest.mark.parametrize("shape", [(2, 8, 8), (8, 2, 1), (8, 2), (8, 2, 8, 1), (9, 2, 8)],
                         ids=["N,T,8", "T,N,1", "T,N", "T,N,8,1", "T+1,N,8"])
def test_row21_statistics_shape(shape):
    expect(NULLPTR, "softmax_max", softmax_max=np.zeros(shape, np.float32))


def test_row21_statistics_shape_sum():
    expect(NULLPTR, "softmax_sum", softmax_sum=np.zeros((2, 8, 8), np.float32))


@pytest.mark.parametrize("shape", [(9, 2, 16), (8, 1, 16), (8, 2, 1, 16)])
def test_row21_attention_in_shape(shape):
    expect(NULLPTR, "attention_in", attention_in=arr(shape))


@pytest.mark.parametrize("name,shape", [("attention_in", (8, 2, 8)), ("dy", (8, 2, 8))])
def test_last_dim_mismatch_with_dv_is_an_aclnn_error(name, shape):
    """Rows 21/25 compare attention_in and dy with query except the last dim (dy's only
    <= D), so the device accepts a last dim != Dv and then reads [T, N, Dv] rows out of a
    narrower tensor. The package must not compute with that (nor fail with a numpy
    broadcasting error): an AclnnError naming the parameter (stricter) is expected."""
    with pytest.raises(af.AclnnError) as info:
        call(**{name: arr(shape)})
    assert info.value.param == name


# ----------------------------------------------------------------------------- rule 23
@pytest.mark.parametrize("name", ["actual_seq_qlen", "actual_seq_kvlen"])
def test_row23_sequence_arrays_required(name):
    expect(NULLPTR, name, **{name: None})


def test_row23_sequence_arrays_equal_length():
    expect(NULLPTR, ("actual_seq_qlen", "actual_seq_kvlen"), actual_seq_qlen=[5, 8, 8])


def test_row23_sequence_arrays_not_empty():
    expect(NULLPTR, ("actual_seq_qlen", "actual_seq_kvlen"), actual_seq_qlen=[],
           actual_seq_kvlen=[])


@pytest.mark.parametrize("name,ends", [("actual_seq_qlen", [5, 9]), ("actual_seq_kvlen", [6, 10])])
def test_last_end_beyond_T_rejected(name, ends):
    """The kernel would read out of bounds (docs/semantics.md, Sequence lengths); the package rejects it (stricter)."""
    with pytest.raises(af.AclnnError) as info:
        call(**{name: ends})
    assert info.value.param == name and info.value.code in (NULLPTR, INVALID)


@pytest.mark.parametrize("name,ends,mask_shape",
                         [("actual_seq_qlen", [5, 3], (5, 6)), ("actual_seq_kvlen", [6, 2], (5, 6)),
                          ("actual_seq_qlen", [-1, 8], (9, 6))])
def test_decreasing_or_negative_ends_rejected(name, ends, mask_shape):
    """Not checked by the device (docs/semantics.md, Sequence lengths); rejected by the package. The mask matches the maxSq
    the ends imply ([-1, 8] -> lengths [-1, 9]), else rule 27 fires first."""
    with pytest.raises(af.AclnnError) as info:
        call(**{name: ends}, atten_mask=np.zeros(mask_shape, np.uint8))
    assert info.value.param == name and info.value.code in (NULLPTR, INVALID)


def test_negative_end_with_the_old_mask_fails_row27_first():
    """Device order: the lengths [-1, 9] make maxSq = 9, so the [5, 6] mask fails rule 27."""
    expect(NULLPTR, "atten_mask", actual_seq_qlen=[-1, 8])


def test_per_sequence_lengths_are_not_cumulative_ends():
    """Lengths [5, 3] passed as ends give sequences [0,5) and (decreasing) -> rejected."""
    with pytest.raises(af.AclnnError):
        call(actual_seq_qlen=[5, 3], actual_seq_kvlen=[6, 3])


# ----------------------------------------------------------------------------- rule 24
def test_row24_query_rank_three():
    case = base()
    four = lambda x: x[:, :, None, :]  # noqa: E731
    expect(NULLPTR, "query", query=four(case.q), query_rope=four(case.qr), key=four(case.k),
           key_rope=four(case.kr), value=four(case.v), dy=four(case.dy),
           attention_in=four(case.attention_in))


def test_row24_fewer_query_heads_than_kv_heads():
    rng = np.random.default_rng(3)
    expect(NULLPTR, ("key", "query"), key=O.bf16_normal(rng, (9, 4, 16)),
           key_rope=O.bf16_normal(rng, (9, 4, 8)), value=O.bf16_normal(rng, (9, 4, 16)))


def test_row24_query_heads_multiple_of_kv_heads():
    """N1 = 3, N2 = 2: fails (via the softmax-shape check on the device)."""
    rng = np.random.default_rng(4)
    q_lens, kv_lens = [5, 3], [6, 3]
    expect(NULLPTR, ("key", "query", "softmax_max", "head_num"),
           query=O.bf16_normal(rng, (8, 3, 16)), query_rope=O.bf16_normal(rng, (8, 3, 8)),
           key=O.bf16_normal(rng, (9, 2, 16)), key_rope=O.bf16_normal(rng, (9, 2, 8)),
           value=O.bf16_normal(rng, (9, 2, 16)), dy=O.bf16_normal(rng, (8, 3, 16)),
           attention_in=O.bf16_normal(rng, (8, 3, 16)),
           softmax_max=np.zeros((8, 3, 8), np.float32), softmax_sum=np.ones((8, 3, 8), np.float32),
           actual_seq_qlen=O.cumulative(q_lens), actual_seq_kvlen=O.cumulative(kv_lens))


# ----------------------------------------------------------------------------- rule 25
@pytest.mark.parametrize("shape", [(9, 2, 16), (8, 1, 16), (8, 2, 24)],
                         ids=["T", "N", "D>Dq"])
def test_row25_dy_shape(shape):
    expect(NULLPTR, "dy", dy=arr(shape))


@pytest.mark.parametrize("shape", [(10, 1, 16), (9, 2, 16)], ids=["T", "N"])
def test_row25_value_shape(shape):
    expect(NULLPTR, "value", value=arr(shape))


# ----------------------------------------------------------------------------- rule 26
@pytest.mark.parametrize("mode", [9, 100, -1])
def test_row26_sparse_mode_range(mode):
    expect(NULLPTR, "sparse_mode", sparse_mode=mode)


def test_row26_comes_before_row27():
    expect(NULLPTR, "sparse_mode", sparse_mode=9, atten_mask=np.zeros((5, 6), np.float32))


# ----------------------------------------------------------------------------- rule 27
@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.int32, np.float16])
def test_row27_mask_dtype(dtype):
    expect(NULLPTR, "atten_mask", atten_mask=np.zeros((5, 6), dtype))


@pytest.mark.parametrize("shape", [(6,), (1, 5, 6), (1, 1, 1, 5, 6)])
def test_row27_mask_rank(shape):
    expect(NULLPTR, "atten_mask", atten_mask=np.zeros(shape, np.uint8))


@pytest.mark.parametrize("lead", [(2, 3), (1, 2), (3, 1), (2, 4)])
def test_row27_mask_leading_dims(lead):
    expect(NULLPTR, "atten_mask", atten_mask=np.zeros(lead + (5, 6), np.uint8))


@pytest.mark.parametrize("lead", [(2, 1), (2, 2), (1, 1)])
def test_row27_mask_leading_dims_accepted(lead):
    ok(atten_mask=np.zeros(lead + (5, 6), np.uint8))


def test_row27_mask_dim0_is_B_after_trailing_empties(cann_release):
    """Before 9.1, B excludes the trailing run of (0, 0) batches: [B_raw, 1, ..] is rejected;
    from 9.1 B drops only trailing entries whose cumulative values are 0, so it is B_raw."""
    ends = dict(actual_seq_qlen=[5, 8, 8, 8], actual_seq_kvlen=[6, 9, 9, 9])
    good, bad = (4, 2) if cann_release.batch_drops_zero_ends else (2, 4)
    ok(atten_mask=np.zeros((good, 1, 5, 6), np.uint8), **ends)
    expect(NULLPTR, "atten_mask", atten_mask=np.zeros((bad, 1, 5, 6), np.uint8), **ends)


@pytest.mark.parametrize("shape", [(5, 7), (4, 6), (6, 5), (2048, 2048)])
def test_row27_dense_mask_must_be_maxsq_by_maxskv(shape):
    expect(NULLPTR, "atten_mask", atten_mask=np.zeros(shape, np.uint8))


@pytest.mark.parametrize("mode", [2, 3, 4, 7, 8])
@pytest.mark.parametrize("shape", [(5, 6), (1024, 1024), (2048, 1024), (1, 1, 5, 6)])
def test_row27_compressed_modes_need_2048(mode, shape):
    expect(NULLPTR, "atten_mask", sparse_mode=mode, pre_tokens=4, next_tokens=4,
           atten_mask=np.zeros(shape, np.uint8))


@pytest.mark.parametrize("mode", [2, 3, 4, 7, 8])
def test_compressed_modes_accept_the_canonical_mask(mode):
    ok(sparse_mode=mode, pre_tokens=4, next_tokens=4, atten_mask=O.compressed_mask())
    ok(sparse_mode=mode, pre_tokens=4, next_tokens=4,
       atten_mask=O.compressed_mask(np.bool_)[None, None])
    np.testing.assert_array_equal(af.masks.compressed_causal_mask(), O.compressed_mask())


# ----------------------------------------------------------------------------- rule 28
# base: Sq = [5, 3], Skv = [6, 3]
@pytest.mark.parametrize("pre,nxt", [(-7, 10), (10, -4), (0, 0), (1, -1), (-3, 3)],
                         ids=["-pre>Skv", "-next>Sq", "sum0", "sum0b", "sum0c"])
def test_row28_mode0_tokens(pre, nxt):
    expect(NULLPTR, ("pre_tokens", "next_tokens"), pre_tokens=pre, next_tokens=nxt)


@pytest.mark.parametrize("pre,nxt", [(2, -1), (-2, 5), (0, 1)])
def test_row28_mode0_tokens_accepted(pre, nxt):
    ok(pre_tokens=pre, next_tokens=nxt)


@pytest.mark.parametrize("pre,nxt", [(-4, 10), (10, -7), (0, 0), (2, -2)],
                         ids=["-pre>Sq", "-next>Skv", "sum0", "sum0b"])
def test_row28_mode4_tokens(pre, nxt):
    expect(NULLPTR, ("pre_tokens", "next_tokens"), sparse_mode=4, pre_tokens=pre,
           next_tokens=nxt, atten_mask=O.compressed_mask())


def test_row28_modes_7_8_check_only_the_band_batch():
    """Sq = Skv = [2, 10]; pre = -5, next = 8 fails for batch 0 (-pre > Sq = 2) only.
    Mode 4 checks every batch, mode 8's band is batch 0, mode 7's band is batch 1."""
    case = base("band")
    tokens = dict(pre_tokens=-5, next_tokens=8, atten_mask=O.compressed_mask())
    expect(NULLPTR, ("pre_tokens", "next_tokens"), case, sparse_mode=4, **tokens)
    expect(NULLPTR, ("pre_tokens", "next_tokens"), case, sparse_mode=8, **tokens)
    ok(case, sparse_mode=7, **tokens)


def test_row28_modes_7_8_band_batch_skips_empty_queries():
    """bandIdx of mode 8 is the first batch with Sq != 0: with batch 0 having no queries the
    band is batch 1 (Sq = 10) and the same tokens pass."""
    c = O.make_case(2, [0, 10], [2, 10], n1=2, n2=1, d=16, dr=8, mode=8, pre=3, nxt=3)
    ok(c, pre_tokens=-5, next_tokens=8)
    expect(NULLPTR, ("pre_tokens", "next_tokens"), c, pre_tokens=-11, next_tokens=20)


@pytest.mark.parametrize("mode", [1, 2, 3, 5])
def test_row28_tokens_not_validated_for_modes_1_2_3_5(mode):
    mask = O.compressed_mask() if mode in (2, 3) else np.zeros((5, 6), np.uint8)
    ok(sparse_mode=mode, pre_tokens=0, next_tokens=0, atten_mask=mask)
    ok(sparse_mode=mode, pre_tokens=-50, next_tokens=-50, atten_mask=mask)


def test_mode4_int32_block_bound_overflow_rejected():
    """docs/sparse_modes.md (block-skip hazard): pre + Sq_b - Skv_b beyond int32 makes the device skip blocks wrongly; the
    package rejects it (stricter). Sq > Skv with the default pre = INT32_MAX."""
    c = O.make_case(3, [6, 3], [4, 3], n1=2, n2=1, d=16, dr=8, mode=4, pre=20, nxt=20)
    ok(c)
    with pytest.raises(af.AclnnError) as info:
        call(c, pre_tokens=2147483647, next_tokens=0)
    assert info.value.stricter and info.value.param in ("pre_tokens", "next_tokens")


# ----------------------------------------------------------------------------- rule 29
@pytest.mark.parametrize("pse_type", [0, 2, 3, 4, -1])
def test_row29_pse_type_must_be_1(pse_type):
    expect(NULLPTR, "pse_type", pse_type=pse_type)


# ----------------------------------------------------------------------------- rule 30
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_row30_dy_dtype_equals_query(dtype):
    with pytest.raises(af.AclnnError) as info:
        call(dy=base().dy.astype(np.float32).astype(dtype))
    assert info.value.param == "dy"


# ----------------------------------------------------------------------------- unused inputs
def test_unused_inputs_do_not_change_the_result():
    """paddingMask, softmaxIn, prefix, innerPrecise are passed through but unused (docs/validation.md);
    qStartIdx / kvStartIdx only feed ALiBi pse, which V3 cannot use (docs/semantics.md, Sequence lengths)."""
    ref = ok()
    variants = [dict(inner_precise=1), dict(inner_precise=2),
                dict(padding_mask=np.ones((5, 6), np.uint8)),
                dict(softmax_in=np.ones((8, 2, 8), np.float32)), dict(prefix=[1, 2]),
                dict(q_start_idx=[3], kv_start_idx=[1])]
    for extra in variants:
        g = ok(**extra)
        for a, b in zip(g, ref):
            np.testing.assert_array_equal(a, b, err_msg=str(list(extra)))


def test_forward_applies_its_own_codes():
    """The forward's op API differs from the backward's: its rope rules (sparse mode 6, BF16,
    the mask) are wrapped in CHECK_RET(..., PARAM_NULLPTR), so they return 161001, and it
    first checks that query, key and value share one dtype (161002, naming the first that
    differs). docs/forward.md, "Validation"."""
    case = base()
    common = case.api_common()
    for over, code, param in ((dict(sparse_mode=6), NULLPTR, "sparse_mode"),
                              (dict(sparse_mode=9), NULLPTR, "sparse_mode"),
                              (dict(atten_mask=None), NULLPTR, "atten_mask"),
                              (dict(head_num=0), INVALID, "head_num")):
        kw = {**common, **over}
        with pytest.raises(af.AclnnError) as info:
            af.flash_attention_forward(case.q, case.qr, case.k, case.kr, case.v, **kw)
        assert info.value.code == code and info.value.param == param, over
    with pytest.raises(af.AclnnError) as info:
        af.flash_attention_forward(case.q.astype(np.float32), case.qr, case.k, case.kr, case.v,
                                   **common)
    assert info.value.code == INVALID and info.value.param == "key"
    with pytest.raises(af.AclnnError) as info:
        af.flash_attention_forward(case.q.astype(np.float32), case.qr, case.k.astype(np.float32),
                                   case.kr, case.v.astype(np.float32), **common)
    assert info.value.code == NULLPTR and info.value.param == "query"
