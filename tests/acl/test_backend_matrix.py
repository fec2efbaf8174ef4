"""backend="npu" (through the stand-in libraries) against backend="numpy", via the public API."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag.rules import validate_backward
from acl_cases import BF16, assert_grads_close, make_problem

# (mode, q_lens, kv_lens, pre, next): every sparse mode, zero-length batches included
MODE_CASES = {
    0: dict(q_lens=(9, 0, 14), kv_lens=(12, 5, 14), density=0.2),
    1: dict(q_lens=(7, 11, 0), kv_lens=(13, 11, 0), density=0.3),
    2: dict(q_lens=(10, 0, 13), kv_lens=(10, 0, 13)),
    3: dict(q_lens=(8, 0, 12), kv_lens=(10, 0, 12)),
    4: dict(q_lens=(12, 0, 9), kv_lens=(12, 0, 9), pre=4, nxt=2),
    7: dict(q_lens=(12, 6), kv_lens=(12, 20), pre=6, nxt=0),
    8: dict(q_lens=(6, 0, 12), kv_lens=(14, 0, 12), pre=6, nxt=0),
}


@pytest.mark.parametrize("g", [1, 2, 4])
@pytest.mark.parametrize("mode", sorted(MODE_CASES))
def test_npu_matches_numpy(mode, g):
    case = dict(MODE_CASES[mode])
    n2 = 2 if g == 1 else 1
    d, dr = (32, 16) if g != 2 else (64, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = make_problem(seed=100 * mode + g, n2=n2, g=g, d=d, dr=dr, mode=mode, **case)
        ref = p.grads("numpy")
        got = p.grads("npu")
    assert af.last_backend() == "npu"
    assert_grads_close(got, ref)


def test_auto_backend_picks_npu_when_available():
    p = make_problem(seed=1)
    assert acl.availability().ok
    got = p.grads("auto")
    assert af.last_backend() == "npu"
    assert_grads_close(got, p.grads("numpy"))


def test_zero_length_batches_give_zero_rows():
    p = make_problem(seed=5, q_lens=(6, 4, 0, 5), kv_lens=(6, 0, 3, 5))
    got = p.grads("npu")
    # batch 1 has Skv = 0: its query rows get no gradient
    assert np.all(got.dq[6:10].astype(np.float32) == 0)
    assert np.all(got.dq_rope[6:10].astype(np.float32) == 0)
    # batch 2 has Sq = 0: its key rows get no gradient
    assert np.all(got.dk[6:9].astype(np.float32) == 0)
    assert np.all(got.dv[6:9].astype(np.float32) == 0)
    assert_grads_close(got, p.grads("numpy"))


def _upload_counts(fn):
    acl.reset_stats()
    result = fn()
    s = acl.stats()
    return result, s["h2d"], s["malloc"]


def test_q_and_q_rope_slices_of_one_array_cost_one_upload():
    p = make_problem(seed=7, q_lens=(10, 6), n2=2, g=2, d=32, dr=16)
    t, n, d = p.q.shape
    qkv = np.concatenate([p.q, p.qr], axis=-1)           # [T, N, 48], contiguous
    q, qr = qkv[..., :d], qkv[..., d:]
    assert not q.flags.c_contiguous and not qr.flags.c_contiguous
    kw = p.kwargs()

    ref, up_ref, mal_ref = _upload_counts(lambda: af.flash_attention_unpadding_score_grad_v3(
        p.q, p.qr, p.k, p.kr, p.v, p.dy, backend="npu", **kw))
    got, up, mal = _upload_counts(lambda: af.flash_attention_unpadding_score_grad_v3(
        q, qr, p.k, p.kr, p.v, p.dy, backend="npu", **kw))
    assert up == up_ref - 1                             # one upload for both
    # the first call's arena and workspace (aclnn_fag/acl/call_pool.py; one allocation when
    # the workspace size is known from an earlier call, aclnn_fag/acl/op.py), reused by the
    # second
    assert mal_ref in (1, 2) and mal == 0
    for a, b in zip(got, ref):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
    assert got.dq.flags.c_contiguous and got.dq.shape == (t, n, d)


def test_key_and_key_rope_slices_share_too_and_results_match_numpy():
    p = make_problem(seed=8, q_lens=(9, 0, 7), kv_lens=(11, 3, 7), n2=1, g=4)
    d = p.k.shape[-1]
    kk = np.concatenate([p.k, p.kr], axis=-1)
    k, kr = kk[..., :d], kk[..., d:]
    qq = np.concatenate([p.q, p.qr], axis=-1)
    q, qr = qq[..., :d], qq[..., d:]
    acl.reset_stats()
    got = af.flash_attention_unpadding_score_grad_v3(q, qr, k, kr, p.v, p.dy, backend="npu",
                                                     **p.kwargs())
    assert acl.stats()["h2d"] == 10 - 2                 # 10 inputs, two pairs share
    assert_grads_close(got, p.grads("numpy"))


def test_negative_strides_are_copied_first():
    p = make_problem(seed=9, q_lens=(8, 8))
    q_rev = np.ascontiguousarray(p.q[::-1])
    q = q_rev[::-1]                                      # negative stride, same values as p.q
    assert q.strides[0] < 0
    got = af.flash_attention_unpadding_score_grad_v3(q, p.qr, p.k, p.kr, p.v, p.dy,
                                                     backend="npu", **p.kwargs())
    ref = p.grads("npu")
    for a, b in zip(got, ref):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_broadcast_statistics_are_passed_as_zero_stride_views():
    p = make_problem(seed=10, q_lens=(6, 10))
    t, n, _ = p.fwd.softmax_max.shape
    sm = np.broadcast_to(p.fwd.softmax_max[..., :1], (t, n, 8))
    ss = np.broadcast_to(p.fwd.softmax_sum[..., :1], (t, n, 8))
    assert sm.strides[-1] == 0
    acl.reset_stats()
    got = p.grads("npu", softmax_max=sm, softmax_sum=ss)
    assert acl.stats()["h2d_bytes"] < sum(a.nbytes for a in (p.q, p.qr, p.k, p.kr, p.v, p.dy,
                                                             p.fwd.attention_out, p.mask)) \
        + 2 * p.fwd.softmax_max.nbytes                  # the statistics were not expanded
    assert_grads_close(got, p.grads("numpy"))


def test_timings_are_filled():
    p = make_problem(seed=11)
    call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs())
    timings = {}
    got = acl.run_backward(call, timings=timings)
    for key in ("marshal", "phase1", "phase2", "copy_in", "copy_out"):
        assert isinstance(timings[key], float) and timings[key] > 0, key
    assert got.dq.dtype == BF16
    got2 = acl.run_backward(call, device_id=0)
    for a, b in zip(got, got2):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
