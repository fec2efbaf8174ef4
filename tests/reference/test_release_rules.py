"""The rules of each CANN release on the NumPy backend ($ACLNN_FAG_CANN_RELEASE, set by the
``cann_release`` fixture; docs/releases.md): end-of-data padding accepted everywhere with
the same results as without it, rule EOD on 9.0 and later, rule 27's B per release, the
verdict cache keyed on the release."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
from aclnn_fag import releases, seqlens
from aclnn_fag.rules import validate_backward

import oracle as O

MODES = {0: dict(pre=2**31 - 1, nxt=2**31 - 1), 3: {}, 4: dict(pre=3, nxt=1),
         7: dict(pre=3, nxt=0), 8: dict(pre=3, nxt=0)}


def _inputs(mode, t1=17, t2=15, seed=0):
    rng = np.random.default_rng(seed)
    bf = lambda *s: rng.standard_normal(s).astype(O.BF16)     # noqa: E731
    q, qr, dy = bf(t1, 2, 16), bf(t1, 2, 8), bf(t1, 2, 16)
    k, kr, v = bf(t2, 1, 16), bf(t2, 1, 8), bf(t2, 1, 16)
    mask = np.zeros((6, 5), np.uint8) if mode == 0 else O.compressed_mask()
    return q, qr, k, kr, v, dy, mask


def _round_trip(mode, q_ends, kv_ends, mask=None):
    q, qr, k, kr, v, dy, default_mask = _inputs(mode)
    kw = dict(atten_mask=default_mask if mask is None else mask, actual_seq_qlen=q_ends,
              actual_seq_kvlen=kv_ends, scale_value=0.2, sparse_mode=mode, backend="numpy",
              pre_tokens=MODES[mode].get("pre", 2**31 - 1),
              next_tokens=MODES[mode].get("nxt", 2**31 - 1))
    fwd = af.flash_attention_forward(q, qr, k, kr, v, **kw)
    grads = af.flash_attention_unpadding_score_grad_v3(
        q, qr, k, kr, v, dy, softmax_max=fwd.softmax_max, softmax_sum=fwd.softmax_sum,
        attention_in=fwd.attention_out, **kw)
    return tuple(fwd) + tuple(grads)


Q_ENDS, KV_ENDS = [4, 10, 14], [5, 9, 12]      # both end short of T1 = 17, T2 = 15


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("zeros", [1, 2])
def test_padding_gives_the_results_of_the_unpadded_call(cann_release, mode, zeros):
    """Trailing 0 entries are end-of-data padding on every release: the same forward outputs,
    statistics and gradients as without them (before: S4 rejected them as decreasing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _round_trip(mode, Q_ENDS, KV_ENDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # padding says "the rest is padding": no SequenceEndWarning
        warnings.simplefilter("error", af.SequenceEndWarning)
        padded = _round_trip(mode, Q_ENDS + [0] * zeros, KV_ENDS + [0] * zeros)
    for a, b in zip(plain, padded):
        np.testing.assert_array_equal(a, b)


def test_last_end_below_t_still_warns_and_works_on_every_release(cann_release):
    with pytest.warns(af.SequenceEndWarning, match="ends at 14 < T1"):
        out = _round_trip(3, Q_ENDS, KV_ENDS)
    assert not np.any(out[3][14:].astype(np.float32))       # dq rows after the end: zero


@pytest.mark.parametrize("ends", [[2, 0, 5], [3, 0, 3, 9]])
def test_zeros_that_are_not_trailing_keep_the_s4_error(cann_release, ends):
    with pytest.raises(af.AclnnError) as err:
        _round_trip(3, ends, KV_ENDS[:1] * (len(ends) - 1) + [KV_ENDS[-1]])
    assert err.value.code == 161002 and err.value.param == "actual_seq_qlen"
    assert "S4" in str(err.value) and "non-decreasing" in str(err.value)


@pytest.mark.parametrize("side", ["actual_seq_qlen", "actual_seq_kvlen"])
def test_padding_on_one_side_follows_the_release(cann_release, side):
    q_ends = Q_ENDS + ([0] if side == "actual_seq_qlen" else [14])
    kv_ends = KV_ENDS + ([0] if side == "actual_seq_kvlen" else [13])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not cann_release.eod_padding:
            _round_trip(3, q_ends, kv_ends)
            return
        for op_code in (161001, 161002):
            with pytest.raises(af.AclnnError) as err:
                if op_code == 161001:
                    _round_trip(3, q_ends, kv_ends)      # the forward fails first
                else:
                    q, qr, k, kr, v, dy, mask = _inputs(3)
                    stats = np.ones((17, 2, 8), np.float32)
                    validate_backward(q, qr, k, kr, v, dy, atten_mask=mask, softmax_max=stats,
                                      softmax_sum=stats, attention_in=dy,
                                      actual_seq_qlen=q_ends, actual_seq_kvlen=kv_ends,
                                      scale_value=0.2, sparse_mode=3, release=cann_release)
            other = "actual_seq_kvlen" if side == "actual_seq_qlen" else "actual_seq_qlen"
            assert err.value.code == op_code and err.value.param == other
            assert "rule EOD" in str(err.value) and cann_release.name in str(err.value)


def test_4d_mask_of_padded_ends_is_addressed_like_the_unpadded_one(cann_release):
    """The mask's B is the release's count of the ends the device gets: [.., 14, 0, 0] is 4
    before 9.1 (the first padding entry's lengths are negative, not 0) and 3 from 9.1; on 9.0
    the binding's own padding entry counts too (4). Batch b reads block b either way; the
    blocks past the last batch are never read."""
    rng = np.random.default_rng(3)
    blocks = (rng.random((4, 1, 6, 5)) < 0.3).astype(np.uint8)
    blocks[..., 0] = 0
    padded_ends = (Q_ENDS + [0, 0], KV_ENDS + [0, 0])
    b_plain = seqlens.device_batch_count(
        *seqlens.with_device_padding(Q_ENDS, KV_ENDS, 17, 15, cann_release), cann_release)
    b_padded = seqlens.device_batch_count(*padded_ends, cann_release)
    assert (b_plain, b_padded) == {"8.5.0": (3, 4), "9.0.0": (4, 4),
                                   "9.1.0": (3, 3)}[cann_release.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _round_trip(0, Q_ENDS, KV_ENDS, mask=blocks[:b_plain])
        padded = _round_trip(0, *padded_ends, mask=blocks[:b_padded])
    for x, y in zip(plain, padded):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(af.AclnnError, match=f"B={b_padded}"):
        _round_trip(0, *padded_ends, mask=blocks[:7 - b_padded])


def test_the_verdict_cache_is_keyed_on_the_release(monkeypatch):
    """The same arguments, another release: the cached verdict of the first is not reused."""
    q, qr, k, kr, v, dy, _ = _inputs(0, t1=10, t2=12)
    mask = np.zeros((2, 1, 6, 8), np.uint8)          # [4, 10, 10]: B = 2 before 9.1, 3 from it
    stats = np.ones((10, 2, 8), np.float32)
    args = dict(atten_mask=mask, softmax_max=stats, softmax_sum=stats, attention_in=dy,
                actual_seq_qlen=[4, 10, 10], actual_seq_kvlen=[4, 12, 12], scale_value=0.2,
                check_data=False)
    for name, accepted in (("8.5.0", True), ("9.1.0", False), ("8.5.0", True)):
        monkeypatch.setenv(releases.ENV_VAR, name)
        if accepted:
            validate_backward(q, qr, k, kr, v, dy, **args)
        else:
            with pytest.raises(af.AclnnError, match="B=3"):
                validate_backward(q, qr, k, kr, v, dy, **args)


def test_stats_layout_helpers_read_padded_ends_like_unpadded():
    rng = np.random.default_rng(4)
    tm = rng.standard_normal((17, 2)).astype(np.float32)
    plain = af.softmax_layout.device_stats_from_token_major(tm, Q_ENDS)
    padded = af.softmax_layout.device_stats_from_token_major(tm, Q_ENDS + [0, 0])
    np.testing.assert_array_equal(plain, padded)


def test_the_appended_padding_entry_in_the_mask_count_is_explained_on_9_0(cann_release):
    """On 9.0 the binding's padding entry counts in B: a 4-D mask with one block per sequence
    is rejected with a hint saying why; 8.5 (no padding appended) and 9.1 (padding not
    counted) accept it."""
    blocks = np.zeros((3, 1, 6, 5), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cann_release.name != "9.0.0":
            _round_trip(0, Q_ENDS, KV_ENDS, mask=blocks)
            return
        with pytest.raises(af.AclnnError, match="counts the end-of-data padding entry") as err:
            _round_trip(0, Q_ENDS, KV_ENDS, mask=blocks)
    assert err.value.code == 161001 and err.value.param == "atten_mask"
