"""The CANN releases on the stand-in libraries (docs/releases.md): the stubs emulate each
release ($ACL_STUB_CANN_VERSION), the NumPy backend follows the same one
($ACLNN_FAG_CANN_RELEASE; the ``cann_release`` fixture sets both), and the binding reads the
release from the stubs' version queries once per library set.

* a round trip (forward + backward) on the stubs agrees with the NumPy reference on every
  release, with and without end-of-data padding and with "last end below T";
* the device is given the padded ends on 9.0 and later (the stub's trace);
* padding on one side only gets the device's status on 9.0 and later (backward 161002,
  forward 161001), from the validator and from the stub op called without validation;
* rule 27's B follows the release's batch count on both;
* the release is read once (no version query per call) and warns once when unknown.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import aclnn_fag as af
from aclnn_fag import acl, releases
from aclnn_fag.acl import release as npu_release
from aclnn_fag.acl import versions
from acl_cases import assert_grads_close, make_problem

CASES = {0: dict(q_lens=(9, 0, 14), kv_lens=(12, 5, 14), density=0.2),
         3: dict(q_lens=(8, 3, 12), kv_lens=(10, 4, 12)),
         7: dict(q_lens=(12, 6), kv_lens=(12, 20), pre=6, nxt=0),
         8: dict(q_lens=(6, 2, 12), kv_lens=(14, 3, 12), pre=6, nxt=0)}


def _extended(p, extra_q=3, extra_kv=2):
    """The problem with rows after the last ends (T1 > last query end, T2 > last key end)."""
    rng = np.random.default_rng(1)

    def more(a, n):
        return np.concatenate([a, rng.standard_normal((n,) + a.shape[1:]).astype(a.dtype)])

    p.q, p.qr, p.dy = (more(a, extra_q) for a in (p.q, p.qr, p.dy))
    p.k, p.kr, p.v = (more(a, extra_kv) for a in (p.k, p.kr, p.v))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # SequenceEndWarning
        return p.forward()


def _round_trip(p, backend, **ends):
    fwd = af.flash_attention_forward(
        p.q, p.qr, p.k, p.kr, p.v, atten_mask=p.mask, scale_value=p.scale, pre_tokens=p.pre,
        next_tokens=p.nxt, sparse_mode=p.mode, backend=backend,
        **(ends or dict(actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends)))
    kw = p.kwargs(softmax_max=fwd.softmax_max, softmax_sum=fwd.softmax_sum,
                  attention_in=fwd.attention_out, **ends)
    grads = af.flash_attention_unpadding_score_grad_v3(p.q, p.qr, p.k, p.kr, p.v, p.dy,
                                                       backend=backend, **kw)
    return tuple(fwd) + tuple(grads)


def _padded(p, zeros=2):
    return dict(actual_seq_qlen=list(p.q_ends) + [0] * zeros,
                actual_seq_kvlen=list(p.kv_ends) + [0] * zeros)


@pytest.mark.parametrize("mode", sorted(CASES))
def test_round_trip_on_each_release_with_and_without_padding(cann_release, mode):
    """Forward + backward on the stubs emulating the release vs the NumPy reference following
    it: ends at T, "last end below T" (the binding pads on 9.0+; the stub would reject it
    otherwise) and explicit padding give the same outputs (padding entries are no batches).
    Before end-of-data padding was known, the padded form failed S4 on every backend and
    "last end below T" failed the emulated 9.0/9.1 op."""
    p = _extended(make_problem(seed=800 + mode, mode=mode, **CASES[mode]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _round_trip(p, "numpy")
        short = _round_trip(p, "npu")
        padded = _round_trip(p, "npu", **_padded(p))
        padded_ref = _round_trip(p, "numpy", **_padded(p, zeros=1))
    assert npu_release.current() == cann_release
    for a, b, c, d in zip(ref, short, padded, padded_ref):
        np.testing.assert_array_equal(b, c)
        np.testing.assert_array_equal(a, d)
    assert_grads_close(short[3:], ref[3:])
    assert_grads_close(short[:1], ref[:1])


def test_the_device_gets_the_padded_ends(cann_release, tmp_path, monkeypatch):
    """On 9.0 and later the binding appends the 0 entry to both arrays when both sides end
    short of T (the stub's trace shows what phase 1 received); on 8.5 the ends go as given."""
    p = _extended(make_problem(seed=5, mode=3, **CASES[3]))
    trace = tmp_path / "trace.jsonl"
    acl.clear_executor_cache()
    monkeypatch.setenv("ACL_STUB_TRACE", str(trace))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p.grads("npu")
    monkeypatch.delenv("ACL_STUB_TRACE")
    phase1 = [json.loads(line) for line in trace.read_text().splitlines()
              if '"int_arrays"' in line]
    assert phase1, trace.read_text()
    got = phase1[-1]["int_arrays"]
    pad = [0] if cann_release.eod_padding else []
    assert got["actual_seq_qlen"] == list(p.q_ends) + pad
    assert got["actual_seq_kvlen"] == list(p.kv_ends) + pad


def _one_sided(p):
    return dict(actual_seq_qlen=list(p.q_ends) + [0],
                actual_seq_kvlen=list(p.kv_ends) + [p.kv_ends[-1] + 1])


def test_padding_on_one_side_gets_the_devices_status(cann_release):
    """The query side padded, the key side not while it ends short of T2 too: 9.0 and later
    reject it (backward 161002, forward 161001: rule EOD) -- the validator and the stub op
    called without validation alike; 8.5 accepts it."""
    p = _extended(make_problem(seed=6, mode=3, **CASES[3]))
    ends = _one_sided(p)
    want_bwd, want_fwd = (161002, 161001) if cann_release.eod_padding else (0, 0)

    def status(fn, **kw):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(**kw)
        except af.AclnnError as exc:
            return exc.code, exc
        return 0, None

    fwd_kw = dict(query=p.q, query_rope=p.qr, key=p.k, key_rope=p.kr, value=p.v,
                  atten_mask=p.mask, scale_value=p.scale, sparse_mode=3, **ends)
    bwd_kw = dict(fwd_kw, dy=p.dy, softmax_max=p.fwd.softmax_max,
                  softmax_sum=p.fwd.softmax_sum, attention_in=p.fwd.attention_out)
    for backend in ("numpy", "npu"):
        code, exc = status(af.flash_attention_unpadding_score_grad_v3, backend=backend, **bwd_kw)
        assert code == want_bwd, exc
        if code:
            assert exc.param == "actual_seq_kvlen" and "rule EOD" in str(exc)
            assert cann_release.name in str(exc)
        code, exc = status(af.flash_attention_forward, backend=backend, **fwd_kw)
        assert code == want_fwd, exc
    assert status(acl.call_raw, **bwd_kw)[0] == want_bwd
    assert status(acl.call_raw_forward, **fwd_kw)[0] == want_fwd


def test_4d_mask_batch_count_follows_the_release(cann_release):
    """[.., 21, 21] ends a zero-length last sequence: B = 3 on 9.1, B = 2 before (rule 27),
    on the validator and the stub op alike; the accepted mask gives the NumPy reference's
    gradients."""
    p = make_problem(seed=7, mode=0, q_lens=(9, 12, 0), kv_lens=(12, 9, 0))
    good, bad = (3, 2) if cann_release.batch_drops_zero_ends else (2, 3)
    rng = np.random.default_rng(2)
    masks = {b: (rng.random((b, 1, 12, 12)) < 0.2).astype(np.uint8) for b in (2, 3)}
    for m in masks.values():
        m[..., 0] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_grads_close(p.grads("npu", atten_mask=masks[good]),
                           p.grads("numpy", atten_mask=masks[good]))
        for backend in ("numpy", "npu"):
            with pytest.raises(af.AclnnError) as err:
                p.grads(backend, atten_mask=masks[bad])
            assert err.value.code == 161001 and err.value.param == "atten_mask"
            assert f"B={good}" in str(err.value)
        with pytest.raises(af.AclnnError) as err:
            acl.call_raw(**p.raw_kwargs(atten_mask=masks[bad]))
        assert err.value.code == 161001


def test_the_release_is_read_once_per_library_set(monkeypatch):
    """Calls do not query the versions again: one query for many calls; forget() (or a new
    library set) queries again and sees a changed $ACL_STUB_CANN_VERSION."""
    calls = []
    real = versions.query_cann_version
    monkeypatch.setattr(versions, "query_cann_version", lambda b: calls.append(1) or real(b))
    monkeypatch.setenv("ACL_STUB_CANN_VERSION", "8.5.0")
    npu_release.forget()
    p = make_problem(seed=8, mode=3, **CASES[3])
    for _ in range(3):
        p.grads("npu")
    assert len(calls) == 1 and npu_release.current().name == "8.5.0"
    monkeypatch.setenv("ACL_STUB_CANN_VERSION", "9.0.0")
    assert npu_release.current().name == "8.5.0"      # kept with the loaded libraries
    npu_release.forget()
    assert npu_release.current().name == "9.0.0" and len(calls) == 2
    npu_release.forget()


def test_an_unknown_runtime_version_gets_the_newest_rules_and_one_warning(monkeypatch):
    monkeypatch.setattr(versions, "query_cann_version",
                        lambda b: versions.release_of({"ops_transformer_version": "10.2.0"}))
    npu_release.forget()
    releases._said.clear()
    with pytest.warns(af.errors.UnknownReleaseWarning, match="10.2.0"):
        assert npu_release.current() == releases.NEWEST
    npu_release.forget()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert npu_release.current() == releases.NEWEST     # said once
    monkeypatch.setattr(versions, "query_cann_version", lambda b: 1 / 0)
    npu_release.forget()
    with pytest.warns(af.errors.UnknownReleaseWarning):
        assert npu_release.current() == releases.NEWEST     # a broken query: never an error
    npu_release.forget()


def test_the_appended_padding_entry_is_no_sequence_for_the_limit(cann_release):
    """2048 sequences (S3's limit) ending short of T: on 9.0+ the device gets 2049 entries,
    the padding entry is no sequence, so neither the validator nor the stub op rejects it."""
    p = _extended(make_problem(seed=9, mode=3, q_lens=(1,) * 2048, d=16, dr=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grads = p.grads("npu")
    assert grads[0].shape == p.q.shape
    with pytest.raises(af.AclnnError, match="2049 sequences exceed"):
        p.grads("npu", actual_seq_qlen=list(p.q_ends) + [2049],
                actual_seq_kvlen=list(p.kv_ends) + [2049])


def test_a_plan_gives_the_device_the_padded_ends(cann_release):
    """FagPlan validates with the runtime's release and runs on the ends the device gets:
    "last end below T" works on every release, as the public call does."""
    from acl_cases import plan_for
    p = _extended(make_problem(seed=10, mode=3, **CASES[3]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = p.grads("npu")
        plan = plan_for(p)
        try:
            got = [g.numpy() for g in plan.run()]
        finally:
            plan.close()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
