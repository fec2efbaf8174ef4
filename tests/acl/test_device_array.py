"""DeviceArray, the upload planner and the aclTensor description of views."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import aclnn_fag.acl as acl
from aclnn_fag.acl import DeviceArray, upload_arrays
from aclnn_fag.acl.tensors import ACL_DTYPES, acl_dtype

BF16 = np.dtype(ml_dtypes.bfloat16)


@pytest.mark.parametrize("dtype,enum", [(BF16, 27), (np.float16, 1), (np.float32, 0),
                                        (np.uint8, 4), (np.bool_, 12), (np.int64, 9)])
def test_round_trip_and_dtype_enums(dtype, enum, no_leaks):
    assert acl_dtype(dtype) == enum
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((5, 3, 4)) * 10).astype(dtype)
    with DeviceArray.from_numpy(a) as d:
        assert d.shape == a.shape and d.dtype == np.dtype(dtype) and d.is_contiguous
        back = d.numpy()
        assert back.dtype == a.dtype and np.array_equal(back, a)
        t = acl.AclTensor.from_device_array(d)
        assert t.acl_dtype == enum and t.storage_dims == (a.size,) and t.offset == 0
        assert t.strides == (12, 4, 1) and t.data_ptr == d.buffer.ptr
        t.destroy()


def test_unsupported_dtype():
    with pytest.raises(TypeError, match="aclDataType"):
        acl_dtype(np.dtype("U3"))
    assert acl_dtype(np.dtype(">f4")) == 0          # byte order is normalised
    assert len(ACL_DTYPES) >= 15


def test_non_contiguous_views_keep_their_strides(no_leaks):
    base = np.arange(6 * 4 * 10, dtype=np.float32).reshape(6, 4, 10)
    a = base[1:5, :, 2:9:3]
    acl.reset_stats()
    with DeviceArray.from_numpy(a) as d:
        assert d.strides == (40, 10, 3) and d.offset == 0
        assert np.array_equal(d.numpy(), a)
        # only the covering range was uploaded
        assert acl.stats()["h2d_bytes"] == (3 * 40 + 3 * 10 + 2 * 3 + 1) * 4


def test_negative_strides_are_copied(no_leaks):
    a = np.arange(24, dtype=np.float32).reshape(4, 6)[::-1, ::2]
    with DeviceArray.from_numpy(a) as d:
        assert d.strides == (3, 1) and d.is_contiguous
        assert np.array_equal(d.numpy(), a)


def test_zero_strides_and_degenerate_shapes(no_leaks):
    b = np.broadcast_to(np.arange(3, dtype=np.float32)[:, None], (3, 5))
    with DeviceArray.from_numpy(b) as d:
        assert d.strides == (1, 0) and d.buffer.nbytes == 12
        assert np.array_equal(d.numpy(), b)
    s = np.array(7, dtype=np.int64)
    with DeviceArray.from_numpy(s) as d:
        assert d.shape == () and d.numpy() == 7
    e = np.zeros((0, 3), np.float32)
    d = DeviceArray.from_numpy(e)
    assert d.buffer.ptr is None and d.numpy().shape == (0, 3)


def test_views_of_one_array_share_one_upload(no_leaks):
    qkv = np.arange(8 * 2 * 12, dtype=np.float32).reshape(8, 2, 12).astype(BF16)
    q, qr = qkv[..., :8], qkv[..., 8:]
    other = np.ones((3, 3), np.float32)
    acl.reset_stats()
    res = upload_arrays([q, None, qr, other])
    assert res[1] is None
    dq, dqr, do = res[0], res[2], res[3]
    s = acl.stats()
    assert s["h2d"] == 2 and s["malloc"] == 2
    assert dq.buffer is dqr.buffer and do.buffer is not dq.buffer
    assert (dq.offset, dqr.offset) == (0, 8) and dq.strides == dqr.strides == (24, 12, 1)
    assert dq.storage_elems == qkv.size       # the covering range: the whole array here
    assert np.array_equal(dq.numpy(), q) and np.array_equal(dqr.numpy(), qr)
    tq, tqr = acl.AclTensor.from_device_array(dq), acl.AclTensor.from_device_array(dqr)
    assert tq.data_ptr == tqr.data_ptr == dq.buffer.ptr          # base address, not advanced
    assert (tq.offset, tqr.offset) == (0, 8)
    tq.destroy(), tqr.destroy(), dq.free(), do.free()


def test_misaligned_members_are_split_off(no_leaks):
    raw = np.arange(64, dtype=np.uint8)
    as_f32 = raw[2:34].view(np.float32)        # starts 2 bytes into the uint8 range
    acl.reset_stats()
    d8, d32 = upload_arrays([raw, as_f32])
    assert acl.stats()["h2d"] == 2
    assert np.array_equal(d8.numpy(), raw) and np.array_equal(d32.numpy(), as_f32)
    d8.free(), d32.free()


def test_touching_but_disjoint_arrays_merge(no_leaks):
    a = np.arange(20, dtype=np.float32)
    acl.reset_stats()
    d1, d2 = upload_arrays([a[:10], a[10:]])
    assert acl.stats()["h2d"] == 1 and d1.buffer is d2.buffer and d2.offset == 10
    d1.free()


def test_basic_indexing_matches_numpy(no_leaks):
    a = np.arange(5 * 4 * 6, dtype=np.float32).reshape(5, 4, 6)
    with DeviceArray.from_numpy(a) as d:
        for key in [(slice(1, 4),), (Ellipsis, slice(2, None)), (2,), (1, 2, 3), (1, Ellipsis, 3),
                    (slice(None, None, 2), None, slice(1, 3)), (-1, slice(1, 4, 2)),
                    (Ellipsis,), (np.int64(3),)]:
            v = d[key]
            assert v.buffer is d.buffer
            assert np.array_equal(v.numpy(), a[key]), key
        with pytest.raises(IndexError, match="negative"):
            d[::-1]
        with pytest.raises(IndexError, match="basic"):
            d[[0, 1]]
        with pytest.raises(IndexError, match="basic"):
            d[a > 3]


def test_construction_checks(no_leaks):
    with DeviceArray.empty((4, 4), np.float32) as d:
        with pytest.raises(ValueError, match="reaches past"):
            DeviceArray(d.buffer, (5, 4), np.float32)
        with pytest.raises(ValueError, match="non-negative"):
            DeviceArray(d.buffer, (4,), np.float32, strides=(-1,), offset=3)
        v = d.view((2, 2), (8, 1), 1)
        d.copy_from_numpy(np.arange(16, dtype=np.float32).reshape(4, 4))
        assert np.array_equal(v.numpy(), [[1, 2], [9, 10]])
        with pytest.raises(ValueError):
            d.copy_from_numpy(np.zeros((4, 5), np.float32))
    assert d.closed
    with pytest.raises(ValueError, match="freed"):
        d.numpy()
    z = DeviceArray.zeros((3,), np.int64)
    assert np.array_equal(z.numpy(), [0, 0, 0])
    z.free()
