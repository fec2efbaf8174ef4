"""Sizes near and past the documented limits (T <= 1M tokens, N <= 256 heads, D <= 768,
at most 2048 sequences), presented without memory as zero-stride views.

* Validation of a call at the limits (1M tokens, 256 heads, 2048 sequences: multi-GiB
  tensors) accepts it, allocates little (tracemalloc) and takes little time.
* Each limit + 1 is rejected (161002, stricter) with a message naming it -- by the
  validator, by the public call on both backends before anything is allocated, and by the
  stub op itself (same code).
* The NPU backend turns a valid but enormous call into a clean allocation failure of the
  (finite) device memory, and so does ``call_raw`` with absurd shapes: byte sizes are
  computed in Python ints / 64-bit C, nothing wraps, nothing leaks.
* Int arrays of absurd length and attributes beyond int64 are refused (ValueError naming
  the parameter) before any copy.
"""

from __future__ import annotations

import time
import tracemalloc
import warnings

import numpy as np
import pytest

import aclnn_fag as af
from aclnn_fag import acl
from aclnn_fag.rules import LIMITS, validate_backward
from fuzz_cases import (BF16, TALLY, Case, assert_no_leak, assert_unchanged, public_call,
                        raw_verdict, snapshot)

T_MAX, N_MAX, D_MAX, B_MAX = (LIMITS["max_tokens"], LIMITS["max_heads"], LIMITS["max_head_dim"],
                              LIMITS["max_batch"])
VALIDATION_BUDGET = 8 << 20          # bytes of Python/numpy allocations while validating


def zeros(shape, dtype=BF16, value=0):
    """A read-only zero-stride view of any size."""
    return np.broadcast_to(np.array(value, dtype=dtype), shape)


def huge_args(*, t1=T_MAX, t2=None, n1=N_MAX, n2=None, d=128, dr=64, dv=None, batches=B_MAX,
              mode=0, q_ends=None, kv_ends=None, mask4d=False) -> dict:
    t2 = t1 if t2 is None else t2
    n2 = n1 if n2 is None else n2
    dv = d if dv is None else dv
    if q_ends is None:
        per = t1 // batches
        q_ends = [per * (b + 1) for b in range(batches)]
        q_ends[-1] = t1
    kv_ends = list(q_ends) if kv_ends is None else kv_ends
    lengths = [e - (q_ends[i - 1] if i else 0) for i, e in enumerate(q_ends)]
    kv_lengths = [e - (kv_ends[i - 1] if i else 0) for i, e in enumerate(kv_ends)]
    if mode in (2, 3, 4, 7, 8):
        mask = af.masks.compressed_causal_mask()
    else:
        mask = zeros((max(lengths), max(kv_lengths)), np.uint8)
    if mask4d:                          # [B, N1, ., .]: terabytes as a real array
        mask = np.broadcast_to(mask, (batches, n1) + mask.shape)
    return dict(query=zeros((t1, n1, d)), query_rope=zeros((t1, n1, dr)), key=zeros((t2, n2, d)),
                key_rope=zeros((t2, n2, dr)), value=zeros((t2, n2, dv)), dy=zeros((t1, n1, dv)),
                atten_mask=mask, softmax_max=zeros((t1, n1, 8), np.float32, 0.5),
                softmax_sum=zeros((t1, n1, 8), np.float32, 1.0),
                attention_in=zeros((t1, n1, dv)), actual_seq_qlen=q_ends, actual_seq_kvlen=kv_ends,
                scale_value=0.07, sparse_mode=mode, pre_tokens=65536, next_tokens=65536)


def _measure(fn):
    """(result or exception, peak traced bytes, seconds)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
    except Exception as exc:          # returned to the caller
        out = exc
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, peak, dt


def _nbytes(args) -> int:
    return sum(int(np.prod(v.shape, dtype=object)) * v.itemsize for v in args.values()
               if isinstance(v, np.ndarray))


@pytest.mark.parametrize("mode,mask4d", [(0, False), (3, False), (0, True), (3, True)])
def test_validation_at_the_limits_accepts_and_allocates_little(mode, mask4d):
    """Also with a [2048, 256, S, S] mask (a 4-D per-head mask for mode 0, the compressed one
    broadcast for mode 3): only the elements the checks need are read, nothing is reshaped."""
    args = huge_args(mode=mode, mask4d=mask4d)
    assert _nbytes(args) > (64 << 30)             # what these views would take as real arrays
    validate_backward(**huge_args(t1=64, n1=2, d=16, dr=8, batches=4, mode=mode))   # warm-up
    out, peak, dt = _measure(lambda: validate_backward(**args))
    assert not isinstance(out, Exception), out
    assert out.seqs.batch == B_MAX and out.query.shape == (T_MAX, N_MAX, 128)
    assert peak < VALIDATION_BUDGET, f"validation allocated {peak} bytes"
    assert dt < 20, f"validation took {dt:.1f} s"
    TALLY["huge_accepted"] += 1


OVER_LIMIT = {
    "heads": (dict(n1=N_MAX + 1, n2=1, t1=4096, batches=8), "query", "N1=257"),
    "head_dim": (dict(d=D_MAX + 8, dr=64, t1=4096, n1=2, batches=8), "query", "D=776"),
    "tokens_q": (dict(t1=T_MAX + 1, t2=T_MAX, n1=2, d=16, dr=8, batches=8,
                      kv_ends=None), "query", "1048577"),
    "tokens_kv": (dict(t1=T_MAX, t2=T_MAX + 1, n1=2, d=16, dr=8, batches=8), "key", "1048577"),
    "batches": (dict(t1=2 * (B_MAX + 1), n1=2, d=16, dr=8, batches=B_MAX + 1), "actual_seq_qlen",
                "2049 sequences"),
}


def _over_limit_args(name):
    kw, param, word = OVER_LIMIT[name]
    kw = dict(kw)
    if name == "tokens_q":           # keep the KV side at the limit, the query side past it
        args = huge_args(**kw)
        args["actual_seq_kvlen"] = [e * T_MAX // (T_MAX + 1) for e in args["actual_seq_qlen"]]
        args["actual_seq_kvlen"][-1] = T_MAX
        return args, param, word
    if name == "tokens_kv":
        q_ends = [T_MAX // 8 * (b + 1) for b in range(8)]
        kv_ends = list(q_ends)
        kv_ends[-1] = T_MAX + 1
        args = huge_args(q_ends=q_ends, kv_ends=kv_ends, **kw)
        return args, param, word
    return huge_args(**kw), param, word


@pytest.mark.parametrize("name", sorted(OVER_LIMIT))
def test_past_the_limits_rejected_by_validator_backends_and_stub(name, stub):
    args, param, word = _over_limit_args(name)
    out, peak, _ = _measure(lambda: validate_backward(**args))
    assert isinstance(out, af.ParamInvalidError), out
    assert out.code == 161002 and out.param == param and out.stricter, out
    assert "documented limit" in str(out) and word in str(out), out
    assert peak < VALIDATION_BUDGET, peak
    case = Case(args, {})
    before = snapshot(args)
    objects = stub.objects()
    for backend in ("numpy", "npu"):
        (kind, exc), peak, _ = _measure(lambda: public_call(case, backend))
        assert kind == "err" and exc.code == 161002 and exc.param == param, (backend, exc)
        assert peak < VALIDATION_BUDGET, (backend, peak)
    assert_unchanged(before, args, name)
    assert_no_leak(stub, objects, name)
    TALLY["huge_rejected"] += 1


@pytest.mark.parametrize("name", ["heads", "head_dim", "batches", "tokens_q"])
def test_the_stub_op_applies_the_same_limits(name, stub):
    """The stub op (no Python validation) rejects the same calls with the same code. Kept
    small enough for its output buffers: N = 2 heads and D = 16 where not under test."""
    args, _, _ = _over_limit_args(name)
    objects = stub.objects()
    code, exc = raw_verdict(Case(args, {}))
    assert code == 161002, exc
    assert "S3" in str(exc) and "documented limits" in str(exc), exc
    assert_no_leak(stub, objects, name)


def test_a_valid_enormous_call_fails_cleanly_on_the_npu_backend(stub):
    """Validation accepts 1M tokens x 256 heads; the outputs (64 GiB each) cannot be allocated
    on the (stub) device: a clean AclRtMemoryAllocationError, nothing leaked, little host
    memory used."""
    args = huge_args(mode=3)
    objects = stub.objects()
    (kind, exc), peak, _ = _measure(lambda: public_call(Case(args, {}), "npu"))
    assert kind == "err", exc
    assert isinstance(exc, af.AclRuntimeError) and exc.code == 207001, exc
    assert "out of device memory" in str(exc)
    assert peak < VALIDATION_BUDGET, peak
    assert_no_leak(stub, objects, "enormous call")


@pytest.mark.parametrize("shape", [(1 << 40, 1, 16), (1 << 57, 1, 2), (1 << 20, 1 << 20, 1 << 20)])
def test_call_raw_with_absurd_shapes(shape, stub):
    """No validation: the output buffers shaped like the input cannot exist -- refused by
    the device allocator or, past int64 bytes (test_device_buffer_sizes_never_wrap), before
    any native call."""
    q = zeros(shape)
    objects = stub.objects()
    out, peak, _ = _measure(lambda: acl.call_raw(query=q, query_rope=q, key=q, key_rope=q,
                                                 value=q, dy=q, attention_in=q,
                                                 atten_mask=zeros((2, 2), np.uint8),
                                                 softmax_max=zeros(shape[:2] + (8,), np.float32),
                                                 softmax_sum=zeros(shape[:2] + (8,), np.float32),
                                                 actual_seq_qlen=[shape[0]],
                                                 actual_seq_kvlen=[shape[0]]))
    assert isinstance(out, af.AclRuntimeError) and out.code == 207001, out
    assert peak < VALIDATION_BUDGET, peak
    assert_no_leak(stub, objects, str(shape))


def test_device_buffer_sizes_never_wrap():
    with pytest.raises(af.AclRuntimeError) as info:
        acl.DeviceBuffer(1 << 64)
    assert info.value.code == 207001
    with pytest.raises(af.AclRuntimeError):
        acl.DeviceArray.empty((1 << 32, 1 << 32, 4), np.float32)     # 2**66 bytes


@pytest.mark.parametrize("name", ["actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "prefix"])
def test_absurdly_long_int_arrays_refused_before_any_copy(name, stub):
    base = huge_args(t1=64, n1=2, d=16, dr=8, batches=4)
    args = dict(base, **{name: zeros((1 << 32,), np.int64, 1)})
    out, peak, _ = _measure(lambda: validate_backward(**args))
    assert isinstance(out, ValueError) and f"'{name}'" in str(out), out
    assert peak < VALIDATION_BUDGET
    objects = stub.objects()
    out, peak, _ = _measure(lambda: acl.call_raw(**args))
    assert isinstance(out, ValueError) and f"'{name}'" in str(out), out
    assert peak < VALIDATION_BUDGET
    assert_no_leak(stub, objects, name)


@pytest.mark.parametrize("name,value", [("pre_tokens", 1 << 63), ("next_tokens", -(1 << 63) - 1),
                                        ("head_num", 1 << 70), ("sparse_mode", 1 << 64)])
def test_attributes_beyond_int64_are_refused_not_wrapped(name, value, stub):
    """ctypes would silently wrap these (2**64 -> 0 would even look valid)."""
    args = dict(huge_args(t1=64, n1=2, d=16, dr=8, batches=4), **{name: value})
    with pytest.raises(ValueError, match=f"'{name}'"):
        validate_backward(**args)
    objects = stub.objects()
    with pytest.raises(ValueError, match=f"'{name}'"):
        acl.call_raw(**args)
    assert_no_leak(stub, objects, name)


def test_ends_values_near_int64_limits_agree(stub):
    """Cumulative ends near +-2**63: the lengths overflow int64; the validator (Python ints)
    and the stub (128-bit) compute them exactly and agree."""
    base = huge_args(t1=64, n1=2, d=16, dr=8, batches=4)
    for ends in ([(1 << 63) - 1, -(1 << 63)], [-(1 << 63), (1 << 63) - 1], [5, (1 << 63) - 1],
                 [(1 << 62), (1 << 62), 64]):
        for name in ("actual_seq_qlen", "actual_seq_kvlen"):
            other = "actual_seq_kvlen" if name == "actual_seq_qlen" else "actual_seq_qlen"
            args = dict(base, **{name: ends, other: [16 * (i + 1) for i in range(len(ends) - 1)] + [64]})
            for mode in (0, 4):
                args.update(sparse_mode=mode, atten_mask=base["atten_mask"] if mode == 0
                            else af.masks.compressed_causal_mask())
                case = Case(args, {})
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        validate_backward(**args)
                    want = 0
                except af.AclnnError as exc:
                    want = exc.code
                got, exc = raw_verdict(case)
                assert got == want, (ends, name, mode, want, got, exc)
