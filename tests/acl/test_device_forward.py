"""The public forward on device-resident inputs (DeviceArray and NPU tensors through the
tensor protocol only, ``fake_npu.FakeNpuTensor`` over stub device memory): in place, outputs
from ``query.new_empty``, ``stream=``, and the device round trip forward -> backward with no
host copy, against the same ops on host inputs (bit for bit: one stub kernel) and the NumPy
pair (bf16 tolerance: the stub's and NumPy's fp32 summation orders differ)."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag.rules.data_rules import DEVICE_SAMPLE_BYTES
from acl_cases import BF16, assert_grads_close, make_problem
from fake_npu import FakeNpuTensor, rope_views
from test_device_tensors import counting
from test_forward import _fwd_kwargs as fwd_kwargs
from test_streams import NpuStream, caller_stream, own_stream  # noqa: F401 (fixture)

FWD_SLOTS = ("q", "qr", "k", "kr", "v")


def fwd_on_device(p, make, **over):
    """(positional tensors, keyword arguments) of the forward with every tensor made by make."""
    kw = fwd_kwargs(p, **over)
    kw["atten_mask"] = make(kw["atten_mask"])
    return [make(getattr(p, n)) for n in FWD_SLOTS], kw


def host(x) -> np.ndarray:
    return x.numpy()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def host_forward(p, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", af.FullyMaskedRowWarning)
        return af.flash_attention_forward(p.q, p.qr, p.k, p.kr, p.v, backend=backend,
                                          **fwd_kwargs(p))


def host_round_trip(p, backend):
    f = host_forward(p, backend)
    g = af.flash_attention_unpadding_score_grad_v3(
        p.q, p.qr, p.k, p.kr, p.v, p.dy, backend=backend,
        **p.kwargs(softmax_max=f.softmax_max, softmax_sum=f.softmax_sum,
                   attention_in=f.attention_out))
    return f, g


CASES = {   # make_problem arguments: a 2-D mask with a band, causal GQA, band GQA, zero-length
    "mode0-band": dict(seed=60, n2=2, g=1, mode=0, pre=4, nxt=2, q_lens=(9, 0, 14),
                       density=0.2),
    "mode3-gqa2": dict(seed=61, n2=1, g=2, mode=3, q_lens=(12, 7)),
    "mode4-gqa4": dict(seed=62, n2=1, g=4, mode=4, pre=5, nxt=3, q_lens=(10, 6)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_device_arrays_in_device_arrays_out(name):
    p = make_problem(**CASES[name])
    want = host_forward(p, "npu")
    pos, kw = fwd_on_device(p, acl.DeviceArray.from_numpy)
    got, moved = counting(lambda: af.flash_attention_forward(*pos, **kw))
    assert af.last_backend() == "npu"
    assert isinstance(got, af.FagForward)
    assert all(isinstance(x, acl.DeviceArray) for x in got)
    assert moved["h2d"] == 0                                   # nothing uploaded
    assert moved["d2h_bytes"] <= DEVICE_SAMPLE_BYTES          # only the mask sample read
    for name_, g, w in zip(got._fields, got, want):
        assert same_bits(host(g), w), name_
    assert np.abs(want.attention_out.astype(np.float32)).max() > 0.05   # not vacuous
    del got, pos, kw


def test_npu_tensors_views_in_place_and_new_empty_outputs(no_leaks):
    """q / q_rope are views of one [T, N, D + Dr] tensor (k / k_rope likewise): read in place;
    the three outputs come from query.new_empty with the device's dtypes and shapes."""
    p = make_problem(seed=63, n2=1, g=2, mode=3, q_lens=(10, 6))
    want = host_forward(p, "npu")
    (q, qr, k, kr), (qq, kk) = rope_views(p)
    v, mask = FakeNpuTensor.from_numpy(p.v), FakeNpuTensor.from_numpy(p.mask)
    FakeNpuTensor.allocations.clear()
    got, moved = counting(lambda: af.flash_attention_forward(
        q, qr, k, kr, v, **fwd_kwargs(p, atten_mask=mask)))
    assert moved["h2d"] == 0 and moved["d2h_bytes"] <= DEVICE_SAMPLE_BYTES
    assert all(isinstance(x, FakeNpuTensor) for x in got)
    assert [id(x) for x in got] == [id(r()) for r in FakeNpuTensor.allocations]
    t1, n1 = p.q.shape[:2]
    assert [x.shape for x in got] == [(t1, n1, p.v.shape[2]), (t1, n1, 8), (t1, n1, 8)]
    assert [str(x.dtype) for x in got] == ["torch.bfloat16", "torch.float32", "torch.float32"]
    for name_, g, w in zip(got._fields, got, want):
        assert same_bits(host(g), w), name_
    FakeNpuTensor.allocations.clear()
    del got, q, qr, k, kr, qq, kk, v, mask


def round_trip(p, pos, kw, dy):
    """The device forward, its outputs fed straight into the device backward."""
    f = af.flash_attention_forward(*pos, **kw)
    return af.flash_attention_unpadding_score_grad_v3(
        *pos, dy, **p.kwargs(atten_mask=kw["atten_mask"], softmax_max=f.softmax_max,
                             softmax_sum=f.softmax_sum, attention_in=f.attention_out))


@pytest.mark.parametrize("make", [acl.DeviceArray.from_numpy, FakeNpuTensor.from_numpy],
                         ids=["DeviceArray", "npu"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_stays_on_the_device(name, make):
    """The forward's outputs go straight into the backward: no upload, no download beyond the
    validation samples; the gradients equal the host-input round trip on the same stub bit for
    bit and the NumPy round trip to bf16 tolerance."""
    p = make_problem(**CASES[name])
    _, want = host_round_trip(p, "npu")
    _, ref = host_round_trip(p, "numpy")
    pos, kw = fwd_on_device(p, make)
    dy = make(p.dy)
    got, moved = counting(lambda: round_trip(p, pos, kw, dy))
    assert moved["h2d"] == 0
    assert moved["d2h_bytes"] <= 2 * DEVICE_SAMPLE_BYTES
    got = [host(x) for x in got]
    for name_, g, w in zip(af.FagGrads._fields, got, want):
        assert same_bits(g, w), name_
    assert_grads_close(got, ref)
    del pos, kw, dy


def test_forward_only_enqueues_on_the_callers_stream(stub, caller_stream):  # noqa: F811
    p = make_problem(seed=64, n2=1, g=2, mode=3, q_lens=(12, 7))
    want = host_forward(p, "npu")
    pos, kw = fwd_on_device(p, FakeNpuTensor.from_numpy)
    mine = stub.stream_counts(own_stream())
    before = stub.stream_counts(caller_stream)
    d2h = acl.stats()["d2h"]
    got = af.flash_attention_forward(*pos, stream=NpuStream(caller_stream), **kw)
    after = stub.stream_counts(caller_stream)
    assert acl.stats()["d2h"] == d2h              # no data checks: they would race queued work
    assert after == {"launches": before["launches"] + 1, "syncs": before["syncs"]}
    assert stub.stream_counts(own_stream()) == mine
    # the workspace is the stream's cached one (the backward's mechanism), alive after return
    ws = acl.runtime._get_state().workspaces[(0, caller_stream)]
    assert ws is not None and not ws.closed and ws.nbytes > 0
    mallocs = acl.stats()["malloc"]
    again = af.flash_attention_forward(*pos, stream=caller_stream, **kw)
    assert acl.stats()["malloc"] - mallocs == 3   # the three outputs; the workspace reused
    for name_, g, w in zip(got._fields, got, want):
        assert same_bits(host(g), w), name_
        assert same_bits(host(getattr(again, name_)), w), name_


def test_round_trip_on_the_callers_stream_never_synchronises(stub, caller_stream):  # noqa: F811
    p = make_problem(seed=65, n2=1, g=4, mode=2, q_lens=(8, 11))
    _, want = host_round_trip(p, "npu")
    pos, kw = fwd_on_device(p, FakeNpuTensor.from_numpy)
    dy = FakeNpuTensor.from_numpy(p.dy)
    s = NpuStream(caller_stream)

    def step():
        f = af.flash_attention_forward(*pos, stream=s, **kw)
        return af.flash_attention_unpadding_score_grad_v3(
            *pos, dy, stream=s, **p.kwargs(atten_mask=kw["atten_mask"],
                                           softmax_max=f.softmax_max, softmax_sum=f.softmax_sum,
                                           attention_in=f.attention_out))
    step()      # the first step may grow the stream's workspace once (one synchronisation)
    before = stub.stream_counts(caller_stream)
    moved_before = acl.stats()
    g = step()
    moved_after = acl.stats()
    assert stub.stream_counts(caller_stream) == {"launches": before["launches"] + 2,
                                                 "syncs": before["syncs"]}
    assert all(moved_after[k] == moved_before[k] for k in ("h2d", "d2h"))
    for name_, a, w in zip(af.FagGrads._fields, g, want):
        assert same_bits(host(a), w), name_


def test_host_inputs_with_a_stream_synchronise_it(stub, caller_stream):  # noqa: F811
    p = make_problem(seed=66, mode=2, q_lens=(6, 5))
    want = host_forward(p, "npu")
    before = stub.stream_counts(caller_stream)
    got = af.flash_attention_forward(p.q, p.qr, p.k, p.kr, p.v, backend="npu",
                                     stream=caller_stream, **fwd_kwargs(p))
    assert stub.stream_counts(caller_stream) == {"launches": before["launches"] + 1,
                                                 "syncs": before["syncs"] + 1}
    assert all(isinstance(x, np.ndarray) for x in got)
    for name_, g, w in zip(got._fields, got, want):
        assert same_bits(g, w), name_


def test_mixed_kinds_and_the_numpy_backend_are_refused():
    p = make_problem(seed=67, mode=2, q_lens=(6, 5))
    pos, kw = fwd_on_device(p, FakeNpuTensor.from_numpy)
    with pytest.raises(TypeError, match=r"'value' is a numpy.ndarray but 'query' is an NPU tensor"):
        af.flash_attention_forward(*pos[:4], p.v, **kw)
    with pytest.raises(TypeError, match=r"'atten_mask' is an aclnn_fag.acl.DeviceArray"):
        af.flash_attention_forward(*pos, **dict(kw, atten_mask=acl.DeviceArray.from_numpy(p.mask)))
    with pytest.raises(ValueError, match="backend.*numpy.*device-resident"):
        af.flash_attention_forward(*pos, backend="numpy", **kw)


def test_sampled_mask_check_and_check_data_false():
    p = make_problem(seed=68, n2=1, g=2, mode=3, q_lens=(40, 24))
    want = host_forward(p, "npu")
    pos, kw = fwd_on_device(p, acl.DeviceArray.from_numpy,
                            atten_mask=np.zeros_like(p.mask))      # not the canonical mask
    with pytest.raises(af.ParamInvalidError, match="sample of this device mask") as e:
        af.flash_attention_forward(*pos, **kw)
    assert e.value.code == 161002 and e.value.param == "atten_mask"
    pos, kw = fwd_on_device(p, acl.DeviceArray.from_numpy)
    got, moved = counting(lambda: af.flash_attention_forward(*pos, check_data=False, **kw))
    assert moved["d2h"] == 0 and moved["h2d"] == 0
    assert same_bits(host(got.softmax_sum), want.softmax_sum)
    del got, pos, kw


def test_shape_rules_run_on_device_inputs_without_reading_data():
    p = make_problem(seed=69, mode=2, q_lens=(6, 5))
    pos, kw = fwd_on_device(p, acl.DeviceArray.from_numpy)
    pos[4] = acl.DeviceArray.from_numpy(np.concatenate([p.v, p.v], axis=-1))   # Dv > D (F5)
    with pytest.raises(af.ParamInvalidError, match="rule F5") as e:
        counting(lambda: af.flash_attention_forward(*pos, **kw))
    assert e.value.param == "value" and e.value.code == 161002
    d2h = acl.stats()["d2h"]
    pos[4] = acl.DeviceArray.from_numpy(p.v)
    pos[2] = acl.DeviceArray.from_numpy(p.k[:, :, :16].copy())             # D(key) != D (F5)
    with pytest.raises(af.ParamInvalidError, match="rule F5"):
        af.flash_attention_forward(*pos, **kw)
    assert acl.stats()["d2h"] == d2h                   # shape rules read no device data


@pytest.mark.parametrize("make", [acl.DeviceArray.from_numpy, FakeNpuTensor.from_numpy],
                         ids=["DeviceArray", "npu"])
def test_empty_result_on_the_device(make):
    p = make_problem(seed=70, mode=2, q_lens=(5, 4))
    pos, kw = fwd_on_device(p, make)
    pos[0], pos[1] = make(p.q[:0]), make(p.qr[:0])
    got = af.flash_attention_forward(*pos, **kw)
    n1, dv = p.q.shape[1], p.v.shape[2]
    assert [tuple(x.shape) for x in got] == [(0, n1, dv), (0, n1, 8), (0, n1, 8)]
    assert type(got.attention_out) is type(pos[0])
    del got, pos, kw


@pytest.mark.parametrize("fn,code", [("aclnnFlashAttentionVarLenScoreV3GetWorkspaceSize", 161002),
                                     ("aclnnFlashAttentionVarLenScoreV3", 561103)])
def test_a_failing_device_forward_on_a_stream_leaves_nothing_live(fn, code, no_leaks,
                                                                 caller_stream):  # noqa: F811
    """The outputs the call allocated are freed on the error; the stream's cached workspace
    is released with the stream (fixture), and then nothing is left."""
    p = make_problem(seed=71, mode=2, q_lens=(6, 5))
    pos, kw = fwd_on_device(p, acl.DeviceArray.from_numpy)
    bytes_before = no_leaks.counters()["device_bytes"]
    no_leaks.inject(fn, 0, code)
    with pytest.raises(af.AclnnError) as info:
        af.flash_attention_forward(*pos, stream=caller_stream, **kw)
    assert info.value.code == code
    ws = acl.runtime._get_state().workspaces.get((0, caller_stream))
    cached = ws.nbytes if ws is not None else 0
    del info
    gc.collect()
    assert no_leaks.counters()["device_bytes"] == bytes_before + cached
    del pos, kw


def test_device_calls_leave_nothing_live(no_leaks):
    """Round trips and empty results of both device kinds: every native object and every byte
    of device memory is gone once the results are dropped."""
    p = make_problem(**CASES["mode3-gqa2"])
    for make in (acl.DeviceArray.from_numpy, FakeNpuTensor.from_numpy):
        pos, kw = fwd_on_device(p, make)
        grads = round_trip(p, pos, kw, make(p.dy))
        assert no_leaks.counters()["device_bytes"] > 0
        pos[0], pos[1] = make(p.q[:0]), make(p.qr[:0])
        empty = af.flash_attention_forward(*pos, **kw)
        del grads, empty, pos, kw
