"""Faults a long-running process meets (docs/faults.md): transient init failures, forks, bad
device ids, failed releases, unwritten outputs, an unreadable determinism option."""

from __future__ import annotations

import gc
import os
import pickle
import warnings

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag import errors
from aclnn_fag.acl import ownership, runtime
from aclnn_fag.api import resolve_backend
from aclnn_fag.rules import validate_backward
from acl_cases import make_problem


@pytest.fixture(scope="module")
def prob():
    return make_problem(seed=101, q_lens=(5, 0, 6), n2=1, g=2, d=16, dr=8)


def _call(p, **over):
    return validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs(**over))


@pytest.fixture
def two_devices(monkeypatch):
    monkeypatch.setenv("ACL_STUB_DEVICE_COUNT", "2")     # the stub reads it on every call


@pytest.fixture
def fresh_acl(monkeypatch):
    """ACL finalised and the availability forgotten: the next use calls aclInit again."""
    monkeypatch.setattr(acl, "RETRY_BACKOFF_MIN", 0.0)
    acl.shutdown(finalize=True)
    acl.reset()
    yield
    acl.reset()


# ----------------------------------------------------------------------------- item 2: init retry
@pytest.mark.parametrize("function", ["aclInit", "aclrtGetDeviceCount"])
def test_transient_init_failure_is_retried_on_the_next_call(function, fresh_acl, stub, prob):
    stub.inject(function, 0, 507899)                     # one failure, then it works again
    status = acl.availability()
    assert not status.ok and status.transient
    assert f"{function} returned 507899" in status.reason
    # the next call probes again (back-off 0 here): the NPU is back, auto picks it
    assert acl.availability().ok
    assert resolve_backend("auto") == "npu"
    got = prob.grads("npu")
    ref = prob.grads("numpy")
    assert all(a.shape == b.shape for a, b in zip(got, ref))


def test_backend_npu_error_names_the_function_and_code(fresh_acl, stub):
    stub.inject("aclInit", 0, 507899)
    with pytest.raises(errors.BackendUnavailableError) as info:
        resolve_backend("npu")
    assert "aclInit returned 507899" in str(info.value)
    assert resolve_backend("npu") == "npu"               # retried: fine now


def test_retry_waits_for_the_back_off(fresh_acl, stub, monkeypatch):
    monkeypatch.setattr(acl, "RETRY_BACKOFF_MIN", 3600.0)
    acl.reset()                                          # back-off starts at MIN
    stub.inject("aclrtGetDeviceCount", 0, 507899)
    assert not acl.availability().ok
    assert not acl.availability().ok                     # within the back-off: cached
    acl.reset()
    assert acl.availability().ok


# ----------------------------------------------------------------------------- item 3: fork
def test_public_call_in_a_forked_child_raises_forked_process_error(prob):
    prob.grads("npu")                                    # the parent initialised ACL
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                         # pragma: no cover - child
        try:
            try:
                prob.grads("npu")
                out = "no error"
            except acl.ForkedProcessError as exc:
                out = ("ForkedProcessError", isinstance(exc, errors.BackendUnavailableError),
                       exc.code)
            except BaseException as exc:
                out = repr(exc)
            prob.grads("auto")
            auto = af.last_backend()
            os.write(w, pickle.dumps((out, auto)))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    out, auto = pickle.loads(data)
    assert out == ("ForkedProcessError", True, 361001), out
    assert auto == "numpy"                               # auto still falls back


# ----------------------------------------------------------------------------- item 4: device ids
@pytest.mark.parametrize("bad", [2 ** 32 + 1, 2 ** 31, -1])
def test_device_ids_outside_int32_are_refused_everywhere(bad, prob, two_devices, no_leaks):
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match=r"outside \[0, 2147483647\]"):
        acl.DeviceArray.from_numpy(x, device_id=bad)
    with pytest.raises(ValueError, match=r"outside \[0, 2147483647\]"):
        acl.DeviceArray.empty((0,), np.float32, device_id=bad)
    with pytest.raises(ValueError, match=r"outside \[0, 2147483647\]"):
        acl.FagPlan.from_call(_call(prob), device_id=bad)
    with pytest.raises(ValueError, match=r"outside \[0, 2147483647\]"):
        acl.call_raw(**prob.raw_kwargs(), device_id=bad)
    assert no_leaks.counters()["device_bytes"] == 0       # nothing landed on device 1


def test_device_ids_beyond_the_device_count(prob, two_devices, no_leaks):
    with pytest.raises(errors.AclRuntimeError) as info:
        acl.DeviceArray.from_numpy(np.ones(4, np.float32), device_id=2)
    assert info.value.code == 107001 and info.value.param == "device_id"
    assert "aclrtGetDeviceCount reports 2 device(s)" in str(info.value)
    with pytest.raises(errors.AclRuntimeError, match="device id 5 does not exist"):
        acl.FagPlan.from_call(_call(prob), device_id=5)


def test_environment_device_id_is_checked(prob, two_devices, monkeypatch, no_leaks):
    monkeypatch.setenv("ACLNN_FAG_DEVICE", str(2 ** 32 + 1))
    with pytest.raises(ValueError, match=r"\$ACLNN_FAG_DEVICE: device id 4294967297 is outside"):
        acl.run_backward(_call(prob))
    monkeypatch.setenv("ACLNN_FAG_DEVICE", "3")
    with pytest.raises(errors.AclRuntimeError) as info:
        acl.run_backward(_call(prob))
    assert info.value.param == "ACLNN_FAG_DEVICE" and info.value.code == 107001
    assert not acl.availability(refresh=True).ok         # auto does not pick the NPU then


def test_device_array_of_another_device_is_refused(prob, two_devices, no_leaks):
    dy1 = acl.DeviceArray.from_numpy(prob.dy, device_id=1)
    with pytest.raises(ValueError, match="'dy': the device array is on device 1, but the call "
                                         "runs on device 0"):
        acl.call_raw(**prob.raw_kwargs(dy=dy1), device_id=0)
    with pytest.raises(ValueError, match="on device 1, but the call runs on device 0"):
        acl.FagPlan(**_plan_kwargs(prob, dy=dy1), device_id=0)
    with acl.FagPlan.from_call(_call(prob), device_id=0) as plan:
        with pytest.raises(ValueError, match="'dy': the device array is on device 1"):
            plan.run(dy=dy1)
    got = acl.call_raw(**prob.raw_kwargs(dy=dy1), device_id=1)    # the right device: fine
    ref = acl.call_raw(**prob.raw_kwargs(), device_id=0)
    for a, b in zip(got, ref):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
    del dy1


def _plan_kwargs(p, **over):
    kw = dict(query=p.q, query_rope=p.qr, key=p.k, key_rope=p.kr, value=p.v, dy=p.dy,
              **p.kwargs())
    kw.pop("pre_tokens"), kw.pop("next_tokens"), kw.pop("sparse_mode")
    kw.update(over)
    return kw


# ----------------------------------------------------------------------------- item 5: releases
def test_failed_destroy_after_a_successful_op_returns_the_results_with_a_warning(prob, stub):
    ref = acl.call_raw(**prob.raw_kwargs())
    gc.collect()
    stub.inject("aclDestroyTensor", 3, 561000)
    with pytest.warns(errors.ResourceReleaseWarning, match="aclDestroyTensor returned 561000"):
        got = acl.call_raw(**prob.raw_kwargs())
    for a, b in zip(got, ref):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
    assert stub.counters()["tensors"] == 1                # kept, not dropped
    # the kept tensor is the one pending handle besides the thread's stream
    assert len([c for c in ownership.pending() if c.what != "a stream (aclrtCreateStream)"]) == 1
    acl.shutdown(finalize=False)                          # its retry
    assert stub.objects() == dict(tensors=0, int_arrays=0, executors=0, device_bytes=0)


def test_failed_free_raises_keeps_the_memory_for_shutdown(stub):
    gc.collect()
    buf = acl.DeviceBuffer(256)
    stub.inject("aclrtFree", 0, 507899)
    with pytest.raises(errors.AclnnError, match="aclrtFree returned 507899"):
        buf.free()
    assert buf.closed and stub.counters()["device_bytes"] == 256
    acl.shutdown(finalize=False)
    assert stub.counters()["device_bytes"] == 0


def test_failed_release_by_the_garbage_collector_warns_and_shutdown_retries(stub):
    gc.collect()
    arr = acl.DeviceArray.zeros((8, 8), np.float32)
    stub.inject("aclrtFree", 0, 507899)
    with pytest.warns(errors.ResourceReleaseWarning, match="kept and released again"):
        del arr
        gc.collect()
    assert stub.counters()["device_bytes"] == 256
    acl.shutdown(finalize=False)
    assert stub.counters()["device_bytes"] == 0


def test_release_failing_at_shutdown_too_is_dropped_with_a_warning(stub):
    gc.collect()
    t = acl.AclIntArray([1, 2, 3])
    stub.inject("aclDestroyIntArray", 0, 561000)
    with pytest.raises(errors.AclnnError):
        t.destroy()
    stub.inject("aclDestroyIntArray", 0, 561000)
    with pytest.warns(errors.ResourceReleaseWarning, match="dropped"):
        acl.shutdown(finalize=False)
    assert not ownership.pending()
    assert stub.counters()["int_arrays"] == 1             # really not destroyed (stub state)
    stub.clear()
    assert runtime.api().aclDestroyIntArray(t._claim.handle) == 0    # (clean the stub up)


def test_stream_destruction_failure_is_reported_and_retried(stub):
    acl.release_thread_resources()
    runtime.stream(0)
    assert stub.counters()["streams"] == 1
    stub.inject("aclrtDestroyStream", 0, 507899)
    with pytest.warns(errors.ResourceReleaseWarning, match="aclrtDestroyStream returned 507899"):
        acl.release_thread_resources()
    assert stub.counters()["streams"] == 1
    acl.shutdown(finalize=False)
    assert stub.counters()["streams"] == 0


# ----------------------------------------------------------------------------- item 6: zero fill
def test_outputs_the_op_leaves_unwritten_are_zero(prob, no_leaks):
    """The op's empty-tensor path (no keys) writes dq but not dq_rope."""
    kw = prob.raw_kwargs(key=prob.k[:0], key_rope=prob.kr[:0], value=prob.v[:0],
                         actual_seq_kvlen=[0, 0, 0])
    got = acl.call_raw(**kw)
    assert got.dq_rope.shape == prob.qr.shape
    assert not np.any(got.dq_rope.astype(np.float32)), "stale device memory in dq_rope"
    assert not np.any(got.dq.astype(np.float32))


def test_plan_outputs_start_zeroed(prob, no_leaks):
    with acl.FagPlan.from_call(_call(prob)) as plan:
        for arr in plan.outputs:
            assert not np.any(arr.numpy().astype(np.float32))


# ----------------------------------------------------------------------------- item 7: determinism
def _set(value):
    runtime._set_determinism(runtime.ensure_device(0), value)


def test_transient_read_failure_restores_the_exact_value(prob, stub, no_leaks):
    _set(1)
    stub.inject("aclrtCtxGetSysParamOpt", 0, 507899)     # one failed read, then fine
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.DeterminismWarning)
        acl.call_raw(**prob.raw_kwargs(), deterministic=False)
    assert runtime.get_determinism(0) == 1               # the user's value, not 0
    _set(0)


def test_unreadable_option_is_reported_and_left_as_the_call_ran(prob, stub, monkeypatch, no_leaks):
    _set(1)
    b = runtime.api()
    monkeypatch.setattr(b, "aclrtCtxGetSysParamOpt", lambda opt, out: 507899)
    with pytest.warns(errors.DeterminismWarning, match="returned 507899"):
        acl.call_raw(**prob.raw_kwargs(), deterministic=True)
    monkeypatch.undo()
    assert runtime.get_determinism(0) == 1               # left as the call ran, no guess
    _set(0)


def test_hold_released_by_a_finalizer_inside_a_gate_section_is_applied_later(no_leaks):
    """Garbage collection may run a dead hold's finalizer while this thread is inside the
    gate (any allocation there): the leave is deferred to the next entry, not applied
    halfway through the section."""
    _set(0)
    a = runtime.DeterminismHold(0, True).acquire()
    gate = runtime._state.gates[0]
    with gate.lock:                                      # as inside a gate section
        a.release()
        assert gate.active == 1 and len(gate.deferred) == 1
    assert runtime.get_determinism(0) == 1
    with acl.determinism(0, False):                      # the deferred leave is applied first
        assert runtime.get_determinism(0) == 0
    assert runtime.get_determinism(0) == 0
    assert gate.active == 0 and not gate.deferred
