"""FagPlan: phase 1 once, phase 2 per run, buffers swapped with the address setters."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import aclnn_fag.acl as acl
from aclnn_fag import errors
from aclnn_fag.acl import FagPlan, DeviceArray
from aclnn_fag.rules import validate_backward
from acl_cases import BF16, make_problem


def _call(p, **over):
    tensors = dict(query=p.q, query_rope=p.qr, key=p.k, key_rope=p.kr, value=p.v, dy=p.dy)
    tensors.update({k: over.pop(k) for k in list(over) if k in tensors})
    return validate_backward(**tensors, **p.kwargs(**over))


def _same(a, b):
    for x, y in zip(a, b):
        assert x is not None and y is not None
        assert np.array_equal(np.asarray(x).view(np.uint16), np.asarray(y).view(np.uint16))


@pytest.fixture(scope="module")
def prob():
    return make_problem(seed=61, q_lens=(7, 0, 9), kv_lens=(8, 4, 9), n2=1, g=2, d=32, dr=16)


def test_repeatable_executor_runs_phase1_once(prob, no_leaks):
    call = _call(prob)
    expected = acl.run_backward(call)
    with FagPlan.from_call(call) as plan:
        assert plan.repeatable and plan.repeatable_reason == "repeatable"
        for _ in range(3):
            outs = plan.run()
            assert isinstance(outs.dq, DeviceArray)
            _same(plan.grads(), expected)
        assert plan.phase1_runs == 1 and plan.phase2_runs == 3
        assert plan.workspace_size > 0
    assert plan.closed
    with pytest.raises(ValueError, match="closed"):
        plan.run()
    plan.close()   # idempotent


def test_swapping_buffers_repoints_the_executor(prob, no_leaks):
    rng = np.random.default_rng(5)
    q2 = rng.standard_normal(prob.q.shape).astype(BF16)
    dy2 = rng.standard_normal(prob.dy.shape).astype(BF16)
    expected1 = acl.run_backward(_call(prob))
    expected2 = acl.run_backward(_call(prob, query=q2, dy=dy2))
    with FagPlan.from_call(_call(prob)) as plan:
        _same([d.numpy() for d in plan.run()], expected1)
        new_q, new_dy = DeviceArray.from_numpy(q2), DeviceArray.from_numpy(dy2)
        new_dq = DeviceArray.empty(prob.q.shape, BF16)
        outs = plan.run(query=new_q, dy=new_dy, dq=new_dq)
        assert outs.dq is new_dq
        assert plan.phase1_runs == 1 and plan.repoints == 3
        _same(plan.grads(), expected2)
        # and back to the original data, through fresh buffers again
        outs = plan.run(query=DeviceArray.from_numpy(prob.q), dy=DeviceArray.from_numpy(prob.dy))
        _same(plan.grads(), expected1)
        assert plan.phase1_runs == 1
    new_q.free(), new_dy.free(), new_dq.free()


def test_one_shot_fallbacks(prob, no_leaks):
    call = _call(prob)
    expected = acl.run_backward(call)
    with FagPlan.from_call(call, repeatable=False) as plan:
        assert not plan.repeatable and "not requested" in plan.repeatable_reason
        for _ in range(3):
            plan.run()
            _same(plan.grads(), expected)
        assert plan.phase1_runs == 3 and plan.phase2_runs == 3

    no_leaks.inject("aclSetAclOpExecutorRepeatable", 0, 561102)
    with FagPlan.from_call(call) as plan:
        assert not plan.repeatable
        assert "561102" in plan.repeatable_reason and "injected failure" in plan.repeatable_reason
        plan.run()
        plan.run()
        _same(plan.grads(), expected)
        assert plan.phase1_runs == 2


def test_unbuilt_one_shot_executor_is_destroyed_on_close(prob, no_leaks):
    plan = FagPlan.from_call(_call(prob), repeatable=False)
    assert no_leaks.counters()["executors"] == 1
    plan.close()
    assert no_leaks.counters()["executors"] == 0


def test_failing_address_setter_rebuilds(prob, no_leaks):
    rng = np.random.default_rng(6)
    q2 = rng.standard_normal(prob.q.shape).astype(BF16)
    expected2 = acl.run_backward(_call(prob, query=q2))
    with FagPlan.from_call(_call(prob)) as plan:
        plan.run()
        no_leaks.inject("aclSetInputTensorAddr", 0, 161002)
        with DeviceArray.from_numpy(q2) as new_q:
            plan.run(query=new_q)
            assert plan.phase1_runs == 2 and plan.repeatable
            _same(plan.grads(), expected2)
    with FagPlan.from_call(_call(prob), repoint=False) as plan:
        with DeviceArray.from_numpy(q2) as new_q:
            plan.run(query=new_q)
            assert plan.phase1_runs == 2 and plan.repoints == 0
            _same(plan.grads(), expected2)


def test_device_resident_views_of_one_buffer(prob, no_leaks):
    d = prob.q.shape[-1]
    qkv = np.concatenate([prob.q, prob.qr], axis=-1)
    expected = acl.run_backward(_call(prob))
    with DeviceArray.from_numpy(qkv) as qkv_dev:
        q, qr = qkv_dev[..., :d], qkv_dev[..., d:]
        assert q.buffer is qr.buffer and qr.offset == d and q.strides == qr.strides
        f = prob.fwd
        with FagPlan(query=q, query_rope=qr, key=prob.k, key_rope=prob.kr, value=prob.v,
                     dy=prob.dy, atten_mask=prob.mask, softmax_max=f.softmax_max,
                     softmax_sum=f.softmax_sum, attention_in=f.attention_out,
                     actual_seq_qlen=prob.q_ends, actual_seq_kvlen=prob.kv_ends,
                     scale_value=prob.scale) as plan:
            plan.run()
            _same(plan.grads(), expected)
        assert not qkv_dev.closed           # caller-owned arrays stay the caller's


def test_invalid_swaps(prob, no_leaks):
    with FagPlan.from_call(_call(prob)) as plan:
        with DeviceArray.empty((3, 3), BF16) as wrong:
            with pytest.raises(ValueError, match="must match"):
                plan.run(query=wrong)
        with pytest.raises(TypeError, match="slot"):
            plan.run(bogus=wrong)
        with pytest.raises(TypeError):
            plan.run(query=prob.q)
        freed = DeviceArray.from_numpy(prob.q)
        freed.free()
        with pytest.raises(ValueError, match="freed"):
            plan.run(query=freed)
        plan.run()


def test_phase1_failure_at_construction_leaks_nothing(prob, no_leaks):
    with pytest.raises(errors.ParamInvalidError):
        f = prob.fwd
        FagPlan(query=prob.q, query_rope=prob.qr, key=prob.k, key_rope=prob.kr, value=prob.v,
                dy=prob.dy, atten_mask=prob.mask, softmax_max=f.softmax_max,
                softmax_sum=f.softmax_sum, attention_in=f.attention_out,
                actual_seq_qlen=prob.q_ends, actual_seq_kvlen=prob.kv_ends,
                scale_value=prob.scale, input_layout="BSH")


def test_plan_released_by_gc(prob, no_leaks):
    plan = FagPlan.from_call(_call(prob))
    plan.run()
    assert no_leaks.counters()["executors"] == 1
    del plan
    gc.collect()
    assert no_leaks.counters()["executors"] == 0
