"""FagPlan and the runtime where the mutation audit found no test (issue 14):

* every input slot and every output slot of a plan swapped in turn (the address-setter
  index must skip the empty optional slots: atten_mask, softmax_max, softmax_sum and
  attention_in sit after pse_shift/drop_mask/padding_mask, which are NULL);
* a replacement whose storage offset differs from the original's is refused, slot by slot;
* ``close()`` (and garbage collection) destroys the executor before the tensors it uses;
* a public call with ``deterministic=True`` has ACL_OPT_DETERMINISTIC on during phase 1
  (and ``False`` has it off), on the public path and on a plan;
* ``acl.shutdown()`` finalises ACL only when this package's aclInit initialised it.
"""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag.acl import DeviceArray, FagPlan, runtime
from aclnn_fag.acl.prototypes import PHASE1
from aclnn_fag.rules import validate_backward
from acl_cases import BF16, make_problem
from acl_cases import plan_for as _plan
from acl_cases import plan_host_inputs as _host_inputs
from acl_cases import raw_grads as _raw

INPUTS = ("query", "query_rope", "key", "key_rope", "value", "dy", "atten_mask", "softmax_max",
          "softmax_sum", "attention_in")
OUTPUTS = ("dq", "dq_rope", "dk", "dk_rope", "dv")


@pytest.fixture(scope="module")
def prob():
    # a random mask (density 0.3) so that the mask slot changes the result too
    return make_problem(seed=91, q_lens=(7, 0, 9), kv_lens=(8, 4, 9), n2=1, g=2, d=32, dr=16,
                        density=0.3)


def _replacement(p, slot: str) -> np.ndarray:
    """New data for one input slot, same shape and dtype, that changes the gradients."""
    rng = np.random.default_rng(abs(hash(slot)) % 1000)
    old = _host_inputs(p)[slot]
    if slot == "atten_mask":
        new = (rng.random(old.shape) < 0.3).astype(old.dtype)
        new[:, 0] = 0
        return new
    if slot == "softmax_max":
        return (old + np.float32(0.5)).astype(np.float32)      # 8 copies stay equal
    if slot == "softmax_sum":
        return (old * np.float32(2.0)).astype(np.float32)
    return rng.standard_normal(old.shape).astype(BF16)


def _bits(grads):
    return [np.asarray(g).view(np.uint16) for g in grads]


def _assert_same(a, b):
    for name, x, y in zip(OUTPUTS, _bits(a), _bits(b)):
        np.testing.assert_array_equal(x, y, err_msg=name)


def _differs(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(_bits(a), _bits(b)))


@pytest.mark.parametrize("slot", INPUTS)
def test_swapping_each_input_slot_repoints_that_input(prob, slot, no_leaks):
    base = _raw(prob)
    new_host = _replacement(prob, slot)
    expected = _raw(prob, **{slot: new_host})
    assert _differs(expected, base), f"{slot}: the replacement must change the gradients"
    with _plan(prob) as plan:
        assert plan.repeatable
        plan.run()
        _assert_same(plan.grads(), base)
        with DeviceArray.from_numpy(new_host) as new:
            plan.run(**{slot: new})
            assert plan.inputs[slot] is new
            # repointed in place: no second phase 1, one address-setter call
            assert plan.phase1_runs == 1 and plan.repoints == 1
            _assert_same(plan.grads(), expected)
            plan.run()                              # the swap persists
            _assert_same(plan.grads(), expected)


@pytest.mark.parametrize("slot", OUTPUTS)
def test_swapping_each_output_slot_writes_the_new_buffer(prob, slot, no_leaks):
    base = _raw(prob)
    with _plan(prob) as plan:
        plan.run()
        old = getattr(plan.outputs, slot)
        old.copy_from_numpy(np.zeros(old.shape, BF16))
        with DeviceArray.zeros(old.shape, BF16) as new:
            outs = plan.run(**{slot: new})
            assert getattr(outs, slot) is new
            assert plan.phase1_runs == 1 and plan.repoints == 1
            np.testing.assert_array_equal(new.numpy().view(np.uint16),
                                          np.asarray(getattr(base, slot)).view(np.uint16))
            assert np.any(new.numpy().astype(np.float32) != 0)
            assert not np.any(old.numpy().astype(np.float32))       # the old one untouched
            _assert_same(plan.grads(), base)


def test_swapping_everything_at_once(prob, no_leaks):
    news = {s: _replacement(prob, s) for s in INPUTS}
    expected = _raw(prob, **news)
    devs = {s: DeviceArray.from_numpy(a) for s, a in news.items()}
    try:
        with _plan(prob) as plan:
            plan.run()
            plan.run(**devs)
            assert plan.phase1_runs == 1 and plan.repoints == len(INPUTS)
            _assert_same(plan.grads(), expected)
    finally:
        for d in devs.values():
            d.free()


@pytest.mark.parametrize("slot", INPUTS + OUTPUTS)
def test_replacement_with_another_storage_offset_is_refused(prob, slot, no_leaks):
    with _plan(prob) as plan:
        plan.run()
        cur = plan.inputs[slot] if slot in INPUTS else getattr(plan.outputs, slot)
        host = cur.numpy()
        doubled = np.concatenate([host, host], axis=0)
        n = host.shape[0]
        with DeviceArray.from_numpy(doubled) as big:
            shifted = big[n:]
            assert (shifted.shape, shifted.strides, shifted.dtype) == (cur.shape, cur.strides,
                                                                       cur.dtype)
            assert shifted.offset != cur.offset
            with pytest.raises(ValueError, match="must match"):
                plan.run(**{slot: shifted})
            assert plan.phase1_runs == 1 and plan.repoints == 0
            same = big[:n]                          # same offset as the original: accepted
            assert same.offset == cur.offset
            plan.run(**{slot: same})
            assert plan.repoints == 1


@pytest.mark.parametrize("how", ["close", "gc"])
def test_executor_is_released_before_its_tensors(prob, how, no_leaks):
    plan = _plan(prob)
    plan.run()
    order = []
    st = plan._state
    for label, res in [("executor", st.executor), ("handles", st.batch)]:
        original = res.release

        def logged(*mode, original=original, label=label):   # release(mode) since issue 11
            order.append(label)
            return original(*mode)
        res.release = logged
    tensors = [h for h in st.handles["in"] + st.handles["out"] if h is not None]
    assert len(tensors) >= len(INPUTS) + len(OUTPUTS) and set(tensors) <= set(st.batch._tensors)
    if how == "close":
        plan.close()
    else:
        del plan, st
        gc.collect()
    assert order == ["executor", "handles"], order


# ----------------------------------------------------------------------------- determinism
def _spy_phase1(monkeypatch, seen):
    b = runtime.api()
    original = getattr(b, PHASE1)

    def spy(*args):
        seen.append(runtime.get_determinism(0))
        return original(*args)
    monkeypatch.setattr(b, PHASE1, spy)


@pytest.mark.parametrize("want", [True, False])
def test_public_call_holds_the_determinism_option_during_phase_1(want, monkeypatch, no_leaks):
    p = make_problem(seed=92, q_lens=(7, 0, 9), n2=1, g=2, d=32, dr=16)
    seen = []
    _spy_phase1(monkeypatch, seen)
    before = 0 if want else 1
    runtime._set_determinism(runtime.ensure_device(0), before)
    got = af.flash_attention_unpadding_score_grad_v3(p.q, p.qr, p.k, p.kr, p.v, p.dy,
                                                     **p.kwargs(), backend="npu",
                                                     deterministic=want)
    assert seen and all(bool(v) is want for v in seen), seen
    assert runtime.get_determinism(0) == before                # restored afterwards
    assert got.dq is not None
    # the general path of acl/op.py too (device results: not the host-array short path)
    seen.clear()
    acl.clear_executor_cache()              # (else a cache hit: no phase 1 to look at)
    call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs(), deterministic=want)
    for g in acl.run_backward(call, keep_on_device=True):
        g.free()
    assert seen and all(bool(v) is want for v in seen), seen
    assert runtime.get_determinism(0) == before
    # the same through a plan built from a validated call
    seen.clear()
    call = validate_backward(p.q, p.qr, p.k, p.kr, p.v, p.dy, **p.kwargs(), deterministic=want)
    with FagPlan.from_call(call) as plan:
        plan.run()
    assert seen and all(bool(v) is want for v in seen), seen
    assert runtime.get_determinism(0) == before
    # a run that must rebuild (repoint=False, a swapped buffer) runs phase 1 inside run()
    with FagPlan.from_call(call, repoint=False) as plan:
        seen.clear()
        with DeviceArray.from_numpy(p.dy) as new_dy:
            plan.run(dy=new_dy)
        assert plan.phase1_runs == 2
    assert len(seen) == 1 and bool(seen[0]) is want, seen
    assert runtime.get_determinism(0) == before
    runtime._set_determinism(runtime.ensure_device(0), 0)


# ----------------------------------------------------------------------------- shutdown
def _foreign_acl(stub_lib_dir):
    """libascendcl.so as another library (torch_npu) would call it: the same instance."""
    lib = ctypes.CDLL(str(stub_lib_dir / "libascendcl.so"), mode=ctypes.RTLD_GLOBAL)
    init, fin = lib["aclInit"], lib["aclFinalize"]
    init.argtypes, init.restype = [ctypes.c_char_p], ctypes.c_int
    fin.argtypes, fin.restype = [], ctypes.c_int
    return init, fin


def test_shutdown_leaves_a_foreign_acl_initialisation_alone(stub_lib_dir, no_leaks):
    acl_init, acl_finalize = _foreign_acl(stub_lib_dir)
    acl.shutdown(finalize=True)
    acl_finalize()                           # whatever state: now ACL is not initialised
    assert acl_init(None) == 0               # "torch_npu" initialises first
    try:
        DeviceArray.from_numpy(np.ones(4, np.float32)).free()    # the package initialises
        assert runtime.owns_init() is False
        acl.shutdown(finalize=True)
        assert acl_finalize() == 0, "acl.shutdown() finalised an ACL it did not initialise"
    finally:
        acl.shutdown(finalize=False)
    # the converse: the package's own aclInit is finalised by shutdown()
    DeviceArray.from_numpy(np.ones(4, np.float32)).free()
    assert runtime.owns_init() is True
    acl.shutdown(finalize=True)
    assert acl_finalize() != 0               # already finalised by the package
    assert acl_init(None) == 0               # and a fresh aclInit works
    acl_finalize()
    DeviceArray.from_numpy(np.ones(4, np.float32)).free()      # the package re-initialises
    assert runtime.owns_init() is True
