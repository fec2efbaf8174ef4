"""S9's sampled rows (rule S9 of aclnn_fag/rules/data_rules.py), each recomputed in a few numpy
operations with its keys widened a bounded chunk at a time, against the rule written out here:
the same (batch, row, head) samples in the same order, the same statistics read, each row's
log-sum-exp equal to a per-row float32 computation and to the oracle forward's, and the
same verdict (docs/validation.md, "What S9 samples")."""

from __future__ import annotations

import math
from types import SimpleNamespace
import warnings

import numpy as np
import pytest

import oracle as O
from aclnn_fag.rules import data_rules as V
from aclnn_fag.rules import driver
from aclnn_fag.errors import ParamInvalidError
from aclnn_fag.seqlens import seq_info
from aclnn_fag.semantics.sparse import band_index, normalize_tokens

COPIES = 8

CASES = {
    "gqa-mode3": dict(seed=11, q_lens=[12, 0, 7, 5], kv_lens=[12, 5, 9, 3], n1=4, n2=2, mode=3),
    "gqa-mode2": dict(seed=12, q_lens=[9, 6], kv_lens=[7, 11], n1=6, n2=3, mode=2),
    "mode4-band": dict(seed=13, q_lens=[10, 8], kv_lens=[12, 8], n1=2, n2=1, mode=4,
                       pre=3, nxt=2),
    "mode7": dict(seed=14, q_lens=[6, 5, 7], kv_lens=[8, 5, 4], n1=2, n2=2, mode=7,
                  pre=2, nxt=1),
    "mode8": dict(seed=15, q_lens=[6, 5, 7], kv_lens=[8, 5, 4], n1=2, n2=2, mode=8,
                  pre=2, nxt=1),
    "mode0-2d": dict(seed=16, q_lens=[9, 7], kv_lens=[9, 10], n1=4, n2=2, mode=0,
                     pre=4, nxt=3, mask_kind="2d", density=0.3),
    "mode1-11": dict(seed=17, q_lens=[8, 6], kv_lens=[8, 9], n1=2, n2=1, mode=1,
                     mask_kind="11", density=0.4),
    "mode1-b1": dict(seed=18, q_lens=[8, 6, 5], kv_lens=[7, 9, 4], n1=4, n2=2, mode=1,
                     mask_kind="b1", density=0.4),
    "mode1-bn-gqa": dict(seed=19, q_lens=[8, 6], kv_lens=[7, 9], n1=4, n2=2, mode=1,
                         mask_kind="bn", density=0.4),
    "mode1-dense-bn": dict(seed=20, q_lens=[5, 6, 4], kv_lens=[3, 4, 2], n1=3, n2=1, mode=1,
                           mask_kind="bn", density=0.85),
    "one-head-many-batches": dict(seed=21, q_lens=[3] * 12, kv_lens=[4] * 12, n1=1, n2=1,
                                  mode=3),
    # one key head for all query heads: the three sampled rows of a batch share their keys
    "mqa-mode3": dict(seed=22, q_lens=[11, 9, 6], kv_lens=[11, 12, 6], n1=4, n2=1, mode=3),
    "mqa-mode4": dict(seed=23, q_lens=[10, 7], kv_lens=[13, 7], n1=3, n2=1, mode=4,
                      pre=4, nxt=2),
    "mode5-bn": dict(seed=24, q_lens=[7, 6], kv_lens=[8, 9], n1=4, n2=2, mode=5,
                     pre=3, nxt=2, mask_kind="bn", density=0.3),
}


def _same(a, b) -> bool:
    return a == b or (a != a and b != b)


def _fits(m, l, lse) -> bool:
    if not (math.isfinite(m) and math.isfinite(l) and l > 0 and math.isfinite(lse)):
        return False
    return abs(m + math.log(l) - lse) <= 1e-3 * max(1.0, abs(lse))


def _row_lse_by_hand(case, q, qr, k, kr, b, i, h, keep) -> float:
    """One row on its own: float32 q·k and qr·kr over the kept keys, the scale in float32,
    the log-sum-exp in float64 (NaN when the top score is not finite)."""
    lay = case.lay
    qs, ks, skv = lay.q_starts[b], lay.kv_starts[b], lay.skv[b]
    n2 = h // (q.shape[1] // k.shape[1])
    s = (k[ks:ks + skv, n2].astype(np.float32)[keep] @ q[qs + i, h].astype(np.float32)
         + kr[ks:ks + skv, n2].astype(np.float32)[keep] @ qr[qs + i, h].astype(np.float32))
    s = (s.astype(np.float32) * np.float32(case.scale)).astype(np.float64)
    top = float(s.max())
    if not math.isfinite(top):
        return math.nan
    return top + math.log(float(np.exp(s - top).sum()))


def _expected(case, smax, ssum, q=None, qr=None, k=None, kr=None):
    """The samples of S9 taken one by one: per batch (Skv_b <= STATS_LAYOUT_MAX_SKV) the rows
    (0, N1-1), (Sq/2, N1/2), (Sq-1, 0); a row without kept key is skipped; a row whose two
    readings address equal values is recomputed for the warning only (at most
    STATS_LAYOUT_SAMPLES such rows); the sampling stops after STATS_LAYOUT_SAMPLES checked
    rows -- or at the first checked row, when its statistics fit the device's reading (the
    call can no longer be rejected): that row is then the only sample.
    Returns [(b, i, h, lse, dm, dl, tm, tl, same)]."""
    q, qr, k, kr = (case.q if q is None else q, case.qr if qr is None else qr,
                    case.k if k is None else k, case.kr if kr is None else kr)
    lay, n1 = case.lay, case.n1
    fm, fs = np.ravel(smax), np.ravel(ssum)
    kept = O.all_kept(case.mode, lay, case.pre, case.nxt, case.mask, n1)
    out, checked, same_rows = [], 0, 0
    for b in range(lay.B):
        sq, skv, qs = lay.sq[b], lay.skv[b], lay.q_starts[b]
        if sq <= 0 or skv <= 0 or skv > V.STATS_LAYOUT_MAX_SKV:
            continue
        for i, h in ((0, n1 - 1), (sq // 2, n1 // 2), (sq - 1, 0)):
            dev, tok = (qs * n1 + h * sq + i) * COPIES, ((qs + i) * n1 + h) * COPIES
            dm, dl, tm, tl = (float(fm[dev]), float(fs[dev]), float(fm[tok]), float(fs[tok]))
            same = _same(dm, tm) and _same(dl, tl)
            if same and same_rows >= V.STATS_LAYOUT_SAMPLES:
                continue
            keep = kept[b, h][i]
            if not keep.any():
                continue
            lse = _row_lse_by_hand(case, q, qr, k, kr, b, i, h, keep)
            out.append((b, i, h, lse, dm, dl, tm, tl, same))
            if same:
                same_rows += 1
                continue
            if checked == 0 and _fits(dm, dl, lse):
                return out[-1:]
            checked += 1
            if checked >= V.STATS_LAYOUT_SAMPLES:
                return out
    return out


def _run(case, smax, ssum, q=None, qr=None, k=None, kr=None):
    seqs = seq_info(case.q_ends, case.kv_ends)
    pre, nxt = normalize_tokens(case.mode, case.pre, case.nxt)
    args = [case.q if q is None else q, case.qr if qr is None else qr,
            case.k if k is None else k, case.kr if kr is None else kr]
    c = SimpleNamespace(query=args[0], query_rope=args[1], key=args[2], key_rope=args[3],
                        atten_mask=case.mask, softmax_max=smax, softmax_sum=ssum,
                        scale_value=case.scale, seqs=seqs, sparse_mode=case.mode, pre_eff=pre,
                        next_eff=nxt, band_index=band_index(case.mode, seqs), check_data=True)
    driver.run_rules(("S9",), c)
    return c.samples


def _compare(case, smax, ssum, **arrays):
    """Run S9 and check it against the written-out rule; returns the expected samples."""
    expected = _expected(case, smax, ssum, **arrays)
    checked = [e for e in expected if not e[8]]
    rejects = (bool(checked) and not any(_fits(e[4], e[5], e[3]) for e in checked)
               and all(_fits(e[6], e[7], e[3]) for e in checked))
    if rejects:
        with pytest.raises(ParamInvalidError) as err:
            _run(case, smax, ssum, **arrays)
        assert err.value.code == 161002 and "S9" in str(err.value)
        return expected
    got = _run(case, smax, ssum, **arrays)
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    for g, e in zip(got, expected):
        assert _same(g[4], e[4]) and _same(g[5], e[5])
        if math.isnan(e[3]):
            assert math.isnan(g[3])
        else:
            assert g[3] == pytest.approx(e[3], rel=1e-6, abs=1e-6), g[:3]
    return expected


def _token_major(case):
    """Token-major statistics broadcast to 8 copies (the layout S9 rejects)."""
    return (np.repeat(case.max_tm[:, :, None], COPIES, axis=2),
            np.repeat(case.sum_tm[:, :, None], COPIES, axis=2))


@pytest.fixture(scope="module")
def cases():
    return {name: O.make_case(**kw) for name, kw in CASES.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sampled_rows_match_the_rule_and_the_oracle(cases, name):
    case = cases[name]
    expected = _compare(case, case.softmax_max, case.softmax_sum)
    assert expected                                # every case samples something
    got = _run(case, case.softmax_max, case.softmax_sum)
    lay = case.lay
    for b, i, h, lse, *_ in got:                     # the oracle's float64 forward
        t = lay.q_starts[b] + i
        assert lse == pytest.approx(case.max64[t, h] + math.log(case.sum64[t, h]), rel=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_token_major_statistics_rejected_as_the_rule_says(cases, name):
    case = cases[name]
    smax, ssum = _token_major(case)
    expected = _compare(case, smax, ssum)
    if case.n1 > 1:                                  # N1 = 1: both readings coincide
        assert any(not e[8] for e in expected)
        with pytest.raises(ParamInvalidError):
            _run(case, smax, ssum)


@pytest.mark.parametrize("name", ["gqa-mode3", "mode7", "mode1-b1", "gqa-mode2"])
def test_token_major_in_one_batch_only(cases, name):
    """Device layout in one batch, token-major in the others (and the reverse): the verdict
    depends on which sample fits which reading."""
    case = cases[name]
    tm_max, tm_sum = _token_major(case)
    lay = case.lay
    n1 = case.n1
    for b in range(lay.B):
        if lay.sq[b] == 0:
            continue
        lo, hi = lay.q_starts[b] * n1 * COPIES, lay.q_ends[b] * n1 * COPIES
        mixed = [a.copy().reshape(-1) for a in (tm_max, tm_sum)]
        mixed[0][lo:hi] = case.softmax_max.reshape(-1)[lo:hi]
        mixed[1][lo:hi] = case.softmax_sum.reshape(-1)[lo:hi]
        _compare(case, *(m.reshape(tm_max.shape) for m in mixed))
        rev = [a.copy().reshape(-1) for a in (case.softmax_max, case.softmax_sum)]
        rev[0][lo:hi] = tm_max.reshape(-1)[lo:hi]
        rev[1][lo:hi] = tm_sum.reshape(-1)[lo:hi]
        _compare(case, *(m.reshape(tm_max.shape) for m in rev))


@pytest.mark.parametrize("name", ["gqa-mode3", "mode0-2d", "mode1-bn-gqa"])
def test_one_sampled_row_in_the_device_layout(cases, name):
    """Token-major statistics except for one sampled row, whose device position holds its
    statistics and whose token-major position a sum three times too large: that row alone
    fits the device reading, so the call passes -- only if each recomputed row is paired with
    its own statistics."""
    case = cases[name]
    tm_max, tm_sum = _token_major(case)
    checked = [e for e in _expected(case, tm_max, tm_sum) if not e[8]]
    assert len(checked) >= 2
    with pytest.raises(ParamInvalidError):
        _run(case, tm_max, tm_sum)
    lay, n1 = case.lay, case.n1
    for b, i, h, *_ in checked:
        smax, ssum = tm_max.copy(), tm_sum.copy()
        t = lay.q_starts[b] + i
        dev = (lay.q_starts[b] * n1 + h * lay.sq[b] + i) * COPIES
        smax.reshape(-1)[dev:dev + COPIES] = case.max_tm[t, h]
        ssum.reshape(-1)[dev:dev + COPIES] = case.sum_tm[t, h]
        ssum[t, h] = case.sum_tm[t, h] * np.float32(3.0)
        expected = _compare(case, smax, ssum)
        fits = [e for e in expected if not e[8] and _fits(e[4], e[5], e[3])]
        assert [e[:3] for e in fits] == [(b, i, h)]
        _run(case, smax, ssum)                            # not rejected


@pytest.mark.parametrize("name", ["gqa-mode3", "mode1-bn-gqa", "mode4-band", "mqa-mode3"])
def test_statistics_that_fit_cost_one_row(cases, monkeypatch, name):
    """Device-layout statistics: the first checked row fits, so it is the only row
    recomputed; statistics of another scale: the first row does not fit and every sampled
    row is recomputed, once each."""
    case = cases[name]
    calls = []
    real = V.HOST.lse

    def spy(q, qr, k, kr, row, scale32):
        calls.append(row[:2])
        return real(q, qr, k, kr, row, scale32)
    monkeypatch.setattr(V.HOST, "lse", spy)
    _compare(case, case.softmax_max, case.softmax_sum)
    assert len(calls) == 1
    calls.clear()
    other = case.softmax_max * np.float32(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _compare(case, other, case.softmax_sum)
    rows = [(case.lay.q_starts[b] + i, h) for b, i, h, *_ in expected]
    assert len(expected) > 1 and sorted(calls) == sorted(rows)


def test_rows_without_kept_keys_are_skipped(cases):
    """Fully masked sampled rows (per head and for every head) are skipped and the next
    candidates taken, as the rule says."""
    kw = dict(CASES["mode1-bn-gqa"], density=0.2)
    base = O.make_case(**kw)
    mask = base.mask.copy()
    lay, n1 = base.lay, base.n1
    shape = mask.shape
    flat = mask.reshape(-1)
    # batch 0, row Sq/2, head N1/2 and batch 1, row Sq-1, head 0: every key masked
    for b, i, h in ((0, lay.sq[0] // 2, n1 // 2), (1, lay.sq[1] - 1, 0)):
        for j in range(lay.skv[b]):
            flat[O.mask_flat_index(shape, lay, b, h, i, j, n1)] = 1
    case = O.finish_case(O.Case(q=base.q, qr=base.qr, k=base.k, kr=base.kr, v=base.v,
                                dy=base.dy, mask=mask, q_ends=base.q_ends,
                                kv_ends=base.kv_ends, scale=base.scale, mode=base.mode,
                                pre=base.pre, nxt=base.nxt))
    expected = _compare(case, case.softmax_max, case.softmax_sum)
    sampled = [e[:3] for e in expected]
    assert (0, lay.sq[0] // 2, n1 // 2) not in sampled and (1, lay.sq[1] - 1, 0) not in sampled
    assert sampled                                    # the other candidates still are
    _compare(case, *_token_major(case))


def test_same_reading_rows_capped(cases):
    """N1 = 1: every reading coincides; at most STATS_LAYOUT_SAMPLES rows are recomputed (for
    the warning), the later batches are not."""
    case = cases["one-head-many-batches"]
    expected = _compare(case, case.softmax_max, case.softmax_sum)
    assert len(expected) == V.STATS_LAYOUT_SAMPLES and all(e[8] for e in expected)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 4096])
def test_key_chunks_bound_every_gather(cases, monkeypatch, chunk):
    """Each row's kept keys are widened at most STATS_LAYOUT_KEY_CHUNK at a time (rows split
    into chunks anywhere), every kept key once: the same log-sum-exps as the rule's."""
    monkeypatch.setattr(V, "STATS_LAYOUT_KEY_CHUNK", chunk)
    gathered = []                                     # keys per widening of key rows
    widen = V._f32_beside

    def counting(a, b):
        if a.ndim == 2:
            gathered.append(len(a))
        return widen(a, b)
    monkeypatch.setattr(V, "_f32_beside", counting)
    for name in ("gqa-mode3", "mode1-b1", "mode4-band", "mqa-mode3", "mqa-mode4"):
        case = cases[name]
        kept = O.all_kept(case.mode, case.lay, case.pre, case.nxt, case.mask, case.n1)
        for stats in ((case.softmax_max, case.softmax_sum), _token_major(case)):
            gathered.clear()
            expected = _compare(case, *stats)
            assert sum(gathered) == sum(int(kept[b, h][i].sum()) for b, i, h, *_ in expected)
            assert max(gathered) <= chunk


def _lse_row_alone(q, qr, k, kr, row, scale32) -> float:
    """One row by hand: its keys' float32 [k | kr] times the float32 [q | qr]
    (one matrix-vector product, as the device rounds: the dot product to float32, then the
    scale in float32), the log-sum-exp in float64; NaN when the top score is not finite."""
    t, h, n2, keys = row
    tokens = np.arange(*keys) if type(keys) is tuple else keys
    kk = np.concatenate([k[tokens, n2].astype(np.float32), kr[tokens, n2].astype(np.float32)],
                        axis=1)
    qq = np.concatenate([q[t, h].astype(np.float32), qr[t, h].astype(np.float32)])
    s = ((kk @ qq).astype(np.float32) * scale32).astype(np.float64)
    top = float(s.max())
    if not math.isfinite(top):
        return math.nan
    return top + math.log(float(np.exp(s - top).sum()))


def _random_rows(rng, t1, n1, t2, group, count, masked_share):
    rows = []
    for _ in range(count):
        t, h = int(rng.integers(t1)), int(rng.integers(n1))
        if rng.random() < masked_share:
            keys = np.flatnonzero(rng.random(t2) < 0.4)
            keys = keys if keys.size else np.array([int(rng.integers(t2))])
        else:
            a = int(rng.integers(t2))
            keys = (a, int(rng.integers(a + 1, t2 + 1)))
        rows.append((t, h, h // group, keys))
    return rows


@pytest.mark.parametrize("seed", range(12))
def test_row_lse_against_the_row_by_hand(seed, monkeypatch):
    """The host rows' log-sum-exps on random rows -- key ranges and index arrays of several
    key heads (GQA, MQA), in one gather and chunk by chunk, bfloat16 / float16 / float32, an
    infinite query element in one row -- equal each row computed by hand."""
    import ml_dtypes
    rng = np.random.default_rng(100 + seed)
    dtype = (ml_dtypes.bfloat16, np.float16, np.float32)[seed % 3]
    n2 = (1, 2, 3)[seed % 3]
    group = (1, 2, 4)[seed // 3 % 3]
    n1, t1, t2, d, dr = n2 * group, 40, int(rng.integers(20, 90)), 16 * (1 + seed % 4), 8
    q, qr = (rng.standard_normal((t1, n1, w)).astype(dtype) for w in (d, dr))
    k, kr = (rng.standard_normal((t2, n2, w)).astype(dtype) for w in (d, dr))
    rows = _random_rows(rng, t1, n1, t2, group, int(rng.integers(1, 17)), (0, 0.3, 1)[seed % 3])
    rows += [(1, 0, 0, (0, 10)), (2, 0, 0, (3, 7)), (3, 0, 0, (10, 15))]
    if seed % 2:
        q[rows[0][0], rows[0][1], 0] = np.inf             # a non-finite row (NaN) among them
    scale32 = np.float32(0.125 + seed / 7)
    want = [_lse_row_alone(q, qr, k, kr, r, scale32) for r in rows]
    for chunk in (1 << 20, 5):
        monkeypatch.setattr(V, "STATS_LAYOUT_KEY_CHUNK", chunk)
        for w, r in zip(want, rows):
            g = V.HOST.lse(q, qr, k, kr, r, scale32)
            if math.isnan(w):
                assert math.isnan(g), r
            else:
                assert g == pytest.approx(w, rel=1e-6, abs=1e-6), (chunk, r)


def test_each_row_gathers_its_own_keys(monkeypatch):
    """Each row's keys -- a token range or an index array, of its own key head -- are the
    ones widened, in order, each once, also split into chunks."""
    rng = np.random.default_rng(7)
    k, kr = rng.standard_normal((40, 3, 16)).astype(np.float32), np.zeros((40, 3, 8), np.float32)
    q, qr = rng.standard_normal((8, 6, 16)).astype(np.float32), np.zeros((8, 6, 8), np.float32)
    gathered = []
    widen = V._f32_beside

    def recording(a, b):
        if a.ndim == 2:
            gathered.append(a.copy())
        return widen(a, b)
    monkeypatch.setattr(V, "_f32_beside", recording)
    for chunk in (1 << 20, 5):
        monkeypatch.setattr(V, "STATS_LAYOUT_KEY_CHUNK", chunk)
        for row in _random_rows(rng, 8, 6, 40, 2, 60, 0.3):
            gathered.clear()
            V.HOST.lse(q, qr, k, kr, row, np.float32(1))
            tokens = np.arange(*row[3]) if type(row[3]) is tuple else row[3]
            assert np.array_equal(np.concatenate(gathered), k[tokens, row[2]]), row


def test_long_sequences_not_sampled(cases, monkeypatch):
    monkeypatch.setattr(V, "STATS_LAYOUT_MAX_SKV", 8)      # batches with Skv > 8 skipped
    case = cases["gqa-mode3"]
    expected = _compare(case, case.softmax_max, case.softmax_sum)
    assert {e[0] for e in expected} == {3}


def test_other_dtypes_and_strides(cases):
    """float32/float16 operands (the generic widening), bf16 mixed with float32, and
    non-contiguous operands and statistics give the rule's samples too."""
    case = cases["mode1-bn-gqa"]
    f32 = {n: getattr(case, n).astype(np.float32) for n in ("q", "qr", "k", "kr")}
    _compare(case, case.softmax_max, case.softmax_sum, **f32)
    f16 = {n: getattr(case, n).astype(np.float16) for n in ("q", "qr", "k", "kr")}
    _compare(case, case.softmax_max, case.softmax_sum, **f16)
    _compare(case, case.softmax_max, case.softmax_sum, qr=f32["qr"], k=f32["k"])

    def strided(a):
        wide = np.zeros((a.shape[0], a.shape[1], 2 * a.shape[2]), a.dtype)
        wide[:, :, ::2] = a
        return wide[:, :, ::2]
    views = {n: strided(getattr(case, n)) for n in ("q", "qr", "k", "kr")}
    assert not views["k"].flags.c_contiguous
    fmax, fsum = np.asfortranarray(case.softmax_max), np.asfortranarray(case.softmax_sum)
    assert not fmax.flags.c_contiguous
    _compare(case, fmax, fsum, **views)
    _compare(case, *(np.asfortranarray(a) for a in _token_major(case)), **views)


def test_statistics_of_another_scale_sampled_like_the_rule(cases):
    case = cases["gqa-mode3"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _compare(case, case.softmax_max * np.float32(0.5), case.softmax_sum)


def _segment_by_hand(scores, counts):
    out, o = [], 0
    for n in counts:
        s = scores[o:o + n].astype(np.float64)
        o += n
        top = float(s.max())
        out.append(top + math.log(float(np.exp(s - top).sum())) if math.isfinite(top)
                   else math.nan)
    return out


@pytest.mark.parametrize("special", [None, np.nan, np.inf, -np.inf])
def test_lse_edge_values(special):
    rng = np.random.default_rng(5)
    counts = [1, 4, 2, 9, 1]
    scores = (rng.standard_normal(sum(counts)) * 30).astype(np.float32)
    if special is not None:
        scores[2] = special                      # in the second segment
        scores[-1] = special                     # the last, one-element segment
    offsets = np.cumsum([0] + counts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no RuntimeWarning from the NaN segments
        got = [V._lse(scores[a:e].copy(), np.float32(1)) for a, e in zip(offsets, offsets[1:])]
    want = _segment_by_hand(scores, counts)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, rel=1e-12)
    if special is not None:
        assert math.isnan(got[-1])                   # its only score is not finite
        assert math.isnan(got[1]) == (special != -np.inf)   # -inf: exp(-inf) = 0, no NaN
        assert all(math.isfinite(x) for x in (got[0], got[2], got[3]))


def test_bf16_widening_is_exact():
    import ml_dtypes
    bits = np.arange(1 << 16, dtype=np.uint16)
    values = bits.view(ml_dtypes.bfloat16)
    got = V._f32_beside(values[:, None], values[:, None][:, :0])[:, 0]
    want = values.astype(np.float32)
    assert np.array_equal(got.view(np.uint32)[~np.isnan(want)],
                          want.view(np.uint32)[~np.isnan(want)])
    assert np.array_equal(np.isnan(got), np.isnan(want))


def test_data_rules_read_data_changed_in_place(cases):
    """A call described like one that passed before (the verdict cache) still reads its
    data: a writable mask or statistics changed in place between two calls are rejected
    (S6, S8, S9) -- only the package's own read-only mask is recognised without reading."""
    case = cases["gqa-mode3"]
    args = (case.q, case.qr, case.k, case.kr, case.v, case.dy)
    mask = O.compressed_mask()
    smax, ssum = case.softmax_max.copy(), case.softmax_sum.copy()
    kw = case.bwd_kwargs(atten_mask=mask, softmax_max=smax, softmax_sum=ssum)
    driver._VERDICTS.clear()
    driver.validate_backward(*args, **kw)
    driver.validate_backward(*args, **kw)
    assert driver._VERDICTS                              # the second call used the cached verdict
    mask[5, 100] = 0                                # the same object, changed in place
    with pytest.raises(ParamInvalidError, match="S6"):
        driver.validate_backward(*args, **kw)
    mask[5, 100] = 1
    driver.validate_backward(*args, **kw)
    kept = float(ssum[3, 1, 7])
    ssum[3, 1, 7] = kept * 2
    with pytest.raises(ParamInvalidError, match="S8"):
        driver.validate_backward(*args, **kw)
    ssum[3, 1, 7] = kept
    tm_max, tm_sum = _token_major(case)
    smax[...], ssum[...] = tm_max, tm_sum
    with pytest.raises(ParamInvalidError, match="S9"):
        driver.validate_backward(*args, **kw)


_SPECIALS = [(math.nan, 1.0), (math.inf, 1.0), (-math.inf, 1.0), (0.5, 0.0), (0.5, -1.0),
             (0.5, math.inf), (0.5, math.nan), (math.nan, math.nan), (-math.inf, math.inf)]


@pytest.mark.parametrize("special", _SPECIALS, ids=repr)
@pytest.mark.parametrize("where", ["token", "device"])
def test_non_finite_statistics_judged_like_the_rule(cases, special, where):
    """Token-major statistics (rejected as they stand) with NaN, infinite or non-positive
    values written at the token-major or the device position of two checked rows: the
    samples, readings and verdict are the rule's (a reading with such values fits no row)."""
    for name in ("gqa-mode3", "mode1-bn-gqa"):
        case = cases[name]
        smax, ssum = _token_major(case)
        checked = [e for e in _expected(case, smax, ssum) if not e[8]]
        lay, n1 = case.lay, case.n1
        for b, i, h, *_ in checked[:2]:
            qs, sq = lay.q_starts[b], lay.sq[b]
            flat = ((qs + i) * n1 + h if where == "token" else qs * n1 + h * sq + i) * COPIES
            smax.reshape(-1)[flat:flat + COPIES] = special[0]
            ssum.reshape(-1)[flat:flat + COPIES] = special[1]
        _compare(case, smax, ssum)
        if where == "token":                  # two rows no longer fit the token-major reading
            _run(case, smax, ssum)
