"""The leading-0 form of the cumulative ends on the NPU path (stand-in op): the same gradients
as the plain form, as on the NumPy backend (docs/semantics.md, The leading-0 form)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
from acl_cases import make_problem

CASES = {0: dict(q_lens=(9, 0, 14), kv_lens=(12, 5, 14), density=0.2),
         3: dict(q_lens=(8, 0, 12), kv_lens=(10, 0, 12)),
         7: dict(q_lens=(12, 6), kv_lens=(12, 20), pre=6, nxt=0),
         8: dict(q_lens=(6, 0, 12), kv_lens=(14, 0, 12), pre=6, nxt=0)}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_leading_zero_same_gradients_on_the_npu_path(mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = make_problem(seed=700 + mode, mode=mode, **CASES[mode])
        plain = p.grads("npu")
        led = p.grads("npu", actual_seq_qlen=[0] + list(p.q_ends),
                      actual_seq_kvlen=[0] + list(p.kv_ends))
        ref = p.grads("numpy", actual_seq_qlen=[0] + list(p.q_ends),
                      actual_seq_kvlen=[0] + list(p.kv_ends))
    assert af.last_backend() == "numpy"
    for a, b, c in zip(plain, led, ref):
        np.testing.assert_array_equal(a, b)
        assert np.max(np.abs(b.astype(np.float32) - c.astype(np.float32))) <= \
            0.02 * max(1e-6, float(np.max(np.abs(c.astype(np.float32)))))
