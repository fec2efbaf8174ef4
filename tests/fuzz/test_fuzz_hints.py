"""The common mistakes are detected and named in the message, and the stub op (called
without Python validation) returns the same status for each:

* per-sequence lengths where cumulative ends are required (decreasing ends, a mask sized
  for the lengths, a last end below T),
* a last cumulative end != T (above: rejected; below: SequenceEndWarning),
* token-major softmax statistics ((max, sum) and (lse, 1) pairs broadcast to [T, N, 8];
  [T, N] arrays; [N, T, 8]), statistics whose 8 copies differ,
* a full S x S (or T1 x T2) mask where the compressed 2048 x 2048 one is required, the
  compressed mask for a dense mode, an inverted compressed mask,
* flash-attn style cumulative ends with a leading 0 (seen through a 4-D mask).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
from aclnn_fag.errors import SequenceEndWarning
from aclnn_fag.rules import validate_backward
from fuzz_cases import BF16, INT32_MAX, Case, build_case, raw_verdict, validator_verdict

NULLPTR, INVALID = 161001, 161002


def make(mode=0, q_lens=(5, 3), kv_lens=(6, 3), n2=1, g=2, d=16, dr=8, mask_kind="2d",
         pre=INT32_MAX, nxt=INT32_MAX, seed=0) -> Case:
    case = build_case(q_lens=list(q_lens), kv_lens=list(kv_lens), extra_q=0, extra_kv=0, n2=n2,
                      g=g, d=d, dr=dr, dv=d, mode=mode, pre=pre, nxt=nxt, seed=seed,
                      mask_kind=mask_kind, mask_dtype=np.uint8, density=0.0,
                      deterministic=False, scale=None)
    assert case.meta["forward_error"] is None
    return case


def rejected(case: Case, code: int, param: str, *words: str) -> af.AclnnError:
    """The validator rejects with ``code`` naming ``param`` and every word; the stub op
    called directly returns the same code."""
    with pytest.raises(af.AclnnError) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_backward(**case.args)
    err = info.value
    assert err.code == code and err.param == param, err
    for word in words:
        assert word in str(err), f"{word!r} not in: {err}"
    raw, exc = raw_verdict(case)
    assert raw == code, f"the stub op says {raw} ({exc}), the validator {code} ({err})"
    return err


def accepted(case: Case) -> None:
    assert validator_verdict(case) == 0
    assert raw_verdict(case)[0] == 0


def with_args(case: Case, **over) -> Case:
    return Case(dict(case.args, **over), dict(case.meta))


# ----------------------------------------------------------------------------- lengths
def test_per_sequence_lengths_decreasing():
    case = make()
    err = rejected(with_args(case, actual_seq_qlen=[5, 3], actual_seq_kvlen=[6, 3]), INVALID,
                   "actual_seq_qlen", "per-sequence lengths", "lengths_to_cumulative")
    assert err.stricter


def test_per_sequence_lengths_seen_through_the_mask_shape():
    """Lengths [3, 5] read as ends give Sq = [3, 2]: the [5, 6] mask built for the true
    lengths fails rule 27, whose message names the likely cause."""
    case = make(q_lens=(3, 5), kv_lens=(4, 6))
    rejected(with_args(case, actual_seq_qlen=[3, 5], actual_seq_kvlen=[4, 6]), NULLPTR,
             "atten_mask", "per-sequence lengths", "cumulative ends")


def test_per_sequence_lengths_below_T_warn_with_the_hint():
    case = make(mode=3, q_lens=(3, 5), kv_lens=(3, 5))
    bad = with_args(case, actual_seq_qlen=[3, 5], actual_seq_kvlen=[3, 5])
    with pytest.warns(SequenceEndWarning, match="per-sequence lengths"):
        validate_backward(**bad.args)
    assert raw_verdict(bad)[0] == 0          # the device accepts it (rows after 5 get zeros)


@pytest.mark.parametrize("name", ["actual_seq_qlen", "actual_seq_kvlen"])
def test_last_end_above_T(name):
    case = make()
    ends = list(case.args[name])
    ends[-1] += 1
    rejected(with_args(case, **{name: ends}), INVALID, name, "exceeds", "the last end must be T")


def test_last_end_below_T_warns():
    case = make()
    with pytest.warns(SequenceEndWarning, match="< T1"):
        validate_backward(**with_args(case, query=np.concatenate([case.args["query"]] * 2)[:9],
                                      query_rope=np.concatenate([case.args["query_rope"]] * 2)[:9],
                                      dy=np.concatenate([case.args["dy"]] * 2)[:9],
                                      attention_in=np.concatenate([case.args["attention_in"]] * 2)[:9],
                                      softmax_max=np.concatenate([case.args["softmax_max"]] * 2)[:9],
                                      softmax_sum=np.concatenate([case.args["softmax_sum"]] * 2)[:9]
                                      ).args)


def test_leading_zero_ends_named_through_a_4d_mask():
    case = make(mask_kind="b1")
    bad = with_args(case, actual_seq_qlen=[0, 5, 8], actual_seq_kvlen=[0, 6, 9])
    rejected(bad, NULLPTR, "atten_mask", "leading 0")


# ----------------------------------------------------------------------------- statistics
def _token_major(case: Case, lse: bool):
    ends = case.meta["q_ends"]
    tmax = af.softmax_layout.token_major_from_device_stats(case.args["softmax_max"], ends)
    tsum = af.softmax_layout.token_major_from_device_stats(case.args["softmax_sum"], ends)
    if lse:
        tmax = (tmax.astype(np.float64) + np.log(tsum.astype(np.float64))).astype(np.float32)
        tsum = np.ones_like(tsum)
    return tmax, tsum


@pytest.mark.parametrize("mode", [0, 2, 3, 4])
@pytest.mark.parametrize("lse", [False, True], ids=["max-sum", "lse-1"])
def test_token_major_statistics_broadcast_to_8(mode, lse):
    case = make(mode=mode, q_lens=(5, 7), kv_lens=(6, 7), pre=8, nxt=8)
    tmax, tsum = _token_major(case, lse)
    bad = with_args(case, softmax_max=np.repeat(tmax[..., None], 8, -1),
                    softmax_sum=np.repeat(tsum[..., None], 8, -1))
    err = rejected(bad, INVALID, "softmax_max", "token-major", "device_stats_from_token_major")
    assert err.stricter


@pytest.mark.parametrize("lse", [False, True], ids=["max-sum", "lse-1"])
def test_device_layout_statistics_accepted(lse):
    """The same numbers in the device layout are fine -- (lse, 1) pairs too (same math)."""
    case = make(q_lens=(5, 7), kv_lens=(6, 7))
    tmax, tsum = _token_major(case, lse)
    ends = case.meta["q_ends"]
    accepted(with_args(case, softmax_max=af.softmax_layout.device_stats_from_token_major(tmax, ends),
                       softmax_sum=af.softmax_layout.device_stats_from_token_major(tsum, ends)))


def test_token_major_statistics_with_one_head_coincide():
    """N1 = 1: both layouts are the same memory, nothing to detect (and nothing wrong)."""
    case = make(g=1, q_lens=(5, 7), kv_lens=(6, 7))
    tmax, tsum = _token_major(case, False)
    accepted(with_args(case, softmax_max=np.repeat(tmax[..., None], 8, -1),
                       softmax_sum=np.repeat(tsum[..., None], 8, -1)))


@pytest.mark.parametrize("shape_of", ["T,N", "T,N,1", "N,T"])
def test_statistics_shape_hints(shape_of):
    case = make()
    tmax, _ = _token_major(case, False)
    arr = {"T,N": tmax, "T,N,1": tmax[..., None], "N,T": np.ascontiguousarray(tmax.T)}[shape_of]
    rejected(with_args(case, softmax_max=arr), NULLPTR, "softmax_max", "device_stats_from_token_major")


def test_statistics_N_T_8_hint():
    case = make()
    arr = np.ascontiguousarray(np.swapaxes(case.args["softmax_max"], 0, 1))
    rejected(with_args(case, softmax_max=arr), NULLPTR, "softmax_max", "[N, T, 8]")


def test_statistics_copies_differ():
    case = make()
    arr = case.args["softmax_sum"].copy()
    arr[3, 1, 5] *= 2
    rejected(with_args(case, softmax_sum=arr), INVALID, "softmax_sum", "copies", "differ")


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("mode", [2, 3, 4, 7, 8])
@pytest.mark.parametrize("which", ["maxsq", "t1t2", "square"])
def test_full_mask_for_a_compressed_mode(mode, which):
    case = make(mode=mode, pre=8, nxt=8)
    shape = {"maxsq": (5, 6), "t1t2": (8, 9), "square": (9, 9)}[which]
    full = np.triu(np.ones(shape, np.uint8), 1)
    rejected(with_args(case, atten_mask=full), NULLPTR, "atten_mask", "full S x S mask",
             "compressed_causal_mask()")


@pytest.mark.parametrize("mode", [0, 1, 5])
def test_compressed_mask_for_a_dense_mode(mode):
    case = make(mode=mode)
    rejected(with_args(case, atten_mask=af.masks.compressed_causal_mask()), NULLPTR,
             "atten_mask", "belongs to sparse modes 2/3/4/7/8")


def test_full_T1_T2_mask_for_mode_0():
    case = make()
    rejected(with_args(case, atten_mask=np.zeros((8, 9), np.uint8)), NULLPTR, "atten_mask",
             "[T1, T2] mask", "top-left")


@pytest.mark.parametrize("kind", ["inverted", "zeros"])
def test_compressed_mask_content(kind):
    case = make(mode=3)
    m = af.masks.compressed_causal_mask()
    m = (m == 0).astype(np.uint8) if kind == "inverted" else np.zeros_like(m)
    word = "inverted" if kind == "inverted" else "all zero"
    rejected(with_args(case, atten_mask=m), INVALID, "atten_mask", "canonical", word)


def test_bfloat16_hint_for_float_inputs():
    case = make()
    err = rejected(with_args(case, query=case.args["query"].astype(np.float32)), INVALID, "query",
                   "ml_dtypes.bfloat16")
    assert "astype" in str(err)
    assert case.args["query"].dtype == BF16
