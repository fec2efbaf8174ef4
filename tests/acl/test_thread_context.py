"""The per-thread "device current" record follows the thread's real context.

The package calls aclrtSetDevice once per thread and remembers it. Other code on the same
thread (a user's own aclrtResetDevice, another library, a test driving the runtime through
ctypes) can take that context away; the next call of the package must notice it and set
the device again. Before the fix, it failed with 107002 (ACL_ERROR_RT_CONTEXT_NULL), and
``acl.shutdown()`` warned "aclrtDestroyStream returned 107002".
"""

from __future__ import annotations

import ctypes
import threading
import warnings

import numpy as np
import pytest

import aclnn_fag.acl as acl
from aclnn_fag import errors
from aclnn_fag.acl import DeviceArray, runtime
from aclnn_fag.rules import validate_backward
from acl_cases import make_problem


def _foreign_runtime(stub_lib_dir):
    """libascendcl.so as other code on this thread calls it (the same library instance)."""
    lib = ctypes.CDLL(str(stub_lib_dir / "libascendcl.so"))
    fns = {}
    for name in ("aclrtSetDevice", "aclrtResetDevice"):
        fn = lib[name]                       # aclError aclrtResetDevice(int32_t deviceId);
        fn.argtypes, fn.restype = [ctypes.c_int32], ctypes.c_int
        fns[name] = fn
    fn = lib["aclrtGetCurrentContext"]       # aclError aclrtGetCurrentContext(aclrtContext *);
    fn.argtypes, fn.restype = [ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int
    fns["aclrtGetCurrentContext"] = fn
    return fns


def _has_context(fns) -> bool:
    ctx = ctypes.c_void_p()
    return fns["aclrtGetCurrentContext"](ctypes.byref(ctx)) == 0 and bool(ctx.value)


@pytest.fixture
def foreign(stub_lib_dir):
    fns = _foreign_runtime(stub_lib_dir)
    yield fns


def test_calls_after_a_foreign_reset_set_the_device_again(foreign, no_leaks):
    p = make_problem(seed=94, q_lens=(5, 3), d=16, dr=8)
    call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs())
    expected = acl.run_backward(call)             # this thread: device 0 set by the package
    assert _has_context(foreign)
    assert foreign["aclrtResetDevice"](0) == 0    # someone else resets it on this thread
    assert not _has_context(foreign)
    got = acl.run_backward(call)                  # 107002 on aclrtMalloc without the fix
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    assert _has_context(foreign)
    with DeviceArray.from_numpy(np.arange(6, dtype=np.float32)) as arr:
        assert foreign["aclrtResetDevice"](0) == 0
        np.testing.assert_array_equal(arr.numpy(), np.arange(6, dtype=np.float32))


def test_shutdown_after_a_foreign_reset_destroys_the_streams_cleanly(foreign, no_leaks):
    """tests/torch/conftest.py's acl.shutdown() warned 'aclrtDestroyStream returned 107002'
    after tests/native had reset the device on the main thread."""
    runtime.stream(0)                             # this thread's stream exists
    assert foreign["aclrtResetDevice"](0) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.ResourceReleaseWarning)
        acl.shutdown()
    assert no_leaks.counters()["streams"] == 0


def test_releases_from_another_thread_after_a_foreign_reset(foreign, no_leaks):
    """A buffer freed on a worker thread whose context was reset by other code there."""
    out = {}

    def worker():
        arr = DeviceArray.from_numpy(np.ones(4, np.float32))
        out["reset"] = foreign["aclrtResetDevice"](0)
        try:
            arr.free()
            out["freed"] = arr.closed
        except Exception as exc:                  # pragma: no cover - the failure reported
            out["error"] = exc

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert out == {"reset": 0, "freed": True}
    acl.release_thread_resources()


def test_a_valid_record_costs_no_set_device(foreign, stub, monkeypatch, no_leaks):
    """While the context is the one the package made current, no aclrtSetDevice again."""
    runtime.ensure_device(0)
    b = runtime.api()
    calls = []
    real = b.aclrtSetDevice

    def counting(dev):
        calls.append(dev)
        return real(dev)
    monkeypatch.setattr(b, "aclrtSetDevice", counting)
    for _ in range(3):
        runtime.ensure_device(0)
    assert calls == []
    assert foreign["aclrtResetDevice"](0) == 0
    runtime.ensure_device(0)
    runtime.ensure_device(0)
    assert calls == [0]


def test_without_the_context_query_the_record_is_trusted(stub, stub_lib_dir, monkeypatch,
                                                        no_leaks):
    """An older CANN without aclrtGetCurrentContext: no check, no extra aclrtSetDevice."""
    b = runtime.api()
    monkeypatch.setattr(b, "aclrtGetCurrentContext", None)
    acl.shutdown()                                # a fresh record, made without the query
    runtime.ensure_device(0)
    calls = []
    real = b.aclrtSetDevice
    monkeypatch.setattr(b, "aclrtSetDevice", lambda dev: calls.append(dev) or real(dev))
    for _ in range(3):
        runtime.ensure_device(0)
    with DeviceArray.from_numpy(np.ones(3, np.float32)) as arr:
        assert arr.numpy().sum() == 3
    assert calls == []
    monkeypatch.undo()        # the query is back: the record made without it is checked again
    foreign = _foreign_runtime(stub_lib_dir)
    assert foreign["aclrtResetDevice"](0) == 0
    with DeviceArray.from_numpy(np.ones(3, np.float32)) as arr:
        assert arr.numpy().sum() == 3


def _count_context_queries(monkeypatch):
    b = runtime.api()
    real = b.aclrtGetCurrentContext
    calls = []
    monkeypatch.setattr(b, "aclrtGetCurrentContext", lambda p: calls.append(1) or real(p))
    return calls


def test_one_context_query_per_operation(stub, monkeypatch, no_leaks):
    """An op call (many uploads, allocations, downloads) queries the context once; the
    calls outside an operation still query every time."""
    p = make_problem(seed=95, q_lens=(5, 3), d=16, dr=8)
    call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs())
    acl.run_backward(call)                        # streams etc. made
    calls = _count_context_queries(monkeypatch)
    acl.run_backward(call)
    assert len(calls) == 1
    del calls[:]
    for _ in range(3):
        runtime.ensure_device(0)
    assert len(calls) == 3
    del calls[:]
    with runtime.operation():
        for _ in range(3):
            runtime.ensure_device(0)
        with runtime.operation():                 # nested: checks again on its own
            runtime.ensure_device(0)
            runtime.ensure_device(0)
        runtime.ensure_device(0)
    assert len(calls) == 2
    runtime.ensure_device(0)                      # the operation is over: checked again
    assert len(calls) == 3


def test_foreign_reset_inside_then_between_operations(foreign, monkeypatch, no_leaks):
    """A reset between two plan runs is noticed by the next run's single check."""
    p = make_problem(seed=96, q_lens=(5, 3), d=16, dr=8)
    call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs())
    expected = acl.run_backward(call)
    with acl.FagPlan.from_call(call) as plan:
        first = [x.numpy() if x is not None else None for x in plan.run()]
        assert foreign["aclrtResetDevice"](0) == 0
        assert not _has_context(foreign)
        second = [x.numpy() if x is not None else None for x in plan.run()]
        assert _has_context(foreign)
    for a, b_, e in zip(first, second, expected):
        if e is None:
            continue
        np.testing.assert_array_equal(a.view(np.uint16), e.view(np.uint16))
        np.testing.assert_array_equal(b_.view(np.uint16), e.view(np.uint16))
