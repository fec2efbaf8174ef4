"""FagPlan results never alias (issue 9, item 5).

What ``run()`` returns is the caller's: a later run never changes it, it stays valid after
``close()`` or garbage collection of the plan, and two runs share no arrays and no memory —
unless the caller passed the output arrays in, which are then written by every run. Checked
for every output slot, for each way a plan runs (repeatable executor repointed, one-shot
executor, rebuild without the address setters), against ``call_raw`` on the same inputs
(an independent path through the op).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from aclnn_fag.acl import DeviceArray, runtime
from acl_cases import BF16, make_problem
from acl_cases import plan_for as _plan
from acl_cases import raw_grads as _raw

OUTPUTS = ("dq", "dq_rope", "dk", "dk_rope", "dv")
KINDS = {"repeatable": {}, "one_shot": dict(repeatable=False), "rebuild": dict(repoint=False)}


@pytest.fixture(scope="module")
def prob():
    return make_problem(seed=93, q_lens=(7, 0, 9), kv_lens=(8, 4, 9), n2=1, g=2, d=32, dr=16)


@pytest.fixture(scope="module")
def new_dy(prob):
    return np.random.default_rng(12).standard_normal(prob.dy.shape).astype(BF16)


@pytest.fixture(scope="module")
def new_value(prob):
    return np.random.default_rng(13).standard_normal(prob.v.shape).astype(BF16)


def _bits(a) -> np.ndarray:
    if isinstance(a, DeviceArray):
        a = a.numpy()
    return np.asarray(a).view(np.uint16)


def _assert_equal(got, expected, label=""):
    for name in OUTPUTS:
        np.testing.assert_array_equal(_bits(getattr(got, name)), _bits(getattr(expected, name)),
                                      err_msg=f"{label}{name}")


def _ptrs(grads):
    return {name: getattr(grads, name).buffer.ptr for name in OUTPUTS}


@pytest.mark.parametrize("kind", KINDS)
def test_a_later_run_never_changes_an_earlier_result(prob, new_dy, kind, no_leaks):
    first, second = _raw(prob), _raw(prob, dy=new_dy)
    for name in OUTPUTS:      # the swap changes every output: aliasing cannot go unnoticed
        assert not np.array_equal(_bits(getattr(first, name)), _bits(getattr(second, name))), name
    with _plan(prob, **KINDS[kind]) as plan, DeviceArray.from_numpy(new_dy) as dy2:
        g1 = plan.run()
        g2 = plan.run(dy=dy2)
        g3 = plan.run()                       # the swapped dy persists; g1, g2 still held
        _assert_equal(g1, first, "run 1: ")
        _assert_equal(g2, second, "run 2: ")
        _assert_equal(g3, second, "run 3: ")
        p1, p2, p3 = _ptrs(g1), _ptrs(g2), _ptrs(g3)
        for name in OUTPUTS:
            arrays = [getattr(g, name) for g in (g1, g2, g3)]
            assert len({id(a) for a in arrays}) == 3, name
            assert len({id(a.buffer) for a in arrays}) == 3, name
            assert len({p1[name], p2[name], p3[name]}) == 3, f"{name}: runs share memory"
        _assert_equal(plan.grads(), second, "grads(): ")


@pytest.mark.parametrize("how", ["close", "gc"])
def test_results_outlive_the_plan(prob, new_value, how, no_leaks):
    first, second = _raw(prob), _raw(prob, value=new_value)
    base = no_leaks.objects()
    plan = _plan(prob)
    v2 = DeviceArray.from_numpy(new_value)
    g1 = plan.run()
    g2 = plan.run(value=v2)
    if how == "close":
        plan.close()
        with pytest.raises(ValueError, match="closed"):
            plan.grads()
    else:
        del plan
        gc.collect()
    _assert_equal(g1, first, "after the plan: ")
    _assert_equal(g2, second, "after the plan: ")
    assert not v2.closed                           # the caller's input stays the caller's
    assert no_leaks.objects()["executors"] == base["executors"]
    assert no_leaks.objects()["tensors"] == base["tensors"]
    v2.free()
    del g1
    gc.collect()
    _assert_equal(g2, second, "after dropping run 1: ")
    del g2
    gc.collect()
    assert no_leaks.objects() == base               # the results' memory went with them


@pytest.mark.parametrize("kind", KINDS)
def test_caller_outputs_are_written_in_place(prob, new_dy, kind, no_leaks):
    first, second = _raw(prob), _raw(prob, dy=new_dy)
    my_dq = DeviceArray.zeros(prob.q.shape, BF16)
    my_dk = DeviceArray.zeros(prob.k.shape, BF16)
    with _plan(prob, dq=my_dq, **KINDS[kind]) as plan, DeviceArray.from_numpy(new_dy) as dy2:
        g1 = plan.run()
        assert g1.dq is my_dq
        np.testing.assert_array_equal(_bits(my_dq), _bits(first.dq))
        g2 = plan.run(dy=dy2, dk=my_dk)
        assert g2.dq is my_dq and g2.dk is my_dk
        np.testing.assert_array_equal(_bits(my_dq), _bits(second.dq))    # written again
        np.testing.assert_array_equal(_bits(my_dk), _bits(second.dk))
        np.testing.assert_array_equal(_bits(g1.dk), _bits(first.dk))     # the plan's: kept
        for name in ("dq_rope", "dk_rope", "dv"):
            np.testing.assert_array_equal(_bits(getattr(g1, name)), _bits(getattr(first, name)))
            assert getattr(g1, name).buffer.ptr != getattr(g2, name).buffer.ptr, name
        g3 = plan.run()
        assert g3.dq is my_dq and g3.dk is my_dk
    assert not my_dq.closed and not my_dk.closed
    np.testing.assert_array_equal(_bits(my_dk), _bits(second.dk))
    my_dq.free(), my_dk.free()


def test_a_kept_array_or_view_of_a_result_is_not_overwritten(prob, new_dy, no_leaks):
    first = _raw(prob)
    with _plan(prob) as plan, DeviceArray.from_numpy(new_dy) as dy2:
        head = plan.run().dq[:, :1]            # only a view survives the statement
        tail = plan.outputs.dv[2:]
        dk = plan.run().dk                     # only one array of the FagGrads
        dk_rope_buffer = plan.run().dk_rope.buffer
        plan.run(dy=dy2)
        plan.run()
        np.testing.assert_array_equal(_bits(head), _bits(first.dq[:, :1]))
        np.testing.assert_array_equal(_bits(tail), _bits(first.dv[2:]))
        np.testing.assert_array_equal(_bits(dk), _bits(first.dk))
        got = np.empty(first.dk_rope.shape, BF16)
        dk_rope_buffer.download(got)
        np.testing.assert_array_equal(got.view(np.uint16), _bits(first.dk_rope))


def test_numpy_results_are_independent(prob, new_dy, no_leaks):
    first, second = _raw(prob), _raw(prob, dy=new_dy)
    with _plan(prob) as plan, DeviceArray.from_numpy(new_dy) as dy2:
        plan.run()
        h1 = plan.grads()
        plan.run(dy=dy2)
        h2 = plan.grads()
    _assert_equal(h1, first, "grads() of run 1: ")
    _assert_equal(h2, second, "grads() of run 2: ")
    for name in OUTPUTS:
        assert not np.shares_memory(getattr(h1, name), getattr(h2, name)), name


def test_a_freed_result_does_not_break_the_plan(prob, no_leaks):
    first = _raw(prob)
    with _plan(prob) as plan:
        g1 = plan.run()
        g1.dq.free()
        assert g1.dq.closed
        g2 = plan.run()
        _assert_equal(g2, first)
        assert not g2.dq.closed


def test_dropped_results_cost_no_allocation(prob, no_leaks):
    """A loop that drops each run's results writes into the same buffers (no aclrtMalloc,
    no repoint per run); a kept result makes the next run allocate a fresh set once."""
    with _plan(prob) as plan:
        plan.run()
        before = runtime.stats()["malloc"]
        for _ in range(3):
            plan.run()
        assert runtime.stats()["malloc"] == before and plan.repoints == 0
        kept = plan.run()
        plan.run()
        assert runtime.stats()["malloc"] == before + len(OUTPUTS)
        assert plan.repoints == len(OUTPUTS) and plan.phase1_runs == 1
        assert kept.dq.buffer.ptr != plan.outputs.dq.buffer.ptr
