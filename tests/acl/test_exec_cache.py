"""The executor cache of the public calls (aclnn_fag/acl/exec_cache.py) on the stub.

The oracle is the same call with the cache off (``ACLNN_FAG_EXECUTOR_CACHE=0``: phase 1
and fresh handles every call), which the rest of tests/acl checks against the reference.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag.acl import exec_cache, prototypes
from aclnn_fag.rules import validate_backward
from acl_cases import assert_same_bits, make_problem, result_bits
from test_streams import caller_stream  # noqa: F401 (fixture)

ENV = exec_cache.ENV_CAPACITY


def _uncached(monkeypatch, fn):
    monkeypatch.setenv(ENV, "0")
    try:
        return fn()
    finally:
        monkeypatch.delenv(ENV)


def _stat(key):
    return acl.stats()[key]


def test_second_call_reuses_the_executor_and_creates_nothing(monkeypatch, no_leaks):
    p = make_problem(seed=1, q_lens=(6, 5), mode=2)
    want = _uncached(monkeypatch, lambda: p.grads("npu"))
    acl.reset_stats()
    first = p.grads("npu")
    assert _stat("phase1") == 1 and _stat("cache_hits") == 0
    assert exec_cache.size() == 1
    assert no_leaks.counters(keep_cache=True)["executors"] == 1     # kept, repeatable
    made = _stat("tensors"), _stat("int_arrays")
    second = p.grads("npu")
    assert _stat("phase1") == 1 and _stat("phase2") == 2 and _stat("cache_hits") == 1
    assert (_stat("tensors"), _stat("int_arrays")) == made           # no new handle
    assert_same_bits(first, want)
    assert_same_bits(second, want)


def test_new_data_at_new_addresses_is_what_the_hit_computes(monkeypatch, no_leaks):
    """Same signature, other data in other buffers: the cached executor must read the new
    buffers (a hit that skipped the address setters would return the first call's grads)."""
    a = make_problem(seed=2, q_lens=(7, 4), mode=0)
    b = make_problem(seed=3, q_lens=(7, 4), mode=0)
    want_b = _uncached(monkeypatch, lambda: b.grads("npu"))
    want_a = _uncached(monkeypatch, lambda: a.grads("npu"))
    assert not np.array_equal(np.asarray(want_a.dq).view(np.uint16),
                              np.asarray(want_b.dq).view(np.uint16))
    acl.reset_stats()
    assert_same_bits(a.grads("npu"), want_a)
    assert_same_bits(b.grads("npu"), want_b)
    assert_same_bits(a.grads("npu"), want_a)
    assert _stat("cache_hits") == 2 and _stat("phase1") == 1


def test_device_arrays_with_given_outputs_are_repointed(monkeypatch, no_leaks):
    """DeviceArray inputs (used in place) and keep_on_device results: each call's new output
    buffers are written, the previous call's results stay as they were."""
    p = make_problem(seed=4, q_lens=(5, 6), n2=2, g=2, mode=3)
    q = make_problem(seed=5, q_lens=(5, 6), n2=2, g=2, mode=3)
    want_p = _uncached(monkeypatch, lambda: p.grads("npu"))
    want_q = _uncached(monkeypatch, lambda: q.grads("npu"))

    def on_device(prob):
        call = validate_backward(*(acl.DeviceArray.from_numpy(x) for x in
                                   (prob.q, prob.qr, prob.k, prob.kr, prob.v, prob.dy)),
                                 **{k: (acl.DeviceArray.from_numpy(v) if isinstance(v, np.ndarray)
                                        and k != "actual_seq_qlen" and k != "actual_seq_kvlen"
                                        else v) for k, v in prob.kwargs().items()})
        return acl.run_backward(call, keep_on_device=True)

    acl.reset_stats()
    got_p = on_device(p)
    got_q = on_device(q)
    assert _stat("cache_hits") == 1
    assert_same_bits([g.numpy() for g in got_q], want_q)
    assert_same_bits([g.numpy() for g in got_p], want_p)      # not overwritten by the second call


@pytest.mark.parametrize("change", ["scale", "negative_zero_scale", "seq_lens", "mode",
                                    "deterministic", "view", "head_dim"])
def test_any_change_phase1_sees_is_a_new_entry(change, monkeypatch, no_leaks):
    base = make_problem(seed=6, q_lens=(6, 6), mode=0, g=2)
    over = {}
    other = base
    if change == "scale":
        over = dict(scale_value=base.scale * 0.5)
    elif change == "negative_zero_scale":
        base_over = dict(scale_value=0.0)
        over = dict(scale_value=-0.0)
    elif change == "seq_lens":
        other = make_problem(seed=6, q_lens=(5, 7), mode=0, g=2)
    elif change == "mode":
        other = make_problem(seed=6, q_lens=(6, 6), mode=2, g=2)
    elif change == "head_dim":
        other = make_problem(seed=6, q_lens=(6, 6), mode=0, g=2, d=48)
    first_over = base_over if change == "negative_zero_scale" else {}

    def call(prob, det=False, **kw):
        if change == "view" and prob is other and kw.pop("_view", False):
            # head-major memory seen as [T, N, D]: same shape, dtype, offset and storage
            # size as the contiguous query, other strides
            q = np.ascontiguousarray(prob.q.transpose(1, 0, 2)).transpose(1, 0, 2)
            return af.flash_attention_unpadding_score_grad_v3(
                q, prob.qr, prob.k, prob.kr, prob.v, prob.dy,
                backend="npu", deterministic=det, **prob.kwargs(**kw))
        return prob.grads("npu", deterministic=det, **kw)

    second_det = change == "deterministic"
    second_kw = dict(over, _view=True) if change == "view" else over
    want = _uncached(monkeypatch, lambda: call(other, second_det, **dict(second_kw)))
    acl.reset_stats()
    call(base, False, **first_over)
    got = call(other, second_det, **dict(second_kw))
    assert _stat("cache_hits") == 0 and _stat("phase1") == 2
    assert exec_cache.size() == 2
    assert_same_bits(got, want)


def test_capacity_bounds_the_idle_entries(monkeypatch, no_leaks):
    monkeypatch.setenv(ENV, "2")
    probs = [make_problem(seed=7, q_lens=(4 + i, 3)) for i in range(3)]
    for p in probs:
        p.grads("npu")
    assert exec_cache.size() == 2
    c = no_leaks.counters(keep_cache=True)
    assert c["executors"] == 2
    acl.reset_stats()
    probs[0].grads("npu")                      # the least recently used one was dropped
    assert _stat("cache_hits") == 0
    probs[2].grads("npu")
    assert _stat("cache_hits") == 1
    monkeypatch.setenv(ENV, "1")
    assert exec_cache.capacity() == 1 and exec_cache.size() == 1
    assert no_leaks.counters(keep_cache=True)["executors"] == 1


def test_off_keeps_nothing_after_the_call(monkeypatch, no_leaks):
    monkeypatch.setenv(ENV, "0")
    p = make_problem(seed=8, q_lens=(5, 5))
    p.grads("npu")
    p.grads("npu")
    c = no_leaks.counters(keep_cache=True)
    assert c["executors"] == c["tensors"] == c["int_arrays"] == 0
    assert exec_cache.size() == 0


@pytest.mark.parametrize("raw", ["x", "-1", "1.5"])
def test_a_bad_capacity_names_the_variable(raw, monkeypatch):
    monkeypatch.setenv(ENV, raw)
    with pytest.raises(ValueError, match=ENV):
        exec_cache.capacity()


def test_clear_and_shutdown_destroy_every_entry(no_leaks):
    for i in range(3):
        make_problem(seed=9, q_lens=(3 + i, 4)).grads("npu")
    assert exec_cache.size() == 3
    assert exec_cache.clear() == 3
    c = no_leaks.counters(keep_cache=True)
    assert c["executors"] == c["tensors"] == c["int_arrays"] == 0
    make_problem(seed=9, q_lens=(3, 4)).grads("npu")
    assert exec_cache.size() == 1
    acl.shutdown(finalize=False)
    assert exec_cache.size() == 0
    assert no_leaks.counters(keep_cache=True)["executors"] == 0


@pytest.mark.parametrize("setter", ["aclSetInputTensorAddr", "aclSetOutputTensorAddr"])
def test_a_failing_address_setter_falls_back_to_phase1(setter, monkeypatch, no_leaks):
    a = make_problem(seed=10, q_lens=(6, 3), mode=0)
    b = make_problem(seed=11, q_lens=(6, 3), mode=0)
    want_b = _uncached(monkeypatch, lambda: b.grads("npu"))
    # the first call's results stay on the device, so the second call's memory (one
    # allocation per call, README) cannot take the addresses the cached tensors point at:
    # every input and output is repointed
    kept = acl.run_backward(validate_backward(a.q, a.qr, a.k, a.kr, a.v, a.dy, **a.kwargs()),
                            keep_on_device=True)
    acl.reset_stats()
    no_leaks.inject(setter, 0, 161002)
    assert_same_bits(b.grads("npu"), want_b)               # the failed entry destroyed, phase 1 again
    assert _stat("phase1") == 1 and _stat("cache_hits") == 0
    assert exec_cache.size() == 1
    assert no_leaks.counters(keep_cache=True)["executors"] == 1
    assert no_leaks.bad_releases() == 0
    del kept


def test_a_failed_phase2_destroys_the_entry(monkeypatch, no_leaks):
    p = make_problem(seed=12, q_lens=(4, 4))
    want = _uncached(monkeypatch, lambda: p.grads("npu"))
    p.grads("npu")
    before = no_leaks.bad_releases()
    no_leaks.inject(prototypes.PHASE2, 0, 361001)
    with pytest.raises(af.AclnnError) as info:
        p.grads("npu")
    assert info.value.code == 361001
    assert exec_cache.size() == 0
    assert no_leaks.counters(keep_cache=True)["executors"] == 0
    assert no_leaks.bad_releases() == before          # destroyed once, by us
    assert_same_bits(p.grads("npu"), want)


def test_a_freed_buffer_on_a_hit_is_refused_and_the_entry_dropped(no_leaks):
    p = make_problem(seed=13, q_lens=(4, 5))
    tensors = [acl.DeviceArray.from_numpy(x) for x in (p.q, p.qr, p.k, p.kr, p.v, p.dy)]
    kw = p.kwargs()
    call = validate_backward(*tensors, **kw)
    acl.run_backward(call, keep_on_device=True)
    tensors2 = [acl.DeviceArray.from_numpy(x) for x in (p.q, p.qr, p.k, p.kr, p.v, p.dy)]
    call2 = validate_backward(*tensors2, **kw)
    tensors2[2].buffer.free()
    with pytest.raises(ValueError, match="freed"):
        acl.run_backward(call2, keep_on_device=True)
    assert exec_cache.size() == 0
    assert no_leaks.counters(keep_cache=True)["executors"] == 0


def test_threads_with_one_signature_never_share_an_entry(monkeypatch, no_leaks):
    probs = [make_problem(seed=20 + i, q_lens=(5, 6), n2=1, g=2) for i in range(4)]
    want = [_uncached(monkeypatch, lambda p=p: p.grads("npu")) for p in probs]
    errors = []

    def work(i):
        try:
            for r in range(15):
                k = (i + r) % len(probs)
                got = probs[k].grads("npu")
                for x, y in zip(result_bits(got), result_bits(want[k])):
                    if x is not None and not np.array_equal(x, y):
                        errors.append((i, r, k))
        except Exception as exc:             # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert 1 <= exec_cache.size() <= 4


def test_a_hit_leaves_the_determinism_option_alone(monkeypatch, no_leaks):
    """Phase 1 reads ACL_OPT_DETERMINISTIC (docs/abi.md §6): a hit runs no phase 1, so it
    takes no hold and sets nothing; a call wanting the other value is another entry."""
    p = make_problem(seed=14, q_lens=(4, 4))
    p.grads("npu", deterministic=True)
    b = acl.runtime.api()
    sets = []
    real = b.aclrtCtxSetSysParamOpt
    monkeypatch.setattr(b, "aclrtCtxSetSysParamOpt", lambda *a: sets.append(a) or real(*a))
    acl.reset_stats()
    p.grads("npu", deterministic=True)
    assert _stat("cache_hits") == 1 and sets == []
    p.grads("npu", deterministic=False)
    assert _stat("cache_hits") == 1 and _stat("phase1") == 1


def test_forward_calls_are_cached_too(monkeypatch, no_leaks):
    p = make_problem(seed=15, q_lens=(6, 4), mode=2)
    kw = dict(atten_mask=p.mask, actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends,
              scale_value=p.scale, sparse_mode=p.mode)

    def fwd():
        return af.flash_attention_forward(p.q, p.qr, p.k, p.kr, p.v, backend="npu", **kw)

    want = _uncached(monkeypatch, fwd)
    acl.reset_stats()
    first, second = fwd(), fwd()
    assert _stat("cache_hits") == 1 and _stat("phase1") == 1
    for got in (first, second):
        for x, y in zip(got, want):
            assert np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))


def test_raw_calls_are_never_cached(no_leaks):
    p = make_problem(seed=16, q_lens=(4, 4))
    acl.reset_stats()
    for _ in range(2):
        acl.call_raw(**p.raw_kwargs())
    assert _stat("phase1") == 2 and _stat("cache_hits") == 0 and exec_cache.size() == 0


def _device_call(prob):
    arrays = [acl.DeviceArray.from_numpy(x) for x in (prob.q, prob.qr, prob.k, prob.kr, prob.v,
                                                      prob.dy)]
    kw = {k: (acl.DeviceArray.from_numpy(v) if k in ("atten_mask", "softmax_max", "softmax_sum",
                                                       "attention_in") else v)
          for k, v in prob.kwargs().items()}
    call = validate_backward(*arrays, check_data=False, **kw)
    outs = {o: acl.DeviceArray.zeros(getattr(call, s).shape, getattr(call, s).dtype)
            for o, s in (("dq", "query"), ("dq_rope", "query_rope"), ("dk", "key"),
                         ("dk_rope", "key_rope"), ("dv", "value"))}
    return call, outs


@pytest.mark.parametrize("fail", [None, "phase2", "setter"])
def test_the_short_path_of_a_step_on_a_callers_stream(fail, monkeypatch, no_leaks,
                                                     caller_stream):  # noqa: F811
    """Device arrays, given outputs, stream=: a hit is signature + repoint + phase 2 only
    (no aclTensor, no allocation), with new data read from the new buffers; a failed phase 2
    destroys the entry, a failed setter falls back to phase 1."""
    a = make_problem(seed=30, q_lens=(6, 5), n2=2, g=2, mode=3)
    b = make_problem(seed=31, q_lens=(6, 5), n2=2, g=2, mode=3)
    want_b = _uncached(monkeypatch, lambda: b.grads("npu"))
    call_a, outs_a = _device_call(a)
    acl.run_backward(call_a, keep_on_device=True, stream=caller_stream, outputs=outs_a)
    call_b, outs_b = _device_call(b)
    acl.reset_stats()
    if fail == "phase2":
        no_leaks.inject(prototypes.PHASE2, 0, 361001)
        with pytest.raises(af.AclnnError):
            acl.run_backward(call_b, keep_on_device=True, stream=caller_stream, outputs=outs_b)
        assert exec_cache.size() == 0 and _stat("cache_hits") == 1
        assert no_leaks.counters(keep_cache=True)["executors"] == 0
        return
    if fail == "setter":
        no_leaks.inject("aclSetOutputTensorAddr", 0, 161002)
    got = acl.run_backward(call_b, keep_on_device=True, stream=caller_stream, outputs=outs_b)
    assert [g is o for g, o in zip(got, outs_b.values())] == [True] * 5
    if not fail:    # a hit: its signature matches the stored one; no create, no allocation
        assert (_stat("tensors"), _stat("int_arrays"), _stat("malloc")) == (0, 0, 0)
    assert _stat("phase1") == (1 if fail else 0)
    assert _stat("cache_hits") == (0 if fail else 1)
    assert acl.runtime.api().aclrtSynchronizeStream(caller_stream) == 0
    assert_same_bits([g.numpy() for g in got], want_b)


def test_a_foreign_device_reset_retires_every_cached_executor(monkeypatch, no_leaks):
    """Someone else's aclrtResetDevice destroys the context the cached executors were made
    in (the stub hands out the same context handle again): the next call must not use
    them, it builds a new executor."""
    import ctypes
    p = make_problem(seed=40, q_lens=(5, 4))
    want = _uncached(monkeypatch, lambda: p.grads("npu"))
    p.grads("npu")
    acl.reset_stats()
    p.grads("npu")
    assert _stat("cache_hits") == 1
    lib = ctypes.CDLL(str(acl.runtime.api().libraries.paths["runtime"]))
    lib.aclrtResetDevice.argtypes = [ctypes.c_int32]
    assert lib.aclrtResetDevice(0) == 0
    acl.reset_stats()
    assert_same_bits(p.grads("npu"), want)
    assert _stat("cache_hits") == 0 and _stat("phase1") == 1
