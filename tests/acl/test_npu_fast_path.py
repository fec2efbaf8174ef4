"""The per-call short paths of device-resident calls give exactly what the checked paths give.

* ``acl.device.foreign_view`` (a geometry that passed ``DeviceArray.from_pointer`` once is not
  checked again) builds the same view as from_pointer, and refuses what it refuses -- also
  after the geometry is known (values equal to a checked geometry, but not ints);
* ``operands.convert_args`` (one pass when every tensor is an NPU tensor of a known type and
  dtype) maps every supported dtype, keeps views' addresses, offsets and strides, checks the
  storage format, and names the parameter in its errors, on the first call and on repeats;
* the verdict cache of ``rules.driver`` tells apart what validation or the op would tell apart.
"""

from __future__ import annotations

import sys
import types

import ml_dtypes
import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag import operands
from aclnn_fag.rules import arguments
from aclnn_fag.rules import driver as validate
from aclnn_fag.acl.device import ForeignBuffer, foreign_view
from acl_cases import assert_grads_close, make_problem
from fake_npu import FakeDType, FakeNpuTensor, rope_views

BF16 = np.dtype(ml_dtypes.bfloat16)
BASE = 1 << 24              # a 32-byte aligned fake device address (never dereferenced here)


def _fields(a):
    return (a.buffer.ptr, a.buffer.nbytes, a.buffer.device_id, a.buffer.owner, a.shape,
            a.dtype, a.strides, a.offset)


GEOMETRIES = [
    # (address offset in bytes, shape, strides, dtype)
    (0, (4, 3, 8), (24, 8, 1), BF16),
    (6, (4, 3, 8), (24, 8, 1), BF16),          # a view 3 elements into an aligned block
    (256, (4, 2, 5), (48, 16, 1), BF16),       # a slice of the last axis (q of a qkv)
    (8, (5, 1, 3), (3, 3, 1), np.dtype(np.float32)),   # size-1 axis: stride normalised
    (4, (7, 2), (1, 7), np.dtype(np.float32)),  # transposed (column-major) view
    (1, (9,), (2,), np.dtype(np.uint8)),
    (3, (2, 2), (0, 1), np.dtype(np.bool_)),    # broadcast row (zero stride)
    (16, (2, 3, 8), (24, 8, 1), np.dtype(np.int64)),
]


@pytest.mark.parametrize("off,shape,strides,dtype", GEOMETRIES)
def test_foreign_view_equals_from_pointer_on_first_and_repeated_calls(off, shape, strides, dtype):
    owner = object()
    ref = acl.DeviceArray.from_pointer(BASE + off, shape, dtype, strides, 0, owner)
    first = foreign_view(BASE + off, shape, dtype, strides, 0, owner)
    again = foreign_view(BASE + off, shape, dtype, strides, 0, owner)      # the same again
    other = foreign_view(BASE + 32 * 5 + off, shape, dtype, strides, 3, owner)
    for got in (first, again):
        assert _fields(got) == _fields(ref)
        assert type(got.buffer) is ForeignBuffer and not got.buffer.released
        assert all(type(v) is int for v in got.shape + got.strides)
    # another address / device with the same geometry: base, offset and device follow it
    assert other.buffer.ptr == ref.buffer.ptr + 160 and other.offset == ref.offset
    assert other.device_id == 3 and other.buffer.nbytes == ref.buffer.nbytes
    # the view reaches exactly its last element, as __init__'s invariant wants
    last = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.strides))
    assert last < ref.storage_elems <= last + 1 + 32


class _Size(tuple):
    """A shape type like torch.Size: a tuple subclass, a new object on each access."""


def test_foreign_view_takes_int_sequences_of_other_types_and_returns_plain_ints():
    a = foreign_view(BASE, _Size((4, 3, 8)), BF16, (24, 8, 1), 0, None)
    b = foreign_view(BASE, _Size((4, 3, 8)), BF16, (24, 8, 1), 0, None)
    c = foreign_view(BASE, (np.int64(4), 3, 8), BF16, (24, 8, 1), 0, None)   # numpy ints
    for got in (a, b, c):
        assert type(got.shape) is tuple and got.shape == (4, 3, 8)
        assert all(type(v) is int for v in got.shape + got.strides)


BAD = [
    (dict(shape=(4.0, 3, 8)), TypeError, "'shape' must be a sequence of ints"),
    (dict(strides=(24, 8.0, 1)), TypeError, "'strides' must be a sequence of ints"),
    (dict(strides=(24, -8, 1)), ValueError, "'strides' must be non-negative"),
    (dict(strides=(24, 8)), ValueError, "one entry per dimension"),
    (dict(ptr=BASE + 1), ValueError, "not aligned"),
    (dict(ptr=-BASE), ValueError, "'ptr' must be a device address"),
    (dict(ptr=float(BASE)), TypeError, ""),
    (dict(device_id=-1), ValueError, "'device_id' must be >= 0"),
    (dict(device_id=0.0), TypeError, ""),
    (dict(dtype=np.dtype(np.str_)), TypeError, "aclDataType"),
]


@pytest.mark.parametrize("change,error,words", BAD)
def test_foreign_view_refuses_what_from_pointer_refuses_even_for_a_known_geometry(
        change, error, words):
    good = dict(ptr=BASE, shape=(4, 3, 8), dtype=BF16, strides=(24, 8, 1), device_id=0)
    foreign_view(good["ptr"], good["shape"], good["dtype"], good["strides"], 0, None)
    a = dict(good, **change)
    with pytest.raises(error, match=words):
        acl.DeviceArray.from_pointer(a["ptr"], a["shape"], a["dtype"], a["strides"],
                                     a["device_id"])
    with pytest.raises(error, match=words):
        foreign_view(a["ptr"], a["shape"], a["dtype"], a["strides"], a["device_id"], None)


# ----------------------------------------------------------------------------- conversion
TORCH_DTYPES = sorted(operands._TORCH_TO_NUMPY.items())


class _Tensor:
    """The NPU tensor protocol over a fake address (conversion only: nothing is read)."""

    def __init__(self, ptr, shape, strides, dtype, index=0, device_type="npu"):
        self._ptr, self._shape, self._strides = ptr, shape, strides
        self.dtype = dtype
        self.device = types.SimpleNamespace(type=device_type, index=index)

    @property
    def shape(self):
        return _Size(self._shape)             # a new object per access, like torch.Size

    def data_ptr(self):
        return self._ptr

    def stride(self):
        return tuple(self._strides)

    def new_empty(self, shape, dtype=None):   # never called by conversion
        raise AssertionError


@pytest.mark.parametrize("name,np_dtype", TORCH_DTYPES)
def test_every_supported_torch_dtype_maps_to_its_numpy_dtype(name, np_dtype):
    dtype = FakeDType(name[len("torch."):], np_dtype)
    isz = np_dtype.itemsize
    t = _Tensor(BASE + 2 * isz, (3, 4), (4, 1), dtype)
    for _ in range(2):                        # the general path, then the one-pass path
        kind, (got, none) = operands.convert_args(("a", "b"), (t, None))
        assert kind == operands.NPU and none is None
        assert got.dtype == np_dtype and got.shape == (3, 4) and got.strides == (4, 1)
        assert got.buffer.ptr + got.offset * isz == BASE + 2 * isz
        assert got.buffer.owner is t


def test_an_unsupported_dtype_is_named_after_supported_ones_were_seen():
    ok = _Tensor(BASE, (2, 2), (2, 1), FakeDType("float32", np.float32))
    bad = _Tensor(BASE, (2, 2), (2, 1), FakeDType("complex64", np.complex64))
    operands.convert_args(("query", "key"), (ok, ok))
    operands.convert_args(("query", "key"), (ok, ok))
    with pytest.raises(TypeError, match="parameter 'key' has dtype torch.complex64"):
        operands.convert_args(("query", "key"), (ok, bad))


def test_dtype_objects_with_one_name_map_alike():
    dts = [FakeDType("bfloat16", BF16) for _ in range(5)]
    for dt in dts:
        assert operands.numpy_dtype_of_torch(dt, "q") == BF16


@pytest.mark.parametrize("change,error,words", [
    (dict(strides=(-4, 1)), ValueError, r"parameter 'key' \(an NPU tensor\): parameter "
                                        r"'strides' must be non-negative"),
    (dict(ptr=BASE + 2), ValueError, r"parameter 'key' \(an NPU tensor\): .*not aligned"),
    (dict(shape=(3.0, 4)), TypeError, r"parameter 'key' \(an NPU tensor\): parameter 'shape'"),
    (dict(index=-1), ValueError, r"parameter 'key' \(an NPU tensor\): .*'device_id'"),
])
def test_conversion_errors_name_the_parameter_on_first_and_repeated_calls(change, error, words):
    f32 = FakeDType("float32", np.float32)
    good = dict(ptr=BASE, shape=(3, 4), strides=(4, 1), dtype=f32)
    q = _Tensor(**good)
    for _ in range(2):                        # geometry and dtype known: the one-pass path
        operands.convert_args(("query", "key"), (q, _Tensor(**good)))
    bad = _Tensor(**dict(good, **change))
    with pytest.raises(error, match=words):
        operands.convert_args(("query", "key"), (q, bad))


def test_kinds_are_checked_before_any_conversion_error():
    f32 = FakeDType("float32", np.float32)
    good = _Tensor(BASE, (3, 4), (4, 1), f32)
    bad = _Tensor(BASE, (3, 4), (-4, 1), f32)
    for _ in range(2):
        operands.convert_args(("a",), (good,))
    with pytest.raises(TypeError, match="'c' is a numpy.ndarray but 'a' is an NPU tensor"):
        operands.convert_args(("a", "b", "c"), (good, bad, np.zeros(2)))
    # an object of another kind than its type's first instance (a CPU "tensor" of a type
    # whose first instance was an NPU tensor) is not taken for an NPU tensor
    cpu = _Tensor(BASE, (3, 4), (4, 1), f32, device_type="cpu")
    kind, (same,) = operands.convert_args(("a",), (cpu,))
    assert kind == operands.NUMPY and same is cpu          # unknown: validation names it


def test_device_array_subclasses_and_numpy_subclasses_keep_their_kind():
    class Sub(acl.DeviceArray):
        pass
    sub = Sub.__new__(Sub)
    assert operands.kind_of(sub) == operands.DEVICE
    assert operands.kind_of(sub) == operands.DEVICE               # by type, remembered
    masked = np.ma.masked_array(np.zeros(3))
    assert operands.kind_of(masked) == operands.NUMPY
    kind, out = operands.convert_args(("x", "y"), (np.zeros(2), masked))
    assert kind == operands.NUMPY and out[1] is masked


def test_the_storage_format_is_checked_on_every_call(monkeypatch):
    f32 = FakeDType("float32", np.float32)
    t = _Tensor(BASE, (3, 4), (4, 1), f32)
    formats = {}
    fake = types.ModuleType("torch_npu")
    fake.get_npu_format = lambda x: formats.get(id(x), 2)
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    for _ in range(2):
        operands.convert_args(("query", "key"), (t, t))
    u = _Tensor(BASE, (3, 4), (4, 1), f32)
    formats[id(u)] = 29                                       # FRACTAL_NZ
    with pytest.raises(ValueError, match="parameter 'key' has the private NPU storage format 29"):
        operands.convert_args(("query", "key"), (t, u))


# ----------------------------------------------------------------------------- public call
def test_repeated_npu_calls_with_views_match_the_reference(no_leaks):
    """The same call three times (the first on the checked paths, then on the short ones),
    with q/q_rope and k/k_rope as views of one tensor each (offsets inside a block): every
    result matches NumPy's; a differently strided call afterwards is still right."""
    p = make_problem(seed=71, n2=1, g=2, mode=3, q_lens=(10, 6), kv_lens=(10, 6))
    ref = p.grads("numpy")
    (q, qr, k, kr), (qkv, kk) = rope_views(p)
    v, dy = FakeNpuTensor.from_numpy(p.v), FakeNpuTensor.from_numpy(p.dy)
    kw = p.kwargs()
    for n in ("atten_mask", "softmax_max", "softmax_sum", "attention_in"):
        kw[n] = FakeNpuTensor.from_numpy(kw[n])
    for _ in range(3):
        got = af.flash_attention_unpadding_score_grad_v3(q, qr, k, kr, v, dy, **kw)
        assert [x.shape for x in got] == [p.q.shape, p.qr.shape, p.k.shape, p.kr.shape,
                                          p.v.shape]
        assert_grads_close([x.numpy() for x in got], ref)
    # contiguous q / k now (other strides, same shapes): not served the views' geometry
    qc, kc = FakeNpuTensor.from_numpy(p.q), FakeNpuTensor.from_numpy(p.k)
    got = af.flash_attention_unpadding_score_grad_v3(qc, qr, kc, kr, v, dy, **kw)
    assert_grads_close([x.numpy() for x in got], ref)
    del got, q, qr, k, kr, qkv, kk, v, dy, qc, kc, kw


def test_tensors_on_two_devices_are_refused_naming_both(monkeypatch, no_leaks):
    monkeypatch.setenv("ACL_STUB_DEVICE_COUNT", "2")      # the stub reads it on every call
    p = make_problem(seed=72)
    pos = [FakeNpuTensor.from_numpy(getattr(p, n)) for n in ("q", "qr", "k", "kr", "v", "dy")]
    kw = p.kwargs()
    for n in ("atten_mask", "softmax_max", "softmax_sum", "attention_in"):
        kw[n] = FakeNpuTensor.from_numpy(kw[n])
    try:
        af.flash_attention_unpadding_score_grad_v3(*pos, check_data=False, **kw)
        s = kw["softmax_sum"]
        kw["softmax_sum"] = FakeNpuTensor(s.storage, s.shape, s.stride(), 0, s.dtype,
                                          device_index=1)      # claims device 1
        for _ in range(2):
            with pytest.raises(ValueError, match="one device, got 'query' on device 0, "
                                                 "'softmax_sum' on device 1"):
                af.flash_attention_unpadding_score_grad_v3(*pos, check_data=False, **kw)
    finally:
        del pos, kw


def test_a_result_allocator_with_negative_strides_is_refused_naming_the_result(no_leaks):
    class Flipped(FakeNpuTensor):
        def new_empty(self, shape, dtype=None):
            t = super().new_empty(shape, dtype)
            t._strides = (-t._strides[0],) + t._strides[1:]
            return t
    p = make_problem(seed=73)
    pos = [Flipped.from_numpy(getattr(p, n)) for n in ("q", "qr", "k", "kr", "v", "dy")]
    kw = p.kwargs()
    for n in ("atten_mask", "softmax_max", "softmax_sum", "attention_in"):
        kw[n] = Flipped.from_numpy(kw[n])
    with pytest.raises(ValueError, match=r"result 'dq' \(query.new_empty\): parameter "
                                         r"'strides' must be non-negative"):
        af.flash_attention_unpadding_score_grad_v3(*pos, **kw)
    del pos, kw


# ----------------------------------------------------------------------------- verdicts
def test_the_verdict_cache_tells_device_views_apart():
    """Same shapes and dtypes, other strides or offset: not the cached verdict (the op's
    checks depend on them); the same description: the cached one, with the new arrays."""
    p = make_problem(seed=74, q_lens=(5, 7))
    pos = [acl.DeviceArray.from_numpy(getattr(p, n)) for n in ("q", "qr", "k", "kr", "v", "dy")]
    kw = p.kwargs()
    validate._VERDICTS.clear()
    first = validate.validate_backward(*pos, check_data=False, **kw)
    assert len(validate._VERDICTS) == 1
    again = validate.validate_backward(*[a.view(a.shape) for a in pos], check_data=False, **kw)
    assert len(validate._VERDICTS) == 1 and again.query is not first.query
    assert again.seqs == first.seqs and again.query.shape == first.query.shape

    def sig(q):
        return arguments.signature((q,) + tuple(pos[1:]) + (None,) * 8, (1.0,) * 10,
                                   (None,) * 5)
    t, n, d = pos[0].shape
    wide = acl.DeviceArray.empty((t, 2 * n, d), pos[0].dtype)
    long = acl.DeviceArray.empty((3 * t, n, d), pos[0].dtype)
    base, shifted = wide[:, :n], wide[:, n:]     # same shape and strides, other offset
    rows = long[::3]                                  # same shape, other strides
    assert base.shape == shifted.shape == rows.shape == pos[0].shape
    assert base.strides == shifted.strides and shifted.offset != 0
    assert rows.strides != base.strides and rows.offset == 0
    assert len({sig(base), sig(shifted), sig(rows)}) == 3
    assert sig(base) == sig(wide[:, :n])
    for a in pos + [wide, long]:
        a.free()


@pytest.mark.parametrize("zero", [np.float32(0.0), 0.0])
def test_negative_zero_scales_of_any_float_type_are_not_served_positive_zero_verdicts(zero):
    scalars = lambda s: (s, 1.0, 2, 2, None, "TND", 0, 0, 1, False)   # noqa: E731
    pos_sig = arguments.signature((None,) * 14, scalars(zero), (None,) * 5)
    neg_sig = arguments.signature((None,) * 14, scalars(-zero), (None,) * 5)
    assert pos_sig != neg_sig
    assert arguments.signature((None,) * 14, scalars(zero), ([1, 2], (3,), None, None, None)) \
        != arguments.signature((None,) * 14, scalars(zero), ([1, 2.0], (3,), None, None, None))


def test_an_array_where_a_scalar_belongs_is_reported_by_validation_not_the_cache():
    p = make_problem(seed=75)
    kw = p.kwargs()
    for bad in (np.array([0.1, 0.2]), [0.1]):
        with pytest.raises(TypeError, match="parameter 'scale_value' must be a float"):
            validate.validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy,
                                       **dict(kw, scale_value=bad))
