"""The forward aclnnFlashAttentionVarLenScoreV3 on the NPU backend (the stand-in libraries):
results against the NumPy forward, the round trip into the backward, the call's shape
(empty softmaxOut, non-NULL start indices), validation (the Python validator and the stub op
return the same status for every case, and the codes are the device's), leaks and failure
injection."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag.acl import executor as acl_executor
from aclnn_fag.acl import op as acl_op
from aclnn_fag.rules import validate_forward
from acl_cases import BF16, INT32_MAX, assert_grads_close, make_problem

NULLPTR, INVALID = 161001, 161002
FWD1 = "aclnnFlashAttentionVarLenScoreV3GetWorkspaceSize"
FWD2 = "aclnnFlashAttentionVarLenScoreV3"

# (name, make_problem arguments): every sparse mode, GQA, empty and fully masked batches
SHAPES = {
    "mode0-gqa-random-mask": dict(q_lens=(9, 0, 14), kv_lens=(7, 3, 14), g=2, mode=0, density=0.3),
    "mode1": dict(q_lens=(6, 11), kv_lens=(8, 5), mode=1, density=0.5),
    "mode2": dict(q_lens=(9, 0, 14), g=2, mode=2),
    "mode3-sq-gt-skv": dict(q_lens=(12, 5), kv_lens=(7, 5), mode=3),   # invalid lines
    "mode4-band": dict(q_lens=(9, 14), mode=4, pre=5, nxt=3),
    "mode5": dict(q_lens=(9, 14), kv_lens=(10, 4), mode=0, pre=4, nxt=2),    # run as mode 5
    "mode7": dict(q_lens=(5, 9, 0), kv_lens=(6, 9, 0), mode=7, pre=3, nxt=1),
    "mode8": dict(q_lens=(0, 6, 9), kv_lens=(2, 8, 9), mode=8, pre=2, nxt=3),
    "dv-lt-d": dict(q_lens=(9, 7), d=64, dv=32, dr=16, mode=2),
}


def _fwd_kwargs(p, **over):
    kw = dict(atten_mask=p.mask, actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends,
              scale_value=p.scale, pre_tokens=p.pre, next_tokens=p.nxt, sparse_mode=p.mode)
    kw.update(over)
    return kw


def _forward(p, backend, **over):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", af.FullyMaskedRowWarning)
        return af.flash_attention_forward(p.q, p.qr, p.k, p.kr, p.v, backend=backend,
                                          **_fwd_kwargs(p, **over))


def _assert_forward_close(got, want):
    assert got.attention_out.dtype == BF16 and got.attention_out.shape == want.attention_out.shape
    for name in ("softmax_max", "softmax_sum"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == np.float32 and g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6, err_msg=name)
    a = got.attention_out.astype(np.float64)
    b = want.attention_out.astype(np.float64)
    # the two kernels compute the scores in different fp32 orders, so a P near a bf16 rounding
    # boundary can round the other way: a few bf16 steps of the row's scale, no more
    row_scale = np.maximum(np.abs(b).max(axis=-1, keepdims=True), 2.0 ** -6)
    assert np.all(np.abs(a - b) <= 2.0 ** -6 * row_scale), float(np.abs(a - b).max())


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_forward_on_the_stub_matches_numpy(name, no_leaks):
    p = make_problem(seed=sorted(SHAPES).index(name) + 11, **SHAPES[name])
    if name == "mode5":
        p.mode = 5          # the [maxSq, maxSkv] mask and tokens of mode 0, read as mode 5
    want = _forward(p, "numpy")
    got = _forward(p, "npu")
    assert af.last_backend() == "npu"
    _assert_forward_close(got, want)
    assert np.abs(got.attention_out.astype(np.float32)).max() > 0.05   # not vacuous


def test_special_rows_and_layout(no_leaks):
    """Hand-made expectations: invalid lines, Skv = 0 batch, rows after the last end, and the
    per-batch [N1, Sq_b, 8] memory layout of the statistics."""
    p = make_problem(seed=3, q_lens=(4, 3), kv_lens=(2, 0), g=2, mode=3)
    t1 = p.q.shape[0] + 2
    pad = lambda a: np.concatenate([a, np.zeros((2,) + a.shape[1:], a.dtype)])   # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = af.flash_attention_forward(pad(p.q), pad(p.qr), p.k, p.kr, p.v, backend="npu",
                                         **_fwd_kwargs(p))
    flat_max = got.softmax_max.reshape(-1)
    flat_sum = got.softmax_sum.reshape(-1)
    n1 = p.q.shape[1]
    # batch 0: Sq=4 > Skv=2 under mode 3 -> rows 0 and 1 keep no key (invalid lines)
    for h in range(n1):
        for i in range(4):
            at = (0 * n1 + h * 4 + i) * 8
            if i < 2:
                assert (flat_max[at:at + 8] == -np.finfo(np.float32).max).all()
                assert (flat_sum[at:at + 8] == np.finfo(np.float32).max).all()
                assert not got.attention_out[i, h].astype(np.float32).any()
            else:
                assert np.isfinite(flat_max[at]) and flat_sum[at] >= 1.0
                assert (flat_max[at:at + 8] == flat_max[at]).all()
    # batch 1: Skv = 0 -> max = sum = 0, output 0; rows after the last end: 0
    assert not flat_max[4 * n1 * 8:].any() and not flat_sum[4 * n1 * 8:].any()
    assert not got.attention_out[4:].astype(np.float32).any()
    assert got.attention_out.shape == (t1, n1, p.v.shape[2])


@pytest.mark.parametrize("det", [False, True])
def test_round_trip_on_the_device(det, no_leaks):
    """Forward on the NPU, its statistics fed to the backward on the NPU, against the NumPy pair."""
    p = make_problem(seed=5, q_lens=(9, 0, 14), g=2, mode=3)
    fwd = _forward(p, "npu", deterministic=det)
    grads = af.flash_attention_unpadding_score_grad_v3(
        p.q, p.qr, p.k, p.kr, p.v, p.dy, backend="npu", deterministic=det,
        **p.kwargs(softmax_max=fwd.softmax_max, softmax_sum=fwd.softmax_sum,
                   attention_in=fwd.attention_out))
    ref_fwd = _forward(p, "numpy")
    ref = af.flash_attention_unpadding_score_grad_v3(
        p.q, p.qr, p.k, p.kr, p.v, p.dy, backend="numpy", deterministic=det,
        **p.kwargs(softmax_max=ref_fwd.softmax_max, softmax_sum=ref_fwd.softmax_sum,
                   attention_in=ref_fwd.attention_out))
    assert_grads_close(grads, ref)


def test_call_shape_empty_softmax_out_and_start_indices(monkeypatch, no_leaks):
    seen = []
    real = acl_executor.run

    def spy(call, *args, **kw):
        # every call reaches the executor (acl/executor.py) with its device arrays
        shapes = {n: None if o is None else (o.shape, o.dtype)
                  for n, o in zip(call.op.outputs, call.outputs)}
        seen.append((dict(zip(call.op.int_arrays, call.int_values)), shapes, call.op))
        return real(call, *args, **kw)

    monkeypatch.setattr(acl_executor, "run", spy)
    p = make_problem(seed=9, q_lens=(6, 5), d=32, dr=16, dv=16, g=2, mode=2)
    _forward(p, "npu")
    _forward(p, "npu", q_start_idx=[4], kv_start_idx=[2])
    (ia, outs, op), (ia2, _, _) = seen
    assert op is acl_op.FORWARD and op.phase1 == FWD1 and op.phase2 == FWD2
    assert outs["softmax_out"][0] == (0,)                       # an empty tensor, never NULL
    t1, n1 = p.q.shape[:2]
    assert outs["softmax_max"] == ((t1, n1, 8), np.float32)
    assert outs["attention_out"] == ((t1, n1, 16), BF16)
    assert (tuple(ia["q_start_idx"]), tuple(ia["kv_start_idx"])) == ((0,), (0,))
    assert (tuple(ia2["q_start_idx"]), tuple(ia2["kv_start_idx"])) == ((4,), (2,))


def test_auto_chooses_like_the_backward(monkeypatch, no_leaks):
    p = make_problem(seed=2, q_lens=(5, 4), mode=2)
    _forward(p, "auto")
    assert af.last_backend() == "npu"
    monkeypatch.setenv("ACLNN_FAG_BACKEND", "numpy")
    _forward(p, "auto")
    assert af.last_backend() == "numpy"
    monkeypatch.delenv("ACLNN_FAG_BACKEND")
    with pytest.raises(ValueError, match="precision"):
        _forward(p, "npu", precision="fp64")
    # a CANN without the forward op: "auto" runs NumPy (and says so), "npu" raises
    monkeypatch.setattr(acl, "forward_available", lambda: False)
    monkeypatch.setattr(acl_op, "forward_available", lambda: False)
    import aclnn_fag.api as api
    monkeypatch.setattr(api, "_warned", set())
    with pytest.warns(af.NpuFallbackWarning, match="VarLenScoreV3"):
        _forward(p, "auto")
    assert af.last_backend() == "numpy"
    with pytest.raises(af.LibraryNotFoundError, match="VarLenScoreV3"):
        _forward(p, "npu")


def test_empty_output_path(no_leaks):
    p = make_problem(seed=4, q_lens=(5, 4), mode=2)
    q0, qr0 = p.q[:0], p.qr[:0]
    for backend in ("numpy", "npu"):
        got = af.flash_attention_forward(q0, qr0, p.k, p.kr, p.v, backend=backend,
                                         **_fwd_kwargs(p))
        assert got.attention_out.shape == (0, p.q.shape[1], p.v.shape[2])
        assert got.softmax_max.shape == got.softmax_sum.shape == (0, p.q.shape[1], 8)


# ----------------------------------------------------------------------------- validation
def _base():
    return make_problem(seed=21, q_lens=(9, 0, 14), d=32, dr=16, g=2, mode=3)


def _args(p, **over):
    a = dict(query=p.q, query_rope=p.qr, key=p.k, key_rope=p.kr, value=p.v, pse_shift=None,
             drop_mask=None, padding_mask=None, atten_mask=p.mask, prefix=None,
             actual_seq_qlen=list(p.q_ends), actual_seq_kvlen=list(p.kv_ends), q_start_idx=[0],
             kv_start_idx=[0], scale_value=p.scale, keep_prob=1.0, pre_tokens=p.pre,
             next_tokens=p.nxt, head_num=p.q.shape[1], input_layout="TND", inner_precise=0,
             sparse_mode=p.mode, pse_type=1)
    a.update(over)
    return a


def _rand(shape, dtype=BF16, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(dtype)


def _validation_cases():
    p = _base()
    t1, n1, d = p.q.shape
    t2, n2, _ = p.k.shape
    c = {}
    c["F1-query"] = (dict(query=None), NULLPTR, "query")
    c["F1-layout"] = (dict(input_layout=None), NULLPTR, "input_layout")
    c["F2-empty"] = (dict(query=p.q[:0], query_rope=p.qr[:0]), 0, None)
    c["F3-layout"] = (dict(input_layout="BSND"), INVALID, "input_layout")
    c["F4-value-dtype"] = (dict(value=p.v.astype(np.float16)), INVALID, "value")
    c["F4-pse-type-2"] = (dict(pse_type=2), INVALID, "pse_shift")
    c["F5-head-num"] = (dict(head_num=0), INVALID, "head_num")
    c["F5-query-rank"] = (dict(query=p.q[..., None]), INVALID, "query")
    c["F5-key-d"] = (dict(key=_rand((t2, n2, 48))), INVALID, "key")
    c["F5-dv-gt-d"] = (dict(value=_rand((t2, n2, 48))), INVALID, "value")
    c["F5-d-gt-768"] = (dict(query=_rand((t1, n1, 784)), key=_rand((t2, n2, 784))), INVALID, "query")
    c["F6-one-rope"] = (dict(key_rope=None), NULLPTR, "key_rope")
    c["F6-no-rope"] = (dict(key_rope=None, query_rope=None), NULLPTR, "query_rope")
    c["F6-dr-gt-d"] = (dict(query_rope=_rand((t1, n1, 48))), NULLPTR, "query_rope")
    c["F6-rope-dtype"] = (dict(query_rope=p.qr.astype(np.float32)), NULLPTR, "query_rope")
    c["F6-mode6"] = (dict(sparse_mode=6), NULLPTR, "sparse_mode")
    c["F6-mask-none"] = (dict(atten_mask=None), NULLPTR, "atten_mask")
    c["F6-drop-mask"] = (dict(drop_mask=np.ones((4,), np.uint8)), NULLPTR, "drop_mask")
    c["F6-keep-prob"] = (dict(keep_prob=0.5), NULLPTR, "keep_prob")
    c["F6-pad-d104"] = (dict(query=_rand((t1, n1, 104)), key=_rand((t2, n2, 104)),
                             value=_rand((t2, n2, 104))), NULLPTR, "query")
    c["F7-keep-prob"] = (dict(keep_prob=1.5), NULLPTR, "keep_prob")
    c["F7-pse-type-range"] = (dict(pse_type=7), NULLPTR, "pse_type")
    c["F8-key-rank"] = (dict(key=p.k[..., None]), NULLPTR, "key")
    c["F9-kv-none"] = (dict(actual_seq_kvlen=None), NULLPTR, "actual_seq_kvlen")
    c["F9-lengths"] = (dict(actual_seq_kvlen=[9, 23]), NULLPTR, "actual_seq_kvlen")
    c["F10-total"] = (dict(actual_seq_qlen=[9, 9, 30]), NULLPTR, "actual_seq_qlen")
    c["F11-head-num"] = (dict(head_num=1), NULLPTR, "head_num")
    c["F11-n2-gt-n1"] = (dict(key=_rand((t2, 4, d)), key_rope=_rand((t2, 4, 16)),
                              value=_rand((t2, 4, d))), NULLPTR, "key")
    c["F11-n1-mod-n2"] = (dict(query=_rand((t1, 3, d)), query_rope=_rand((t1, 3, 16)), head_num=3,
                               key=_rand((t2, 2, d)), key_rope=_rand((t2, 2, 16)),
                               value=_rand((t2, 2, d))), NULLPTR, "key")
    c["F12-pse-type-0"] = (dict(pse_type=0), NULLPTR, "pse_type")
    c["F12-mask-rank"] = (dict(atten_mask=p.mask[None]), NULLPTR, "atten_mask")
    c["F12-mask-dtype"] = (dict(atten_mask=p.mask.astype(np.float32)), NULLPTR, "atten_mask")
    c["F12-mode0-mask-dims"] = (dict(sparse_mode=0), NULLPTR, "atten_mask")
    c["F13-mode9"] = (dict(sparse_mode=9, atten_mask=np.zeros((14, 14), np.uint8)), NULLPTR,
                      "sparse_mode")
    c["F14-tokens"] = (dict(sparse_mode=4, pre_tokens=-30, next_tokens=1), NULLPTR, "pre_tokens")
    c["SF1-value"] = (dict(value=_rand((t2 - 1, n2, d))), NULLPTR, "value")
    c["S3-batch"] = (dict(actual_seq_qlen=[0] * 2048 + list(p.q_ends),
                          actual_seq_kvlen=[0] * 2048 + list(p.kv_ends)), INVALID, "actual_seq_qlen")
    c["S4-negative"] = (dict(actual_seq_qlen=[-1, 9, 23]), INVALID, "actual_seq_qlen")
    c["S5-dr"] = (dict(query_rope=_rand((t1, n1, 12)), key_rope=_rand((t2, n2, 12))), INVALID,
                  "query_rope")
    c["S5-key-rope"] = (dict(key_rope=_rand((t2, n2, 8))), INVALID, "key_rope")
    c["S6-mask"] = (dict(atten_mask=np.zeros((2048, 2048), np.uint8)), INVALID, "atten_mask")
    c["S7-int32"] = (dict(sparse_mode=4, pre_tokens=INT32_MAX, next_tokens=0,
                          actual_seq_kvlen=[5, 5, 19]), INVALID, "pre_tokens")
    c["ok"] = ({}, 0, None)
    return p, c


_P, CASES = _validation_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_validator_and_stub_agree_with_the_device_codes(name, no_leaks):
    over, code, param = CASES[name]
    args = _args(_P, **over)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            validate_forward(**args)
            py = (0, None)
        except af.AclnnError as exc:
            py = (exc.code, exc.param)
        try:
            acl.call_raw_forward(**args)
            native = 0
        except af.AclnnError as exc:
            native = exc.code
    assert py == (code, param), name
    assert native == code, (name, native)


def test_validation_rule_order():
    """Two faults at once: the earlier rule wins (F3 before F5, F6 before F12, F10 before S4)."""
    p = _base()
    cases = [(dict(input_layout="BSND", head_num=0), INVALID, "input_layout"),
             (dict(keep_prob=0.5, sparse_mode=9), NULLPTR, "keep_prob"),
             (dict(head_num=-1, key_rope=None), INVALID, "head_num"),
             (dict(actual_seq_qlen=[9, 9, 30], sparse_mode=9), NULLPTR, "actual_seq_qlen")]
    for over, code, param in cases:
        with pytest.raises(af.AclnnError) as info:
            validate_forward(**_args(p, **over))
        assert (info.value.code, info.value.param) == (code, param), over


# ----------------------------------------------------------------------------- leaks, faults
@pytest.mark.parametrize("fn,code", [(FWD1, 161002), (FWD2, 561103)])
def test_failure_injection_leaves_nothing_live(fn, code, no_leaks):
    p = make_problem(seed=8, q_lens=(6, 5), mode=2)
    no_leaks.inject(fn, 0, code)
    with pytest.raises(af.AclnnError) as info:
        _forward(p, "npu")
    assert info.value.code == code
    got = _forward(p, "npu")               # the next call works
    _assert_forward_close(got, _forward(p, "numpy"))


@pytest.mark.parametrize("fn", [FWD2, "aclnnFlashAttentionUnpaddingScoreGradV3"])
def test_running_a_consumed_executor_again_is_counted(fn, monkeypatch, no_leaks):
    """Both stub ops share phase 2's checks: a binding that runs a one-shot executor a
    second time (a double release of it on the device) is refused with 161001 and counted
    by the stub's bad-release counter, for the forward as for the backward. (The executor
    cache is off: a cached executor is repeatable, and running it again is allowed.)"""
    monkeypatch.setenv("ACLNN_FAG_EXECUTOR_CACHE", "0")
    b = acl.runtime.api()
    real = getattr(b, fn)
    second = []

    def twice(workspace, size, executor, stream):
        rc = real(workspace, size, executor, stream)
        second.append(real(workspace, size, executor, stream))
        return rc

    monkeypatch.setattr(b, fn, twice)
    p = make_problem(seed=8, q_lens=(6, 5), mode=2)
    before = no_leaks.bad_releases()
    if fn == FWD2:
        _forward(p, "npu")
    else:
        p.grads("npu")
    assert second == [NULLPTR]
    assert no_leaks.bad_releases() == before + 1


def test_raw_forward_errors_leave_nothing_live(no_leaks):
    p = _base()
    for over in (dict(sparse_mode=9), dict(atten_mask=None), dict(input_layout=None)):
        with pytest.raises(af.AclnnError):
            acl.call_raw_forward(**_args(p, **over))


def test_rounding_point_of_p_by_hand(no_leaks):
    """One query row, two keys with scores 0 and s1 = bf16(-0.003): P1 = exp(s1) = 0.997 is
    rounded to bf16 (0.99609375) before P.V, the sum is not. With v0 = -1, v1 = +1 the output
    is bf16((-1 + 0.99609375) / (1 + exp(s1))) = -0.001956..., not -0.0015 (unrounded P)."""
    d, dr = 16, 8
    q = np.zeros((1, 1, d), BF16)
    q[0, 0, 0] = 1
    k = np.zeros((2, 1, d), BF16)
    k[1, 0, 0] = -0.003
    qr, kr = np.zeros((1, 1, dr), BF16), np.zeros((2, 1, dr), BF16)
    v = np.zeros((2, 1, d), BF16)
    v[0, 0, :] = -1
    v[1, 0, :] = 1
    s1 = np.float32(k[1, 0, 0].astype(np.float32))
    e1 = np.exp(s1, dtype=np.float32)
    p1 = np.float32(e1.astype(BF16).astype(np.float32))
    assert p1 == np.float32(0.99609375)
    want = ((np.float32(-1) + p1) / (np.float32(1) + e1)).astype(BF16)
    for backend in ("numpy", "npu"):
        got = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=np.zeros((1, 2), np.uint8),
                                         actual_seq_qlen=[1], actual_seq_kvlen=[2],
                                         scale_value=1.0, sparse_mode=1, backend=backend)
        assert (got.attention_out[0, 0] == want).all(), (backend, got.attention_out[0, 0, 0], want)
        assert got.softmax_max[0, 0, 0] == 0 and got.softmax_sum[0, 0, 0] == np.float32(1) + e1
