"""The predicates of the shape, dtype and attribute rows of :mod:`.table` (same id): each
takes the :class:`~.driver.Context` and returns nothing when the rule holds, else True or the
message's fields (``name``: the parameter a ``{name}`` row blames; code-0 rows: the empty call's
``head_num``). As in the op-API source (ops-transformer @c29bc10): D, Dk, Dv and Dr are dim 2
of their tensors, rule 25 compares the last dims, all integer arithmetic is exact."""

from __future__ import annotations

import warnings

import numpy as np

from ..constants import BF16, INT32_MAX, LIMITS
from ..errors import SequenceEndWarning, caller_stacklevel
from ..masks import COMPRESSED_SIZE
from ..semantics.sparse import COMPRESSED_MODES
from ..seqlens import (device_batch_count, ends_problem, is_padded, padding_problem,
                       per_sequence_hint, without_padding)
from ..softmax_layout import COPIES

__all__ = ["CHECKS", "check", "needs_padding"]

CHECKS: dict = {}
MASK_DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8))
_F32 = np.dtype(np.float32)
_ROPES = ("query_rope", "key_rope")
_FIVE = ("query", "query_rope", "key", "key_rope", "value")
_BWD = ("query", "key", "value", "dy", "attention_in")
_STATS = ("softmax_max", "softmax_sum")


def check(*ids):
    """Register the decorated predicate for the table rows ``ids``."""
    def register(fn):
        for i in ids:
            CHECKS[i] = fn
        return fn
    return register


def _native(dt: np.dtype) -> np.dtype:
    """The dtype in native byte order (the binding uploads byte-swapped arrays natively)."""
    return dt.newbyteorder("=") if dt.kind in "biufc" else dt


def _same_dtype(a, b) -> bool:
    return _native(a.dtype) == _native(b.dtype)


def _first(c, names, bad, **fields):
    """{name, shape, dtype, **fields} of the first tensor of ``names`` with ``bad(tensor)``."""
    for name in names:
        t = getattr(c, name)
        if bad(t):
            if t is not None:
                fields.update(shape=t.shape, dtype=t.dtype)
            return dict(fields, name=name)
    return None


# ---------------------------------------------------------------- the backward, rules 1-22
@check("R5")
def _min_rank(c):
    ropes = _ROPES if c.query_rope is not None and c.key_rope is not None else ()
    return _first(c, ropes + _BWD, lambda t: t.ndim < 3)


@check("R10", "F6_bf16")
def _bf16(c):
    bad = _first(c, _FIVE, lambda t: _native(t.dtype) != BF16)
    if bad:
        name = bad["name"]
        bad["hint"] = (f"; convert with {name}.astype(ml_dtypes.bfloat16)"
                       if bad["dtype"].kind == "f" else "")
    return bad


@check("R16")
def _padding(c):
    reason = needs_padding(c.query, c.key, c.value, c.qlen, c.kvlen, bool(c.deterministic),
                           c.keep_prob)
    return {"reason": reason} if reason else None


@check("R21")
def _stats_shape(c):
    t1, n1 = c.t1, c.n1
    bad = _first(c, _STATS, lambda t: tuple(t.shape) != (t1, n1, COPIES))
    if not bad:
        return None
    shape, hint = tuple(bad["shape"]), ""
    if shape == (n1, t1, COPIES):
        hint = " -- [N, T, 8] is the docs' notation; the op takes [T, N, 8]"
    elif shape in ((t1, n1), (t1, n1, 1)):
        hint = (" -- these look like token-major [T, N] statistics (e.g. a log-sum-exp); convert "
                "them with aclnn_fag.softmax_layout.device_stats_from_token_major(stats, "
                "actual_seq_qlen)")
    elif shape == (n1, t1):
        hint = (" -- these look like [N, T] statistics; transpose to [T, N] and convert with "
                "aclnn_fag.softmax_layout.device_stats_from_token_major(stats.T, actual_seq_qlen)")
    return dict(bad, shape=list(shape), hint=hint)


# ---------------------------------------------------------------- rules 23-30, F9-F14
def _unlike(a, b) -> bool:
    """Rule 25 (IsSameShapeButValueDLeEqD): unlike b but in the last dim, or that dim larger."""
    last = lambda t: t.shape[-1] if t.ndim else 0    # noqa: E731
    return a.ndim != b.ndim or a.shape[:-1] != b.shape[:-1] or last(a) > last(b)


@check("F10")
def _fwd_totals(c):
    for name, ends, total, tname in (("actual_seq_qlen", c.qlen, c.t1, "T1"),
                                     ("actual_seq_kvlen", c.kvlen, c.t2, "T2")):
        # the forward tiling's sum of sequence lengths (negative differences count 0)
        need = ends[0] + sum(max(0, b - a) for a, b in zip(ends, ends[1:]))
        if total < need:
            return dict(name=name, tname=tname, total=total, need=need,
                        hint=per_sequence_hint(ends, total))


@check("R27_lead")
def _mask_lead(c):
    m, q_dev, kv_dev = c.atten_mask, *c.device_ends
    batch, n_raw = device_batch_count(q_dev, kv_dev, c.release), len(q_dev)
    lead = tuple(m.shape[:2])
    if m.ndim != 4 or lead in ((batch, c.n1), (batch, 1), (1, 1)):
        return None
    hint = ""
    if lead[0] == batch - 1 and c.qlen and c.qlen[0] == 0 and c.kvlen and c.kvlen[0] == 0:
        hint = (" -- the ends start with 0 (flash-attn's cu_seqlens convention), which the op "
                "reads as an empty first sequence counted in B: drop the leading 0 "
                "(cu_seqlens[1:]) or append one mask block (docs/semantics.md, The leading-0 form)")
    elif lead[0] == batch - 1 and len(q_dev) > len(c.qlen) and q_dev[-1] == 0:
        hint = (f" -- CANN {c.release.name} counts the end-of-data padding entry the binding "
                "appends (both sides end short of T) as a batch: pass one more mask block (it "
                "is never read) or end the last sequences at T (docs/releases.md)")
    elif lead[0] == n_raw and batch != n_raw:
        which = ("whose cumulative ends are 0 (CANN " + c.release.name + ")"
                 if c.release.batch_drops_zero_ends else "with Sq = Skv = 0")
        hint = f" -- B excludes the trailing batches {which} ({n_raw} entries, B = {batch})"
    return {"lead": lead, "hint": hint, "batch": batch}


@check("R27_compressed")
def _mask_compressed(c):
    last, seqs = tuple(c.atten_mask.shape[-2:]), c.seqs
    if c.sparse_mode not in COMPRESSED_MODES or last == (COMPRESSED_SIZE, COMPRESSED_SIZE):
        return None
    hint = ""
    if last in ((seqs.max_sq, seqs.max_skv), (c.t1, c.t2)) or last[0] == last[1]:
        hint = (" -- this looks like a full S x S mask; sparse modes 2/3/4/7/8 take the "
                "compressed 2048x2048 mask aclnn_fag.masks.compressed_causal_mask() "
                "(the kernel derives each batch's causal/band pattern from it)")
    return {"last": last, "hint": hint}


@check("R27_dense")
def _mask_dense(c):
    last, seqs = tuple(c.atten_mask.shape[-2:]), c.seqs
    if c.sparse_mode in COMPRESSED_MODES or last == (seqs.max_sq, seqs.max_skv):
        return None
    hint = ""
    if last == (COMPRESSED_SIZE, COMPRESSED_SIZE):
        hint = (" -- the compressed 2048x2048 mask belongs to sparse modes 2/3/4/7/8; for a "
                "causal mask pass sparse_mode=2 or 3")
    elif seqs.batch > 1 and last == (c.t1, c.t2):
        hint = (" -- this looks like a full [T1, T2] mask; sparse modes 0/1/5 read a "
                "[maxSq, maxSkv] mask top-left for every batch (or a 4-D [B, 1|N1, maxSq, "
                "maxSkv] mask per batch)")
    else:
        per_seq = per_sequence_hint(c.qlen, c.t1) or per_sequence_hint(c.kvlen, c.t2)
        if per_seq and last == (max(c.qlen), max(c.kvlen)):
            hint = per_seq
    return {"last": last, "hint": hint}


def _bad_tokens(c, batches, sq_side):
    pre, nxt, seqs = c.pre_eff, c.next_eff, c.seqs
    for b in batches:
        near, far = (seqs.sq[b], seqs.skv[b]) if sq_side else (seqs.skv[b], seqs.sq[b])
        if -pre > near or -nxt > far or pre + nxt <= 0:
            return {"b": b, "sq": seqs.sq[b], "skv": seqs.skv[b]}
    return None


@check("R28_band")
def _tokens_band(c):
    if c.sparse_mode in (4, 7, 8):
        return _bad_tokens(c, range(c.seqs.batch) if c.sparse_mode == 4 else [c.band_index],
                           True)


# ---------------------------------------------------------------- the package's own checks
@check("S4")
def _ends(c):
    for name, ends, total, tname in (("actual_seq_qlen", c.qlen, c.t1, "T1 (query.shape[0])"),
                                     ("actual_seq_kvlen", c.kvlen, c.t2, "T2 (key.shape[0])")):
        data = without_padding(ends)      # a trailing run of 0 entries is end-of-data padding
        problem = ends_problem(name, data, total, tname)
        if problem:
            return {"name": name, "problem": problem}
        if data[-1] < total and len(data) == len(ends):
            warnings.warn(f"{name} ends at {ends[-1]} < {tname} = {total}: rows after it are not "
                          f"part of any sequence and get zero outputs (the last cumulative end "
                          f"is normally T){per_sequence_hint(ends, total)}", SequenceEndWarning,
                          stacklevel=caller_stacklevel())


@check("R_eod", "F_eod")
def _eod_padding(c):
    if c.qlen and c.kvlen:     # rule 23 (null or empty arrays) comes later in the backward
        q_dev, kv_dev = c.device_ends
        problem = padding_problem(q_dev, kv_dev, c.t1, c.t2, c.release)
        if problem:
            return {"problem": problem,
                    "name": "actual_seq_kvlen" if is_padded(q_dev) else "actual_seq_qlen"}


@check("S5_k")
def _rope_k_shape(c):
    kr, dr = c.key_rope, c.query_rope.shape[2]
    want = (c.t2, c.n2, dr)
    if kr.ndim != 3 or tuple(kr.shape) != want:
        hint = (" -- its Dr differs from query_rope's (the kernel uses query_rope's Dr for both)"
                if kr.ndim == 3 and kr.shape[2] != dr else "")
        return {"want": list(want), "hint": hint}


@check("S7")
def _block_skip_bound(c):
    if c.sparse_mode in (4, 7, 8):
        seqs = c.seqs
        for b in range(seqs.batch):
            if c.pre_eff + seqs.sq[b] - seqs.skv[b] >= INT32_MAX:
                return {"b": b}


# ---------------------------------------------------------------- rule 16 and F6: padding
def _small_call(qlen, kvlen, q_limit) -> bool:
    """The small-shape exception: the longest KV sequence (GetSumIntArrayMaxValue) <= 1024 and
    the last positive query end (getSeqLenQSum; else the first) below ``q_limit``, non-zero."""
    if qlen is None or kvlen is None or len(qlen) != len(kvlen) or not qlen:
        return False
    kv_max = max([kvlen[0]] + [b - a for a, b in zip(kvlen, kvlen[1:])])
    q_sum = next((x for x in reversed(qlen) if x > 0), qlen[0])
    return kv_max != 0 and q_sum != 0 and kv_max <= 1024 and q_sum < q_limit


def needs_padding(query, key, value, qlen, kvlen, deterministic: bool, keep_prob: float) -> str:
    """Rule 16: why D/Dv needs padding (which V3 rejects), or ''."""
    d, dv = query.shape[2], value.shape[2]
    nondet = not deterministic
    mla_shape = d == 192 and dv == 128 and nondet
    pad_value = d != dv and not mla_shape
    align = 16 if d < 128 else 128
    pad_dim = d % align != 0 and query.size != 0 and key.size != 0
    if pad_dim:
        if nondet and d % 8 == 0:
            pad_dim = False
        elif nondet and d < 96 and not keep_prob < 1.0 and not keep_prob > 1.0 \
                and _small_call(qlen, kvlen, 163840):
            pad_dim = False
    reasons = []
    if pad_dim:
        if deterministic:
            reasons.append(f"D={d} must be a multiple of {align} in deterministic mode")
        else:                     # non-deterministic: only D % 8 != 0 pads
            reasons.append(f"D={d} is not a multiple of 8 (allowed only when max Skv <= 1024, "
                           "D < 96 and the last positive query end < 163840)")
    if pad_value:
        reasons.append(f"D={d} != Dv={dv} (only D=192 with Dv=128 in non-deterministic mode "
                       "is allowed)")
    return "; ".join(reasons)


@check("F6_pad")
def _forward_padding(c):
    """Whether D/Dv would be padded (which the forward rejects with rope inputs)."""
    if c.n2 == 0 or c.d == 0 or (c.d < 96 and _small_call(c.qlen, c.kvlen, 160 * 1024)):
        return False
    d, dv = c.d, c.dv
    align = 16 if (d < 196 or d == 448) else 128
    # "hardware affinity" padding of the source: its HEAD_DIM_128 constant is 88
    return d % align != 0 or dv % align != 0 or d != dv and d in (88, 64, 80)


# ---------------------------------------------------------------- the one-line predicates
_SIMPLE = {
    "R3": lambda c: (c.query.size == 0 and c.key.size == 0 and c.value.size == 0
                     and {"head_num": c.head_num}),
    "R_empty": lambda c: (min(c.query.size, c.key.size, c.value.size, c.query_rope.size,
                              c.key_rope.size) == 0 and {"head_num": c.heads}),
    "F2": lambda c: (c.query.ndim >= 2 and c.query.shape[0] * c.query.shape[1] == 0
                     and {"head_num": c.heads}),
    "R21_attn": lambda c: (c.attention_in.ndim != c.query.ndim
                           or c.attention_in.shape[:-1] != c.query.shape[:-1]),
    "F4_pse_dtype": lambda c: (c.pse_shift is not None and c.pse_type not in (2, 3)
                               and not _same_dtype(c.pse_shift, c.query)),
    "R25_dy": lambda c: _unlike(c.dy, c.query),
    "R25_value": lambda c: _unlike(c.value, c.key),
    ("F5_max_d", "S3_dim"): lambda c: (c.d > LIMITS["max_head_dim"]
                                       and {"limit": LIMITS["max_head_dim"]}),
    "S3_tokens": lambda c: _first(c, ("query", "key"), lambda t: t.shape[0] > LIMITS["max_tokens"],
                                  limit=LIMITS["max_tokens"]),
    "S3_heads": lambda c: c.n1 > LIMITS["max_heads"] and {"limit": LIMITS["max_heads"]},
    # sequences: end-of-data padding entries (also the one the binding appends) are none
    "S3_batch": lambda c: (len(without_padding(c.qlen)) > LIMITS["max_batch"]
                           and {"nq": len(without_padding(c.qlen)), "limit": LIMITS["max_batch"]}),
    "R23_len": lambda c: (len(c.qlen) != len(c.kvlen)
                          and {"nq": len(c.qlen), "nkv": len(c.kvlen)}),
    "S5_q": lambda c: (list(c.query_rope.shape) != [c.t1, c.n1, c.query_rope.shape[2]]
                       and {"want": [c.t1, c.n1, c.query_rope.shape[2]]}),
    "S5_dr": lambda c: c.query_rope.shape[2] % 8 != 0 and {"dr": c.query_rope.shape[2]},
    ("R1_null", "F1_layout"): lambda c: c.input_layout is None,
    ("R1", "F3"): lambda c: c.input_layout != "TND",
    "R2": lambda c: _first(c, _BWD, lambda t: t is None),
    ("R4", "F5_heads"): lambda c: c.heads is not None and c.heads <= 0,
    ("R6", "F5_d"): lambda c: c.d != c.dk,
    ("R7", "F5_dv"): lambda c: c.d < c.dv,
    ("R8", "F6_rope"): lambda c: ((c.query_rope is None) != (c.key_rope is None)
                                  and _first(c, _ROPES, lambda t: t is None)),
    ("R8_both", "F6_rope_both"): lambda c: c.query_rope is None,
    ("R9", "F6_dr"): lambda c: _first(c, _ROPES, lambda t: t.shape[2] > c.d),
    ("R11", "F6_sparse6"): lambda c: c.sparse_mode == 6,
    ("R12", "F6_mask"): lambda c: c.atten_mask is None or c.atten_mask.ndim == 0,
    ("R13", "F6_pse"): lambda c: c.pse_shift is not None,
    ("R14", "F6_drop"): lambda c: c.drop_mask is not None,
    ("R15", "F6_keep"): lambda c: c.keep_prob < 1.0,
    "R18": lambda c: _first(c, _STATS, lambda t: t is None or t.ndim == 0),
    ("R19", "F11_heads"): lambda c: c.heads != c.n1,
    "R17": lambda c: np.float32(c.keep_prob) > 1.0,
    "R20": lambda c: _first(c, _STATS, lambda t: _native(t.dtype) != _F32),
    "R20_attn": lambda c: not _same_dtype(c.attention_in, c.query),
    "R22": lambda c: c.t1 == 0 or c.n1 == 0 or c.d == 0,
    "F1": lambda c: _first(c, ("query", "key", "value"), lambda t: t is None),
    "F4": lambda c: _first(c, ("key", "value"), lambda t: not _same_dtype(t, c.query)),
    "F4_pse": lambda c: c.pse_type in (2, 3) and c.pse_shift is None,
    ("F5_rank", "R24_rank"): lambda c: c.query.ndim != 3,
    "F5_kv_rank": lambda c: _first(c, ("key", "value"), lambda t: t.ndim < 3),
    "F6_rope_rank": lambda c: _first(c, _ROPES, lambda t: t.ndim < 3),
    "F7_keep": lambda c: np.float32(c.keep_prob) <= 0.0 or np.float32(c.keep_prob) > 1.0,
    "F7_pse": lambda c: not 0 <= c.pse_type < 4,
    ("F8", "S1"): lambda c: c.key.ndim != 3,
    "R23_q": lambda c: c.qlen is None,
    "R23_kv": lambda c: c.kvlen is None,
    "R23_empty": lambda c: len(c.qlen) == 0,
    ("R24_n2", "F11_n2"): lambda c: c.n2 == 0 or c.n1 // c.n2 == 0,
    ("R24_mod", "F11_mod"): lambda c: c.n1 % c.n2 != 0,
    ("R26", "F13"): lambda c: c.sparse_mode > 8 or c.sparse_mode < 0,
    "F11_d": lambda c: c.d == 0,
    ("F12", "R29"): lambda c: c.pse_type != 1,
    "R27_dtype": lambda c: c.atten_mask.dtype not in MASK_DTYPES,
    "R27_rank": lambda c: c.atten_mask.ndim not in (2, 4),
    "R28_mode0": lambda c: c.sparse_mode == 0 and _bad_tokens(c, range(c.seqs.batch), False),
    "R30": lambda c: not _same_dtype(c.dy, c.query),
    "S2": lambda c: _first(c, ("dy", "attention_in"), lambda t: t.shape[2] != c.dv),
    "SF1": lambda c: c.value.ndim != 3 or tuple(c.value.shape[:2]) != (c.t2, c.n2),
}
for _ids, _fn in _SIMPLE.items():
    check(*(_ids if type(_ids) is tuple else (_ids,)))(_fn)
