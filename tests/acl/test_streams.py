"""``stream=``: the caller's stream gets the launch, nothing synchronises it, the workspace
outlives the call (per-stream cache); without it, the package's own stream as before."""

from __future__ import annotations

from ctypes import byref, c_void_p

import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from acl_cases import assert_grads_close, make_problem
from fake_npu import FakeNpuTensor
from test_device_tensors import on_device

SLOT_NAMES = ("query", "query_rope", "key", "key_rope", "value", "dy")


@pytest.fixture
def caller_stream():
    b = acl.runtime.api()
    acl.runtime.ensure_device(0)
    h = c_void_p()
    assert b.aclrtCreateStream(byref(h)) == 0
    yield h.value
    acl.runtime.release_stream_workspace(h.value)
    assert b.aclrtDestroyStream(h.value) == 0


class NpuStream:
    """What torch.npu.current_stream() offers: the handle as ``npu_stream``."""

    def __init__(self, handle: int) -> None:
        self.npu_stream = handle


def own_stream():
    return acl.runtime.stream(0)


def test_device_call_only_enqueues_on_the_callers_stream(stub, caller_stream):
    p = make_problem(seed=40, n2=1, g=2, mode=3, q_lens=(12, 7), kv_lens=(12, 7))
    ref = p.grads("numpy")
    pos, kw = on_device(p, FakeNpuTensor.from_numpy)
    mine = stub.stream_counts(own_stream())
    before = stub.stream_counts(caller_stream)
    d2h = acl.stats()["d2h"]
    got = af.flash_attention_unpadding_score_grad_v3(*pos, stream=NpuStream(caller_stream), **kw)
    after = stub.stream_counts(caller_stream)
    assert acl.stats()["d2h"] == d2h            # no data checks: they would race queued work
    assert after["launches"] == before["launches"] + 1
    assert after["syncs"] == before["syncs"]                  # no aclrtSynchronizeStream
    assert stub.stream_counts(own_stream()) == mine          # the package's stream untouched
    assert_grads_close([x.numpy() for x in got], ref)


def test_workspace_is_cached_per_stream_and_outlives_the_call(stub, caller_stream):
    p = make_problem(seed=41, mode=0, q_lens=(9, 5))
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    af.flash_attention_unpadding_score_grad_v3(*pos, stream=caller_stream, **kw)
    st = acl.runtime._get_state()
    ws = st.workspaces[(0, caller_stream)]
    assert ws is not None and not ws.closed and ws.nbytes > 0   # alive after the call returned
    ptr = ws.ptr
    mallocs = acl.stats()["malloc"]
    grads = af.flash_attention_unpadding_score_grad_v3(*pos, stream=caller_stream, **kw)
    # the second call reused the same workspace: its only allocation is the 5 results' arena
    assert st.workspaces[(0, caller_stream)].ptr == ptr
    assert acl.stats()["malloc"] - mallocs == 1
    syncs = stub.stream_counts(caller_stream)["syncs"]
    bytes_before = stub.counters()["device_bytes"]
    acl.runtime.release_stream_workspace(caller_stream)
    assert stub.stream_counts(caller_stream)["syncs"] == syncs + 1   # waits before freeing
    assert stub.counters()["device_bytes"] == bytes_before - ws.nbytes
    assert ws.closed
    del grads


def test_without_stream_the_own_stream_is_synchronised(stub):
    p = make_problem(seed=42)
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    af.flash_attention_unpadding_score_grad_v3(*pos, **kw)     # creates the stream
    before = stub.stream_counts(own_stream())
    af.flash_attention_unpadding_score_grad_v3(*pos, **kw)
    after = stub.stream_counts(own_stream())
    assert after["launches"] == before["launches"] + 1
    assert after["syncs"] == before["syncs"] + 1


def test_host_inputs_with_a_stream_synchronise_it(stub, caller_stream):
    p = make_problem(seed=43)
    before = stub.stream_counts(caller_stream)
    got = af.flash_attention_unpadding_score_grad_v3(p.q, p.qr, p.k, p.kr, p.v, p.dy,
                                                     backend="npu", stream=caller_stream,
                                                     **p.kwargs())
    after = stub.stream_counts(caller_stream)
    assert after == {"launches": before["launches"] + 1, "syncs": before["syncs"] + 1}
    assert_grads_close(got, p.grads("numpy"))


def test_plan_run_on_a_callers_stream(stub, caller_stream, no_leaks):
    p = make_problem(seed=44)
    ref = p.grads("numpy")
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    plan = acl.FagPlan(**dict(zip(SLOT_NAMES, pos)), **kw)
    before = stub.stream_counts(caller_stream)
    for _ in range(3):
        out = plan.run(stream=caller_stream)
    mid = stub.stream_counts(caller_stream)
    assert mid["launches"] == before["launches"] + 3 and mid["syncs"] == before["syncs"]
    assert_grads_close([x.numpy() for x in out], ref)
    plan.close()                                               # waits for the stream first
    assert stub.stream_counts(caller_stream)["syncs"] == mid["syncs"] + 1
    del out, pos, kw


def test_bad_stream_arguments():
    p = make_problem(seed=45)
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    with pytest.raises(TypeError, match="stream"):
        af.flash_attention_unpadding_score_grad_v3(*pos, stream="default", **kw)
    with pytest.raises(ValueError, match="stream"):
        af.flash_attention_unpadding_score_grad_v3(*pos, stream=-1, **kw)


def test_check_data_true_on_a_callers_stream_synchronises_then_samples(stub, caller_stream):
    p = make_problem(seed=46, n2=1, g=2, mode=3, q_lens=(12, 7), kv_lens=(12, 7))
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    before = stub.stream_counts(caller_stream)
    d2h = acl.stats()["d2h"]
    af.flash_attention_unpadding_score_grad_v3(*pos, stream=caller_stream, check_data=True, **kw)
    after = stub.stream_counts(caller_stream)
    assert after == {"launches": before["launches"] + 1, "syncs": before["syncs"] + 1}
    assert acl.stats()["d2h"] > d2h
