"""The seqlens and softmax-layout helpers check their input as the public call does, with the
same messages: per-sequence lengths passed as ends, negative or float entries, decreasing ends,
ends past T. And the hint for [T, N, 1] statistics works when followed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

DS = af.softmax_layout.device_stats_from_token_major
TM = af.softmax_layout.token_major_from_device_stats


def public_error(**over) -> BaseException:
    """The error of the public call for the given arguments (a valid case otherwise)."""
    case = O.make_case(0, [300, 0, 212], [300, 0, 212], n1=2, n2=1, d=16, dr=8, mode=2)
    kw = case.bwd_kwargs(**over)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((af.AclnnError, TypeError, ValueError)) as info:
            af.flash_attention_unpadding_score_grad_v3(case.q, case.qr, case.k, case.kr, case.v,
                                                       case.dy, **kw, backend="numpy")
    return info.value


def _core(text: str) -> str:
    """The message without the parameter prefix and the trailing citation."""
    return text.split(": ", 1)[-1].split(" (docs/validation.md")[0]


@pytest.mark.parametrize("ends", [[300, 0, 212], [-1, 512], [300, 200, 512]])
def test_converter_rejects_bad_ends_like_the_public_call(ends):
    tm = np.ones((512, 2), np.float32)
    with pytest.raises(ValueError) as info:
        DS(tm, ends)
    kv_ends = [300, 300, 512] if len(ends) == 3 else [300, 512]
    err = public_error(actual_seq_qlen=ends, actual_seq_kvlen=kv_ends)
    assert err.code == 161002 and err.param == "actual_seq_qlen"
    assert _core(err.rule) in str(info.value)
    assert "actual_seq_qlen" in str(info.value) and "docs/validation.md, S4" in str(info.value)
    with pytest.raises(ValueError) as info2:
        TM(np.ones((512, 2, 8), np.float32), ends)
    assert _core(err.rule) in str(info2.value)


def test_per_sequence_lengths_are_named_as_such():
    with pytest.raises(ValueError, match="look like per-sequence lengths"):
        DS(np.ones((512, 2), np.float32), [300, 0, 212])
    with pytest.raises(ValueError, match="look like per-sequence lengths"):
        af.seqlens.cumulative_to_lengths([300, 0, 212])


def test_ends_past_t_are_rejected():
    with pytest.raises(ValueError, match="exceeds T"):
        DS(np.ones((10, 2), np.float32), [4, 11])


@pytest.mark.parametrize("fn,arg", [(af.seqlens.lengths_to_cumulative, "lengths"),
                                    (af.seqlens.cumulative_to_lengths, "ends")])
@pytest.mark.parametrize("bad", [[1.7, 2.2], [1, 2.0], ["3"], [True, 2], np.array([1.5, 2.0]),
                                 np.array([[1, 2]]), None, 5])
def test_non_integer_input_is_a_type_error(fn, arg, bad):
    with pytest.raises(TypeError) as info:
        fn(bad)
    assert f"parameter '{arg}'" in str(info.value)


def test_float_lengths_message_matches_the_public_call():
    with pytest.raises(TypeError) as helper:
        af.seqlens.lengths_to_cumulative([1.7, 2.2])
    public = public_error(actual_seq_qlen=[1.7, 2.2])
    assert isinstance(public, TypeError)
    assert str(helper.value).replace("'lengths'", "X") == str(public).replace("'actual_seq_qlen'", "X")


def test_negative_lengths_and_decreasing_ends():
    with pytest.raises(ValueError, match=r"negative entry \(-1 at index 1\)"):
        af.seqlens.lengths_to_cumulative([3, -1])
    with pytest.raises(ValueError, match=r"negative entry"):
        af.seqlens.cumulative_to_lengths([-2, 4])
    with pytest.raises(ValueError, match=r"non-decreasing"):
        af.seqlens.cumulative_to_lengths([4, 9, 8])


def test_helpers_still_convert():
    assert af.seqlens.lengths_to_cumulative([300, 0, 212]).tolist() == [300, 300, 512]
    assert af.seqlens.lengths_to_cumulative(np.array([2, 2], np.int32)).tolist() == [2, 4]
    assert af.seqlens.lengths_to_cumulative([]).tolist() == []
    assert af.seqlens.cumulative_to_lengths([300, 300, 512]).tolist() == [300, 0, 212]
    assert af.seqlens.cumulative_to_lengths([0, 300, 512]).tolist() == [0, 300, 212]
    assert af.seqlens.max_lengths([300, 300, 512]) == (300, 300)
    assert af.seqlens.max_lengths([4, 10], [6, 7]) == (6, 6)
    tm = np.arange(24, dtype=np.float32).reshape(8, 3)
    dev = DS(tm, [5, 8])
    np.testing.assert_array_equal(TM(dev, [5, 8]), tm)
    np.testing.assert_array_equal(DS(tm[:, :, None], [5, 8]), dev)     # [T, N, 1] accepted


def test_t_n_1_hint_works_when_followed():
    """The [T, N, 1] hint names a call that accepts such statistics; followed, the backward runs."""
    case = O.make_case(2, [6, 5], [7, 5], n1=3, n2=1, d=16, dr=8, mode=0)
    lse = (case.max_tm + np.log(case.sum_tm)).astype(np.float32)[:, :, None]     # [T, N, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(af.AclnnError) as info:
            af.flash_attention_unpadding_score_grad_v3(
                case.q, case.qr, case.k, case.kr, case.v, case.dy,
                **case.bwd_kwargs(softmax_max=lse, softmax_sum=np.ones_like(lse)), backend="numpy")
    msg = str(info.value)
    assert "device_stats_from_token_major(stats, actual_seq_qlen)" in msg
    smax = DS(lse, case.q_ends)                          # what the hint says
    ssum = DS(np.ones_like(lse), case.q_ends)
    g = af.flash_attention_unpadding_score_grad_v3(
        case.q, case.qr, case.k, case.kr, case.v, case.dy,
        **case.bwd_kwargs(softmax_max=smax, softmax_sum=ssum), backend="numpy", precision="fp64")
    ref = af.flash_attention_unpadding_score_grad_v3(
        case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(), backend="numpy",
        precision="fp64")
    for a, b in zip(g, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
