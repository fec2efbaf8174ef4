"""Behaviours of the ctypes layer no other test pinned, and the defects an adversarial run
found in it (issue 23, items 1-5, 7, 17, 18, 21, 23), on the stub.

Oracles: the same call with the cache in question off, the NumPy reference, the stub's
live-object counters, and the order in which the native release functions are called.
"""

from __future__ import annotations

import copy
import gc
import pickle
import signal
import struct
import sys
import warnings
import weakref

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag.acl import call_pool, device_constants, exec_cache, executor, ownership, runtime
from aclnn_fag.rules import validate_backward
from acl_cases import BF16, assert_same_bits, make_problem
from fake_npu import FakeNpuTensor


def _foreign_reset() -> None:
    """aclrtResetDevice(0) by someone else (the package's context is destroyed)."""
    import ctypes
    lib = ctypes.CDLL(str(runtime.api().libraries.paths["runtime"]))
    lib.aclrtResetDevice.argtypes = [ctypes.c_int32]
    assert lib.aclrtResetDevice(0) == 0


# ---- 1: the memory pool turned off after it pooled memory

def test_memory_cache_off_after_pooling_frees_what_the_pool_holds(monkeypatch, stub):
    p = make_problem(seed=13, q_lens=(6, 2), mode=0)
    p.grads("npu")
    pooled = stub.counters(keep_cache=True)["device_bytes"]
    acl.release_call_memory()
    bare = stub.counters(keep_cache=True)["device_bytes"]
    assert pooled > bare                                   # the first call left memory pooled
    want = p.grads("npu")
    assert call_pool.idle_bytes() > 0
    monkeypatch.setenv(call_pool.ENV_LIMIT, "0")
    assert_same_bits(p.grads("npu"), want)
    assert call_pool.idle_bytes() == 0
    assert stub.counters(keep_cache=True)["device_bytes"] == bare


# ---- 2: libraries without an optional setter

@pytest.mark.parametrize("missing", ["aclSetOutputTensorAddr", "aclSetInputTensorAddr",
                                     "aclSetAclOpExecutorRepeatable"])
def test_a_library_without_an_optional_setter_still_runs_uncached(missing, monkeypatch,
                                                                   no_leaks):
    p = make_problem(seed=21, q_lens=(5, 4), mode=0)
    monkeypatch.setenv(exec_cache.ENV_CAPACITY, "0")
    want = p.grads("npu")
    monkeypatch.delenv(exec_cache.ENV_CAPACITY)
    monkeypatch.setattr(runtime.api(), missing, None)      # as bind() leaves an absent one
    acl.reset_stats()
    for _ in range(2):
        assert_same_bits(p.grads("npu"), want)
        d = [acl.DeviceArray.from_numpy(x) for x in (p.q, p.qr, p.k, p.kr, p.v, p.dy)]
        kw = {n: acl.DeviceArray.from_numpy(v) if isinstance(v, np.ndarray) else v
              for n, v in p.kwargs().items()}
        got = af.flash_attention_unpadding_score_grad_v3(*d, **kw)
        assert_same_bits([g.numpy() for g in got], want)
        del d, kw, got
    s = acl.stats()
    assert s["phase1"] == 4 and s["cache_hits"] == 0 and exec_cache.size() == 0


# ---- 3: least recently used first, also within one signature

class _Entry:
    """Stands in for an executor and its handle batch (``released``, ``release``)."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self.log, self.released = name, log, False

    def release(self, mode="raise") -> None:
        if not self.released:
            self.released = True
            self.log.append(self.name)


def _entry(name: str, log: list) -> exec_cache.CachedExecutor:
    part = _Entry(name, log)
    return exec_cache.CachedExecutor(part, _Entry(name + "-handles", []), [], [], 0)


def test_the_cache_drops_the_least_recently_used_entry_across_signatures():
    log = []
    a1, b1, a2 = _entry("a1", log), _entry("b1", log), _entry("a2", log)
    exec_cache.give(("A",), a1, 2)          # A: two idle executors (concurrent calls)
    exec_cache.give(("B",), b1, 2)
    exec_cache.give(("A",), a2, 2)          # over capacity: a1 is the least recently used
    assert log == ["a1"] and exec_cache.size() == 2
    assert exec_cache.take(("A",)) is a2
    exec_cache.give(("A",), a2, 2)          # a2 used again: b1 is now the oldest
    c1 = _entry("c1", log)
    exec_cache.give(("C",), c1, 2)
    assert log == ["a1", "b1"]
    assert exec_cache.take(("B",)) is None and exec_cache.take(("C",)) is c1
    assert exec_cache.take(("A",)) is a2 and exec_cache.size() == 0


def test_a_lower_capacity_drops_the_oldest_entries_first(monkeypatch):
    log = []
    entries = [_entry(f"e{i}", log) for i in range(4)]
    for i, e in enumerate(entries):
        exec_cache.give(("A",) if i % 2 == 0 else ("B",), e, 4)
    monkeypatch.setenv(exec_cache.ENV_CAPACITY, "1")
    assert exec_cache.capacity() == 1
    assert log == ["e0", "e1", "e2"] and exec_cache.take(("B",)) is entries[3]


# ---- 4: the mask's device copy after a foreign device reset

def test_a_foreign_reset_drops_and_frees_the_stale_mask_copy(no_leaks):
    p = make_problem(seed=22, q_lens=(5, 4), mode=3)
    want = p.grads("npu")
    assert device_constants.size() == 1
    old = weakref.ref(next(iter(device_constants._copies.values())).buffer)
    held = no_leaks.counters(keep_cache=True)["device_bytes"]
    _foreign_reset()
    assert_same_bits(p.grads("npu"), want)
    gc.collect()
    assert device_constants.size() == 1                    # one copy: the live context's
    assert old() is None or old().closed                   # the stale one was freed
    assert no_leaks.counters(keep_cache=True)["device_bytes"] == held


# ---- 5: shutdown's release order

def test_shutdown_releases_executors_then_tensors_then_memory(monkeypatch, stub):
    """Cached executors (their tensors point at pooled memory and at the mask's device
    copy), an open plan and a held array: every executor is destroyed before the tensors it
    refers to, and no tensor or int array is destroyed after memory was freed."""
    p = make_problem(seed=23, q_lens=(5, 4), mode=3)
    p.grads("npu")
    p.grads("npu", scale_value=0.5)                      # a second signature
    plan = acl.FagPlan.from_call(validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy,
                                                   **p.kwargs()))
    plan.run()
    held = acl.DeviceArray.from_numpy(p.q)
    assert exec_cache.size() == 2 and call_pool.idle_bytes() > 0
    uses = {e.executor.handle: {h for _, h, _ in e.inputs + e.outputs}
            for e in exec_cache._lru}
    uses[plan._state.executor.handle] = set(plan._state.batch._tensors)
    b = runtime.api()
    order = []

    def logged(name):
        real = getattr(b, name)

        def call(handle, *rest):
            order.append((name, handle))
            return real(handle, *rest)
        return call
    for name in ("aclDestroyAclOpExecutor", "aclDestroyTensor", "aclDestroyIntArray",
                 "aclrtFree"):
        monkeypatch.setattr(b, name, logged(name))
    bad = stub.bad_releases()
    acl.shutdown(finalize=False)
    monkeypatch.undo()
    at = {h: i for i, (_, h) in enumerate(order)}
    for ex, tensors in uses.items():
        assert tensors and all(at[ex] < at[t] for t in tensors), order
    first_free = min(i for i, (n, _) in enumerate(order) if n == "aclrtFree")
    assert all(n == "aclrtFree" for n, _ in order[first_free:]), " ".join(n[3:10] for n, _ in order)
    del plan, held              # already released: their collection releases nothing again
    gc.collect()
    assert stub.bad_releases() == bad
    assert all(v == 0 for k, v in stub.counters().items() if k != "streams")


# ---- 7: no keys (T2 = 0) on device inputs

def _no_keys(seed: int):
    rng = np.random.default_rng(seed)
    q, qr, dy = (rng.standard_normal(s).astype(BF16) for s in ((7, 2, 32), (7, 2, 16), (7, 2, 32)))
    k, kr, v = (np.zeros(s, BF16) for s in ((0, 2, 32), (0, 2, 16), (0, 2, 32)))
    kw = dict(actual_seq_qlen=[4, 7], actual_seq_kvlen=[0, 0], scale_value=0.125)
    mask = np.zeros((4, 0), np.uint8)          # [maxSq, maxSkv]
    fwd = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=mask, backend="numpy", **kw)
    tensors = dict(atten_mask=mask, softmax_max=fwd.softmax_max, softmax_sum=fwd.softmax_sum,
                   attention_in=fwd.attention_out)
    return (q, qr, k, kr, v, dy), tensors, kw


def _assert_zero(name, host, like):
    host = np.asarray(host, dtype=np.float32)
    assert host.shape == like.shape, name
    assert not np.isnan(host).any() and np.all(host == 0), name


def test_device_arrays_with_no_keys_get_zero_query_gradients(no_leaks):
    """The op computes nothing without keys: what dq and dq_rope hold is the package's
    zero fill (the stub's fresh memory is NaN bytes)."""
    inputs, tensors, kw = _no_keys(14)
    dev = [acl.DeviceArray.from_numpy(x) for x in inputs]
    named = {n: acl.DeviceArray.from_numpy(np.asarray(t)) for n, t in tensors.items()}
    g = af.flash_attention_unpadding_score_grad_v3(*dev, **named, **kw)
    for name, like in (("dq", inputs[0]), ("dq_rope", inputs[1])):
        assert isinstance(getattr(g, name), acl.DeviceArray)
        _assert_zero(name, getattr(g, name).numpy(), like)


class _OffsetNpuTensor(FakeNpuTensor):
    """new_empty hands out memory one element past a 32-byte aligned start (the allocator's
    block does not begin where the result does)."""

    def new_empty(self, shape, dtype=None):
        dtype = dtype or self.dtype
        n = int(np.prod(shape))
        store = acl.DeviceArray.empty((n + 32,), dtype.np, self.device.index)
        return _OffsetNpuTensor(store, shape, acl.device.contiguous_strides(shape), 1, dtype,
                                self.device.index)


def test_npu_tensors_with_no_keys_get_zero_query_gradients_in_offset_results(no_leaks):
    inputs, tensors, kw = _no_keys(15)
    npu = [_OffsetNpuTensor.from_numpy(x) for x in inputs]
    named = {n: _OffsetNpuTensor.from_numpy(np.asarray(t)) for n, t in tensors.items()}
    g = af.flash_attention_unpadding_score_grad_v3(*npu, **named, **kw)
    for name, like in (("dq", inputs[0]), ("dq_rope", inputs[1])):
        t = getattr(g, name)
        assert isinstance(t, _OffsetNpuTensor) and t.data_ptr() % 32 != 0
        _assert_zero(name, t.numpy(), like)
        # the bytes around the result are the allocator's: left as they were (NaN fill)
        whole = t.storage.numpy().astype(np.float32)
        assert np.isnan(whole[0]) and np.isnan(whole[-1]), name


# ---- 17: NaN scales

def _nan(sign: int, payload: int) -> float:
    bits = (sign << 63) | (0x7FF << 52) | (1 << 51) | payload
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def test_each_nan_scale_gets_its_own_executor(monkeypatch, no_leaks):
    """+NaN, -NaN and NaNs with other payloads are different doubles for phase 1: a cached
    call returns exactly the bits of an uncached call with the same scale (float.hex()
    keys, as before, gave 'nan' for all of them)."""
    p = make_problem(seed=11, q_lens=(5, 3), mode=0)
    scales = [_nan(0, 0), _nan(1, 0), _nan(0, 0x1234), _nan(1, 0x1234)]
    monkeypatch.setenv(exec_cache.ENV_CAPACITY, "0")
    want = [p.grads("npu", scale_value=s, check_data=False) for s in scales]
    assert any(not np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))
               for a, b in zip(want[0], want[1]))       # the signs really differ on the stub
    monkeypatch.setenv(exec_cache.ENV_CAPACITY, "16")
    for _ in range(2):
        for s, w in zip(scales, want):
            assert_same_bits(p.grads("npu", scale_value=s, check_data=False), w)
    assert exec_cache.size() == len(scales)


def test_signed_zero_scales_are_two_signatures(no_leaks):
    p = make_problem(seed=12, q_lens=(5, 3), mode=0)
    for s in (0.0, -0.0, 0.0, -0.0):
        p.grads("npu", scale_value=s)
    assert exec_cache.size() == 2


# ---- 18: Ctrl-C during a garbage-collection release

@pytest.fixture
def sigint_raises():
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _interrupt_on(monkeypatch, name: str) -> list:
    """SIGINT raised from inside the native function ``name`` (its atomic block defers it)."""
    b = runtime.api()
    real = getattr(b, name)
    calls = []

    def call(*args):
        calls.append(name)
        signal.raise_signal(signal.SIGINT)
        return real(*args)
    monkeypatch.setattr(b, name, call)
    return calls


def test_ctrl_c_during_a_garbage_collection_free_reaches_the_caller(sigint_raises, monkeypatch,
                                                                   no_leaks):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    a = acl.DeviceArray.from_numpy(np.arange(8, dtype=np.float32))
    freed = _interrupt_on(monkeypatch, "aclrtFree")
    with pytest.raises(KeyboardInterrupt):
        del a                   # the finalizer frees: the interrupt lands inside it
        assert freed == ["aclrtFree"]
        acl.reset_stats()
        acl.DeviceArray.zeros((4,), np.float32)         # the next library boundary
    monkeypatch.undo()
    assert acl.stats()["malloc"] == 0                   # raised before its native step
    assert dropped == [] and ownership.deferred_interrupts() == 0
    b = acl.DeviceArray.zeros((4,), np.float32)         # delivered once, not again
    b.free()


def test_ctrl_c_during_a_plan_finalizer_reaches_the_caller(sigint_raises, monkeypatch, no_leaks):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    p = make_problem(seed=24, q_lens=(5, 4), mode=0)
    plan = acl.FagPlan.from_call(validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy,
                                                      **p.kwargs()))
    _interrupt_on(monkeypatch, "aclDestroyAclOpExecutor")
    with pytest.raises(KeyboardInterrupt):
        del plan
        gc.collect()
        ownership.deliver_deferred()
    monkeypatch.undo()
    assert dropped == [] and ownership.deferred_interrupts() == 0


def test_a_deferred_interrupt_waits_while_finalizers_run(sigint_raises, monkeypatch):
    """Inside a finalizer nothing is raised (CPython would drop it): the interrupt stays
    pending until the main flow reaches a boundary."""
    seen = []

    def finalizer():
        raise KeyboardInterrupt

    def nested():
        ownership.deliver_deferred()                    # inside a finalizer: waits
        with ownership.atomic():                        # neither its start nor its end
            seen.append(ownership.deferred_interrupts())
        seen.append("done")
    ownership.run_finalizer(finalizer)
    ownership.run_finalizer(nested)
    assert seen == [1, "done"]
    with pytest.raises(KeyboardInterrupt):
        with ownership.atomic():
            pass
    assert ownership.deferred_interrupts() == 0


# ---- 21: the memory-cache variable made invalid while a call runs

def test_an_invalid_memory_cache_value_set_during_a_call_keeps_the_results(monkeypatch, no_leaks):
    """The call computed its results: they are returned; the bad value is reported as a
    RuntimeWarning naming the variable when the pool reads it, and the limit stays."""
    p = make_problem(seed=12, q_lens=(4, 6), mode=0)
    want = p.grads("npu")
    limit = call_pool.limit()
    real = executor.run

    def run_then_break_the_variable(*args, **kwargs):
        real(*args, **kwargs)
        monkeypatch.setenv(call_pool.ENV_LIMIT, "lots")
    monkeypatch.setattr(executor, "run", run_then_break_the_variable)
    with pytest.warns(RuntimeWarning, match=call_pool.ENV_LIMIT) as got_warnings:
        got = p.grads("npu")
    assert_same_bits(got, want)
    assert len(got_warnings) == 1 and call_pool.limit() == limit
    assert call_pool.idle_bytes() > 0                        # kept under the old limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # once per value, not per call
        assert_same_bits(p.grads("npu"), want)


# ---- 23: device memory and plans are not picklable

def _copies():
    return [("deepcopy", copy.deepcopy), ("copy", copy.copy),
            ("pickle", lambda x: pickle.loads(pickle.dumps(x)))]


@pytest.mark.parametrize("how", [h for _, h in _copies()], ids=[n for n, _ in _copies()])
def test_device_memory_cannot_be_pickled_and_says_what_to_do(how, no_leaks):
    arr = acl.DeviceArray.from_numpy(np.arange(6, dtype=np.float32))
    for obj in (arr, arr[2:], arr.buffer):
        with pytest.raises(TypeError, match=r"device memory.*\.numpy\(\)"):
            how(obj)
    assert np.array_equal(arr.numpy(), np.arange(6, dtype=np.float32))
    arr.free()


def test_a_plan_cannot_be_pickled(no_leaks):
    p = make_problem(seed=25, q_lens=(5, 4), mode=0)
    with acl.FagPlan.from_call(validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy,
                                                    **p.kwargs())) as plan:
        for how in (copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="FagPlan cannot be pickled.*device memory"):
                how(plan)
        grads = plan.run()
        with pytest.raises(TypeError, match="device memory"):
            pickle.dumps(grads.dq)
        assert isinstance(pickle.loads(pickle.dumps(grads.dq.numpy())), np.ndarray)
        del grads
