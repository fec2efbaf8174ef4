"""A dense, deliberately simple float64 oracle for aclnnFlashAttentionUnpaddingScoreGradV3.

Written from the op's description only (docs/semantics.md, docs/sparse_modes.md,
docs/validation.md); it imports nothing from ``aclnn_fag``:

* ``layout``: cumulative ends -> starts, lengths, B (trailing empty run removed), maxSq/maxSkv
  (docs/semantics.md, Sequence lengths).
* ``normalize_tokens`` / ``band_index`` / ``kept`` / ``kept_matrix``: the kept set of docs/sparse_modes.md,
  built element by element (mask addressing for modes 0/1/5: 2-D and [1,1,..] read top-left,
  [B,1,..] and [B,N1,..] read as packed ragged blocks; formulas for 2/3/4/7/8).
* ``forward``: O, max, sum in float64 (stats token-major [T1, N1]) (docs/semantics.md, Forward
  and Softmax statistics).
* ``backward``: dq, dq_rope, dk, dk_rope, dv in float64 from the *given* statistics
  (docs/semantics.md, Backward).
* ``device_backward``: an emulation of the device's rounding points (docs/semantics.md, Backward): fp32 matmuls on
  bf16-valued inputs, P and dS rounded to bf16 with ties away from zero, fp32 accumulation,
  the scale applied at the end, outputs rounded (ties away) to bf16.  With
  ``round_points=False`` the same code is "plain fp32" (no intermediate rounding, fp32 out).
* ``to_device_layout`` / ``from_device_layout``: the softmax-statistics memory layout (docs/semantics.md, Softmax statistics),
  written from the flat-index formula.
* ``make_case``: random valid bf16 inputs for a configuration, plus the oracle forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
INT32_MAX = 2147483647
FLT_MAX = float(np.finfo(np.float32).max)
NEG = -FLT_MAX
COMPRESSED = 2048
COPIES = 8


# ------------------------------ layout (docs/semantics.md, Sequence lengths)
@dataclass(frozen=True)
class Layout:
    q_ends: tuple
    kv_ends: tuple
    q_starts: tuple
    kv_starts: tuple
    sq: tuple
    skv: tuple
    B: int          # batches after removing the trailing (index >= 1) run of Sq == Skv == 0
    B_raw: int
    max_sq: int
    max_skv: int
    mask_B: int     # a 4-D mask's first dim as CANN 9.1 (the tests' default) counts B: the
    #                 entries minus the trailing run whose cumulative ends are both 0


def layout(q_ends, kv_ends) -> Layout:
    q_ends = tuple(int(x) for x in q_ends)
    kv_ends = tuple(int(x) for x in kv_ends)
    assert len(q_ends) == len(kv_ends) and len(q_ends) >= 1
    q_starts = (0,) + q_ends[:-1]
    kv_starts = (0,) + kv_ends[:-1]
    sq = tuple(e - s for s, e in zip(q_starts, q_ends))
    skv = tuple(e - s for s, e in zip(kv_starts, kv_ends))
    B = len(q_ends)
    while B > 1 and sq[B - 1] == 0 and skv[B - 1] == 0:
        B -= 1
    mask_B = len(q_ends)
    while mask_B > 0 and q_ends[mask_B - 1] == 0 and kv_ends[mask_B - 1] == 0:
        mask_B -= 1
    return Layout(q_ends, kv_ends, q_starts, kv_starts, sq, skv, B, len(q_ends), max(sq), max(skv),
                  mask_B)


def cumulative(lengths) -> list:
    out, acc = [], 0
    for n in lengths:
        acc += int(n)
        out.append(acc)
    return out


# ------------------------------ kept set (docs/sparse_modes.md)
def normalize_tokens(mode: int, pre: int, nxt: int) -> tuple:
    pre = min(int(pre), INT32_MAX)
    nxt = min(int(nxt), INT32_MAX)
    if mode in (2, 3):
        return INT32_MAX, 0
    if mode == 1:
        return INT32_MAX, INT32_MAX
    return pre, nxt


def band_index(mode: int, lay: Layout) -> Optional[int]:
    if mode not in (7, 8):
        return None
    nonempty = [b for b in range(lay.B) if lay.sq[b] != 0]
    if not nonempty:
        return 0
    return nonempty[-1] if mode == 7 else nonempty[0]


def mask_flat_index(mask_shape, lay: Layout, b: int, h: int, i: int, j: int, n1: int) -> int:
    """Flat element index the kernel reads for (b, h, i, j) in modes 0/1/5 (docs/sparse_modes.md, Masks)."""
    if len(mask_shape) == 2:
        return i * mask_shape[1] + j
    assert len(mask_shape) == 4
    if mask_shape[0] == 1 and mask_shape[1] == 1:
        return i * mask_shape[3] + j
    if mask_shape[1] == 1:          # [B, 1, maxSq, maxSkv]: B1SS packed ragged blocks
        base = sum(lay.sq[c] * lay.skv[c] for c in range(b))
        return base + i * lay.skv[b] + j
    base = sum(n1 * lay.sq[c] * lay.skv[c] for c in range(b))   # [B, N1, ..]: BNSS packed
    return base + (h * lay.sq[b] + i) * lay.skv[b] + j


def kept(mode: int, b: int, i: int, j: int, lay: Layout, pre: int, nxt: int,
         mask_flat=None, mask_shape=None, h: int = 0, n1: int = 1) -> bool:
    """kept(i, j) of batch b (local indices), tokens already normalised."""
    delta = lay.skv[b] - lay.sq[b]
    eff = mode
    if mode in (7, 8):
        if b == band_index(mode, lay):
            eff = 4
        else:
            eff = 3 if mode == 7 else 2
    if eff in (0, 1, 5):
        m = mask_flat[mask_flat_index(mask_shape, lay, b, h, i, j, n1)]
        if m != 0:
            return False
        if eff == 1:
            return True
        return -pre <= j - i <= nxt
    if eff == 2:
        return j <= i
    if eff == 3:
        return j <= i + delta
    if eff == 4:
        return delta - pre <= j - i <= delta + nxt
    raise ValueError(f"no kept set for sparse mode {mode}")


def kept_matrix(mode: int, b: int, lay: Layout, pre: int, nxt: int, mask=None, h: int = 0,
                n1: int = 1) -> np.ndarray:
    """bool [Sq_b, Skv_b], element by element. ``pre``/``nxt`` as passed (normalised here)."""
    pre, nxt = normalize_tokens(mode, pre, nxt)
    flat = None if mask is None else np.asarray(mask).reshape(-1)
    shape = None if mask is None else tuple(np.asarray(mask).shape)
    out = np.zeros((lay.sq[b], lay.skv[b]), dtype=bool)
    for i in range(lay.sq[b]):
        for j in range(lay.skv[b]):
            out[i, j] = kept(mode, b, i, j, lay, pre, nxt, flat, shape, h, n1)
    return out


def mask_per_head(mode: int, mask) -> bool:
    return mode in (0, 1, 5) and mask.ndim == 4 and mask.shape[1] != 1


def all_kept(mode, lay, pre, nxt, mask, n1):
    """{(b, h): kept matrix} for b < B (h = 0 stands for all heads unless the mask is per-head)."""
    out = {}
    for b in range(lay.B):
        if lay.sq[b] == 0 or lay.skv[b] == 0:
            continue
        if mask_per_head(mode, mask):
            for h in range(n1):
                out[b, h] = kept_matrix(mode, b, lay, pre, nxt, mask, h, n1)
        else:
            km = kept_matrix(mode, b, lay, pre, nxt, mask, 0, n1)
            for h in range(n1):
                out[b, h] = km
    return out


def fully_masked_rows(mode, lay, pre, nxt, mask, n1) -> list:
    """(global row, head) pairs of rows with Sq_b > 0, Skv_b > 0 and no kept key."""
    rows = []
    for (b, h), km in all_kept(mode, lay, pre, nxt, mask, n1).items():
        for i in np.nonzero(~km.any(axis=1))[0]:
            rows.append((lay.q_starts[b] + int(i), h))
    return rows


# ------------------------------ forward (docs/semantics.md, Forward)
def scale32(scale_value) -> float:
    """The scale the op applies: float32(scaleValue) (docs/semantics.md, Forward)."""
    return float(np.float32(scale_value))


def _f64(x):
    return np.asarray(x).astype(np.float64)


def forward(q, qr, k, kr, v, mask, q_ends, kv_ends, scale_value, mode, pre=INT32_MAX,
            nxt=INT32_MAX, dtype=np.float64):
    """float64 forward (or "plain" float32 with dtype=np.float32: the same steps in float32,
    no intermediate rounding). Returns (O [T1,N1,Dv], max [T1,N1], sum [T1,N1]) token-major."""
    q, qr, k, kr, v = (np.asarray(x).astype(dtype) for x in (q, qr, k, kr, v))
    lay = layout(q_ends, kv_ends)
    t1, n1, _ = q.shape
    g = n1 // k.shape[1]
    sc = dtype(scale32(scale_value))
    o = np.zeros((t1, n1, v.shape[2]), dtype=dtype)
    mx = np.zeros((t1, n1), dtype=dtype)
    sm = np.zeros((t1, n1), dtype=dtype)
    keeps = all_kept(mode, lay, pre, nxt, mask, n1)
    for b in range(lay.B):
        qs, sq, ks, skv = lay.q_starts[b], lay.sq[b], lay.kv_starts[b], lay.skv[b]
        if sq == 0 or skv == 0:
            continue                 # Skv_b == 0: stats 0, O 0 (docs/semantics.md, Softmax statistics)
        for h in range(n1):
            n2 = h // g
            s = (q[qs:qs + sq, h] @ k[ks:ks + skv, n2].T
                 + qr[qs:qs + sq, h] @ kr[ks:ks + skv, n2].T) * sc
            km = keeps[b, h]
            for i in range(sq):
                if not km[i].any():          # invalid line: max NEG, sum FLT_MAX, O 0
                    mx[qs + i, h] = NEG
                    sm[qs + i, h] = FLT_MAX
                    continue
                m = s[i][km[i]].max()
                e = np.where(km[i], np.exp(np.where(km[i], s[i] - m, 0)), 0).astype(dtype)
                total = e.sum()
                mx[qs + i, h] = m
                sm[qs + i, h] = total
                o[qs + i, h] = (e / total) @ v[ks:ks + skv, n2]
    return o, mx, sm


# ------------------------------ backward (docs/semantics.md, Backward)
def backward(q, qr, k, kr, v, dy, o, stat_max, stat_sum, mask, q_ends, kv_ends, scale_value,
             mode, pre=INT32_MAX, nxt=INT32_MAX, raw_scale=False):
    """float64 backward from the given statistics (token-major [T1, N1]) and O (attention_in).
    Returns (dq, dq_rope, dk, dk_rope, dv) float64. ``raw_scale=True`` uses the double
    scale_value instead of float32(scale_value) (only to show the difference is visible)."""
    q, qr, k, kr, v, dy, o = (_f64(x) for x in (q, qr, k, kr, v, dy, o))
    stat_max, stat_sum = _f64(stat_max), _f64(stat_sum)
    lay = layout(q_ends, kv_ends)
    n1 = q.shape[1]
    g = n1 // k.shape[1]
    sc = float(scale_value) if raw_scale else scale32(scale_value)
    dq, dqr, dk, dkr, dv = (np.zeros(x.shape) for x in (q, qr, k, kr, v))
    keeps = all_kept(mode, lay, pre, nxt, mask, n1)
    for b in range(lay.B):
        qs, sq, ks, skv = lay.q_starts[b], lay.sq[b], lay.kv_starts[b], lay.skv[b]
        if sq == 0 or skv == 0:
            continue
        qrow, krow = slice(qs, qs + sq), slice(ks, ks + skv)
        for h in range(n1):
            n2 = h // g
            km = keeps[b, h]
            s = (q[qrow, h] @ k[krow, n2].T + qr[qrow, h] @ kr[krow, n2].T) * sc
            m = stat_max[qrow, h][:, None]
            l = stat_sum[qrow, h][:, None]
            p = np.where(km, np.exp(np.where(km, s - m, 0.0)) / l, 0.0)
            dp = dy[qrow, h] @ v[krow, n2].T
            dterm = (dy[qrow, h] * o[qrow, h]).sum(axis=1)[:, None]
            ds = p * (dp - dterm)
            dq[qrow, h] += sc * (ds @ k[krow, n2])
            dqr[qrow, h] += sc * (ds @ kr[krow, n2])
            dk[krow, n2] += sc * (ds.T @ q[qrow, h])
            dkr[krow, n2] += sc * (ds.T @ qr[qrow, h])
            dv[krow, n2] += p.T @ dy[qrow, h]
    return dq, dqr, dk, dkr, dv


# ----------------------------------------------------------------------------- rounding
def round_bf16_away(x) -> np.ndarray:
    """float32 -> float32 holding the bf16 value nearest, ties away from zero (CAST_ROUND)."""
    y = np.array(x, dtype=np.float32, copy=True)
    bits = y.view(np.uint32)
    finite = np.isfinite(y)
    bits[finite] = (bits[finite] + np.uint32(0x8000)) & np.uint32(0xFFFF0000)
    return y


def bf16_ulp(x) -> np.ndarray:
    """Spacing of bf16 numbers at |x| (for normal values): 2**(floor(log2|x|) - 7)."""
    a = np.abs(np.asarray(x, dtype=np.float64))
    a = np.maximum(a, np.finfo(np.float32).tiny)
    return np.exp2(np.floor(np.log2(a)) - 7)


def device_backward(q, qr, k, kr, v, dy, o, stat_max, stat_sum, mask, q_ends, kv_ends,
                    scale_value, mode, pre=INT32_MAX, nxt=INT32_MAX, round_points=True):
    """fp32 backward on bf16-valued inputs with the device's rounding points (docs/semantics.md, Backward).

    round_points=True: S = fp32(fp32(QK^T) + fp32(QrKr^T)) * scale32, masked -> NEG,
    P32 = exp(S - m) / l, dP = dy V^T, Dterm = sum(dy * O), dS32 = P32 (dP - Dterm), P16 and
    dS16 rounded ties-away, fp32 accumulation, dq/dk/rope = round(scale32 * acc), dv =
    round(acc); returns float32 arrays holding bf16 values.
    round_points=False ("plain fp32"): the same without any bf16 rounding; float32 outputs.
    Rows with no kept key contribute nothing (the reference's choice for invalid lines;
    docs/semantics.md, Softmax statistics).
    """
    f32 = np.float32
    q, qr, k, kr, v, dy, o = (np.asarray(x).astype(f32) for x in (q, qr, k, kr, v, dy, o))
    stat_max = np.asarray(stat_max, dtype=f32)
    stat_sum = np.asarray(stat_sum, dtype=f32)
    lay = layout(q_ends, kv_ends)
    n1 = q.shape[1]
    g = n1 // k.shape[1]
    sc = f32(scale_value)
    rnd = round_bf16_away if round_points else (lambda a: a)
    dq, dqr, dk, dkr, dv = (np.zeros(x.shape, dtype=f32) for x in (q, qr, k, kr, v))
    keeps = all_kept(mode, lay, pre, nxt, mask, n1)
    with np.errstate(over="ignore", under="ignore"):
        for b in range(lay.B):
            qs, sq, ks, skv = lay.q_starts[b], lay.sq[b], lay.kv_starts[b], lay.skv[b]
            if sq == 0 or skv == 0:
                continue
            qrow, krow = slice(qs, qs + sq), slice(ks, ks + skv)
            for h in range(n1):
                n2 = h // g
                km = keeps[b, h]
                s = (q[qrow, h] @ k[krow, n2].T) + (qr[qrow, h] @ kr[krow, n2].T)
                s = (s * sc).astype(f32)
                s[~km] = f32(NEG)
                p = (np.exp(s - stat_max[qrow, h][:, None]) / stat_sum[qrow, h][:, None]).astype(f32)
                p[~km] = 0           # exp(NEG - m) is 0 anyway for rows with a kept key
                dp = dy[qrow, h] @ v[krow, n2].T
                dterm = (dy[qrow, h] * o[qrow, h]).sum(axis=1, dtype=f32)[:, None]
                ds = (p * (dp - dterm)).astype(f32)
                p16, ds16 = rnd(p), rnd(ds)
                dq[qrow, h] += ds16 @ k[krow, n2]
                dqr[qrow, h] += ds16 @ kr[krow, n2]
                dk[krow, n2] += ds16.T @ q[qrow, h]
                dkr[krow, n2] += ds16.T @ qr[qrow, h]
                dv[krow, n2] += p16.T @ dy[qrow, h]
    return (rnd(sc * dq), rnd(sc * dqr), rnd(sc * dk), rnd(sc * dkr), rnd(dv))


# ------------------------------ layout (docs/semantics.md, Softmax statistics)
def to_device_layout(tm, q_ends, dtype=np.float32) -> np.ndarray:
    """token-major [T1, N1] -> [T1, N1, 8] whose memory holds element (b, h, i, k) at
    qStart[b]*N1*8 + (h*Sq_b + i)*8 + k; untouched elements (rows after the last end) are 0."""
    tm = np.asarray(tm)
    t1, n1 = tm.shape
    lay = layout(q_ends, q_ends)
    flat = np.zeros(t1 * n1 * COPIES, dtype=dtype)
    for b in range(lay.B_raw):
        for h in range(n1):
            for i in range(lay.sq[b]):
                base = lay.q_starts[b] * n1 * COPIES + (h * lay.sq[b] + i) * COPIES
                flat[base:base + COPIES] = tm[lay.q_starts[b] + i, h]
    return flat.reshape(t1, n1, COPIES)


def from_device_layout(stats, q_ends, copy: int = 0) -> np.ndarray:
    """Inverse of to_device_layout (reads copy ``copy``)."""
    stats = np.asarray(stats)
    t1, n1, _ = stats.shape
    flat = stats.reshape(-1)
    lay = layout(q_ends, q_ends)
    out = np.zeros((t1, n1), dtype=stats.dtype)
    for b in range(lay.B_raw):
        for h in range(n1):
            for i in range(lay.sq[b]):
                out[lay.q_starts[b] + i, h] = flat[lay.q_starts[b] * n1 * COPIES
                                                   + (h * lay.sq[b] + i) * COPIES + copy]
    return out


# ----------------------------------------------------------------------------- inputs
def compressed_mask(dtype=np.uint8) -> np.ndarray:
    """Canonical 2048x2048 compressed mask: Mc[x][y] = 1 iff y > x."""
    idx = np.arange(COMPRESSED)
    return (idx[None, :] > idx[:, None]).astype(dtype)


def random_dense_mask(rng, mode, lay: Layout, n1, kind, density, pre, nxt, dtype=np.uint8):
    """A mask for modes 0/1/5. kind: '2d', '11', 'b1', 'bn'. For modes 0/5 with finite tokens
    every element the token band excludes is also masked (mask and tokens consistent, as the
    docs require; the device applies the band only at block granularity)."""
    shape = {"2d": (lay.max_sq, lay.max_skv), "11": (1, 1, lay.max_sq, lay.max_skv),
             "b1": (lay.mask_B, 1, lay.max_sq, lay.max_skv),
             "bn": (lay.mask_B, n1, lay.max_sq, lay.max_skv)}[kind]
    mask = (rng.random(shape) < density).astype(dtype)
    if mode in (0, 5):
        pre_n, nxt_n = normalize_tokens(mode, pre, nxt)
        flat = mask.reshape(-1)
        if kind in ("2d", "11"):
            for i in range(lay.max_sq):
                for j in range(lay.max_skv):
                    if not -pre_n <= j - i <= nxt_n:
                        flat[i * lay.max_skv + j] = 1
        else:
            heads = n1 if kind == "bn" else 1
            for b in range(lay.B):
                for h in range(heads):
                    for i in range(lay.sq[b]):
                        for j in range(lay.skv[b]):
                            if not -pre_n <= j - i <= nxt_n:
                                flat[mask_flat_index(shape, lay, b, h, i, j, n1)] = 1
    return mask


def bf16_normal(rng, shape, std=1.0):
    return (rng.standard_normal(shape) * std).astype(BF16)


@dataclass
class Case:
    q: np.ndarray
    qr: np.ndarray
    k: np.ndarray
    kr: np.ndarray
    v: np.ndarray
    dy: np.ndarray
    mask: np.ndarray
    q_ends: list
    kv_ends: list
    scale: float
    mode: int
    pre: int
    nxt: int
    o64: np.ndarray = None          # oracle forward, float64
    max64: np.ndarray = None        # token-major float64
    sum64: np.ndarray = None
    attention_in: np.ndarray = None  # bf16(o64)
    max_tm: np.ndarray = None        # float32 token-major (what the backward is given)
    sum_tm: np.ndarray = None
    softmax_max: np.ndarray = None   # float32 device layout [T1, N1, 8]
    softmax_sum: np.ndarray = None
    label: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def lay(self) -> Layout:
        return layout(self.q_ends, self.kv_ends)

    @property
    def n1(self) -> int:
        return self.q.shape[1]

    def inputs(self):
        return self.q, self.qr, self.k, self.kr, self.v

    def api_common(self) -> dict:
        return dict(atten_mask=self.mask, actual_seq_qlen=list(self.q_ends),
                    actual_seq_kvlen=list(self.kv_ends), scale_value=self.scale,
                    pre_tokens=self.pre, next_tokens=self.nxt, sparse_mode=self.mode)

    def bwd_kwargs(self, **over) -> dict:
        kw = self.api_common()
        kw.update(softmax_max=self.softmax_max, softmax_sum=self.softmax_sum,
                  attention_in=self.attention_in)
        kw.update(over)
        return kw

    def oracle_backward(self):
        return backward(self.q, self.qr, self.k, self.kr, self.v, self.dy, self.attention_in,
                        self.max_tm, self.sum_tm, self.mask, self.q_ends, self.kv_ends,
                        self.scale, self.mode, self.pre, self.nxt)

    def device_emulation(self, round_points=True):
        return device_backward(self.q, self.qr, self.k, self.kr, self.v, self.dy,
                               self.attention_in, self.max_tm, self.sum_tm, self.mask,
                               self.q_ends, self.kv_ends, self.scale, self.mode, self.pre,
                               self.nxt, round_points=round_points)

    def touched(self):
        return touched(self.mode, self.lay, self.pre, self.nxt, self.mask, self.q.shape[0],
                       self.n1, self.k.shape[0], self.k.shape[1])

    def fully_masked(self) -> list:
        return fully_masked_rows(self.mode, self.lay, self.pre, self.nxt, self.mask, self.n1)

    def has_q_rows_without_keys(self) -> bool:
        lay = self.lay
        return any(lay.sq[b] > 0 and lay.skv[b] == 0 for b in range(lay.B))


def finish_case(case: Case) -> Case:
    """Run the oracle forward and fill the backward's inputs (bf16 O, float32 stats)."""
    o, mx, sm = forward(case.q, case.qr, case.k, case.kr, case.v, case.mask, case.q_ends,
                        case.kv_ends, case.scale, case.mode, case.pre, case.nxt)
    case.o64, case.max64, case.sum64 = o, mx, sm
    case.attention_in = o.astype(BF16)
    case.max_tm = mx.astype(np.float32)
    case.sum_tm = sm.astype(np.float32)
    case.softmax_max = to_device_layout(case.max_tm, case.q_ends)
    case.softmax_sum = to_device_layout(case.sum_tm, case.q_ends)
    return case


def make_case(seed, q_lens, kv_lens=None, *, n1=2, n2=1, d=32, dr=16, dv=None, mode=0,
              pre=INT32_MAX, nxt=INT32_MAX, mask_kind="2d", density=0.25, extra_q=0,
              extra_kv=0, scale=None, std=1.0, mask_dtype=np.uint8, label="") -> Case:
    """Random valid bf16 inputs. ``q_lens``/``kv_lens``: per-sequence lengths (zeros allowed,
    trailing zeros too); ``extra_q``/``extra_kv``: rows after the last cumulative end."""
    rng = np.random.default_rng(seed)
    kv_lens = q_lens if kv_lens is None else kv_lens
    dv = d if dv is None else dv
    q_ends, kv_ends = cumulative(q_lens), cumulative(kv_lens)
    lay = layout(q_ends, kv_ends)
    t1, t2 = q_ends[-1] + extra_q, kv_ends[-1] + extra_kv
    if mode in (0, 1, 5):
        mask = random_dense_mask(rng, mode, lay, n1, mask_kind, density, pre, nxt, mask_dtype)
    else:
        mask = compressed_mask(mask_dtype)
    if scale is None:
        scale = 1.0 / np.sqrt(d + dr)
    case = Case(q=bf16_normal(rng, (t1, n1, d), std), qr=bf16_normal(rng, (t1, n1, dr), std),
                k=bf16_normal(rng, (t2, n2, d), std), kr=bf16_normal(rng, (t2, n2, dr), std),
                v=bf16_normal(rng, (t2, n2, dv)), dy=bf16_normal(rng, (t1, n1, dv)), mask=mask,
                q_ends=q_ends, kv_ends=kv_ends, scale=float(scale), mode=mode, pre=pre, nxt=nxt,
                label=label)
    return finish_case(case)


# ----------------------------------------------------------------------------- comparison
def normwise_error(actual, expected) -> float:
    """max|actual - expected| / max|expected| (0/0 -> 0)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    diff = np.max(np.abs(a - e)) if a.size else 0.0
    scale = np.max(np.abs(e)) if e.size else 0.0
    if diff == 0:
        return 0.0
    return float(diff / scale) if scale > 0 else float("inf")


GRAD_NAMES = ("dq", "dq_rope", "dk", "dk_rope", "dv")


def touched(mode, lay: Layout, pre, nxt, mask, t1, n1, t2, n2):
    """(q_touched [T1, N1], kv_touched [T2, N2]): which (row, head) pairs take part in at
    least one kept (i, j) pair. Untouched pairs must get exactly zero gradients."""
    g = n1 // n2
    qt = np.zeros((t1, n1), dtype=bool)
    kt = np.zeros((t2, n2), dtype=bool)
    for (b, h), km in all_kept(mode, lay, pre, nxt, mask, n1).items():
        qs, ks = lay.q_starts[b], lay.kv_starts[b]
        qt[qs:qs + lay.sq[b], h] |= km.any(axis=1)
        kt[ks:ks + lay.skv[b], h // g] |= km.any(axis=0)
    return qt, kt


def assert_grads_close(actual, expected, rtol, what="", atol=0.0, touched_rows=None):
    """Normwise per output: max|a - e| <= rtol * max|e| + atol. With ``touched_rows`` =
    (q_touched, kv_touched) (see ``touched``) also: exactly 0 wherever no kept pair reaches."""
    for idx, (name, a, e) in enumerate(zip(GRAD_NAMES, actual, expected)):
        a64 = np.asarray(a, dtype=np.float64)
        e64 = np.asarray(e, dtype=np.float64)
        assert a64.shape == e64.shape, f"{what} {name}: shape {a64.shape} != {e64.shape}"
        assert np.all(np.isfinite(a64)), f"{what} {name}: non-finite values"
        diff = np.max(np.abs(a64 - e64)) if a64.size else 0.0
        bound = rtol * (np.max(np.abs(e64)) if e64.size else 0.0) + atol
        assert diff <= bound, (f"{what} {name}: max|diff| = {diff:.3e} > {bound:.3e} "
                               f"(max|ref| = {np.max(np.abs(e64)) if e64.size else 0:.3e})")
        if touched_rows is not None:
            reached = touched_rows[0] if idx < 2 else touched_rows[1]
            bad = np.argwhere(np.any(a64 != 0, axis=-1) & ~reached)
            assert bad.size == 0, (f"{what} {name}: (row, head) pairs {bad[:5].tolist()} are "
                                   "reached by no kept pair but are not exactly 0")


def assert_device_close(actual, emulated, what="", floor=1e-5, max_ulps=2.0, max_share=0.01):
    """The package's "device" results vs ``device_backward`` (same rounding points, different
    fp32 summation order). Per output: every element within ``max_ulps`` bf16 ulps of the
    emulation plus an absolute floor of ``floor * max|emulated|`` (cancellations: a gradient
    that is exactly 0 in one order is ~1e-7 in another), and at most ``max_share`` of the
    elements differing by more than that floor."""
    for name, a, e in zip(GRAD_NAMES, actual, emulated):
        a64 = np.asarray(a, dtype=np.float64)
        e64 = np.asarray(e, dtype=np.float64)
        assert a64.shape == e64.shape, f"{what} {name}: shape {a64.shape} != {e64.shape}"
        if not e64.size:
            continue
        assert np.all(np.isfinite(a64)), f"{what} {name}: non-finite values"
        atol = floor * np.max(np.abs(e64))
        diff = np.abs(a64 - e64)
        bound = max_ulps * bf16_ulp(e64) * (e64 != 0) + atol
        worst = np.argmax(diff - bound)
        assert np.all(diff <= bound), (
            f"{what} {name}: element {np.unravel_index(worst, a64.shape)} = {a64.flat[worst]!r}, "
            f"emulation {e64.flat[worst]!r} (more than {max_ulps} bf16 ulps + {atol:.2e})")
        share = float(np.mean(diff > atol))
        assert share <= max_share, f"{what} {name}: {share:.2%} of elements differ (> {max_share:.0%})"
