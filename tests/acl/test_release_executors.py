"""Executors on every outcome of the two phases (docs/releases.md): the forward's phase 1
hands its executor out on an error path, and phase 2 given no workspace would delete an
executor the binding still owns. On the stubs, which emulate both: no leak, no double free."""

from __future__ import annotations

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag import errors
from aclnn_fag.acl import executor
from acl_cases import make_problem


def _fwd_kwargs(p):
    return dict(query=p.q, query_rope=p.qr, key=p.k, key_rope=p.kr, value=p.v,
                atten_mask=p.mask, actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends,
                scale_value=p.scale)


@pytest.mark.parametrize("layout", ["BSH", "SBH", "tnd"])
def test_forward_phase1_failure_hands_out_an_executor_that_is_destroyed(layout, no_leaks):
    """Layout not TND: 161002, and the executor phase 1 handed out anyway is destroyed
    (no_leaks: the stub's live executors are back to zero)."""
    p = make_problem(seed=61, q_lens=(5, 3))
    bad = no_leaks.bad_releases()
    with pytest.raises(errors.ParamInvalidError) as err:
        acl.call_raw_forward(**_fwd_kwargs(p), input_layout=layout)
    assert err.value.code == 161002 and "TND" in str(err.value)
    assert no_leaks.bad_releases() == bad


def test_forward_phase1_failure_without_executor_out_param_still_fails_cleanly(no_leaks):
    p = make_problem(seed=62, q_lens=(4,))
    bad = no_leaks.bad_releases()
    with pytest.raises(errors.AclnnError):
        acl.call_raw_forward(**_fwd_kwargs(p), input_layout="BSH", executor_out=False)
    assert no_leaks.bad_releases() == bad


@pytest.mark.parametrize("public", [True, False])
def test_phase2_is_refused_without_the_workspace_it_asked_for(public, monkeypatch, no_leaks):
    """A workspace size > 0 and no workspace: the op would delete even a repeatable
    executor the binding still owns (a double free when the binding destroys it). The
    binding refuses before the call; the executor is destroyed once, by the binding."""
    p = make_problem(seed=63, q_lens=(6, 4), mode=0)
    bad = no_leaks.bad_releases()
    original = executor.run
    seen = []

    def no_workspace(launch, stream, workspace_of, sync, timer=executor.Timer()):
        def none(nbytes, cached):
            seen.append(nbytes)
            return 0
        return original(launch, stream, none, sync, timer)

    monkeypatch.setattr(executor, "run", no_workspace)
    with pytest.raises(errors.ParamNullptrError) as err:
        if public:
            p.grads("npu")
        else:
            acl.call_raw(**p.raw_kwargs())
    assert seen and seen[0] > 0                      # the stub's op asks for a workspace
    assert err.value.param == "workspace" and err.value.code == 161001
    assert str(seen[0]) in str(err.value)
    assert no_leaks.bad_releases() == bad
    monkeypatch.setattr(executor, "run", original)
    assert np.isfinite(np.asarray(p.grads("npu").dq, np.float32)).all()   # and the next call works
