"""Worked examples of the kept sets (docs/sparse_modes.md).

1. Context parallelism, query side: a packed stream of causal sequences is cut into
   device spans; each span runs with mode 8 (or 7) on its pieces and must give exactly the
   gradients of mode 3 (= mode 2, Sq = Skv) on the whole stream.  Derivation from docs/sparse_modes.md:
   a span holds, per overlapping sequence, the query rows [a, b) (sequence-local).
   * A piece with kv = [0, b) has Δ = Skv - Sq = a, so bottom-right origin gives the causal
     rule j <= i + Δ = i + a  (mode 3, or the band of mode 4 with next = 0, pre >= Skv).
   * A piece starting at its sequence start (a = 0) may take kv = [0, e) for any e >= b with
     the top-left rule j <= i (mode 2): keys past b are masked.
   * The band of mode 4 with kv = [0, e), e >= b: j - i <= Δ + next = (e - b + a) + next,
     so next = b - e gives j <= i + a again (a negative next; valid while e - b <= Skv).
   Mode 8 = band for the *first* b < B with Sq_b != 0, mode 2 for the others: the first
   overlapping sequence (the only one that can be cut at its start) is the band with kv
   [0, b), next 0; the others start at a = 0 and take their whole sequence as kv.
   Mode 7 = band for the *last* such b, mode 3 for the others: the first sequence takes kv
   [0, b) (mode 3); the last (the band) takes its whole sequence as kv with next = b - e.
   Batches with Sq = 0 (keys only) placed before/after do not move the band.
2. Context parallelism, key side (ring attention): a query chunk [a, b) of one causal
   sequence against keys split into [0, a) (fully visible) and [a, b) (diagonal), as two
   batches sharing the query rows and the *global* softmax statistics; the partial
   gradients add up to the whole.  Only the band can be fully visible (pre = next large),
   the diagonal is mode 3 (Sq = Skv): mode 7 = [diagonal, full], mode 8 = [full, diagonal].
3. Hand-made kept matrices, read off the gradients with one-hot V and dy:
   dv[j, c] = sum_i P[i, j] dy[i, c] = P[c, j] when dy[i] = e_i, so dv[j, i] != 0 exactly
   when (i, j) is kept.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

BIG = 4096      # "infinite" pre/next for the band pieces (>= every Skv; no int32 overflow)


def grads_fp64(case: O.Case, precision="fp64"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(),
            precision=precision, backend="numpy")
    return g, caught


def piece_case(whole: O.Case, batches, mode, pre, nxt) -> tuple:
    """A call made of pieces of ``whole``: ``batches`` = [(q_rows, kv_rows)] of global row
    index arrays. Statistics, attention_in and dy are the whole's rows (global softmax)."""
    qi = np.concatenate([np.asarray(q, dtype=np.int64) for q, _ in batches])
    ki = np.concatenate([np.asarray(k, dtype=np.int64) for _, k in batches])
    q_ends = O.cumulative([len(q) for q, _ in batches])
    kv_ends = O.cumulative([len(k) for _, k in batches])
    case = O.Case(q=whole.q[qi], qr=whole.qr[qi], k=whole.k[ki], kr=whole.kr[ki],
                  v=whole.v[ki], dy=whole.dy[qi], mask=O.compressed_mask(), q_ends=q_ends,
                  kv_ends=kv_ends, scale=whole.scale, mode=mode, pre=pre, nxt=nxt)
    case.attention_in = whole.attention_in[qi]
    case.max_tm, case.sum_tm = whole.max_tm[qi], whole.sum_tm[qi]
    case.softmax_max = O.to_device_layout(case.max_tm, q_ends)
    case.softmax_sum = O.to_device_layout(case.sum_tm, q_ends)
    return case, qi, ki


def scatter(whole_shape_grads, piece_grads, qi, ki):
    for idx, (acc, g) in enumerate(zip(whole_shape_grads, piece_grads)):
        rows = qi if idx < 2 else ki
        np.add.at(acc, rows, np.asarray(g, dtype=np.float64))


def assert_same(actual, expected, what):
    for name, a, e in zip(O.GRAD_NAMES, actual, expected):
        e = np.asarray(e, dtype=np.float64)
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), e, rtol=0,
                                   atol=1e-12 * max(1.0, np.max(np.abs(e))), err_msg=f"{what} {name}")


# ----------------------------------------------------------------------------- 1. q side
SEQS = [37, 50, 29]
SPANS = [(0, 20), (20, 70), (70, 100), (100, 116)]


@pytest.fixture(scope="module")
def stream():
    whole = O.make_case(31, SEQS, n1=4, n2=2, d=64, dr=16, mode=3, label="stream")
    g3, _ = grads_fp64(whole)
    whole2 = O.make_case(31, SEQS, n1=4, n2=2, d=64, dr=16, mode=2)
    g2, _ = grads_fp64(whole2)
    assert_same(g2, g3, "mode 2 == mode 3 when Sq == Skv")
    return whole, g3


def span_batches(span, mode, dummy_keys):
    """(batches, pre, next) for a device span of the packed stream, per the module doc."""
    starts = np.concatenate([[0], np.cumsum(SEQS)[:-1]])
    lo, hi = span
    pieces = []          # (seq start, seq len, a, b) local query range [a, b)
    for s0, n in zip(starts, SEQS):
        a, b = max(lo, s0) - s0, min(hi, s0 + n) - s0
        if a < b:
            pieces.append((s0, n, a, b))
    batches, nxt = [], 0
    for idx, (s0, n, a, b) in enumerate(pieces):
        q_rows = np.arange(s0 + a, s0 + b)
        if mode == 8:
            e = b if idx == 0 else n                 # band: kv [0, b); others: whole sequence
        else:
            last = idx == len(pieces) - 1
            e = n if last else b                     # band (last): whole sequence, next = b - e
            if last:
                nxt = b - e
        batches.append((q_rows, np.arange(s0, s0 + e)))
    junk = np.arange(0, dummy_keys)                  # keys-only batch (Sq = 0)
    if mode == 8 and dummy_keys:
        batches.insert(0, (np.arange(0), junk))      # before the band: bandIdx must skip it
    if mode == 7 and dummy_keys:
        batches.append((np.arange(0), junk))         # after the band
        batches.append((np.arange(0), np.arange(0)))  # trailing (0, 0): not a batch at all
    return batches, BIG, nxt


@pytest.mark.parametrize("dummy_keys", [0, 3])
@pytest.mark.parametrize("mode", [8, 7])
def test_query_side_split_equals_causal_whole(stream, mode, dummy_keys):
    whole, g_whole = stream
    acc = [np.zeros(x.shape) for x in (whole.q, whole.qr, whole.k, whole.kr, whole.v)]
    acc_oracle = [np.zeros(x.shape) for x in acc]
    for span in SPANS:
        batches, pre, nxt = span_batches(span, mode, dummy_keys)
        case, qi, ki = piece_case(whole, batches, mode, pre, nxt)
        g, caught = grads_fp64(case)
        assert not any(issubclass(w.category, af.FullyMaskedRowWarning) for w in caught)
        # query-side gradients of the span's rows equal the whole's rows exactly
        for name, a, e in zip(("dq", "dq_rope"), g[:2], g_whole[:2]):
            np.testing.assert_allclose(a, e[qi], rtol=0, atol=1e-12 * np.max(np.abs(e)),
                                       err_msg=f"mode {mode} span {span} {name}")
        if dummy_keys:   # keys of the keys-only batch get nothing
            junk_rows = slice(0, dummy_keys) if mode == 8 else slice(len(ki) - dummy_keys, len(ki))
            assert np.all(g.dk[junk_rows] == 0) and np.all(g.dv[junk_rows] == 0)
        scatter(acc, g, qi, ki)
        scatter(acc_oracle, case.oracle_backward(), qi, ki)
    assert_same(acc, g_whole, f"mode {mode} pieces summed")
    assert_same(acc_oracle, whole.oracle_backward(), f"oracle mode {mode} pieces summed")


def test_query_side_split_needs_the_right_band():
    """Control: the mode-8 pieces run as mode 7 (so the last piece, whose kv is its whole
    sequence, becomes a band with next = 0) are *not* causal: the equality above is not
    automatic."""
    whole = O.make_case(31, SEQS, n1=4, n2=2, d=64, dr=16, mode=3)
    g_whole, _ = grads_fp64(whole)
    batches, pre, _ = span_batches((20, 70), 8, 0)
    case, qi, _ = piece_case(whole, batches, 7, pre, 0)
    g, _ = grads_fp64(case)
    assert np.max(np.abs(g.dq - g_whole.dq[qi])) > 1e-3 * np.max(np.abs(g_whole.dq))


# ----------------------------------------------------------------------------- 2. kv side
@pytest.mark.parametrize("mode", [7, 8])
@pytest.mark.parametrize("chunk", [(16, 40), (0, 24), (30, 48)])
def test_key_side_split_equals_causal_whole(mode, chunk):
    S = 48
    whole = O.make_case(41, [S], n1=4, n2=1, d=192, dv=128, dr=64, mode=3)
    a, b = chunk
    dy_chunk = np.zeros_like(whole.dy)
    dy_chunk[a:b] = whole.dy[a:b]
    only_chunk = O.Case(**{**whole.__dict__, "dy": dy_chunk})
    g_whole, _ = grads_fp64(only_chunk)       # the contributions of query rows [a, b)
    rows = np.arange(a, b)
    diag, full = (rows, rows), (rows, np.arange(0, a))
    batches = [diag, full] if mode == 7 else [full, diag]
    if a == 0:
        batches = [diag]                      # no visible prefix: a single (band) batch
    pre, nxt = (BIG, BIG) if a else (BIG, 0)
    case, qi, ki = piece_case(whole, batches, mode, pre, nxt)
    g, caught = grads_fp64(case)
    acc = [np.zeros(x.shape) for x in (whole.q, whole.qr, whole.k, whole.kr, whole.v)]
    scatter(acc, g, qi, ki)
    assert_same(acc, g_whole, f"mode {mode} chunk {chunk}")
    assert not any(issubclass(w.category, af.FullyMaskedRowWarning) for w in caught)


# ----------------------------------------------------------------------------- 3. by hand
def L(*rows):
    return np.array([[int(c) for c in r.split()] for r in rows], dtype=bool)


def block_diag(blocks, t1, t2, q_lens, kv_lens):
    out = np.zeros((t1, t2), dtype=bool)
    qs, ks = 0, 0
    for blk, nq, nk in zip(blocks, q_lens, kv_lens):
        if blk is not None:
            out[qs:qs + nq, ks:ks + nk] = blk
        qs += nq
        ks += nk
    return out


HAND = {
    "mode3_sq4_skv6": dict(
        q_lens=[4], kv_lens=[6], mode=3,
        kept=[L("1 1 1 0 0 0", "1 1 1 1 0 0", "1 1 1 1 1 0", "1 1 1 1 1 1")]),
    "mode4_pre1_next0": dict(
        q_lens=[4], kv_lens=[6], mode=4, pre=1, nxt=0,
        kept=[L("0 1 1 0 0 0", "0 0 1 1 0 0", "0 0 0 1 1 0", "0 0 0 0 1 1")]),
    "mode2_sq4_skv6": dict(
        q_lens=[4], kv_lens=[6], mode=2,
        kept=[L("1 0 0 0 0 0", "1 1 0 0 0 0", "1 1 1 0 0 0", "1 1 1 1 0 0")]),
    "mode3_two_batches": dict(
        q_lens=[4, 3], kv_lens=[6, 3], mode=3,
        kept=[L("1 1 1 0 0 0", "1 1 1 1 0 0", "1 1 1 1 1 0", "1 1 1 1 1 1"),
              L("1 0 0", "1 1 0", "1 1 1")]),
    "mode7_band_last": dict(
        q_lens=[3, 4, 2], kv_lens=[3, 6, 4], mode=7, pre=1, nxt=0,
        kept=[L("1 0 0", "1 1 0", "1 1 1"),
              L("1 1 1 0 0 0", "1 1 1 1 0 0", "1 1 1 1 1 0", "1 1 1 1 1 1"),
              L("0 1 1 0", "0 0 1 1")]),
    "mode8_band_first_nonempty": dict(
        q_lens=[0, 3, 2], kv_lens=[2, 3, 4], mode=8, pre=1, nxt=0,
        kept=[None, L("1 0 0", "1 1 0", "0 1 1"), L("1 0 0 0", "1 1 0 0")]),
    "mode4_sq_gt_skv_fully_masked": dict(
        q_lens=[5], kv_lens=[3], mode=4, pre=2, nxt=0,
        kept=[L("0 0 0", "0 0 0", "1 0 0", "1 1 0", "1 1 1")]),
    "mode0_tokens_and_hole": dict(
        q_lens=[4], kv_lens=[5], mode=0, pre=1, nxt=1, mask="complement",
        kept=[L("1 1 0 0 0", "1 0 1 0 0", "0 1 1 1 0", "0 0 1 1 1")]),
    "mode1_packed_b1": dict(
        q_lens=[2, 3], kv_lens=[3, 2], mode=1,
        mask=np.array([0, 1, 0, 1, 0, 0,  0, 1, 1, 0, 0, 0,  1, 1, 1, 1, 1, 1],
                      dtype=np.uint8).reshape(2, 1, 3, 3),
        kept=[L("1 0 1", "0 1 1"), L("1 0", "0 1", "1 1")]),
}


def hand_case(name) -> tuple:
    spec = HAND[name]
    q_lens, kv_lens, mode = spec["q_lens"], spec["kv_lens"], spec["mode"]
    t1, t2 = sum(q_lens), sum(kv_lens)
    kept = block_diag(spec["kept"], t1, t2, q_lens, kv_lens)
    rng = np.random.default_rng(len(name))
    d, dr, dv = 16, 8, 16
    assert dv >= max(t1, t2)
    v = np.zeros((t2, 1, dv), dtype=O.BF16)
    v[np.arange(t2), 0, np.arange(t2)] = 1          # one-hot keys
    dy = np.zeros((t1, 1, dv), dtype=O.BF16)
    dy[np.arange(t1), 0, np.arange(t1)] = 1         # one-hot query rows
    mask = spec.get("mask")
    if isinstance(mask, str):                       # mode 0: mask = complement of kept
        mask = (~spec["kept"][0]).astype(np.uint8)
    elif mask is None:
        mask = O.compressed_mask()
    case = O.Case(q=O.bf16_normal(rng, (t1, 1, d), 0.5), qr=O.bf16_normal(rng, (t1, 1, dr), 0.5),
                  k=O.bf16_normal(rng, (t2, 1, d), 0.5), kr=O.bf16_normal(rng, (t2, 1, dr), 0.5),
                  v=v, dy=dy, mask=mask, q_ends=O.cumulative(q_lens),
                  kv_ends=O.cumulative(kv_lens), scale=0.25, mode=mode,
                  pre=spec.get("pre", O.INT32_MAX), nxt=spec.get("nxt", O.INT32_MAX))
    return O.finish_case(case), kept


@pytest.mark.parametrize("precision", ["fp64", "device"])
@pytest.mark.parametrize("name", list(HAND))
def test_hand_made_kept_matrix(name, precision):
    case, kept = hand_case(name)
    lay = case.lay
    # the oracle's element-by-element kept set agrees with the hand-made one
    oracle_kept = np.zeros_like(kept)
    for b in range(lay.B):
        if lay.sq[b] and lay.skv[b]:
            oracle_kept[lay.q_starts[b]:lay.q_ends[b], lay.kv_starts[b]:lay.kv_ends[b]] = \
                O.kept_matrix(case.mode, b, lay, case.pre, case.nxt, case.mask)
    np.testing.assert_array_equal(oracle_kept, kept)
    g, caught = grads_fp64(case, precision)
    t1, t2 = kept.shape
    dv = np.asarray(g.dv, dtype=np.float64)[:, 0, :t1]        # dv[j, i] = P[i, j]
    np.testing.assert_array_equal(dv.T != 0, kept, err_msg=f"{name}: kept pairs from dv")
    assert np.all(dv >= 0)
    # with random V and dy, dq / dk rows are 0 exactly for rows / keys with no kept pair
    rng = np.random.default_rng(7)
    generic = O.finish_case(O.Case(**{**case.__dict__,
                                      "v": O.bf16_normal(rng, case.v.shape),
                                      "dy": O.bf16_normal(rng, case.dy.shape)}))
    g2, _ = grads_fp64(generic, precision)
    # Rows / keys with no kept pair: exactly 0. Rows with >= 2 kept keys: nonzero. A row with
    # a single kept key has P = 1 whatever its scores, so its dS is 0 up to summation order
    # (dP - Dterm cancels exactly only in exact arithmetic): not asserted either way.
    soft = kept & (kept.sum(axis=1) >= 2)[:, None]
    for name, grad, reached, active in (
            ("dq", g2.dq, kept.any(axis=1), soft.any(axis=1)),
            ("dq_rope", g2.dq_rope, kept.any(axis=1), soft.any(axis=1)),
            ("dk", g2.dk, kept.any(axis=0), soft.any(axis=0)),
            ("dk_rope", g2.dk_rope, kept.any(axis=0), soft.any(axis=0)),
            ("dv", g2.dv, kept.any(axis=0), kept.any(axis=0))):
        nonzero = np.any(np.asarray(grad, dtype=np.float64)[:, 0] != 0, axis=1)
        assert not np.any(nonzero & ~reached), f"{name}: rows {np.nonzero(nonzero & ~reached)[0]} must be 0"
        assert np.all(nonzero[active]), f"{name}: rows {np.nonzero(active & ~nonzero)[0]} must be nonzero"
    if precision == "fp64":
        # the kept cells carry the probabilities: rows of P sum to 1 (0 for invalid lines)
        np.testing.assert_allclose(dv.T.sum(axis=1), kept.any(axis=1).astype(float), rtol=1e-6)
    fully = ~kept.any(axis=1)
    warned = any(issubclass(w.category, af.FullyMaskedRowWarning) for w in caught)
    assert warned == bool(fully.any())
