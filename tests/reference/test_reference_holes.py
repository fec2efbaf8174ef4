"""Reference paths the main tests did not reach (mutation audit, issue 14):

* the key side gathered key tile by key tile (a batch whose keys exceed the gather budget,
  16 MiB by default: ~10K keys at MLA sizes), driven here with a zero budget and small
  ACLNN_FAG_BLOCK_* tiles, and the budget's exact boundary;
* the row maximum for tile widths 1..40 (both parities, the last column included), directly
  and through the forward's softmax_max;
* the device-precision forward rounds P to bf16 (ties away) before P·V, and sums the
  un-rounded P into softmax_sum;
* the small-shape exception of the padding rule ends at a last query end of 163840 (rule 16).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O
from aclnn_fag import errors
from aclnn_fag.reference import common
from aclnn_fag.rules import validate_backward

BF16 = O.BF16


def _bwd(case, precision):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(),
            precision=precision, backend="numpy")


def _fwd(case, precision):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.flash_attention_forward(case.q, case.qr, case.k, case.kr, case.v,
                                          **case.api_common(), precision=precision)


def _bits(x):
    x = np.asarray(x)
    return x.view(np.uint16) if x.dtype == BF16 else x


# ----------------------------------------------------------------------------- key tiles
KEY_TILE_CASES = {
    # explicit random mask, GQA 2, several batches incl. an empty one, Sq != Skv
    "mask_gqa2": dict(seed=71, q_lens=[37, 0, 29], kv_lens=[45, 6, 23], n1=4, n2=2, d=32,
                      dr=16, mode=0, density=0.3),
    # causal: band-cut tiles split into strips that share one key tile
    "causal": dict(seed=72, q_lens=[50, 41], n1=2, n2=1, d=32, dr=16, mode=3),
    # band with negative next: key tiles start where the band starts
    "band": dict(seed=73, q_lens=[44, 30], kv_lens=[52, 30], n1=2, n2=2, d=16, dr=16, mode=4,
                 pre=13, nxt=-3),
}
SMALL_TILES = {"ACLNN_FAG_BLOCK_Q": "16", "ACLNN_FAG_BLOCK_K": "8", "ACLNN_FAG_BLOCK_MIN": "4"}


@pytest.fixture(scope="module")
def key_tile_cases():
    return {name: O.make_case(label=name, **cfg) for name, cfg in KEY_TILE_CASES.items()}


@pytest.mark.parametrize("name", list(KEY_TILE_CASES))
def test_key_tile_gather_path(name, key_tile_cases, monkeypatch):
    case = key_tile_cases[name]
    for var, value in SMALL_TILES.items():
        monkeypatch.setenv(var, value)
    whole = {p: (_bwd(case, p), _fwd(case, p)) for p in ("device", "fp64")}
    gathers = []
    original = common.KeySide._gather

    def counting(self, t0, t1):
        gathers.append((t0, t1))
        return original(self, t0, t1)
    monkeypatch.setattr(common.KeySide, "_gather", counting)
    monkeypatch.setattr(common, "KEY_GATHER_BYTES", 0)      # every key side is over budget
    for precision in ("device", "fp64"):
        gathers.clear()
        grads, fwd = _bwd(case, precision), _fwd(case, precision)
        # the tile path ran: gathers of at most 8 keys, more than one per (batch, head)
        assert gathers and max(t1 - t0 for t0, t1 in gathers) <= 8
        assert len(gathers) > 2 * case.k.shape[1] * case.lay.B
        # same tiles, same arithmetic: identical to the whole-sequence gather, bit for bit
        for got, want in zip(list(grads) + list(fwd), list(whole[precision][0])
                             + list(whole[precision][1])):
            np.testing.assert_array_equal(_bits(got), _bits(want))
    # and right: the fp64 result against the dense float64 oracle
    grads = _bwd(case, "fp64")
    for gname, got, want in zip(O.GRAD_NAMES, grads, case.oracle_backward()):
        assert O.normwise_error(got, want) <= 1e-10, gname
    fwd = _fwd(case, "fp64")
    assert O.normwise_error(fwd.attention_out, case.o64) <= 1e-10


@pytest.mark.parametrize("extra_rows,whole", [(0, True), (1, False)])
def test_key_gather_budget_boundary(extra_rows, whole):
    """Whole-sequence gather exactly up to the budget (rows x (D + Dr + Dv + 2) x 4 bytes)."""
    d, dr, dv = 64, 32, 62
    width = d + dr + dv + 2
    budget = 4096 * width * 4
    rows = budget // (width * 4) + extra_rows
    k = np.broadcast_to(np.ones((1, 1, d), BF16), (rows, 1, d))
    kr = np.broadcast_to(np.ones((1, 1, dr), BF16), (rows, 1, dr))
    v = np.broadcast_to(np.ones((1, 1, dv), BF16), (rows, 1, dv))
    head = slice(0, 1)
    side = common.KeySide(k, kr, v, slice(0, rows), head, np.float32, True, common.Scratch(),
                          budget_bytes=budget)
    assert side._whole is whole
    kt, vt = side.get((0, 8), 3, 8)
    assert kt.shape == (1, 5, d + dr + 1) and vt.shape == (1, 5, dv + 1)
    assert np.all(kt == 1) and np.all(vt == 1)
    assert common.KeySide(k, kr, v, slice(0, 100), head, np.float32, True,
                          common.Scratch())._whole


# ----------------------------------------------------------------------------- row max
@pytest.mark.parametrize("width", range(1, 41))
def test_row_max_every_width_and_column(width):
    """Row r of a [width, width] tile holds its unique maximum in column r: every column,
    the last one of an odd width included, must reach the result."""
    rng = np.random.default_rng(width)
    for dtype in (np.float32, np.float64):
        s = (-1.0 - rng.random((width, width))).astype(dtype)     # all negative
        peaks = rng.random(width).astype(dtype)                   # >= 0: the unique max
        s[np.arange(width), np.arange(width)] = peaks
        got = common.row_max(s)
        assert got.shape == (width, 1) and got.dtype == dtype
        np.testing.assert_array_equal(got[:, 0], peaks)
        # and on a non-contiguous tile (a column slice of a wider array)
        wide = np.full((width, width + 3), -5.0, dtype=dtype)
        wide[:, 1:width + 1] = s
        np.testing.assert_array_equal(common.row_max(wide[:, 1:width + 1])[:, 0], peaks)


@pytest.mark.parametrize("skv", [16, 17, 19, 23, 31, 33, 39, 40])
def test_forward_softmax_max_with_the_peak_on_the_last_key(skv):
    """softmax_max is the true row max when the largest score sits on the last key of an
    odd-width tile (one key tile of skv keys), and attention_out stays finite."""
    sq, d, dr = 6, 16, 8
    q = np.ones((sq, 1, d), BF16)
    qr = np.zeros((sq, 1, dr), BF16)
    k = np.full((skv, 1, d), -0.25, BF16)
    k[-1] = 0.5                                   # the last key has by far the largest score
    kr = np.zeros((skv, 1, dr), BF16)
    rng = np.random.default_rng(skv)
    v = rng.standard_normal((skv, 1, 16)).astype(BF16)
    for precision in ("device", "fp64"):
        fwd = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=np.zeros((sq, skv), np.uint8),
                                         actual_seq_qlen=[sq], actual_seq_kvlen=[skv],
                                         scale_value=1.0, precision=precision)
        assert np.all(fwd.softmax_max == 8.0)                  # 16 x 0.5 x 1.0
        # sum = 1 + (skv - 1) e^-12 (the peak key contributes e^0)
        want = 1.0 + (skv - 1) * np.exp(-12.0)
        np.testing.assert_allclose(fwd.softmax_sum.astype(np.float64), want, rtol=1e-6)
        out = fwd.attention_out.astype(np.float64)
        assert np.all(np.isfinite(out))
        expect = (v[-1, 0].astype(np.float64) + np.exp(-12.0) * v[:-1, 0].astype(np.float64)
                  .sum(axis=0)) / want
        np.testing.assert_allclose(out[:, 0], np.broadcast_to(expect, out[:, 0].shape),
                                   rtol=2 ** -7, atol=1e-6)


# ----------------------------------------------------------------------------- forward P
def _round_away(x):
    return O.round_bf16_away(np.asarray(x, dtype=np.float32))


def _exact_forward_case(seed):
    """Small-integer inputs and a power-of-two scale: every score is exact in fp32, so the
    only inexact steps are exp, the sum, the division and the bf16 roundings."""
    rng = np.random.default_rng(seed)
    sq, skv, d, dr, dv = 24, 12, 16, 8, 16
    q = rng.integers(-2, 3, (sq, 1, d)).astype(BF16)
    qr = rng.integers(-2, 3, (sq, 1, dr)).astype(BF16)
    k = rng.integers(-2, 3, (skv, 1, d)).astype(BF16)
    kr = rng.integers(-2, 3, (skv, 1, dr)).astype(BF16)
    v = rng.integers(-4, 5, (skv, 1, dv)).astype(BF16)
    return q, qr, k, kr, v


def _emulate_forward(q, qr, k, kr, v, scale, round_p):
    """Dense device-precision forward of one batch, one head: fp32 P = exp(S - max),
    l = sum of the un-rounded P, P rounded to bf16 (ties away) before P·V when round_p."""
    s = (q[:, 0].astype(np.float64) @ k[:, 0].astype(np.float64).T
         + qr[:, 0].astype(np.float64) @ kr[:, 0].astype(np.float64).T) * scale
    s = s.astype(np.float32)                      # exact
    m = s.max(axis=1, keepdims=True)
    p = np.exp(s - m)                             # float32
    l = p.astype(np.float64).sum(axis=1, keepdims=True)
    pv = _round_away(p) if round_p else p
    o = (pv.astype(np.float64) @ v[:, 0].astype(np.float64)) / l
    return _round_away(o.astype(np.float32)), m[:, 0], l[:, 0]


@pytest.mark.parametrize("seed", [81, 82, 83])
def test_device_forward_rounds_p_before_pv(seed):
    q, qr, k, kr, v = _exact_forward_case(seed)
    sq, skv = q.shape[0], k.shape[0]
    scale = 0.25
    fwd = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=np.zeros((sq, skv), np.uint8),
                                     actual_seq_qlen=[sq], actual_seq_kvlen=[skv],
                                     scale_value=scale, precision="device")
    got = fwd.attention_out[:, 0].astype(np.float32)
    rounded, m, l = _emulate_forward(q, qr, k, kr, v, scale, round_p=True)
    plain, _, _ = _emulate_forward(q, qr, k, kr, v, scale, round_p=False)
    ulp = O.bf16_ulp(rounded)
    off = np.abs(got - rounded) / ulp
    assert off.max() <= 1.0 and np.mean(off > 0) <= 0.02       # fp32 summation order only
    # power: the un-rounded P would be visibly different on this input
    off_plain = np.abs(got - plain) / ulp
    assert np.mean(off_plain >= 1) >= 0.1, np.mean(off_plain >= 1)
    # the statistics: the exact max, and the sum of the *un-rounded* P
    np.testing.assert_array_equal(fwd.softmax_max[:, 0, 0], m)
    np.testing.assert_allclose(fwd.softmax_sum[:, 0, 0], l, rtol=2e-6)
    assert np.all(fwd.softmax_max == fwd.softmax_max[..., :1])      # 8 equal copies
    assert np.all(fwd.softmax_sum == fwd.softmax_sum[..., :1])


def test_device_forward_p_tie_rounds_away():
    """Two keys with scores 0 and -ln-ish x such that fp32 exp gives P exactly on a bf16 tie
    would be fragile; instead: keys with P = 1 and P = e^-1 and v chosen so that the rounded
    and the un-rounded P·V straddle an output rounding boundary by many ulps."""
    sq, skv, d, dr, dv = 1, 2, 16, 8, 16
    q = np.zeros((sq, 1, d), BF16)
    q[0, 0, 0] = 1
    qr = np.zeros((sq, 1, dr), BF16)
    k = np.zeros((skv, 1, d), BF16)
    k[1, 0, 0] = -1                               # scores 0 and -1
    kr = np.zeros((skv, 1, dr), BF16)
    v = np.zeros((skv, 1, dv), BF16)
    v[0, 0, :] = -1
    v[1, 0, :] = 3                                # -1 + 3 e^-1 = 0.1036: cancellation
    fwd = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=np.zeros((sq, skv), np.uint8),
                                     actual_seq_qlen=[sq], actual_seq_kvlen=[skv],
                                     scale_value=1.0, precision="device")
    p1 = np.exp(np.float32(-1.0))
    l = 1.0 + float(p1)
    want = _round_away(np.float32((-1.0 + 3.0 * float(_round_away(p1))) / l))
    unrounded = _round_away(np.float32((-1.0 + 3.0 * float(p1)) / l))
    assert want != unrounded
    np.testing.assert_array_equal(fwd.attention_out[0, 0].astype(np.float32),
                                  np.full(dv, want, np.float32))


# ----------------------------------------------------------------------------- rule 16
def _small_shape_call(last_q_end, d=36, deterministic=False, kv_len=64):
    """D = Dv = 36 (not a multiple of 8): accepted only through the small-shape exception
    (max Skv <= 1024, D < 96, last positive query end < 163840, no dropout, non-determ.)."""
    t1, dr = last_q_end, 8

    def z(t, dim):
        return np.broadcast_to(np.zeros((1, 1, dim), BF16), (t, 1, dim))
    stats = np.broadcast_to(np.zeros((1, 1, 8), np.float32), (t1, 1, 8))
    return validate_backward(z(t1, d), z(t1, dr), z(kv_len, d), z(kv_len, dr), z(kv_len, d),
                             z(t1, d), atten_mask=np.broadcast_to(np.zeros((1, 1), np.uint8),
                                                                 (t1, kv_len)),
                             softmax_max=stats, softmax_sum=stats, attention_in=z(t1, d),
                             actual_seq_qlen=[t1], actual_seq_kvlen=[kv_len],
                             scale_value=0.1, sparse_mode=0, deterministic=deterministic)


@pytest.mark.parametrize("last_end,accepted", [(163838, True), (163839, True),
                                                (163840, False), (163841, False)])
def test_small_shape_exception_ends_at_163840(last_end, accepted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if accepted:
            _small_shape_call(last_end)
        else:
            with pytest.raises(errors.ParamInvalidError, match="163840") as info:
                _small_shape_call(last_end)
            assert info.value.code == 161002


def test_small_shape_exception_other_conditions():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _small_shape_call(100, kv_len=1024)
        _small_shape_call(100, d=92)                                 # D < 96
        with pytest.raises(errors.ParamInvalidError):
            _small_shape_call(100, d=100)                            # D = 100 > 96, not % 8
        with pytest.raises(errors.ParamInvalidError):
            _small_shape_call(100, kv_len=1025)                      # max Skv > 1024
        with pytest.raises(errors.ParamInvalidError):
            _small_shape_call(100, deterministic=True)               # deterministic


def test_device_forward_output_tie_rounds_away():
    """Two keys with equal scores (P = 1 each, sum 2): O = (v1 + v2) / 2 exactly; with
    v1 = 1, v2 = 1 + 2^-7 that is 1 + 2^-8, a bf16 tie: ties away give 1 + 2^-7 (the bf16
    cast of ml_dtypes, ties to even, would give 1)."""
    sq, skv, d, dr, dv = 2, 2, 16, 8, 16
    q = np.zeros((sq, 1, d), BF16)
    qr = np.zeros((sq, 1, dr), BF16)
    k = np.ones((skv, 1, d), BF16)
    kr = np.zeros((skv, 1, dr), BF16)
    v = np.zeros((skv, 1, dv), BF16)
    v[0, 0, :2] = 1, -1
    v[1, 0, :2] = 1 + 2.0 ** -7, -(1 + 2.0 ** -7)
    fwd = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=np.zeros((sq, skv), np.uint8),
                                     actual_seq_qlen=[sq], actual_seq_kvlen=[skv],
                                     scale_value=1.0, precision="device")
    out = fwd.attention_out.astype(np.float32)
    np.testing.assert_array_equal(out[:, 0, 0], [1 + 2.0 ** -7] * sq)
    np.testing.assert_array_equal(out[:, 0, 1], [-(1 + 2.0 ** -7)] * sq)
    assert np.all(fwd.softmax_sum == 2.0) and np.all(fwd.softmax_max == 0.0)


@pytest.mark.parametrize("rows, pieces", [(100, [(0, 50, 0, 50), (50, 100, 0, 100)]),
                                          (60, [(0, 60, 0, 60)]),
                                          (512, [(0, 128, 0, 128), (128, 256, 0, 256),
                                                 (256, 384, 0, 384), (384, 512, 0, 512)])])
def test_band_cut_tiles_of_short_sequences_are_halved_once(rows, pieces):
    """A causal diagonal tile of a short sequence (fewer than 2 * min_split rows) is halved
    once when both halves keep 32 rows: two strips computing 3/4 of the square; longer tiles
    are cut down to min_split (128) rows as before."""
    from aclnn_fag.reference.blocks import default_block_sizes, tiles
    from aclnn_fag.semantics.sparse import batch_keep
    keep = batch_keep(3, 0, rows, rows, 2147483647, 2147483647, -1)
    got = [(r0, r1, j0, j1) for r0, r1, j0, j1, _, _ in
           tiles(keep, None, 0, 0, rows, rows, default_block_sizes())]
    assert got == pieces
