"""The device copy of the package's compressed mask (aclnn_fag/acl/device_constants.py) on the stub.

Oracle: the same call with a writable copy of the mask (same content, uploaded by every
call as before) must give bit-identical results; the H2D byte counter shows which call
uploaded the 4 MiB.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag.acl import device_constants as constants
from acl_cases import make_problem

MASK_BYTES = 2048 * 2048


def _h2d(fn):
    before = acl.stats()["h2d_bytes"]
    out = fn()
    return out, acl.stats()["h2d_bytes"] - before


def _bits(grads):
    return [np.asarray(g).view(np.uint8).copy() for g in grads if g is not None]


@pytest.mark.parametrize("mode", [2, 3])
def test_the_package_mask_is_uploaded_once(mode, no_leaks):
    p = make_problem(seed=50, q_lens=(6, 5), n2=1, g=2, mode=mode)
    assert af.masks.is_package_mask(p.mask)
    writable = p.grads("npu", atten_mask=p.mask.copy())
    first, first_bytes = _h2d(lambda: p.grads("npu"))
    second, second_bytes = _h2d(lambda: p.grads("npu"))
    assert first_bytes - second_bytes == MASK_BYTES
    assert constants.size() == 1
    for a, b, c in zip(_bits(writable), _bits(first), _bits(second)):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_a_writable_mask_is_uploaded_by_every_call(no_leaks):
    p = make_problem(seed=51, q_lens=(6, 5), mode=3)
    mask = p.mask.copy()
    _, first = _h2d(lambda: p.grads("npu", atten_mask=mask))
    _, second = _h2d(lambda: p.grads("npu", atten_mask=mask))
    assert first == second >= MASK_BYTES
    assert constants.size() == 0


def test_the_forward_uses_the_copy_too(no_leaks):
    p = make_problem(seed=52, q_lens=(6, 4), mode=2)
    kw = dict(actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends, scale_value=p.scale,
              sparse_mode=p.mode)

    def fwd(mask):
        return af.flash_attention_forward(p.q, p.qr, p.k, p.kr, p.v, atten_mask=mask,
                                          backend="npu", **kw)
    want = fwd(p.mask.copy())
    fwd(p.mask)
    got, nbytes = _h2d(lambda: fwd(p.mask))
    assert nbytes < MASK_BYTES
    for a, b in zip(_bits(want), _bits(got)):
        assert np.array_equal(a, b)


def test_release_shutdown_and_raw_calls(no_leaks):
    p = make_problem(seed=53, q_lens=(5, 5), mode=3)
    p.grads("npu")
    held = no_leaks.counters(keep_cache=True)["device_bytes"]
    assert held >= MASK_BYTES
    assert acl.release_constants() == 1
    assert no_leaks.counters(keep_cache=True)["device_bytes"] == held - MASK_BYTES
    p.grads("npu")
    acl.shutdown(finalize=False)
    assert constants.size() == 0
    # call_raw passes exactly what it is given: the mask is uploaded, no copy is kept
    _, nbytes = _h2d(lambda: acl.call_raw(**p.raw_kwargs()))
    assert nbytes >= MASK_BYTES and constants.size() == 0


def test_the_general_path_uses_the_copy_too(no_leaks):
    """A call with a strided input (copied on the host first) takes the copy too."""
    p = make_problem(seed=56, q_lens=(6, 5), mode=3)
    want = p.grads("npu")                                    # makes the copy
    strided = np.ascontiguousarray(p.fwd.softmax_sum[:, :, None].repeat(2, 2))[:, :, 0]
    assert not strided.flags.c_contiguous and np.array_equal(strided, p.fwd.softmax_sum)
    got, nbytes = _h2d(lambda: p.grads("npu", softmax_sum=strided))
    assert 0 < nbytes < MASK_BYTES
    for a, b in zip(_bits(want), _bits(got)):
        assert np.array_equal(a, b)


def test_a_foreign_device_reset_makes_a_new_copy(no_leaks):
    p = make_problem(seed=54, q_lens=(5, 4), mode=3)
    want = p.grads("npu")
    lib = ctypes.CDLL(str(acl.runtime.api().libraries.paths["runtime"]))
    lib.aclrtResetDevice.argtypes = [ctypes.c_int32]
    assert lib.aclrtResetDevice(0) == 0
    got, nbytes = _h2d(lambda: p.grads("npu"))
    assert nbytes >= MASK_BYTES
    for a, b in zip(_bits(want), _bits(got)):
        assert np.array_equal(a, b)


def test_a_four_d_view_of_the_package_mask_is_uploaded_as_given(no_leaks):
    p = make_problem(seed=55, q_lens=(5, 4), mode=3)
    four_d = p.mask[None, None]
    assert af.masks.is_package_mask(four_d)
    want = p.grads("npu")
    got, nbytes = _h2d(lambda: p.grads("npu", atten_mask=four_d))
    assert nbytes >= MASK_BYTES
    for a, b in zip(_bits(want), _bits(got)):
        assert np.array_equal(a, b)
