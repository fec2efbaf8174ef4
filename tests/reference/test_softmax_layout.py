"""The softmax-statistics memory layout (docs/semantics.md, "Softmax statistics").

softmax_max / softmax_sum are declared [T1, N1, 8] but hold, per batch b, a contiguous
[N1, Sq_b, 8] block at flat offset qStart[b]*N1*8: element (b, h, i, k) is at
qStart[b]*N1*8 + (h*Sq_b + i)*8 + k.  Token-major data is the same only for B = 1, N1 = 1.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

LENGTHS = [3, 0, 5, 2, 0, 0]


def test_hand_computed_offsets():
    """Two sequences [2, 3], N1 = 2: flat = qStart*16 + (h*Sq + i)*8, i.e. row = flat // 16,
    head = (flat % 16) // 8 of the [T, N, 8] array."""
    ends = [2, 5]
    tm = np.arange(10, dtype=np.float32).reshape(5, 2) + 100   # tm[t, h] = 100 + 2t + h
    dev = af.softmax_layout.device_stats_from_token_major(tm, ends)
    assert dev.shape == (5, 2, 8) and dev.dtype == np.float32
    # batch 0 (qStart 0, Sq 2): (h, i) -> flat (2h + i)*8
    assert np.all(dev[0, 0] == tm[0, 0])   # h0 i0 -> flat 0
    assert np.all(dev[0, 1] == tm[1, 0])   # h0 i1 -> flat 8
    assert np.all(dev[1, 0] == tm[0, 1])   # h1 i0 -> flat 16
    assert np.all(dev[1, 1] == tm[1, 1])   # h1 i1 -> flat 24
    # batch 1 (qStart 2, Sq 3): flat 32 + (3h + i)*8
    assert np.all(dev[2, 0] == tm[2, 0])   # h0 i0 -> 32
    assert np.all(dev[2, 1] == tm[3, 0])   # h0 i1 -> 40
    assert np.all(dev[3, 0] == tm[4, 0])   # h0 i2 -> 48
    assert np.all(dev[3, 1] == tm[2, 1])   # h1 i0 -> 56
    assert np.all(dev[4, 0] == tm[3, 1])   # h1 i1 -> 64
    assert np.all(dev[4, 1] == tm[4, 1])   # h1 i2 -> 72
    np.testing.assert_array_equal(af.softmax_layout.token_major_from_device_stats(dev, ends), tm)


@pytest.mark.parametrize("n1", [1, 3])
@pytest.mark.parametrize("extra", [0, 4])
def test_converters_match_the_formula_and_round_trip(n1, extra):
    rng = np.random.default_rng(n1 + extra)
    ends = O.cumulative(LENGTHS)
    t1 = ends[-1] + extra
    tm = rng.standard_normal((t1, n1)).astype(np.float32)
    tm[ends[-1]:] = 0                          # rows after the last end are not represented
    dev = af.softmax_layout.device_stats_from_token_major(tm, ends)
    np.testing.assert_array_equal(dev, O.to_device_layout(tm, ends))
    np.testing.assert_array_equal(af.softmax_layout.token_major_from_device_stats(dev, ends), tm)
    np.testing.assert_array_equal(O.from_device_layout(dev, ends), tm)
    # device -> token-major -> device is the identity on arrays in the device layout
    again = af.softmax_layout.device_stats_from_token_major(
        af.softmax_layout.token_major_from_device_stats(dev, ends), ends)
    np.testing.assert_array_equal(again, dev)
    if n1 > 1:
        assert not np.array_equal(dev[..., 0], tm)   # the layouts really differ


def test_single_batch_is_n_t_8():
    """For B = 1 the layout is [N, T, 8] memory (the docs' notation)."""
    tm = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    dev = af.softmax_layout.device_stats_from_token_major(tm, [7])
    np.testing.assert_array_equal(dev.reshape(3, 7, 8)[..., 0], tm.T)


def _bwd(case, precision="fp64", **over):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(**over),
            precision=precision, backend="numpy")


def _case(**kw):
    base = dict(seed=5, q_lens=[6, 0, 9, 4, 0, 0], kv_lens=[7, 3, 9, 5, 0, 0], n1=4, n2=2,
                d=32, dr=16, mode=0, extra_q=2, density=0.2)
    base.update(kw)
    return O.make_case(**base)


@pytest.mark.parametrize("fwd_precision", ["device", "fp32", "fp64"])
def test_forward_to_backward_round_trip(fwd_precision):
    """The backward reads the statistics where the forward writes them: feeding the package
    forward's output straight into the backward equals the oracle backward given the same
    statistics read with the oracle's own layout code."""
    case = _case()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd = af.flash_attention_forward(case.q, case.qr, case.k, case.kr, case.v,
                                         **case.api_common(), precision=fwd_precision)
    smax = fwd.softmax_max.astype(np.float32)
    ssum = fwd.softmax_sum.astype(np.float32)
    o = fwd.attention_out.astype(O.BF16)
    g = _bwd(case, softmax_max=smax, softmax_sum=ssum, attention_in=o)
    ref = O.backward(case.q, case.qr, case.k, case.kr, case.v, case.dy, o,
                     O.from_device_layout(smax, case.q_ends), O.from_device_layout(ssum, case.q_ends),
                     case.mask, case.q_ends, case.kv_ends, case.scale, case.mode)
    O.assert_grads_close(g, ref, rtol=1e-10, what=f"round trip {fwd_precision}",
                         touched_rows=case.touched())
    # and the statistics are those of the oracle forward (close to float32 rounding)
    np.testing.assert_allclose(O.from_device_layout(smax, case.q_ends), case.max64, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(O.from_device_layout(ssum, case.q_ends), case.sum64, rtol=1e-5)


@pytest.mark.parametrize("shape", [dict(q_lens=[15], kv_lens=[16], n1=2, n2=1),
                                   dict(q_lens=[6, 9], kv_lens=[7, 9], n1=2, n2=2),
                                   dict()])
def test_token_major_statistics_are_misread(shape):
    """Token-major [T, N] statistics broadcast naively to [T, N, 8] with N1 >= 2: the device
    reads them in its own layout and computes substantially wrong gradients (shown with the
    oracle). The package must either reject them -- an AclnnError naming softmax_max -- or
    compute exactly what the device computes. Today it rejects them (stricter, 161002); the
    converted statistics are then accepted and give the right gradients."""
    case = _case(**shape)
    naive_max = np.repeat(case.max_tm[:, :, None], 8, axis=2)
    naive_sum = np.repeat(case.sum_tm[:, :, None], 8, axis=2)
    assert not np.array_equal(naive_max, case.softmax_max)
    correct = _bwd(case)
    misread = O.backward(case.q, case.qr, case.k, case.kr, case.v, case.dy, case.attention_in,
                         O.from_device_layout(naive_max, case.q_ends),
                         O.from_device_layout(naive_sum, case.q_ends), case.mask, case.q_ends,
                         case.kv_ends, case.scale, case.mode)
    assert max(O.normwise_error(w, c) for w, c in zip(misread, correct)) > 0.1
    try:
        wrong = _bwd(case, softmax_max=naive_max, softmax_sum=naive_sum)
    except af.AclnnError as exc:
        assert exc.param == "softmax_max" and "softmax_max" in str(exc)
        assert exc.code in (161001, 161002)
        fixed = [af.softmax_layout.device_stats_from_token_major(x[..., 0], case.q_ends)
                 for x in (naive_max, naive_sum)]
        again = _bwd(case, softmax_max=fixed[0], softmax_sum=fixed[1])
        for a, b in zip(again, correct):
            np.testing.assert_array_equal(a, b)
    else:
        O.assert_grads_close(wrong, misread, rtol=1e-10, what="misread statistics")


@pytest.mark.parametrize("lens", [dict(q_lens=[15], kv_lens=[16]),
                                  dict(q_lens=[6, 0, 9], kv_lens=[7, 2, 9])])
def test_token_major_is_fine_for_one_head(lens):
    """N1 = 1: flat = qStart*8 + i*8 = (qStart + i)*8, token-major for any B (the layouts
    differ only when N1 >= 2)."""
    case = _case(n1=1, n2=1, **lens)
    naive_max = np.repeat(case.max_tm[:, :, None], 8, axis=2)
    naive_sum = np.repeat(case.sum_tm[:, :, None], 8, axis=2)
    np.testing.assert_array_equal(naive_max, case.softmax_max)
    a = _bwd(case, softmax_max=naive_max, softmax_sum=naive_sum)
    b = _bwd(case)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_rows_after_the_last_end_are_never_read():
    """docs/semantics.md, Sequence lengths: rows after the last cumulative end are outside every sequence; whatever their
    statistics hold, the gradients do not change."""
    case = _case()
    t_end = case.q_ends[-1]
    assert case.q.shape[0] > t_end
    smax, ssum = case.softmax_max.copy(), case.softmax_sum.copy()
    smax[t_end:] = 1e30
    ssum[t_end:] = -3.0
    a = _bwd(case, softmax_max=smax, softmax_sum=ssum)
    b = _bwd(case)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("param", ["softmax_max", "softmax_sum"])
def test_differing_copies_are_rejected(param):
    """docs/semantics.md, Backward: column j reads copy (j mod 8), so the 8 copies must be identical; the package
    rejects statistics whose copies differ (stricter than the device)."""
    case = _case()
    stats = getattr(case, param).copy()
    stats[1, 0, 5] += 1.0
    with pytest.raises(af.AclnnError) as exc:
        _bwd(case, **{param: stats})
    assert exc.value.param == param
    assert exc.value.stricter


def test_seqlens_helpers():
    """docs/semantics.md, Sequence lengths: per-sequence lengths [2, 2, 0, 2, 2] are passed as cumulative ends [2, 4, 4, 6, 8]."""
    ends = af.seqlens.lengths_to_cumulative([2, 2, 0, 2, 2])
    assert list(np.asarray(ends)) == [2, 4, 4, 6, 8]
    assert list(np.asarray(af.seqlens.cumulative_to_lengths([2, 4, 4, 6, 8]))) == [2, 2, 0, 2, 2]
    assert list(np.asarray(af.seqlens.lengths_to_cumulative(LENGTHS))) == O.cumulative(LENGTHS)
