"""The host fast paths: the stub's compute switch, the validation verdict cache (keyed by the
call's full description, data rules always rerun) and the package's own read-only mask."""

from __future__ import annotations

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag import masks
from aclnn_fag.rules import data_rules
from aclnn_fag.rules import driver as validate
from acl_cases import make_problem


def test_stub_compute_switch_skips_only_the_computation(monkeypatch):
    p = make_problem(seed=60)
    pos = [acl.DeviceArray.from_numpy(getattr(p, n)) for n in ("q", "qr", "k", "kr", "v", "dy")]
    kw = p.kwargs()
    dq = acl.DeviceArray.from_numpy(np.zeros(p.q.shape, p.q.dtype))
    call = validate.validate_backward(*pos, **kw)
    monkeypatch.setenv("ACL_STUB_SKIP_COMPUTE", "1")
    acl.run_backward(call, outputs={"dq": dq}, keep_on_device=True)
    assert not np.any(dq.numpy().astype(np.float32))          # nothing was computed
    bad = dict(kw, actual_seq_qlen=[1, 2, 3])                 # the rules still run
    with pytest.raises(af.AclnnError):
        acl.call_raw(query=p.q, query_rope=p.qr, key=p.k, key_rope=p.kr, value=p.v, dy=p.dy,
                     **bad)
    monkeypatch.delenv("ACL_STUB_SKIP_COMPUTE")
    acl.run_backward(call, outputs={"dq": dq}, keep_on_device=True)
    assert np.any(dq.numpy().astype(np.float32))


def _args(p, **over):
    return (p.q, p.qr, p.k, p.kr, p.v, p.dy), p.kwargs(**over)


def test_verdict_cache_reruns_the_data_rules_on_new_data():
    validate._VERDICTS.clear()
    p = make_problem(seed=61, mode=0)
    pos, kw = _args(p)
    validate.validate_backward(*pos, **kw)
    assert len(validate._VERDICTS) == 1                       # cached
    smax = p.fwd.softmax_max.copy()
    smax[2, 0, 3] += 1.0                                      # same description, new data
    with pytest.raises(af.ParamInvalidError, match="copies"):
        validate.validate_backward(*pos, **dict(kw, softmax_max=smax))
    # the cached verdict holds none of the caller's tensors
    assert all(getattr(c, "query") is None for c in validate._VERDICTS.values())


def test_verdict_cache_compares_types_and_values_not_identity():
    validate._VERDICTS.clear()
    p = make_problem(seed=62, mode=0)
    pos, kw = _args(p)
    validate.validate_backward(*pos, **kw)
    floats = [float(x) for x in kw["actual_seq_qlen"]]        # equal values, wrong type
    with pytest.raises(TypeError, match="actual_seq_qlen"):
        validate.validate_backward(*pos, **dict(kw, actual_seq_qlen=floats))
    with pytest.raises(af.AclnnError):                        # another value of a scalar
        validate.validate_backward(*pos, **dict(kw, keep_prob=0.5))


def test_package_mask_is_read_only_and_recognised(monkeypatch):
    m = masks.compressed_causal_mask()
    assert not m.flags.writeable and masks.is_package_mask(m)
    with pytest.raises(ValueError):
        m.setflags(write=True)
    assert masks.is_package_mask(m[None, None])
    copy = m.copy()
    assert not masks.is_package_mask(copy)                    # the caller could change it
    copy.setflags(write=False)
    assert not masks.is_package_mask(copy)                    # same content, not ours
    # a view made by as_strided that starts one row into the package's buffer (numpy makes
    # no other view of it that starts elsewhere with these strides): not recognised
    shifted = np.lib.stride_tricks.as_strided(m[1:], shape=m.shape, strides=m.strides,
                                              writeable=False)
    assert not masks.is_package_mask(shifted)
    # recognised masks are not read: the canonical check never runs for them
    calls = []
    monkeypatch.setattr(data_rules, "is_canonical_compressed",
                        lambda mm: calls.append(1) or masks.is_canonical_compressed(mm))
    p = make_problem(seed=63, mode=3, q_lens=(6, 9), kv_lens=(6, 9))
    pos, kw = _args(p)
    validate._VERDICTS.clear()
    validate.validate_backward(*pos, **kw)
    assert calls == []
    validate.validate_backward(*pos, **dict(kw, atten_mask=m.copy()))
    assert calls == [1]
