"""FagPlan results never alias: what run() returns stays valid after the plan is closed or
collected, and a later run() never changes arrays an earlier run() returned -- unless the
caller passed those output arrays in."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import aclnn_fag.acl as acl
from aclnn_fag.acl import DeviceArray, FagPlan
from aclnn_fag.validate import validate_backward
from acl_cases import BF16, make_problem

NAMES = ("dq", "dq_rope", "dk", "dk_rope", "dv")


@pytest.fixture(scope="module")
def prob():
    return make_problem(seed=71, q_lens=(6, 9), d=32, dr=16, g=2)


def _call(p, dy=None):
    return validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy if dy is None else dy, **p.kwargs())


def _bits(arrays):
    return [a.numpy().view(np.uint16).copy() for a in arrays]


def _host_bits(grads):
    return [np.asarray(g).view(np.uint16) for g in grads]


@pytest.mark.parametrize("repeatable", [True, False])
def test_later_run_does_not_change_earlier_results(prob, repeatable, no_leaks):
    dy2 = np.random.default_rng(1).standard_normal(prob.dy.shape).astype(BF16)
    want1 = _host_bits(acl.run_backward(_call(prob)))
    want2 = _host_bits(acl.run_backward(_call(prob, dy=dy2)))
    assert any((a != b).any() for a, b in zip(want1, want2))   # the two runs differ
    with FagPlan.from_call(_call(prob), repeatable=repeatable) as plan:
        g1 = plan.run()
        g2 = plan.run(dy=DeviceArray.from_numpy(dy2))
        for name, a, b in zip(NAMES, g1, g2):
            assert a is not b and a.buffer is not b.buffer, name
        for name, got, want in zip(NAMES, _bits(g1), want1):
            assert np.array_equal(got, want), name
        for name, got, want in zip(NAMES, _bits(g2), want2):
            assert np.array_equal(got, want), name


def test_results_outlive_close_and_collection(prob, no_leaks):
    want = _host_bits(acl.run_backward(_call(prob)))
    plan = FagPlan.from_call(_call(prob))
    g = plan.run()
    plan.close()
    for name, got, w in zip(NAMES, _bits(g), want):
        assert np.array_equal(got, w), name
    plan2 = FagPlan.from_call(_call(prob))
    g2 = plan2.run()
    del plan2
    gc.collect()
    for name, got, w in zip(NAMES, _bits(g2), want):
        assert np.array_equal(got, w), name
    # the caller frees them (or drops them): nothing leaks (no_leaks)
    for a in g:
        a.free()


def test_caller_outputs_are_written_again(prob, no_leaks):
    dy2 = np.random.default_rng(2).standard_normal(prob.dy.shape).astype(BF16)
    want2 = _host_bits(acl.run_backward(_call(prob, dy=dy2)))
    mine = DeviceArray.empty(prob.q.shape, BF16)
    with FagPlan.from_call(_call(prob)) as plan:
        g1 = plan.run(dq=mine)
        assert g1.dq is mine
        g2 = plan.run(dy=DeviceArray.from_numpy(dy2))
        assert g2.dq is mine
        assert np.array_equal(mine.numpy().view(np.uint16), want2[0])
        assert g1.dk is not g2.dk
    assert not mine.closed      # the caller's array survives the plan
    mine.free()
