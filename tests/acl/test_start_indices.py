"""Start indices: every call passes non-NULL qStartIdx/kvStartIdx ([0] unless the caller
gives its own), because NULL ones let the device pick a rope-blind "MLA basic" template.

The stub op models that danger (native_stubs/src/opapi_stub.c, rope_blind_template): with
both start indices NULL and the conditions of template 1001 (non-deterministic) or 1002
(deterministic) met, it computes without the rope terms and leaves garbage in the rope
gradients. So the public-API tests below fail the day the binding passes NULL again.
"""

from __future__ import annotations

import numpy as np
import pytest

import aclnn_fag as af
from aclnn_fag.acl import tensors
from aclnn_fag.rules import start_indices, validate_backward
from acl_cases import assert_grads_close, make_problem

# (name, sparse mode, deterministic): each hits one template's conditions with NULL indices
# (D == Dv == 32 <= 128, D % 16 == 0, equal q/kv lengths, T1 == T2, 2-D compressed mask).
HITS = [("1001-mode3-nondet", 3, False), ("1001-mode2-nondet", 2, False),
        ("1002-mode3-det", 3, True), ("1002-mode1-det", 1, True)]


def _problem(mode):
    return make_problem(seed=7 + mode, q_lens=(12, 9), d=32, dr=16, mode=mode)


@pytest.mark.parametrize("name,mode,det", HITS, ids=[h[0] for h in HITS])
def test_stub_models_the_rope_blind_templates(name, mode, det, no_leaks):
    """call_raw passes exactly what it is given: NULL start indices hit the model."""
    p = _problem(mode)
    ref = p.grads("numpy", deterministic=det)
    blind = af.acl.call_raw(**p.raw_kwargs(), q_start_idx=None, kv_start_idx=None,
                            deterministic=det)
    # garbage in the rope gradients (the stub's stand-in for uninitialised memory)
    assert np.abs(blind.dq_rope.astype(np.float32)).max() > 1e5
    assert np.abs(blind.dk_rope.astype(np.float32)).max() > 1e5
    # and dq computed without the rope terms: clearly off
    err = np.abs(blind.dq.astype(np.float64) - ref.dq.astype(np.float64)).max()
    assert err > 0.05 * np.abs(ref.dq.astype(np.float64)).max()
    fine = af.acl.call_raw(**p.raw_kwargs(), q_start_idx=[0], kv_start_idx=[0],
                           deterministic=det)
    assert_grads_close(fine, ref)


def test_model_needs_both_indices_null(no_leaks):
    p = _problem(3)
    ref = p.grads("numpy")
    for qs, kvs in (([0], None), (None, [0])):
        g = af.acl.call_raw(**p.raw_kwargs(), q_start_idx=qs, kv_start_idx=kvs)
        assert_grads_close(g, ref)


def test_model_is_not_hit_outside_the_conditions(no_leaks):
    """Mode 0 (neither template) with NULL indices computes the rope terms."""
    p = make_problem(seed=3, q_lens=(12, 9), d=32, dr=16, mode=0)
    g = af.acl.call_raw(**p.raw_kwargs(), q_start_idx=None, kv_start_idx=None)
    assert_grads_close(g, p.grads("numpy"))


@pytest.mark.parametrize("name,mode,det", HITS, ids=[h[0] for h in HITS])
def test_public_backward_is_never_rope_blind(name, mode, det, no_leaks):
    p = _problem(mode)
    got = p.grads("npu", deterministic=det)
    assert af.last_backend() == "npu"
    assert_grads_close(got, p.grads("numpy", deterministic=det))


def test_start_indices_default_and_caller_values_win(monkeypatch, no_leaks):
    assert start_indices(None, None) == ((0,), (0,))
    assert start_indices([3], None) == ((3,), (0,))
    assert start_indices(None, [2, 5]) == ((0,), (2, 5))
    p = _problem(3)
    call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs())
    assert (call.q_start_idx, call.kv_start_idx) == ((0,), (0,))
    seen = []
    real = tensors.HandleBatch.int_arrays

    def spy(self, seqs):        # the aclIntArrays phase 1 gets, in parameter order
        seqs = list(seqs)
        seen.append((seqs[3], seqs[4]))         # q_start_idx, kv_start_idx
        return real(self, seqs)

    monkeypatch.setattr(tensors.HandleBatch, "int_arrays", spy)
    p.grads("npu")
    p.grads("npu", q_start_idx=[3], kv_start_idx=[1])
    p.grads("npu", q_start_idx=[3], kv_start_idx=[1])   # the same signature: no phase 1
    assert [tuple(map(tuple, s)) for s in seen] == [((0,), (0,)), ((3,), (1,))]
