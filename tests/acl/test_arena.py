"""The device memory of a call on host arrays: one allocation (an arena) for the uploads and
the outputs, slices aligned and disjoint, outputs zero-filled, freed once on every path.

These tests count allocations and frees per call, so the reuse of that memory by later
calls (aclnn_fag/acl/call_pool.py, tested in test_call_pool.py) is turned off here."""

from __future__ import annotations

import gc

import ml_dtypes
import numpy as np
import pytest

import aclnn_fag.acl as acl
from aclnn_fag import errors
from aclnn_fag.acl import arena, call_pool, device, op, tensors
from aclnn_fag.rules import validate_backward
from acl_cases import assert_grads_close, make_problem

BF16 = np.dtype(ml_dtypes.bfloat16)
ALIGN = arena.ARENA_ALIGN


@pytest.fixture(autouse=True)
def _no_reuse(monkeypatch):
    monkeypatch.setenv(call_pool.ENV_LIMIT, "0")


def _call(p):
    return validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs())


def _extent(da):
    """[first byte, end byte) a DeviceArray view can reach, as device addresses."""
    first = da.buffer.ptr + da.offset * da.itemsize
    return first, first + (da.max_index_from_offset + 1) * da.itemsize


def _disjoint(a, b) -> bool:
    return a[1] <= b[0] or b[1] <= a[0]


@pytest.fixture
def seen_tensors(monkeypatch):
    """Every DeviceArray the calls describe as aclTensors (inputs first, then outputs),
    with its buffer's address and size when the tensor was made."""
    seen = []
    real = tensors.HandleBatch.tensors

    def spy(self, arrays):
        arrays = list(arrays)
        seen.append([None if a is None else (a, a.buffer.ptr, a.buffer.nbytes, _extent(a))
                     for a in arrays])
        return real(self, arrays)
    monkeypatch.setattr(tensors.HandleBatch, "tensors", spy)
    return seen


def test_one_allocation_for_uploads_and_outputs(seen_tensors, stub, no_leaks):
    p = make_problem(seed=81, q_lens=(7, 5), n2=2, g=2)
    call = _call(p)
    acl.reset_stats()
    got = acl.run_backward(call)
    s = acl.stats()
    # the call's arena, plus the workspace the op asked for; every one of them freed
    assert s["malloc"] == 2 and s["free"] == 2
    assert s["memset"] == 1                                    # the five outputs at once
    assert s["malloc_bytes"] >= sum(a.nbytes for a in (p.q, p.qr, p.k, p.kr, p.v, p.dy))
    assert_grads_close(got, p.grads("numpy"))
    inputs, outputs = seen_tensors
    described = [x for x in inputs + outputs if x is not None]
    assert len(described) == 15
    lo = min(ptr for _, ptr, _, _ in described)            # dq: the arena's first slice
    for da, ptr, nbytes, ext in described:
        assert ptr % 32 == 0 and (ptr - lo) % ALIGN == 0, (da, ptr)   # tensorData aligned
        assert ptr <= ext[0] and ext[1] <= ptr + nbytes                # view inside its storage
    # the outputs overlap nothing: no input, no other output
    outs = [x[3] for x in outputs if x is not None]           # dpse is NULL
    for i, o in enumerate(outs):
        for other in [x[3] for x in inputs if x is not None] + outs[:i] + outs[i + 1:]:
            assert _disjoint(o, other), (o, other)
    # and every piece lies inside the one allocation
    hi = max(ext[1] for _, _, _, ext in described)
    assert hi - lo <= s["malloc_bytes"]


def test_views_of_one_host_array_share_one_slice(seen_tensors, no_leaks):
    p = make_problem(seed=82, q_lens=(6, 4), n2=1, g=2, d=16, dr=8)
    qkv = np.concatenate([p.q, p.qr], axis=-1)
    q, qr = qkv[..., :16], qkv[..., 16:]
    acl.reset_stats()
    got = acl.run_backward(validate_backward(q, qr, p.k, p.kr, p.v, p.dy, **p.kwargs()))
    assert acl.stats()["h2d"] == 9                      # ten inputs, q and q_rope one copy
    inputs = seen_tensors[0]
    (dq, qptr, qn, _), (dqr, rptr, rn, _) = inputs[0], inputs[1]
    assert dq.buffer is dqr.buffer and qptr == rptr and (dq.offset, dqr.offset) == (0, 16)
    assert_grads_close(got, p.grads("numpy"))


def test_call_memory_layout_and_contents(stub, no_leaks):
    rng = np.random.default_rng(3)
    host = rng.standard_normal((6, 40)).astype(np.float32)
    odd = np.arange(7, dtype=np.uint8)                 # 7 bytes: the next piece is re-aligned
    init = np.full((3, 5), 2.5, np.float32)
    acl.runtime.ensure_device(0)
    acl.reset_stats()
    mem = device.call_memory([host[:, :8], None, host[:, 8:], odd, np.zeros((0, 4), BF16)],
                             [((4, 3), BF16, None), ((0,), BF16, None), ((3, 5), np.float32, init),
                              ((9,), np.float32, None)], 0)
    try:
        s = acl.stats()
        assert s["malloc"] == 1 and s["memset"] == 1 and s["h2d"] == 3   # two groups + init
        (only,) = mem.arenas
        assert mem.result_arenas == []
        a, none, b, o, empty = mem.inputs
        assert none is None and empty.buffer.ptr is None and empty.shape == (0, 4)
        assert a.buffer is b.buffer and (a.offset, b.offset) == (0, 8)
        assert np.array_equal(a.numpy(), host[:, :8]) and np.array_equal(b.numpy(), host[:, 8:])
        assert np.array_equal(o.numpy(), odd)
        z, e, i, z2 = mem.outputs
        assert e.buffer.ptr is None and e.shape == (0,)
        assert not np.any(z.numpy().astype(np.float32)) and not np.any(z2.numpy())
        assert np.array_equal(i.numpy(), init)
        pieces = [x.buffer for x in (a, o, z, i, z2)]
        for buf in pieces:
            assert buf.arena is only
            assert (buf.ptr - only.ptr) % ALIGN == 0 and buf.ptr % 32 == 0
            assert buf.ptr + buf.nbytes <= only.ptr + only.nbytes
        spans = sorted((buf.ptr, buf.ptr + buf.nbytes) for buf in pieces)
        assert all(x[1] <= y[0] for x, y in zip(spans, spans[1:]))
        # the zero-filled outputs come first: one memset covers both
        assert z.buffer.ptr == only.ptr and z2.buffer.ptr < i.buffer.ptr
    finally:
        for buf in mem.arenas:
            buf.free()
    assert all(x.buffer.closed for x in mem.inputs[:4:3] + mem.outputs[::3])
    with pytest.raises(ValueError, match="freed"):
        mem.outputs[0].numpy()


def test_layout_rounds_every_start_up():
    offsets, end = arena.layout([1, ALIGN, 0, 3], 5)
    assert offsets == [ALIGN, 2 * ALIGN, 3 * ALIGN, 3 * ALIGN] and end == 3 * ALIGN + 3
    assert arena.layout([]) == ([], 0)


def _live_bytes(stub):
    return stub.counters()["device_bytes"]


def test_device_results_share_one_arena_that_lives_as_long_as_any_result(stub, no_leaks):
    p = make_problem(seed=83, q_lens=(5, 6), n2=1, g=2, d=16, dr=8)
    call = _call(p)
    on_host = acl.run_backward(call)
    before = _live_bytes(stub)
    acl.reset_stats()
    res = acl.run_backward(call, keep_on_device=True)
    # the uploads' arena and the workspace were freed; the results' arena lives on
    assert acl.stats()["malloc"] == 3 and acl.stats()["free"] == 2
    bufs = [r.buffer for r in res]
    owner = bufs[0].arena
    assert all(b.arena is owner for b in bufs) and owner.shares == 5
    assert _live_bytes(stub) - before == owner.nbytes
    res[0].free()
    res[3].free()
    assert res[0].closed and res[3].closed and not res[1].closed and owner.shares == 3
    for i in (1, 2, 4):
        assert np.array_equal(res[i].numpy().view(np.uint16), on_host[i].view(np.uint16))
    res[1].free()
    res[2].free()
    assert _live_bytes(stub) - before == owner.nbytes    # still alive: dv is
    assert np.array_equal(res[4].numpy().view(np.uint16), on_host.dv.view(np.uint16))
    res[4].free()
    assert owner.closed and _live_bytes(stub) == before   # the last share frees it
    res[4].free()                                         # idempotent
    assert owner.shares == 0


def test_device_results_dropped_without_free_release_the_arena(stub, no_leaks):
    p = make_problem(seed=84, q_lens=(4,), n2=1, g=1, d=16, dr=8)
    before = _live_bytes(stub)
    res = acl.run_backward(_call(p), keep_on_device=True)
    dv = res.dv
    del res
    gc.collect()
    assert _live_bytes(stub) > before                     # dv keeps the arena
    assert dv.numpy().shape == p.v.shape
    del dv
    gc.collect()
    assert _live_bytes(stub) == before


@pytest.mark.parametrize("function,count", [
    ("aclrtMalloc", 0),          # the arena
    ("aclrtMemset", 0),          # the outputs' zero fill
    ("aclrtMemcpy", 0), ("aclrtMemcpy", 5), ("aclrtMemcpy", 9),    # uploads
    ("aclrtMemcpy", 10), ("aclrtMemcpy", 14),                       # downloads
    ("aclCreateTensor", 3), ("aclCreateTensor", 12),
    (op.BACKWARD.phase1, 0), ("aclrtMalloc", 1), (op.BACKWARD.phase2, 0), ("aclrtSynchronizeStream", 0),
    ("aclrtFree", 0),
])
@pytest.mark.parametrize("keep", [False, True])
def test_a_failure_at_any_native_call_frees_the_arena(function, count, keep, stub, no_leaks):
    p = make_problem(seed=85, q_lens=(5, 3), n2=1, g=2, d=16, dr=8)
    call = _call(p)
    stub.inject(function, count, 507899)
    if function == "aclrtFree":
        # a failed free after a successful op (the workspace's: freed first): the results
        # come back with a warning, the memory is kept for shutdown's retry
        with pytest.warns(errors.ResourceReleaseWarning):
            got = acl.run_backward(call, keep_on_device=keep)
        if keep:
            got = [g.numpy() for g in got]
        assert_grads_close(got, p.grads("numpy"))
        acl.shutdown(finalize=False)
        return
    if keep and function == "aclrtMemcpy" and count >= 10:
        got = acl.run_backward(call, keep_on_device=True)       # nothing is downloaded
        for g in got:
            g.free()
        return
    with pytest.raises(errors.AclnnError) as info:
        acl.run_backward(call, keep_on_device=keep)
    assert info.value.code == (561103 if function == "aclCreateTensor" else 507899)
    assert "injected failure 507899" in str(info.value)


@pytest.mark.parametrize("apart", [False, True])
def test_a_failed_upload_frees_the_memory_before_raising(apart, stub, no_leaks):
    acl.runtime.ensure_device(0)
    before = _live_bytes(stub)
    a, b = np.ones((8, 4), np.float32), np.zeros(5, np.uint8)
    stub.inject("aclrtMemcpy", 1, 507899)                     # the second upload
    with pytest.raises(errors.AclnnError) as info:
        device.call_memory([a, b], [((4,), BF16, None)], 0, results_apart=apart)
    assert info.value.code == 507899
    # the traceback still holds call_memory's frame (and so its arenas): they were freed
    # explicitly, not left to the garbage collector
    assert info.tb is not None and _live_bytes(stub) == before


def test_results_freed_from_many_threads_free_the_arena_once(stub, no_leaks):
    import threading
    p = make_problem(seed=86, q_lens=(3, 2), n2=1, g=1, d=16, dr=8)
    call = _call(p)
    bad = stub.bad_releases()
    before = _live_bytes(stub)
    for _ in range(20):
        res = acl.run_backward(call, keep_on_device=True)
        owner = res[0].buffer.arena
        barrier = threading.Barrier(10)

        def worker(i):
            barrier.wait()
            res[i % 5].free()               # every result freed twice, concurrently

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert owner.closed and owner.shares == 0
        assert _live_bytes(stub) == before
    assert stub.bad_releases() == bad        # never freed twice
