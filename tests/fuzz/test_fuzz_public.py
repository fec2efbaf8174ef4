"""Property: the public call, on both backends, either returns results that agree with each
other (the NumPy reference and the stub NPU op) or raises AclnnError / TypeError /
ValueError naming the parameter -- the same error on both backends; it never modifies an
input and never leaks a native object (the stub's live counters return to where they were).

The cases are valid calls with 0-3 mutations each (fuzz_cases.MUTATIONS and the
Python-level ones); see fuzz_cases for the catalogue."""

from __future__ import annotations

from hypothesis import given

import aclnn_fag as af
from fuzz_cases import (TALLY, assert_no_leak, assert_unchanged, check_error, compare_grads,
                        fuzz_settings, mutated_case, public_call, snapshot)


@fuzz_settings(150)
@given(case=mutated_case(verdict=False))
def test_public_call_on_both_backends(case, stub):
    TALLY["public_cases"] += 1
    what = case.describe()
    before = snapshot(case.args)
    objects = stub.objects()
    kind_np, res_np = public_call(case, "numpy")
    assert_unchanged(before, case.args, f"numpy backend: {what}")
    kind_npu, res_npu = public_call(case, "npu")
    assert_unchanged(before, case.args, f"npu backend: {what}")
    assert_no_leak(stub, objects, what)
    if kind_np == "err":
        check_error(res_np, f"numpy backend: {what}")
        assert kind_npu == "err", f"numpy rejected ({res_np}) but npu returned results: {what}"
        assert type(res_npu) is type(res_np), (res_np, res_npu, what)
        assert getattr(res_npu, "code", None) == getattr(res_np, "code", None), (res_np, res_npu)
        assert getattr(res_npu, "param", None) == getattr(res_np, "param", None), (res_np, res_npu)
        TALLY["public_invalid_rejected"] += 1
        return
    if kind_npu == "err":
        raise AssertionError(f"numpy returned results but npu raised {res_npu!r}: {what}")
    assert isinstance(res_np, af.FagGrads) and isinstance(res_npu, af.FagGrads)
    strict = case.meta["clean"] and not case.meta["nonfinite"]
    compare_grads(res_np, res_npu, strict_finite=strict, what=what)
    TALLY["public_valid_agree"] += 1
