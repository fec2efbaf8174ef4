"""Each disagreement the fuzzer found between the Python validator and the stub op (and each
crash of the public call), pinned as a deterministic case: both sides now return the same
status, which is the device's where the op-API source decides it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import aclnn_fag as af
from aclnn_fag import acl
from fuzz_cases import BF16, INT64_MAX, INT64_MIN, Case, build_case, public_call, raw_verdict, \
    validator_verdict

NULLPTR, INVALID = 161001, 161002


def make(**over) -> Case:
    kw = dict(q_lens=[5, 3], kv_lens=[6, 3], extra_q=0, extra_kv=0, n2=1, g=2, d=16, dr=8, dv=16,
              mode=0, pre=2147483647, nxt=2147483647, seed=3, mask_kind="2d",
              mask_dtype=np.uint8, density=0.0, deterministic=False, scale=None)
    kw.update(over)
    return build_case(**kw)


def both(case: Case, **over):
    c = Case(dict(case.args, **over), dict(case.meta))
    return validator_verdict(c), raw_verdict(c)[0]


def test_head_dims_are_dim_2_even_for_rank_4_tensors():
    """GetDim(2) (op API, TND): a [T, N, D, 1] query has D = dims[2] for rules 6/7/9/16; it
    then fails rule 24 (query rank) in both -- not rule 6 on the last dim."""
    case = make()
    q4 = case.args["query"][..., None]
    assert both(case, query=q4, dy=case.args["dy"][..., None],
                attention_in=case.args["attention_in"][..., None]) == (NULLPTR, NULLPTR)
    v, r = both(case, query=q4)                  # rule 21 (attention_in rank) in both
    assert v == r == NULLPTR


def test_row25_compares_the_last_dims():
    """IsSameShapeButValueDLeEqD: value's last dim <= key's last dim (also for 4-D)."""
    case = make()
    k4 = np.concatenate([case.args["key"][..., None]] * 2, axis=-1)      # [T2, N2, D, 2]
    v4 = np.concatenate([case.args["value"][..., None]] * 3, axis=-1)    # [T2, N2, D, 3]
    assert both(case, key=k4, value=v4) == (NULLPTR, NULLPTR)            # 3 > 2: rule 25
    assert both(case, key=k4, value=v4[..., :2])[0] == both(case, key=k4, value=v4[..., :2])[1]


@pytest.mark.parametrize("q_ends,kv_ends,expect", [
    ([2, 2], [0, 0], INVALID),       # max Skv = 0: no small-shape exception (pad)
    ([0], [3], INVALID),             # the last positive query end does not exist: 0 -> pad
    ([-5, 0], [3, 3], "same"),       # last positive end scanned from the back: values[0] = -5
    ([200000, 5], [3, 3], "same"),   # the LAST positive end (5), not the largest
])
def test_row16_small_shape_exception_mirrors_the_op_api(q_ends, kv_ends, expect):
    case = make(d=20, dv=20)                                            # D % 8 != 0
    v, r = both(case, actual_seq_qlen=q_ends, actual_seq_kvlen=kv_ends)
    assert v == r
    if expect != "same":
        assert v == expect


def test_row16_nan_keep_prob_counts_as_no_dropout():
    """notHasDropMask = !(p < 1) && !(p > 1): NaN takes the small-shape exception."""
    case = make(d=20, dv=20)
    assert both(case, keep_prob=math.nan) == (0, 0)
    assert both(case, keep_prob=math.nan, deterministic=True) == (INVALID, INVALID)


def test_layout_none_non_ascii_and_nul():
    case = make()
    assert both(case, input_layout=None) == (NULLPTR, NULLPTR)
    assert both(case, input_layout="TNDé") == (INVALID, INVALID)
    bad = Case(dict(case.args, input_layout="TND\x00x"), {})
    assert validator_verdict(bad) == "ValueError" and raw_verdict(bad)[0] == "ValueError"


def test_zero_dim_statistics_are_missing_even_on_the_empty_path():
    case = make()
    empty = dict(key=case.args["key"][:0], key_rope=case.args["key_rope"][:0],
                 value=case.args["value"][:0], actual_seq_kvlen=[0, 0])
    scalar = np.array(0.0, np.float32)
    assert both(case, softmax_max=scalar, **empty) == (NULLPTR, NULLPTR)
    assert both(case, softmax_sum=scalar) == (NULLPTR, NULLPTR)


def test_byte_swapped_float32_statistics_are_float32():
    case = make()
    swapped = {k: case.args[k].astype(">f4") for k in ("softmax_max", "softmax_sum")}
    assert both(case, **swapped) == (0, 0)
    ref = public_call(case, "numpy")[1]
    for backend in ("numpy", "npu"):
        kind, res = public_call(Case(dict(case.args, **swapped), {}), backend)
        assert kind == "ok", res
        for a, b in zip(res, ref):
            assert np.allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-2)


def test_negative_lengths_give_a_negative_max_sq():
    """maxSq = std::max_element of the lengths (may be negative): no [0, x] mask matches."""
    case = make(q_lens=[3], kv_lens=[3])
    for mask_shape in ((0, 3), (3, 3)):
        v, r = both(case, actual_seq_qlen=[-3], atten_mask=np.zeros(mask_shape, np.uint8))
        assert v == r == NULLPTR


@pytest.mark.parametrize("pre,nxt", [(INT64_MIN, INT64_MAX), (INT64_MIN, 0), (0, INT64_MIN),
                                     (INT64_MAX, INT64_MIN)])
@pytest.mark.parametrize("mode", [0, 4])
def test_extreme_tokens_are_compared_exactly(pre, nxt, mode):
    case = make(mode=mode, mask_kind="2d", pre=3, nxt=3)
    v, r = both(case, pre_tokens=pre, next_tokens=nxt)
    assert v == r


@pytest.mark.parametrize("ends", [[INT64_MAX, INT64_MIN], [INT64_MIN, INT64_MAX], [1 << 62, -(1 << 62)]])
def test_overflowing_lengths_are_compared_exactly(ends):
    for mode in (0, 4, 8):
        case = make(mode=mode, pre=3, nxt=3)
        for name in ("actual_seq_qlen", "actual_seq_kvlen"):
            v, r = both(case, **{name: ends})
            assert v == r, (mode, name, v, r)


@pytest.mark.parametrize("check", ["mask", "int32", "copies", "token_major", "dr8", "limits"])
def test_the_stub_makes_the_validators_own_checks(check):
    case = make(mode=4, pre=3, nxt=3, q_lens=[5, 7], kv_lens=[6, 7])
    if check == "mask":
        m = af.masks.compressed_causal_mask().copy()
        m[5, 9] = 0
        over = dict(atten_mask=m)
    elif check == "int32":
        case = make(mode=4, pre=3, nxt=3, q_lens=[7], kv_lens=[5])
        over = dict(pre_tokens=2147483647)
    elif check == "copies":
        s = case.args["softmax_max"].copy()
        s[0, 0, 3] += 1
        over = dict(softmax_max=s)
    elif check == "token_major":
        ends = case.meta["q_ends"]
        tm = af.softmax_layout.token_major_from_device_stats(case.args["softmax_max"], ends)
        ts = af.softmax_layout.token_major_from_device_stats(case.args["softmax_sum"], ends)
        over = dict(softmax_max=np.repeat(tm[..., None], 8, -1), softmax_sum=np.repeat(ts[..., None], 8, -1))
    elif check == "dr8":
        over = dict(query_rope=case.args["query_rope"][..., :4], key_rope=case.args["key_rope"][..., :4])
    else:
        over = dict(actual_seq_qlen=list(range(1, 2050)), actual_seq_kvlen=list(range(1, 2050)))
        over.update(query=np.zeros((2049, 2, 16), BF16), query_rope=np.zeros((2049, 2, 8), BF16),
                    key=np.zeros((2049, 1, 16), BF16), key_rope=np.zeros((2049, 1, 8), BF16),
                    value=np.zeros((2049, 1, 16), BF16), dy=np.zeros((2049, 2, 16), BF16),
                    attention_in=np.zeros((2049, 2, 16), BF16),
                    softmax_max=np.zeros((2049, 2, 8), np.float32),
                    softmax_sum=np.ones((2049, 2, 8), np.float32))
    assert both(case, **over) == (INVALID, INVALID)


def test_empty_call_with_a_missing_rope_input_succeeds():
    """Row 3 (dq, dk, dv all empty) succeeds before the rope inputs are looked at: the public
    call used to crash in the NumPy reference (AttributeError on None)."""
    case = make(q_lens=[0], kv_lens=[0])
    args = dict(case.args, query_rope=None)
    for backend in ("numpy", "npu"):
        kind, res = public_call(Case(args, {}), backend)
        assert kind == "ok", res
        assert res.dq.shape == case.args["query"].shape and res.dq_rope.size == 0
    assert raw_verdict(Case(args, {}))[0] == 0


def test_call_raw_refuses_what_ctypes_would_wrap():
    case = make()
    for name, value in (("pre_tokens", 1 << 64), ("actual_seq_qlen", [1 << 64]),
                        ("head_num", -(1 << 63) - 1)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match=name):
                acl.call_raw(**dict(case.args, **{name: value}))
