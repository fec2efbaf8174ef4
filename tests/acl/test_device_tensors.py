"""Device-resident inputs of the public backward: DeviceArray and NPU tensors (through the
tensor protocol only, ``fake_npu.FakeNpuTensor`` over stub device memory), in place."""

from __future__ import annotations

import subprocess
import sys
import weakref

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag.rules.data_rules import DEVICE_SAMPLE_BYTES
from acl_cases import BF16, assert_grads_close, make_problem
from fake_npu import FakeNpuTensor, rope_views

SLOTS = ("q", "qr", "k", "kr", "v", "dy")
EXTRA = ("atten_mask", "softmax_max", "softmax_sum", "attention_in")


def on_device(p, make, **over):
    """(positional tensors, keyword arguments) of p with every tensor made by ``make``."""
    pos = [make(getattr(p, n)) for n in SLOTS]
    kw = p.kwargs(**over)
    for n in EXTRA:
        kw[n] = make(kw[n])
    return pos, kw


def counting(fn):
    """Run fn; return (result, the change of the runtime's copy counters)."""
    before = acl.stats()
    out = fn()
    after = acl.stats()
    return out, {k: after[k] - before[k] for k in ("h2d", "h2d_bytes", "d2h", "d2h_bytes")}


@pytest.mark.parametrize("mode,g", [(0, 1), (3, 2), (4, 4)])
def test_device_arrays_in_device_arrays_out(mode, g, no_leaks):
    p = make_problem(seed=30 + mode, n2=2 if g == 1 else 1, g=g, mode=mode, pre=4, nxt=2,
                     q_lens=(9, 0, 14), kv_lens=(9, 0, 14), density=0.2)
    ref = p.grads("numpy")
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    got, moved = counting(lambda: af.flash_attention_unpadding_score_grad_v3(*pos, **kw))
    assert af.last_backend() == "npu"
    assert all(isinstance(x, acl.DeviceArray) for x in got)
    assert moved["h2d"] == 0                                  # nothing uploaded
    assert moved["d2h_bytes"] <= DEVICE_SAMPLE_BYTES            # only validation samples read
    assert_grads_close([x.numpy() for x in got], ref)
    del got, pos, kw


def test_npu_tensors_in_place_views_and_new_empty(no_leaks):
    """q / q_rope are views of one [T, N, D + Dr] tensor, k / k_rope likewise: the op reads
    them in place (no copy), the results come from query.new_empty."""
    p = make_problem(seed=7, n2=1, g=2, mode=3, q_lens=(10, 6), kv_lens=(10, 6))
    ref = p.grads("numpy")
    (q, qr, k, kr), (qkv, kk) = rope_views(p)
    assert q.stride() == qr.stride() == (qkv.shape[1] * qkv.shape[2], qkv.shape[2], 1)
    rest = {n: FakeNpuTensor.from_numpy(a) for n, a in (("v", p.v), ("dy", p.dy))}
    kw = p.kwargs()
    for n in EXTRA:
        kw[n] = FakeNpuTensor.from_numpy(kw[n])
    FakeNpuTensor.allocations.clear()
    got, moved = counting(lambda: af.flash_attention_unpadding_score_grad_v3(
        q, qr, k, kr, rest["v"], rest["dy"], **kw))
    assert moved["h2d"] == 0 and moved["d2h_bytes"] <= DEVICE_SAMPLE_BYTES
    assert all(isinstance(x, FakeNpuTensor) for x in got)
    assert [id(x) for x in got] == [id(r()) for r in FakeNpuTensor.allocations]
    assert [x.shape for x in got] == [p.q.shape, p.qr.shape, p.k.shape, p.kr.shape, p.v.shape]
    assert all(str(x.dtype) == "torch.bfloat16" for x in got)
    assert_grads_close([x.numpy() for x in got], ref)
    FakeNpuTensor.allocations.clear()
    del got, q, qr, k, kr, qkv, kk, rest, kw


def test_npu_tensor_view_with_unaligned_address():
    """A view starting 2 elements into its storage: tensorData gets the aligned base and the
    view an element offset, and the op reads the right elements."""
    p = make_problem(seed=8, q_lens=(5, 7))
    ref = p.grads("numpy")

    def shifted(a):
        flat = np.zeros(a.size + 2, a.dtype)
        flat[2:] = a.reshape(-1)
        store = acl.DeviceArray.from_numpy(flat)
        return FakeNpuTensor(store, a.shape, acl.device.contiguous_strides(a.shape), 2,
                             _fake_dtype(a.dtype))
    pos, kw = on_device(p, shifted)
    got = af.flash_attention_unpadding_score_grad_v3(*pos, **kw)
    assert_grads_close([x.numpy() for x in got], ref)


def _fake_dtype(dt):
    import fake_npu
    return fake_npu._BY_NP[np.dtype(dt)]


def test_mixed_kinds_are_rejected():
    p = make_problem(seed=9)
    pos, kw = on_device(p, FakeNpuTensor.from_numpy)
    with pytest.raises(TypeError, match=r"'dy' is a numpy.ndarray but 'query' is an NPU tensor"):
        af.flash_attention_unpadding_score_grad_v3(*pos[:5], p.dy, **kw)
    kw2 = dict(kw, atten_mask=acl.DeviceArray.from_numpy(p.mask))
    with pytest.raises(TypeError, match=r"'atten_mask' is an aclnn_fag.acl.DeviceArray"):
        af.flash_attention_unpadding_score_grad_v3(*pos, **kw2)


def test_device_inputs_refuse_the_numpy_backend():
    p = make_problem(seed=10)
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    with pytest.raises(ValueError, match="backend.*numpy.*device-resident"):
        af.flash_attention_unpadding_score_grad_v3(*pos, backend="numpy", **kw)


def test_import_does_not_import_torch():
    code = ("import sys, aclnn_fag, aclnn_fag.acl, aclnn_fag.operands; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- from_pointer
def test_from_pointer_wraps_foreign_memory_without_owning_it(stub):
    host = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    owner = acl.DeviceArray.from_numpy(host)
    sentinel = type("Owner", (), {})()
    ref = weakref.ref(sentinel)
    wrapped = acl.DeviceArray.from_pointer(owner.buffer.ptr + 4 * 4, (2, 3), np.float32,
                                           strides=(12, 2), device_id=0, owner=sentinel)
    del sentinel
    assert ref() is not None                      # kept alive by the wrapper
    flat = host.reshape(-1)
    want = np.array([[flat[4 + 12 * i + 2 * j] for j in range(3)] for i in range(2)])
    np.testing.assert_array_equal(wrapped.numpy(), want)
    assert wrapped.buffer.ptr % 32 == 0 and wrapped.offset == 4
    bytes_before = stub.counters()["device_bytes"]
    wrapped.free()                                # forgets, frees nothing
    assert stub.counters()["device_bytes"] == bytes_before
    assert wrapped.closed and ref() is None
    np.testing.assert_array_equal(owner.numpy(), host)
    owner.free()


def test_from_pointer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strides"):
        acl.DeviceArray.from_pointer(1 << 20, (2, 3), np.float32, strides=(3, -1))
    with pytest.raises(ValueError, match="aligned"):
        acl.DeviceArray.from_pointer((1 << 20) + 2, (4,), np.float32)
    with pytest.raises(ValueError, match="one entry per dimension"):
        acl.DeviceArray.from_pointer(1 << 20, (2, 3), np.float32, strides=(3,))
    with pytest.raises(TypeError):
        acl.DeviceArray.from_pointer(1 << 20, (2, 3), np.object_)
    empty = acl.DeviceArray.from_pointer(0, (0, 5), np.float32)
    assert empty.size == 0 and empty.numpy().shape == (0, 5)


# ----------------------------------------------------------------------------- data checks
def _device_problem(mode=3, **kw):
    p = make_problem(seed=11, n2=1, g=4, mode=mode, q_lens=(40, 24), kv_lens=(40, 24), **kw)
    return p


def test_sampled_mask_check_and_check_data_false():
    p = _device_problem()
    ref = p.grads("numpy")
    bad = np.zeros_like(p.mask)                                   # not the canonical mask
    pos, kw = on_device(p, acl.DeviceArray.from_numpy, atten_mask=bad)
    with pytest.raises(af.ParamInvalidError, match="sample of this device mask") as e:
        af.flash_attention_unpadding_score_grad_v3(*pos, **kw)
    assert e.value.code == 161002 and e.value.param == "atten_mask"
    # skipping the data checks: accepted (the stub computes with the given mask bytes)
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    got, moved = counting(lambda: af.flash_attention_unpadding_score_grad_v3(
        *pos, check_data=False, **kw))
    assert moved["d2h"] == 0
    assert_grads_close([x.numpy() for x in got], ref)


def test_sampled_copies_check():
    p = _device_problem()
    smax = p.fwd.softmax_max.copy()
    smax[-1, 0, 5] += 1.0                                         # inside the sampled end run
    pos, kw = on_device(p, acl.DeviceArray.from_numpy, softmax_max=smax)
    with pytest.raises(af.ParamInvalidError, match="copies.*sample") as e:
        af.flash_attention_unpadding_score_grad_v3(*pos, **kw)
    assert e.value.param == "softmax_max" and "GetWorkspaceSize" not in str(e.value)
    # check_data=False: the package reads nothing; the stub op's own S8 check (phase 1) is
    # what rejects it now
    with pytest.raises(af.ParamInvalidError, match="GetWorkspaceSize"):
        af.flash_attention_unpadding_score_grad_v3(*pos, check_data=False, **kw)


def test_sampled_token_major_statistics_are_rejected():
    p = _device_problem()
    from aclnn_fag import softmax_layout
    # token-major statistics (what another kernel would give), broadcast to 8 copies
    tm_max = softmax_layout.token_major_from_device_stats(p.fwd.softmax_max, p.q_ends)
    tm_sum = softmax_layout.token_major_from_device_stats(p.fwd.softmax_sum, p.q_ends)
    wrong_max = np.ascontiguousarray(np.broadcast_to(tm_max[..., None], p.fwd.softmax_max.shape))
    wrong_sum = np.ascontiguousarray(np.broadcast_to(tm_sum[..., None], p.fwd.softmax_sum.shape))
    pos, kw = on_device(p, acl.DeviceArray.from_numpy, softmax_max=wrong_max,
                        softmax_sum=wrong_sum)
    with pytest.raises(af.ParamInvalidError, match="token-major") as e:
        af.flash_attention_unpadding_score_grad_v3(*pos, **kw)
    assert "GetWorkspaceSize" not in str(e.value)         # caught by the sample, not phase 1


def test_data_checks_read_a_bounded_sample_of_large_inputs():
    """T = 4096, N1 = 8: the statistics alone are 1 MiB each; validation reads <= 16 KiB."""
    from aclnn_fag.rules import validate_backward
    rng = np.random.default_rng(0)
    t, n, d, dr = 4096, 8, 64, 32
    mk = lambda *s: acl.DeviceArray.from_numpy(rng.standard_normal(s).astype(BF16))
    stats = np.ones((t, n, 8), np.float32)
    args = [mk(t, n, d), mk(t, n, dr), mk(t, 1, d), mk(t, 1, dr), mk(t, 1, d), mk(t, n, d)]
    dev = acl.DeviceArray.from_numpy
    kw = dict(atten_mask=dev(af.masks.compressed_causal_mask()), softmax_max=dev(stats),
              softmax_sum=dev(stats), attention_in=mk(t, n, d), actual_seq_qlen=[t],
              actual_seq_kvlen=[t], scale_value=0.1, sparse_mode=3)
    _, moved = counting(lambda: validate_backward(*args, **kw))
    assert 0 < moved["d2h_bytes"] <= DEVICE_SAMPLE_BYTES
    assert moved["d2h"] <= 24


def test_numpy_check_data_false_skips_the_copy_check():
    p = make_problem(seed=12)
    smax = p.fwd.softmax_max.copy()
    smax[3, 0, 2] += 1.0
    with pytest.raises(af.ParamInvalidError, match="copies"):
        p.grads("numpy", softmax_max=smax)
    af.flash_attention_unpadding_score_grad_v3(p.q, p.qr, p.k, p.kr, p.v, p.dy, backend="numpy",
                                               check_data=False, **p.kwargs(softmax_max=smax))


def test_plan_construction_validates_device_inputs_on_a_sample():
    p = _device_problem()
    smax = p.fwd.softmax_max.copy()
    smax[0, 0, 1] = 7.0
    pos, kw = on_device(p, acl.DeviceArray.from_numpy, softmax_max=smax)
    names = dict(zip(("query", "query_rope", "key", "key_rope", "value", "dy"), pos))
    with pytest.raises(af.ParamInvalidError, match="copies.*sample") as e:
        acl.FagPlan(**names, **kw)
    assert "GetWorkspaceSize" not in str(e.value)
    # check_data=False: only phase 1 (the stub's own S8 check) sees it
    with pytest.raises(af.ParamInvalidError, match="GetWorkspaceSize"):
        acl.FagPlan(**names, check_data=False, **kw)


def test_plan_takes_npu_tensors():
    p = _device_problem()
    ref = p.grads("numpy")
    pos, kw = on_device(p, FakeNpuTensor.from_numpy)
    names = dict(zip(("query", "query_rope", "key", "key_rope", "value", "dy"), pos))
    with acl.FagPlan(**names, **kw) as plan:
        got = plan.run()
        assert_grads_close([x.numpy() for x in got], ref)
