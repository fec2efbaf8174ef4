"""SoftmaxStatsMismatchWarning: statistics that make a sampled row's probabilities sum to more
than 1 (e.g. from a forward with another scale_value) are reported; legitimate statistics --
the call's own, or over more keys (context parallelism) -- are not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

W = af.SoftmaxStatsMismatchWarning


def _run(case, **over):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(**over),
            backend="numpy", precision="fp64")
    return grads, [w for w in caught if issubclass(w.category, W)]


CASES = {
    "one-head": dict(seed=1, q_lens=[16, 9], kv_lens=[16, 12], n1=1, n2=1, d=16, dr=8, mode=0),
    "gqa": dict(seed=2, q_lens=[12, 0, 7], kv_lens=[12, 5, 9], n1=4, n2=2, d=16, dr=8, mode=3),
    "masked": dict(seed=3, q_lens=[10, 6], kv_lens=[11, 6], n1=2, n2=1, d=16, dr=8, mode=1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_own_statistics_do_not_warn(name):
    _, caught = _run(O.make_case(**CASES[name]))
    assert not caught


@pytest.mark.parametrize("name", sorted(CASES))
def test_statistics_of_another_scale_warn(name):
    case = O.make_case(**CASES[name], scale=0.0722)      # statistics made with 0.0722
    grads, caught = _run(case, scale_value=1.0)
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "scale_value=1" in msg and "sum to" in msg and "docs/validation.md" in msg


def test_statistics_over_more_keys_do_not_warn():
    """Context parallelism: this call sees part of the keys, the statistics cover all."""
    case = O.make_case(**CASES["gqa"])
    bigger = case.softmax_sum * np.float32(3.0)          # log-sum-exp larger by log 3
    _, caught = _run(case, softmax_sum=bigger)
    assert not caught


def test_rounding_sized_differences_do_not_warn():
    case = O.make_case(**CASES["gqa"])
    _, caught = _run(case, softmax_sum=case.softmax_sum * np.float32(1 - 2e-5))
    assert not caught


def test_statistics_a_little_too_small_warn():
    case = O.make_case(**CASES["gqa"])
    _, caught = _run(case, softmax_sum=case.softmax_sum * np.float32(0.5))
    assert len(caught) == 1


@pytest.mark.parametrize("value", [0.0, -1.0, np.nan])
def test_impossible_sums_warn(value):
    case = O.make_case(**CASES["one-head"])
    _, caught = _run(case, softmax_sum=np.full_like(case.softmax_sum, value))
    assert len(caught) == 1 and "cannot be a softmax" in str(caught[0].message)


def test_the_warning_can_be_made_an_error():
    case = O.make_case(**CASES["one-head"], scale=0.0722)
    with warnings.catch_warnings():
        warnings.simplefilter("error", W)
        with pytest.raises(W):
            af.flash_attention_unpadding_score_grad_v3(
                case.q, case.qr, case.k, case.kr, case.v, case.dy,
                **case.bwd_kwargs(scale_value=1.0), backend="numpy")


def test_warning_points_at_the_caller():
    case = O.make_case(**CASES["one-head"], scale=0.0722)
    _, caught = _run(case, scale_value=1.0)
    assert caught[0].filename == __file__
