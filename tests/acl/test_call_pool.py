"""Calls on host arrays (aclnn_fag/acl/op.py, ``execute``), with their device memory kept
between calls by aclnn_fag/acl/call_pool.py and their executors by acl/exec_cache.py, on
the stub.

Oracles: the same call with the pool and the executor cache off (fresh memory and phase 1
on every call) must give bit-identical results, and both must match the NumPy reference;
allocation and launch counts come from the package's counters (``acl.stats()``) and the
stub's own (live device bytes, per-stream launches).
"""

from __future__ import annotations

import ctypes
import threading
import warnings

import ml_dtypes
import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag import errors
from aclnn_fag.acl import call_pool, exec_cache, op
from aclnn_fag.rules import validate_backward
from acl_cases import assert_grads_close, assert_same_bits, make_problem
from test_streams import caller_stream  # noqa: F401  (a fixture)

BF16 = np.dtype(ml_dtypes.bfloat16)

SHAPES = {
    "mode0-gqa-mask": dict(q_lens=(9, 0, 14), kv_lens=(7, 3, 14), g=2, mode=0, density=0.3),
    "mode2": dict(q_lens=(9, 0, 14), g=2, mode=2),
    "mode3": dict(q_lens=(12, 5), kv_lens=(7, 5), mode=3),
    "mode4-band": dict(q_lens=(9, 14), mode=4, pre=5, nxt=3),
    "mode8": dict(q_lens=(0, 6, 9), kv_lens=(2, 8, 9), mode=8, pre=2, nxt=3),
}


def _general(monkeypatch, fn):
    """``fn()`` with the memory pool and the executor cache off (nothing reused)."""
    with monkeypatch.context() as m:
        m.setenv(call_pool.ENV_LIMIT, "0")
        m.setenv(exec_cache.ENV_CAPACITY, "0")
        acl.reset_stats()
        out = fn()
        s = acl.stats()
        assert s["cache_hits"] == 0 and s["malloc"] > 0 and s["free"] > 0
        return out


def _counted(fn):
    acl.reset_stats()
    out = fn()
    return out, acl.stats()


@pytest.fixture
def taken(monkeypatch):
    """Every allocation call_pool.take hands out (from now on)."""
    out = []
    real = call_pool.take

    def spy(nbytes, dev):
        a = real(nbytes, dev)
        out.append(a)
        return a
    monkeypatch.setattr(call_pool, "take", spy)
    return out


@pytest.mark.parametrize("name", list(SHAPES))
def test_results_equal_the_uncached_call_bit_for_bit(name, monkeypatch, no_leaks):
    p = make_problem(seed=3, **SHAPES[name])
    want = _general(monkeypatch, lambda: p.grads("npu"))
    first, s1 = _counted(lambda: p.grads("npu"))             # a cache miss, then a hit
    second, s2 = _counted(lambda: p.grads("npu"))
    assert (s1["phase1"], s2["phase1"], s2["cache_hits"], s2["malloc"]) == (1, 0, 1, 0)
    assert_same_bits(first, want)
    assert_same_bits(second, want)
    assert_grads_close(first, p.grads("numpy"))


def test_calls_of_several_shapes_in_turn_each_get_their_own_pieces(monkeypatch, no_leaks):
    """Calls alternating between shapes (each a hit after its first call) on reused memory
    give every shape its own pieces and results."""
    probs = [make_problem(seed=5, **SHAPES[n]) for n in ("mode2", "mode3", "mode8")]
    want = [_general(monkeypatch, lambda p=p: p.grads("npu")) for p in probs]
    acl.reset_stats()
    for _ in range(2):
        for p, w in zip(probs, want):
            assert_same_bits(p.grads("npu"), w)
    assert acl.stats()["phase1"] == acl.stats()["cache_hits"] == len(probs)


def test_a_repeated_call_allocates_nothing_and_makes_no_handle(no_leaks):
    p = make_problem(seed=4, q_lens=(7, 9), g=2, mode=3)
    _, first = _counted(lambda: p.grads("npu"))
    assert first["malloc"] >= 1 and first["free"] == 0        # kept for the next call
    assert call_pool.idle_bytes() > 0
    got, s = _counted(lambda: p.grads("npu"))
    assert (s["malloc"], s["free"], s["tensors"], s["phase1"]) == (0, 0, 0, 0)
    assert (s["cache_hits"], s["phase2"], s["memset"]) == (1, 1, 1)
    assert (s["h2d"], s["d2h"]) == (9, 5)     # the package's mask is on the device already
    assert_grads_close(got, p.grads("numpy"))
    assert acl.release_call_memory() >= 1 and call_pool.idle_bytes() == 0
    live = no_leaks.counters(keep_cache=True)["device_bytes"]
    got2, s = _counted(lambda: p.grads("npu"))                # allocates again
    assert s["malloc"] >= 1 and s["free"] == 0
    kept = call_pool.idle_bytes()
    assert kept > 0 and no_leaks.counters(keep_cache=True)["device_bytes"] - live == kept
    assert_same_bits(got2, got)


def test_the_forward_reuses_memory_and_executors_too(monkeypatch, no_leaks):
    p = make_problem(seed=5, q_lens=(6, 0, 9), g=2, mode=2)

    def fwd():
        return af.flash_attention_forward(p.q, p.qr, p.k, p.kr, p.v, atten_mask=p.mask,
                                          actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends,
                                          scale_value=p.scale, sparse_mode=p.mode,
                                          backend="npu")
    want = _general(monkeypatch, fwd)
    first = fwd()
    second, s = _counted(fwd)
    assert (s["malloc"], s["phase1"], s["cache_hits"]) == (0, 0, 1)
    for got in (first, second):
        assert_same_bits([got.attention_out, got.softmax_max, got.softmax_sum],
              [want.attention_out, want.softmax_max, want.softmax_sum])


def test_zero_fill_holds_on_reused_memory(no_leaks):
    """The rows after the last sequence end are never written by the op: they must be
    zero even when the memory held the previous call's gradients."""
    p = make_problem(seed=6, q_lens=(8, 8), mode=2)
    full = p.grads("npu")
    assert np.any(full.dq[12:].astype(np.float32) != 0)
    short = (8, 12)                                           # 4 rows past the last end
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", af.SequenceEndWarning)
        got, s = _counted(lambda: p.grads("npu", actual_seq_qlen=short,
                                          actual_seq_kvlen=short))
    assert s["malloc"] == 0                                   # the same memory again
    for g in (got.dq, got.dq_rope):
        assert not np.any(g[12:].view(np.uint16))
    assert np.any(got.dq[:12].astype(np.float32) != 0)


def test_a_caller_stream_gets_the_launch_and_is_synchronised(caller_stream, stub,  # noqa: F811
                                                             no_leaks):
    p = make_problem(seed=7, q_lens=(5, 6), mode=3)
    want = p.grads("npu")
    for _ in range(2):                                        # a miss, then a hit
        before = stub.stream_counts(caller_stream)
        got = p.grads("npu", stream=caller_stream)
        after = stub.stream_counts(caller_stream)
        assert after["launches"] - before["launches"] == 1
        assert after["syncs"] > before["syncs"]
        assert_same_bits(got, want)


def test_timings_on_a_hit(no_leaks):
    p = make_problem(seed=8, q_lens=(5, 6), mode=2)
    call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs())
    miss = {}
    acl.run_backward(call, timings=miss)
    assert miss["marshal"] > 0 and miss["phase1"] > 0
    hit = {}
    acl.run_backward(call, timings=hit, cpu_timings=True)
    for key in ("alloc", "copy_in", "copy_out", "phase2"):
        assert hit[key] > 0 and hit[key + "_cpu"] >= 0, key
    assert hit["marshal"] == hit["phase1"] == 0.0


def test_signed_zero_scale_is_a_different_signature(no_leaks):
    p = make_problem(seed=9, q_lens=(5, 6), mode=2)
    acl.reset_stats()
    for scale in (0.0, -0.0, 0.0, -0.0):
        p.grads("npu", scale_value=scale)
    assert acl.stats()["phase1"] == 2 and acl.stats()["cache_hits"] == 2


@pytest.mark.parametrize("make", [
    lambda a: np.asfortranarray(a),                                   # not C-contiguous
    lambda a: a.astype(a.dtype.newbyteorder(">")) if a.dtype.itemsize > 1 else a,
])
def test_other_layouts_give_the_same_results(make, no_leaks):
    p = make_problem(seed=10, q_lens=(5, 6), mode=2)
    want = p.grads("npu")
    smax = make(p.fwd.softmax_max)
    got = p.grads("npu", softmax_max=smax)
    assert_same_bits(got, want)


@pytest.mark.parametrize("function,count,second", [
    ("aclrtMalloc", 0, False),            # the call's memory
    ("aclrtMemset", 0, False), ("aclrtMemset", 0, True),
    ("aclrtMemcpy", 1, True), ("aclrtMemcpy", 9, True),      # uploads (0: the mask's copy)
    ("aclrtMemcpy", 0, True), ("aclrtMemcpy", 4, True),      # downloads, on a hit
    (op.BACKWARD.phase2, 0, True), ("aclrtSynchronizeStream", 0, True),
    (op.BACKWARD.phase2, 0, False), ("aclrtSynchronizeStream", 0, False),
])
def test_a_failure_anywhere_frees_the_call_memory(function, count, second, stub, no_leaks,
                                                  request):
    p = make_problem(seed=11, q_lens=(5, 3), g=2, mode=3)
    want = p.grads("numpy")
    if second:
        p.grads("npu")                                       # the next call is a hit
        if function == "aclrtMemcpy" and count < 5:
            count += 9                                       # after the nine uploads
    taken = request.getfixturevalue("taken")                 # what the failing call takes
    entries = exec_cache.size()
    stub.inject(function, count, 507899)
    with pytest.raises(errors.AclnnError) as info:
        p.grads("npu")
    assert "injected failure 507899" in str(info.value)
    stub.clear()
    assert bool(taken) == (function != "aclrtMalloc")         # (a failed allocation: none)
    assert all(a.closed for a in taken)                      # freed, not back in the pool
    idle = [a for lst in call_pool._idle.values() for a in lst]
    assert not any(a is t for a in idle for t in taken)
    if second and function in (op.BACKWARD.phase2, "aclrtSynchronizeStream"):
        assert exec_cache.size() == entries - 1              # the failed entry destroyed
    assert_grads_close(p.grads("npu"), want)                 # and the next call works


def test_threads_never_share_memory(no_leaks):
    probs = [make_problem(seed=30 + i, q_lens=(5, 6), n2=1, g=2, mode=3) for i in range(4)]
    want = [p.grads("npu") for p in probs]
    errs = []

    def work(i):
        try:
            for _ in range(12):
                assert_same_bits(probs[i].grads("npu"), want[i])
        except BaseException as e:          # reported by the main thread
            errs.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errs, errs[0]


def test_a_foreign_device_reset_never_reuses_the_old_memory(no_leaks, request):
    p = make_problem(seed=12, q_lens=(5, 4), mode=3)
    want = p.grads("npu")
    old = [a for lst in call_pool._idle.values() for a in lst]
    assert old
    lib = ctypes.CDLL(str(acl.runtime.api().libraries.paths["runtime"]))
    lib.aclrtResetDevice.argtypes = [ctypes.c_int32]
    assert lib.aclrtResetDevice(0) == 0
    taken = request.getfixturevalue("taken")
    assert_same_bits(p.grads("npu"), want)
    assert taken and not any(t is a for t in taken for a in old)
    assert all(a.closed for a in old)        # dropped when the new context allocated


def test_limit_zero_allocates_and_frees_every_call(monkeypatch, no_leaks):
    monkeypatch.setenv(call_pool.ENV_LIMIT, "0")
    p = make_problem(seed=13, q_lens=(5, 4), mode=0, density=0.2)   # no device copy of a mask
    for _ in range(2):
        _, s = _counted(lambda: p.grads("npu"))
        assert s["malloc"] >= 1 and s["malloc"] == s["free"]
        assert call_pool.idle_bytes() == 0


@pytest.mark.parametrize("raw", ["x", "-1", "1.5"])
def test_an_invalid_limit_warns_naming_the_variable_and_keeps_the_limit(raw, monkeypatch,
                                                                         no_leaks):
    p = make_problem(seed=14, q_lens=(5, 4), mode=3)
    want = p.grads("npu")
    monkeypatch.setenv(call_pool.ENV_LIMIT, raw)
    with pytest.warns(RuntimeWarning, match=call_pool.ENV_LIMIT):
        assert_same_bits(p.grads("npu"), want)
    assert call_pool.limit() == call_pool.DEFAULT_LIMIT_MIB << 20
    assert call_pool.idle_bytes() > 0


# ---- the pool itself

def test_take_reuses_the_smallest_fitting_allocation(no_leaks):
    acl.runtime.ensure_device(0)
    a = call_pool.take(100, 0)
    b = call_pool.take(5 * call_pool.GRAIN, 0)
    assert a.nbytes == call_pool.GRAIN and b.nbytes == 5 * call_pool.GRAIN   # rounded up
    call_pool.give(b)
    call_pool.give(a)
    assert call_pool.take(10, 0) is a                       # the smallest that fits
    assert call_pool.take(2 * call_pool.GRAIN, 0) is b
    c = call_pool.take(10, 0)                               # none left: a new one
    assert c is not a and c is not b
    for x in (a, b, c):
        call_pool.discard(x)
    assert a.closed and b.closed and c.closed and call_pool.idle_bytes() == 0


def test_the_limit_frees_the_oldest_first(monkeypatch, no_leaks):
    monkeypatch.setenv(call_pool.ENV_LIMIT, "1")              # 1 MiB
    acl.runtime.ensure_device(0)
    mib = 1 << 20
    big = call_pool.take(mib + 1, 0)                         # above the limit: not kept
    assert big.pool_key is None
    call_pool.give(big)
    assert big.closed
    x, y = call_pool.take(mib // 2, 0), call_pool.take(mib // 2, 0)
    z = call_pool.take(mib // 4, 0)
    for a in (x, y, z):
        call_pool.give(a)
    assert x.closed and not y.closed and not z.closed         # 1.25 MiB > 1 MiB: x went
    assert call_pool.idle_bytes() == y.nbytes + z.nbytes
    assert call_pool.clear() == 2 and y.closed and z.closed


def test_out_of_memory_frees_the_idle_allocations_and_tries_again(stub, no_leaks):
    acl.runtime.ensure_device(0)
    small = call_pool.take(10, 0)
    call_pool.give(small)
    stub.inject("aclrtMalloc", 0, 207001)
    got = call_pool.take(4 * call_pool.GRAIN, 0)              # fails once, then succeeds
    assert small.closed and got.nbytes == 4 * call_pool.GRAIN
    call_pool.discard(got)
    assert call_pool.idle_bytes() == 0
    stub.inject("aclrtMalloc", 0, 207001)
    with pytest.raises(errors.AclRuntimeError) as info:       # nothing idle to free: raised
        call_pool.take(8 * call_pool.GRAIN, 0)
    assert info.value.code == 207001 and "aclrtMalloc" in str(info.value)


def test_the_workspace_lies_behind_the_pieces_once_its_size_is_known(taken, no_leaks):
    """After a cache hit asked for its workspace, the next calls take one allocation for
    the uploads, the outputs and the workspace (behind them, not over them)."""
    p = make_problem(seed=13, q_lens=(5, 6), mode=2)
    want = p.grads("numpy")
    for _ in range(3):
        p.grads("npu")
    assert exec_cache.size() == 1 and all(e.workspace_size > 0 for e in exec_cache._lru)
    n = len(taken)
    got = p.grads("npu")
    assert len(taken) - n == 1
    assert_grads_close(got, want)
