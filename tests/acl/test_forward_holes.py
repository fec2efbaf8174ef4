"""The forward's corners no other test reaches: rule F10 against S4 for decreasing ends (on
the NumPy backend, on the stub through the public call and through the raw ABI), and the
stand-in forward's per-head 4-D mask over several batches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from acl_cases import make_problem
from test_forward import _args, _assert_forward_close

NULLPTR, INVALID = 161001, 161002
FLT_MAX = np.finfo(np.float32).max


# ----------------------------------------------------------------------------- item 14: F10
def _decreasing_case():
    """ends [9, 5, 23]: the sum of the lengths with negative differences counted as 0 is
    9 + 0 + 18 = 27, the plain sum (the last end) 23 = T1. T1 lies between the two sums, so the
    forward's tiling rule F10 rejects it (161001) before the stricter S4 (decreasing: 161002)."""
    p = make_problem(seed=21, q_lens=(9, 0, 14), d=32, dr=16, g=2, mode=3)
    assert p.q.shape[0] == 23
    return p, dict(actual_seq_qlen=[9, 5, 23])


def _public(p, backend, **over):
    kw = dict(atten_mask=p.mask, actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends,
              scale_value=p.scale, sparse_mode=p.mode)
    kw.update(over)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.flash_attention_forward(p.q, p.qr, p.k, p.kr, p.v, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["numpy", "npu"])
def test_f10_decreasing_ends_between_the_two_sums_is_161001(backend, no_leaks):
    p, over = _decreasing_case()
    with pytest.raises(af.ParamNullptrError) as info:
        _public(p, backend, **over)
    assert (info.value.code, info.value.param) == (NULLPTR, "actual_seq_qlen")
    assert "rule F10" in str(info.value) and "(27)" in str(info.value)
    # the KV side likewise
    with pytest.raises(af.ParamNullptrError) as info:
        _public(p, backend, actual_seq_kvlen=[9, 5, 23])
    assert (info.value.code, info.value.param) == (NULLPTR, "actual_seq_kvlen")
    # once T covers the clamped sum, the decreasing ends reach S4: 161002
    q_big = np.concatenate([p.q, p.q[:4]])
    qr_big = np.concatenate([p.qr, p.qr[:4]])
    with pytest.raises(af.ParamInvalidError) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            af.flash_attention_forward(q_big, qr_big, p.k, p.kr, p.v, atten_mask=p.mask,
                                       actual_seq_qlen=[9, 5, 23], actual_seq_kvlen=p.kv_ends,
                                       scale_value=p.scale, sparse_mode=3, backend=backend)
    assert (info.value.code, info.value.param) == (INVALID, "actual_seq_qlen")


def test_f10_decreasing_ends_on_the_stub_op_itself(no_leaks):
    """The stand-in forward's own check (no Python validation): 161001 naming rule F10."""
    p, over = _decreasing_case()
    with pytest.raises(af.AclnnError) as info:
        acl.call_raw_forward(**_args(p, **over))
    assert info.value.code == NULLPTR and "rule F10" in str(info.value)
    with pytest.raises(af.AclnnError) as info:
        acl.call_raw_forward(**_args(p, actual_seq_kvlen=[9, 5, 23]))
    assert info.value.code == NULLPTR and "T2" in str(info.value)
    # T1 = 27 covers the clamped sum: the stub's own S4 rejects the decreasing ends (161002)
    big = dict(query=np.concatenate([p.q, p.q[:4]]), query_rope=np.concatenate([p.qr, p.qr[:4]]))
    with pytest.raises(af.AclnnError) as info:
        acl.call_raw_forward(**_args(p, **big, **over))
    assert info.value.code == INVALID and "S4" in str(info.value)


# ----------------------------------------------------------------------------- item 15: BNSS
def _packed_mask_problem(per_head=True, seed=3):
    """Two batches (plus an empty one), N1 = 4 (GQA 2), a [B, N1, maxSq, maxSkv] mask (or
    [B, 1, maxSq, maxSkv]) whose packed blocks differ per batch (and head): with per_head,
    head h of batch 2 masks row h entirely."""
    q_lens, kv_lens = (9, 0, 11), (7, 3, 12)
    p = make_problem(seed=seed, q_lens=q_lens, kv_lens=kv_lens, n2=2, g=2, mode=1)
    rng = np.random.default_rng(seed)
    b, n1 = len(q_lens), p.q.shape[1]
    heads = n1 if per_head else 1
    mask = np.zeros((b, heads, max(q_lens), max(kv_lens)), np.uint8)
    flat = mask.reshape(-1)
    base = 0
    for bi, (sq, skv) in enumerate(zip(q_lens, kv_lens)):
        for h in range(heads):
            block = (rng.random((sq, skv)) < 0.4).astype(np.uint8)
            if sq and skv:
                block[:, h % skv] = 0                 # a kept key per row, another per head
                if bi == 2:
                    block[h] = 1                      # row h of head h fully masked
            flat[base:base + sq * skv] = block.reshape(-1)
            base += sq * skv
    p.mask = mask
    return p.forward()


@pytest.mark.filterwarnings("ignore::aclnn_fag.FullyMaskedRowWarning")
def test_stub_forward_reads_each_batchs_block_of_a_b1ss_mask(no_leaks):
    p = _packed_mask_problem(per_head=False)
    want = _public(p, "numpy")
    got = _public(p, "npu")
    _assert_forward_close(got, want)


@pytest.mark.filterwarnings("ignore::aclnn_fag.FullyMaskedRowWarning")
def test_stub_forward_reads_each_heads_block_of_a_4d_mask(no_leaks):
    p = _packed_mask_problem()
    want = _public(p, "numpy")
    got = _public(p, "npu")
    assert af.last_backend() == "npu"
    _assert_forward_close(got, want)
    # independent of the reference: in batch 2 (rows 9..19), head h's row h is an invalid line
    # (max -FLT_MAX) and the other heads' row h is not; statistics in the [N1, Sq, 8] layout
    n1, q0, sq = p.q.shape[1], 9, 11
    smax = got.softmax_max.reshape(-1)
    for h in range(n1):
        for row in range(n1):
            m = smax[(q0 * n1 + h * sq + row) * 8]
            assert (m == -FLT_MAX) == (row == h), (h, row, m)
        assert not got.attention_out[q0 + h, h].astype(np.float32).any()
        assert got.attention_out[q0 + h, (h + 1) % n1].astype(np.float32).any()
