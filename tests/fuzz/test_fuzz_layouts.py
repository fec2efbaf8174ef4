"""Memory layouts never change a result: read-only, non-contiguous, negative-stride,
Fortran-order, byte-swapped, zero-stride (broadcast) arrays and q/q_rope sharing one
buffer give the same bits as contiguous arrays on both backends, and stay untouched."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_cases import (TALLY, TENSOR_SLOTS, Case, assert_no_leak, assert_unchanged, base_case,
                        fuzz_settings, public_call, snapshot, validator_verdict)


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _strided(a):
    big = np.zeros(a.shape[:-1] + (a.shape[-1] * 3,), a.dtype)
    big[..., 2::3] = a
    return big[..., 2::3]


def _negstride(a):
    return np.ascontiguousarray(a[::-1])[::-1] if a.ndim and a.shape[0] > 1 else a


def _swapped(a):
    if a.dtype.kind != "f" or a.dtype.itemsize == 1 or a.dtype.name == "bfloat16":
        return a
    return a.astype(a.dtype.newbyteorder(">" if a.dtype.byteorder in "=<" else "<"))


def _broadcast(a):
    return np.broadcast_to(a[..., :1], a.shape) if a.ndim == 3 and a.shape[-1] == 8 else a


TRANSFORMS = {"readonly": _readonly, "fortran": np.asfortranarray, "strided": _strided,
              "negstride": _negstride, "byteswap": _swapped, "broadcast": _broadcast}


def _shared(case):
    args = dict(case.args)
    for main, rope in (("query", "query_rope"), ("key", "key_rope")):
        buf = np.concatenate([args[main], args[rope]], axis=-1)
        d = args[main].shape[-1]
        args[main], args[rope] = buf[..., :d], buf[..., d:]
    return args


def _bits(res):
    return [np.asarray(x).view(np.uint16) for x in res]


@fuzz_settings(60)
@given(case=base_case(), transform=st.sampled_from(sorted(TRANSFORMS) + ["shared", "all"]))
def test_memory_layouts_give_identical_results(case, transform, stub):
    if validator_verdict(case) != 0:
        return
    TALLY["layout_cases"] += 1
    ref = {b: public_call(case, b) for b in ("numpy", "npu")}
    if transform == "shared":
        args = _shared(case)
    else:
        names = TENSOR_SLOTS
        fns = list(TRANSFORMS.values()) if transform == "all" else [TRANSFORMS[transform]]
        args = dict(case.args)
        for i, name in enumerate(n for n in names if isinstance(args.get(n), np.ndarray)):
            fn = fns[i % len(fns)]
            if fn is _broadcast and name not in ("softmax_max", "softmax_sum"):
                continue                   # only the 8 copies of the statistics are equal
            args[name] = fn(args[name])
    moved = Case(args, case.meta)
    before = snapshot(args)
    objects = stub.objects()
    for backend in ("numpy", "npu"):
        kind, res = public_call(moved, backend)
        assert kind == ref[backend][0] == "ok", (backend, res)
        for name, a, b in zip(("dq", "dq_rope", "dk", "dk_rope", "dv"), _bits(res),
                              _bits(ref[backend][1])):
            assert np.array_equal(a, b), f"{backend} {name} changed with layout {transform}"
    assert_unchanged(before, args, f"layout {transform}")
    assert_no_leak(stub, objects, f"layout {transform}")


@pytest.mark.parametrize("backend", ["numpy", "npu"])
def test_read_only_inputs_everywhere(backend, stub):
    from fuzz_cases import build_case
    case = build_case(q_lens=[5, 0, 7], kv_lens=[6, 2, 7], extra_q=1, extra_kv=0, n2=1, g=2, d=16,
                      dr=8, dv=16, mode=0, pre=4, nxt=4, seed=11, mask_kind="b1",
                      mask_dtype=np.uint8, density=0.2, deterministic=False, scale=None)
    kind, ref = public_call(case, backend)
    assert kind == "ok"
    args = {k: (_readonly(v) if isinstance(v, np.ndarray) else v) for k, v in case.args.items()}
    kind, res = public_call(Case(args, case.meta), backend)
    assert kind == "ok", res
    for a, b in zip(_bits(res), _bits(ref)):
        assert np.array_equal(a, b)
