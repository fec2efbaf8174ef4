"""No native object outlives its call: the stub's counters return to zero (once the executor
cache, which keeps executors and their handles between calls on purpose, is emptied:
``StubControls.counters`` does that; tests/acl/test_exec_cache.py checks the cache itself)."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import aclnn_fag.acl as acl
from aclnn_fag import errors
from aclnn_fag.acl import prototypes
from aclnn_fag.rules import validate_backward
from acl_cases import make_problem

PHASE1, PHASE2 = prototypes.PHASE1, prototypes.PHASE2


def _call(p):
    tensors = dict(query=p.q, query_rope=p.qr, key=p.k, key_rope=p.kr, value=p.v, dy=p.dy)
    return validate_backward(**tensors, **p.kwargs())


# (native function, calls to let through first, status): one failure point per call
_FAILURES_CACHE_OFF = {
    1: ("aclCreateTensor", 6, 561103),          # halfway through marshaling
    2: (PHASE1, 0, 561002),                     # phase 1 fails
    3: ("aclrtMalloc", None, 207001),           # the workspace (phase 1 succeeded)
    4: (PHASE2, 0, 361001),                     # phase 2 fails
    5: ("aclrtSynchronizeStream", 0, 507015),   # the kernel "faults"
    6: ("aclCreateIntArray", 1, 561103),
    7: ("aclrtMemcpy", 4, 507899),
    8: ("aclrtMalloc", 0, 207001),              # the call's arena (uploads + outputs)
}
# with the executor cache, call 0 of every ten leaves a cached executor: call 1 is a cache
# hit whose phase 2 fails (the entry is destroyed), so calls 2..8 run phase 1 again and
# every failure point of the first table is reached; call 9 caches a new executor
_FAILURES_CACHE_ON = dict(_FAILURES_CACHE_OFF)
_FAILURES_CACHE_ON[1] = (PHASE2, 0, 361001)    # phase 2 of a cached, repointed executor
_FAILURES_CACHE_ON[4] = ("aclCreateTensor", 6, 561103)


@pytest.mark.parametrize("cache", ["off", "on"])
def test_thousand_calls_with_failures_leak_nothing(cache, monkeypatch, no_leaks):
    monkeypatch.setenv("ACLNN_FAG_EXECUTOR_CACHE", "0" if cache == "off" else "4")
    p = make_problem(seed=31, q_lens=(5, 0, 7), kv_lens=(6, 2, 7), n2=1, g=2, d=16, dr=8)
    call = _call(p)
    acl.reset_stats()
    expected = acl.run_backward(call)
    n_malloc = acl.stats()["malloc"]
    failures = {k: (f, n_malloc - 1 if n is None else n, code) for k, (f, n, code) in
                (_FAILURES_CACHE_OFF if cache == "off" else _FAILURES_CACHE_ON).items()}
    failed = 0
    for i in range(1000):
        plan = failures.get(i % 10)
        if plan is None:
            got = acl.run_backward(call)
            if i % 97 == 0:
                for a, b in zip(got, expected):
                    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
            continue
        no_leaks.inject(*plan)
        with pytest.raises(errors.AclnnError) as info:
            acl.run_backward(call)
        assert info.value.code == plan[2], (plan, info.value)
        failed += 1
    assert failed == 800
    if cache == "on":
        # hits: each call 0 (the entry of the call before) and each failing call 1
        assert acl.stats()["cache_hits"] == 200
    counters = no_leaks.counters()
    assert counters["tensors"] == counters["int_arrays"] == counters["executors"] == 0
    assert counters["device_bytes"] == 0


def test_concurrent_threads(no_leaks):
    problems = [make_problem(seed=40 + i, q_lens=(4 + i, 6), n2=1, g=1 + i % 2, d=16, dr=8)
                for i in range(4)]
    calls = [_call(p) for p in problems]
    expected = [acl.run_backward(c) for c in calls]
    errors_seen = []
    barrier = threading.Barrier(4)

    def worker(idx):
        try:
            barrier.wait()
            for j in range(40):
                got = acl.run_backward(calls[(idx + j) % 4])
                ref = expected[(idx + j) % 4]
                for a, b in zip(got, ref):
                    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
        except BaseException as exc:   # pragma: no cover - reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors_seen, errors_seen
    assert acl.stats()["streams"] >= 4            # one stream per (device, thread)


def test_buffers_freed_by_gc_from_any_thread(no_leaks):
    arr = acl.DeviceArray.from_numpy(np.arange(64, dtype=np.float32))
    assert no_leaks.counters()["device_bytes"] >= 256
    box = [arr]
    del arr

    def drop():
        box.clear()     # the last reference dies on a thread that never set the device
        gc.collect()

    t = threading.Thread(target=drop)
    t.start()
    t.join()
    gc.collect()
    assert no_leaks.counters()["device_bytes"] == 0


def test_buffer_in_a_reference_cycle_is_freed_by_the_collector(no_leaks):
    """The garbage-collection release (a weak reference kept on the registered claim) also
    runs when the owner dies inside a reference cycle."""
    class Node:
        pass

    node = Node()
    node.buf = acl.runtime.DeviceBuffer(4096)
    node.buf.back = node            # buffer <-> node: only the cycle collector frees them
    node.me = node
    assert no_leaks.counters()["device_bytes"] == 4096
    gc.disable()
    try:
        del node
        assert no_leaks.counters()["device_bytes"] == 4096   # not by reference counting
    finally:
        gc.enable()
    gc.collect()
    assert no_leaks.counters()["device_bytes"] == 0
    assert not [c for c in acl.runtime.ownership.pending() if c.what.startswith("device")]


def test_explicit_release_is_idempotent(no_leaks):
    buf = acl.DeviceBuffer(100)
    assert not buf.closed and buf.ptr % 32 == 0
    buf.free()
    buf.free()
    assert buf.closed
    with acl.DeviceBuffer(10) as b2:
        assert b2.ptr is not None
    assert b2.closed
    empty = acl.DeviceBuffer(0)
    assert empty.ptr is None and not empty.closed
    t = acl.AclTensor.from_device_array(acl.DeviceArray.zeros((2, 3), np.float32))
    t.destroy()
    t.destroy()
    ia = acl.AclIntArray([1, 2, 3])
    with ia:
        assert ia.handle
    assert ia.handle is None
    assert not [r for r in acl.runtime.live_resources()
                if isinstance(r, (acl.AclTensor, acl.AclIntArray))]


def test_shutdown_releases_everything(no_leaks):
    keep = [acl.DeviceArray.zeros((4, 4), np.float32), acl.AclIntArray([5])]
    acl.runtime.stream(0)
    assert no_leaks.counters()["streams"] == 1
    acl.shutdown(finalize=False)
    c = no_leaks.counters()
    assert c["device_bytes"] == 0 and c["int_arrays"] == 0 and c["streams"] == 0
    assert keep[0].closed and keep[1].handle is None
    # the package initialises again on the next use
    assert acl.DeviceArray.from_numpy(np.ones(3, np.float32)).numpy().sum() == 3


def test_interpreter_shutdown_with_live_resources(stub_lib_dir):
    """Buffers, tensors, plans and streams still alive at exit are released quietly."""
    import os
    import pathlib
    import subprocess
    import sys
    import textwrap

    here = pathlib.Path(__file__).resolve().parent
    root = here.parents[1]
    script = textwrap.dedent("""
        import atexit, ctypes, os, sys, threading

        def report():      # registered first, so it runs after every other exit handler
            lib = ctypes.CDLL(os.path.join(os.environ["ACLNN_FAG_LIB_DIR"], "libascendcl.so"))
            vals = [ctypes.c_int64(-1) for _ in range(5)]
            fn = lib["aclStubGetCounters"]
            fn.argtypes = [ctypes.POINTER(ctypes.c_int64)] * 5
            fn.restype = None
            fn(*[ctypes.byref(v) for v in vals])
            print("counters", [v.value for v in vals])

        atexit.register(report)
        sys.path.insert(0, %r)
        import numpy as np
        import aclnn_fag.acl as acl
        from aclnn_fag.rules import validate_backward
        from acl_cases import make_problem
        p = make_problem(seed=3, q_lens=(5, 4), d=16, dr=8)
        call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs())
        plan = acl.FagPlan.from_call(call)
        plan.run()
        kept = [acl.DeviceArray.from_numpy(np.ones(10, np.float32)), acl.AclIntArray([1, 2])]
        class Cycle: pass
        c = Cycle(); c.self = c; c.arr = acl.DeviceArray.zeros((4,), np.float32)
        t = threading.Thread(target=lambda: acl.run_backward(call)); t.start(); t.join()
        acl.run_backward(call)
        print("done")
    """ % str(here))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_")}
    env["ACLNN_FAG_LIB_DIR"] = str(stub_lib_dir)
    env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["done", "counters [0, 0, 0, 0, 0]"], proc.stdout
    assert "Exception" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_two_devices_from_one_thread(monkeypatch, no_leaks):
    monkeypatch.setenv("ACL_STUB_DEVICE_COUNT", "2")      # the stub reads it on every call
    p = make_problem(seed=71, q_lens=(5, 6), d=16, dr=8)
    call = _call(p)
    ref = acl.run_backward(call, device_id=0)
    for dev in (1, 0, 1):
        got = acl.run_backward(call, device_id=dev)
        for a, b in zip(got, ref):
            assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
    on1 = acl.DeviceArray.from_numpy(np.ones(8, np.float32), device_id=1)
    acl.run_backward(call, device_id=0)                  # this thread is on device 0 now
    assert on1.device_id == 1 and on1.numpy().sum() == 8
    del on1
    gc.collect()
    with acl.FagPlan.from_call(call, device_id=1) as plan:
        plan.run()
        for a, b in zip(plan.grads(), ref):
            assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
    acl.release_thread_resources()
    assert no_leaks.counters()["streams"] == 0
