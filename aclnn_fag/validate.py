"""Argument validation: SEMANTICS.md §6, rule by rule, in the device's call order.

One module, shared by every backend, so a CPU run rejects exactly what the
device rejects, with the same aclnn status code:

* 161002 (``ParamInvalidError``) for the checks of the op-API layer (rows 1-16),
* 161001 (``ParamNullptrError``) for null arguments and every tiling failure
  (rows 17-30): the device reports a failed tiling as a null result.

After the device's own rules come the checks the device does **not** make but
that protect against an out-of-bounds read, a crash or silently wrong results
(the docs' constraints, SEMANTICS.md "Not validated in code", Open question 3).
They raise 161002 with ``stricter=True``; the README lists them.

``validate_backward`` returns a ``FagCall``; ``validate_forward`` a ``FwdCall``.
"""

from __future__ import annotations

import numbers
import warnings

import ml_dtypes
import numpy as np

from .call import FagCall, FwdCall
from .errors import ParamInvalidError, ParamNullptrError
from .masks import COMPRESSED_SIZE, is_canonical_compressed
from .semantics.seqlens import SeqInfo, seq_info
from .semantics.sparse import (COMPRESSED_MODES, INT32_MAX, MaskReader, band_index, batch_keep,
                               normalize_tokens)
from .semantics.softmax_layout import COPIES

__all__ = ["validate_backward", "validate_forward", "IgnoredArgumentWarning",
           "SequenceEndWarning", "LIMITS", "mla_basic_template_hit"]

BF16 = np.dtype(ml_dtypes.bfloat16)
MASK_DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8))

# Documented limits the code does not check (docs D3/D3new); enforced here.
LIMITS = {"max_heads": 256, "max_head_dim": 768, "max_tokens": 1 << 20, "max_batch": 2048}


class IgnoredArgumentWarning(UserWarning):
    """An argument the op accepts but does not use (paddingMask, softmaxIn, prefix)."""


class SequenceEndWarning(UserWarning):
    """The last cumulative end is below T: the rows after it get zero gradients."""


def _nullptr(param, rule, stricter=False):
    return ParamNullptrError(rule, code=161001, param=param, stricter=stricter)


def _invalid(param, rule, stricter=False):
    return ParamInvalidError(rule, code=161002, param=param, stricter=stricter)


# --------------------------------------------------------------------------- types
def _check_array(name, value):
    if value is not None and not isinstance(value, np.ndarray):
        raise TypeError(f"parameter '{name}' must be a numpy.ndarray or None, "
                        f"got {type(value).__name__}")
    return value


def _check_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"parameter '{name}' must be an int, got {type(value).__name__}")
    value = int(value)
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"parameter '{name}' = {value} does not fit in int64")
    return value


def _check_float(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"parameter '{name}' must be a float, got {type(value).__name__}")
    return float(value)


def _check_int_list(name, value):
    """An int array argument (aclIntArray): None, or a 1-D sequence of int64 values."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype == object or arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"parameter '{name}' must be a 1-D sequence of integers, "
                        f"got {type(value).__name__} of dtype {arr.dtype}")
    out = tuple(int(x) for x in arr.reshape(-1))
    for x in out:
        if not -(1 << 63) <= x < (1 << 63):
            raise ValueError(f"parameter '{name}' has {x}, which does not fit in int64")
    return out


# --------------------------------------------------------------------------- helpers
def _dim(a, axis=-1):
    return a.shape[axis] if a.ndim else 0


def _lenient_seq_info(qlen, kvlen) -> SeqInfo:
    return seq_info(qlen or (), kvlen or ())


def needs_padding(d: int, dv: int, deterministic: bool, seqs: SeqInfo, keep_prob: float) -> str:
    """Row 16: the reason the D/Dv combination needs padding (which V3 rejects), or ''."""
    mla_shape = d == 192 and dv == 128 and not deterministic
    if d != dv and not mla_shape:
        return f"D={d} != Dv={dv} (only D=192 with Dv=128 in non-deterministic mode is allowed)"
    align = 16 if d < 128 else 128
    if d % align == 0 or mla_shape:
        return ""
    if not deterministic:
        if d % 8 == 0:
            return ""
        last_positive = max([e for e in seqs.q_ends if e > 0], default=0)
        if (seqs.max_skv <= 1024 and d < 96 and last_positive < 163840 and keep_prob == 1.0):
            return ""
        return (f"D={d} is not a multiple of 8 (allowed only when max Skv <= 1024, D < 96 and "
                f"the last query end < 163840)")
    return f"D={d} must be a multiple of {align} in deterministic mode"


def mla_basic_template_hit(query, key, value, atten_mask, sparse_mode, seqs: SeqInfo,
                           q_start_idx, kv_start_idx, deterministic) -> bool:
    """SEMANTICS.md Open question 3: the conditions under which the device selects the
    'MLA basic' kernel, which ignores queryRope/keyRope and leaves the rope outputs unwritten."""
    if q_start_idx is not None or kv_start_idx is not None or deterministic:
        return False
    if sparse_mode not in (2, 3) or atten_mask.ndim != 2 or COMPRESSED_SIZE not in atten_mask.shape:
        return False
    if query.shape[0] != key.shape[0] or seqs.sq != seqs.skv:
        return False
    d, dv = query.shape[-1], value.shape[-1]
    return d == dv and d <= 128 and d % 16 == 0 and seqs.max_skv <= 32768


# --------------------------------------------------------------------------- rules
def _check_common_head(query, query_rope, key, key_rope, value, extra_3d, head_num):
    """Rows 4-10 (in order), shared by the forward and the backward."""
    if head_num is not None and head_num <= 0:
        raise _invalid("head_num", f"head_num must be > 0, got {head_num} (row 4)")
    if query_rope is not None and key_rope is not None:
        for name, t in (("query_rope", query_rope), ("key_rope", key_rope)):
            if t.ndim < 3:
                raise _invalid(name, f"{name} needs >= 3 dims, got shape {t.shape} (row 5)")
    for name, t in (("query", query), ("key", key), ("value", value)) + tuple(extra_3d):
        if t.ndim < 3:
            raise _invalid(name, f"{name} needs >= 3 dims, got shape {t.shape} (row 5)")
    d, dk, dv = _dim(query), _dim(key), _dim(value)
    if d != dk:
        raise _invalid("key", f"head dim D of key ({dk}) must equal that of query ({d}) (row 6)")
    if d < dv:
        raise _invalid("value", f"value head dim Dv={dv} must be <= query head dim D={d} (row 7)")
    if (query_rope is None) != (key_rope is None):
        missing = "query_rope" if query_rope is None else "key_rope"
        raise _nullptr(missing, f"{missing} is None while the other rope input is given (row 8)")
    if query_rope is None:
        raise _nullptr("query_rope", "query_rope and key_rope are both None: V3 needs the rope "
                       "inputs (the device dereferences them and crashes; row 8)", stricter=True)
    for name, t in (("query_rope", query_rope), ("key_rope", key_rope)):
        if _dim(t) > d:
            raise _invalid(name, f"rope head dim Dr={_dim(t)} of {name} must be <= D={d} (row 9)")
    for name, t in (("query", query), ("query_rope", query_rope), ("key", key),
                    ("key_rope", key_rope), ("value", value)):
        if t.dtype != BF16:
            raise _invalid(name, f"{name} must be bfloat16 (ml_dtypes.bfloat16), got {t.dtype}; "
                           "the V3 op with rope inputs accepts only BF16 (row 10)")


def _check_mask_present(atten_mask):
    if atten_mask is None or atten_mask.ndim == 0:
        raise _nullptr("atten_mask", "atten_mask is required and must not be a scalar (row 12); "
                       "pass aclnn_fag.masks.compressed_causal_mask() for sparse modes 2/3/4/7/8 "
                       "or an all-zero [maxSq, maxSkv] mask for no masking")


def _check_seq_arrays(qlen, kvlen):
    """Row 23."""
    if qlen is None:
        raise _nullptr("actual_seq_qlen", "actual_seq_qlen is required (row 23)")
    if kvlen is None:
        raise _nullptr("actual_seq_kvlen", "actual_seq_kvlen is required (row 23)")
    if len(qlen) == 0:
        raise _nullptr("actual_seq_qlen", "actual_seq_qlen must have at least one entry (row 23)")
    if len(qlen) != len(kvlen):
        raise _nullptr("actual_seq_kvlen", f"actual_seq_kvlen has {len(kvlen)} entries but "
                       f"actual_seq_qlen has {len(qlen)}; they must be equal (row 23)")


def _check_heads(query, key):
    """Row 24."""
    if query.ndim != 3:
        raise _nullptr("query", f"query must be 3-D [T, N, D] for TND, got shape {query.shape} (row 24)")
    n1, n2 = query.shape[1], key.shape[1]
    if n2 == 0 or n1 // n2 == 0:
        raise _nullptr("key", f"key heads N2={n2} must be >= 1 and <= query heads N1={n1} (row 24)")
    if n1 % n2:
        raise _nullptr("key", f"query heads N1={n1} must be a multiple of key heads N2={n2} "
                       "(the device fails in the softmax-shape check; row 24)")


def _check_sparse_range(sparse_mode):
    if sparse_mode > 8 or sparse_mode < 0:
        raise _nullptr("sparse_mode", f"sparse_mode must be in 0..8 (not 6), got {sparse_mode} (row 26)")


def _check_mask_shape(atten_mask, sparse_mode, seqs: SeqInfo, n1):
    """Row 27."""
    if atten_mask.dtype not in MASK_DTYPES:
        raise _nullptr("atten_mask", f"atten_mask must be bool or uint8, got {atten_mask.dtype} (row 27)")
    if atten_mask.ndim not in (2, 4):
        raise _nullptr("atten_mask", f"atten_mask must be 2-D or 4-D, got shape {atten_mask.shape} (row 27)")
    if atten_mask.ndim == 4:
        lead = atten_mask.shape[:2]
        if lead not in ((seqs.batch, n1), (seqs.batch, 1), (1, 1)):
            raise _nullptr("atten_mask", f"a 4-D atten_mask needs leading dims (B, N1), (B, 1) or "
                           f"(1, 1) with B={seqs.batch}, N1={n1}; got {lead} (row 27)")
    last = tuple(atten_mask.shape[-2:])
    if sparse_mode in COMPRESSED_MODES:
        if last != (COMPRESSED_SIZE, COMPRESSED_SIZE):
            hint = ""
            if last == (seqs.max_sq, seqs.max_skv):
                hint = (" -- this looks like a full [maxSq, maxSkv] mask; sparse modes 2/3/4/7/8 "
                        "take the compressed mask aclnn_fag.masks.compressed_causal_mask()")
            raise _nullptr("atten_mask", f"sparse_mode {sparse_mode} needs the compressed "
                           f"{COMPRESSED_SIZE}x{COMPRESSED_SIZE} mask, got last dims {last}{hint} (row 27)")
    elif last != (seqs.max_sq, seqs.max_skv):
        hint = ""
        if last == (COMPRESSED_SIZE, COMPRESSED_SIZE):
            hint = " -- the compressed 2048x2048 mask belongs to sparse modes 2/3/4/7/8"
        raise _nullptr("atten_mask", f"sparse_mode {sparse_mode} needs mask last dims "
                       f"[maxSq, maxSkv] = [{seqs.max_sq}, {seqs.max_skv}], got {last}{hint} (row 27)")


def _check_tokens(sparse_mode, pre, nxt, seqs: SeqInfo, band_idx):
    """Row 28 (tokens already clamped)."""
    if sparse_mode == 0:
        batches = range(seqs.batch)
        for b in batches:
            if -pre > seqs.skv[b] or -nxt > seqs.sq[b] or pre + nxt <= 0:
                raise _nullptr("pre_tokens", f"sparse_mode 0 tokens pre={pre}, next={nxt} are invalid for "
                               f"batch {b} (Sq={seqs.sq[b]}, Skv={seqs.skv[b]}): need -pre <= Skv, "
                               "-next <= Sq and pre + next > 0 (row 28)")
    elif sparse_mode in (4, 7, 8):
        batches = range(seqs.batch) if sparse_mode == 4 else [band_idx]
        for b in batches:
            if -pre > seqs.sq[b] or -nxt > seqs.skv[b] or pre + nxt <= 0:
                raise _nullptr("pre_tokens", f"sparse_mode {sparse_mode} tokens pre={pre}, next={nxt} are "
                               f"invalid for batch {b} (Sq={seqs.sq[b]}, Skv={seqs.skv[b]}): need "
                               "-pre <= Sq, -next <= Skv and pre + next > 0 (row 28)")


def _check_sequences_strict(qlen, kvlen, t1, t2):
    """Our own checks: non-negative, non-decreasing cumulative ends within T (the kernel
    would read out of bounds), with hints for per-sequence lengths."""
    for name, ends, total in (("actual_seq_qlen", qlen, t1), ("actual_seq_kvlen", kvlen, t2)):
        arr = np.asarray(ends, dtype=np.int64)
        looks_per_seq = int(arr.sum()) == total and arr[-1] != total
        hint = (" -- it looks like per-sequence lengths; the op takes cumulative ends "
                "(aclnn_fag.seqlens.lengths_to_cumulative)") if looks_per_seq else ""
        if (arr < 0).any():
            raise _invalid(name, f"{name} has negative entries{hint}", stricter=True)
        if (np.diff(arr) < 0).any():
            raise _invalid(name, f"{name} must be non-decreasing cumulative ends, got "
                           f"{list(arr[:8])}{'...' if arr.size > 8 else ''}{hint}", stricter=True)
        if arr[-1] > total:
            raise _invalid(name, f"the last cumulative end {arr[-1]} of {name} exceeds T={total} "
                           f"(the kernel would read out of bounds){hint}", stricter=True)
        if arr[-1] < total:
            warnings.warn(f"{name} ends at {arr[-1]} < T={total}: rows after it are not part of any "
                          f"sequence and get zero outputs{hint}", SequenceEndWarning, stacklevel=4)


def _check_doc_constraints(query, query_rope, key, key_rope, seqs):
    """The docs' constraints the code does not check (SEMANTICS.md 'Not validated in code')."""
    dr_q, dr_k = _dim(query_rope), _dim(key_rope)
    if dr_q != dr_k:
        raise _invalid("key_rope", f"key_rope Dr={dr_k} must equal query_rope Dr={dr_q} (the kernel "
                       "uses query_rope's Dr for both)", stricter=True)
    if dr_q % 8:
        raise _invalid("query_rope", f"rope head dim Dr={dr_q} must be a multiple of 8 (docs)", stricter=True)
    for name, t, ref, ref_name in (("query_rope", query_rope, query, "query"),
                                   ("key_rope", key_rope, key, "key")):
        if t.ndim != 3 or t.shape[:2] != ref.shape[:2]:
            raise _invalid(name, f"{name} shape {t.shape} must be [T, N, Dr] with T, N of {ref_name} "
                           f"{ref.shape[:2]}", stricter=True)
    if query.shape[1] > LIMITS["max_heads"]:
        raise _invalid("query", f"N1={query.shape[1]} exceeds the documented limit of "
                       f"{LIMITS['max_heads']} heads", stricter=True)
    if _dim(query) > LIMITS["max_head_dim"]:
        raise _invalid("query", f"D={_dim(query)} exceeds the documented limit of "
                       f"{LIMITS['max_head_dim']}", stricter=True)
    for name, t in (("query", query), ("key", key)):
        if t.shape[0] > LIMITS["max_tokens"]:
            raise _invalid(name, f"T={t.shape[0]} exceeds the documented limit of "
                           f"{LIMITS['max_tokens']} tokens", stricter=True)
    if seqs.batch_raw > LIMITS["max_batch"]:
        raise _invalid("actual_seq_qlen", f"{seqs.batch_raw} sequences exceed the documented limit "
                       f"of {LIMITS['max_batch']}", stricter=True)


def _check_strict_mask_and_tokens(atten_mask, sparse_mode, seqs, pre_eff):
    if sparse_mode in COMPRESSED_MODES and not is_canonical_compressed(atten_mask):
        raise _invalid("atten_mask", f"sparse_mode {sparse_mode} reads the compressed mask at shifted "
                       "offsets and assumes the canonical content (1 strictly above the diagonal); "
                       "with other content the device's result depends on its tiling. Use "
                       "aclnn_fag.masks.compressed_causal_mask()", stricter=True)
    if sparse_mode in (4, 7, 8):
        for b in range(seqs.batch):
            if pre_eff + seqs.sq[b] - seqs.skv[b] >= INT32_MAX:
                raise _invalid("pre_tokens", f"pre_tokens={pre_eff} + Sq - Skv of batch {b} overflows the "
                               "kernel's int32 block-skip bound (blocks would be wrongly skipped); "
                               "pass a smaller pre_tokens (any value >= the longest sequence gives the "
                               "same kept set)", stricter=True)


def _warn_ignored(**kwargs):
    for name, value in kwargs.items():
        if value is not None:
            warnings.warn(f"parameter '{name}' is accepted by the op but not used; it is ignored",
                          IgnoredArgumentWarning, stacklevel=4)


def _check_stats_copies(name, stats):
    """Our own check: the 8 copies must be identical (the kernel reads copy j mod 8)."""
    rows_per_chunk = max(1, (1 << 22) // max(1, stats.shape[1] * COPIES))   # bounded temporaries
    for r0 in range(0, stats.shape[0], rows_per_chunk):
        part = stats[r0:r0 + rows_per_chunk]
        if not np.array_equal(part, np.broadcast_to(part[..., :1], part.shape), equal_nan=True):
            break
    else:
        return
    raise _invalid(name, f"the {COPIES} copies in the last dim of {name} differ; the device reads "
                   f"copy (j mod {COPIES}) for column j, so they must be identical", stricter=True)


def _check_stats_layout(call_parts, seqs: SeqInfo, sparse_mode, pre_eff, next_eff, band_idx):
    """Our own hint: a few sampled rows of softmax_max must hold the row's max of scale·S.

    When a sampled row's value fits only the token-major reading ([T, N] broadcast to
    [T, N, 8]) and not the device layout, the statistics were passed in the wrong layout:
    the device would compute wrong gradients. Statistics that fit neither reading are left
    alone (they are the caller's business), and so are rows where both readings coincide.
    """
    q, qr, k, kr, mask, stats, scale = call_parts
    n1, group = q.shape[1], q.shape[1] // k.shape[1]
    flat = stats.reshape(-1) if stats.flags.c_contiguous else np.ascontiguousarray(stats).reshape(-1)
    reader = MaskReader(mask, seqs, n1) if sparse_mode in (0, 1, 5) else None
    checked = device_fits = token_fits = 0
    for b in range(seqs.batch):
        sq, skv, qs, ks = seqs.sq[b], seqs.skv[b], seqs.q_starts[b], seqs.kv_starts[b]
        if sq == 0 or skv == 0 or skv > 65536:
            continue
        keep = batch_keep(sparse_mode, b, sq, skv, pre_eff, next_eff, band_idx)
        for i, h in ((sq - 1, n1 - 1), (sq // 2, n1 // 2)):
            device_val = flat[(qs * n1 + h * sq + i) * COPIES]
            token_val = stats[qs + i, h, 0]
            if device_val == token_val:
                continue
            j = np.arange(skv)
            kept = (j - i >= keep.lo) & (j - i <= keep.hi)
            if keep.uses_mask:
                explicit = reader.block(b, i, i + 1, 0, skv, [h] if reader.per_head else None)
                kept &= ~explicit.reshape(-1)
            if not kept.any():
                continue
            n2 = h // group
            scores = (k[ks:ks + skv, n2][kept].astype(np.float32) @ q[qs + i, h].astype(np.float32)
                      + kr[ks:ks + skv, n2][kept].astype(np.float32) @ qr[qs + i, h].astype(np.float32))
            true_max = float(np.float32(scale) * scores.max())
            tol = 1e-3 * max(1.0, abs(true_max))
            checked += 1
            device_fits += abs(float(device_val) - true_max) <= tol
            token_fits += abs(float(token_val) - true_max) <= tol
            if checked >= 8:
                break
        if checked >= 8:
            break
    if checked and device_fits == 0 and token_fits == checked:
        raise _invalid("softmax_max", "softmax_max looks token-major ([T, N] values broadcast to "
                       "[T, N, 8]); the device reads it per batch as [N, Sq_b, 8] blocks. Convert with "
                       "aclnn_fag.softmax_layout.device_stats_from_token_major(stats[..., 0], "
                       "actual_seq_qlen)", stricter=True)


def _resolve_head_num(head_num, query):
    if head_num is None and query.ndim >= 2:
        return query.shape[1]
    return head_num


# --------------------------------------------------------------------------- public
def validate_backward(query, query_rope, key, key_rope, value, dy, *, atten_mask, softmax_max,
                      softmax_sum, attention_in, actual_seq_qlen, actual_seq_kvlen, scale_value,
                      keep_prob=1.0, pre_tokens=INT32_MAX, next_tokens=INT32_MAX, head_num=None,
                      input_layout="TND", inner_precise=0, sparse_mode=0, pse_type=1,
                      pse_shift=None, drop_mask=None, padding_mask=None, softmax_in=None,
                      prefix=None, q_start_idx=None, kv_start_idx=None,
                      deterministic=False, avoid_rope_free_kernel=True) -> FagCall:
    """Check every rule of SEMANTICS.md §6 in the device's order; return the FagCall.

    ``avoid_rope_free_kernel``: when the arguments would select the device's rope-ignoring
    'MLA basic' kernel (SEMANTICS.md Open question 3), pass q_start_idx = kv_start_idx = [0]
    instead (no effect on the math) -- or, when False, reject the call (161002, stricter).
    """
    arrays = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value, dy=dy,
                  atten_mask=atten_mask, softmax_max=softmax_max, softmax_sum=softmax_sum,
                  attention_in=attention_in, pse_shift=pse_shift, drop_mask=drop_mask,
                  padding_mask=padding_mask, softmax_in=softmax_in)
    for name, value_ in arrays.items():
        _check_array(name, value_)
    scale_value = _check_float("scale_value", scale_value)
    keep_prob = _check_float("keep_prob", keep_prob)
    pre_tokens = _check_int("pre_tokens", pre_tokens)
    next_tokens = _check_int("next_tokens", next_tokens)
    head_num = _check_int("head_num", head_num, allow_none=True)
    inner_precise = _check_int("inner_precise", inner_precise)
    sparse_mode = _check_int("sparse_mode", sparse_mode)
    pse_type = _check_int("pse_type", pse_type)
    qlen = _check_int_list("actual_seq_qlen", actual_seq_qlen)
    kvlen = _check_int_list("actual_seq_kvlen", actual_seq_kvlen)
    q_start_idx = _check_int_list("q_start_idx", q_start_idx)
    kv_start_idx = _check_int_list("kv_start_idx", kv_start_idx)
    _check_int_list("prefix", prefix)

    # Row 1: layout first, before the null checks.
    if input_layout != "TND":
        raise _invalid("input_layout", f"input_layout must be exactly 'TND', got {input_layout!r} (row 1)")
    # Row 2: required tensors.
    for name in ("query", "key", "value", "dy", "attention_in"):
        if arrays[name] is None:
            raise _nullptr(name, f"{name} is required (row 2)")
    common = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value,
                  atten_mask=atten_mask, actual_seq_qlen=qlen or (), actual_seq_kvlen=kvlen or (),
                  scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
                  sparse_mode=sparse_mode, inner_precise=inner_precise, dy=dy,
                  softmax_max=softmax_max, softmax_sum=softmax_sum, attention_in=attention_in,
                  keep_prob=keep_prob, input_layout=input_layout, pse_type=pse_type,
                  q_start_idx=q_start_idx, kv_start_idx=kv_start_idx,
                  deterministic=bool(deterministic))

    def empty_call():
        return FagCall(head_num=head_num if head_num is not None else 0,
                       seqs=_lenient_seq_info((), ()), pre_eff=0, next_eff=0, band_index=-1,
                       empty_result=True, **common)

    # Row 3: dq, dk, dv all empty -> success, nothing computed.
    if query.size == 0 and key.size == 0 and value.size == 0:
        return empty_call()
    head_num = _resolve_head_num(head_num, query)
    _check_common_head(query, query_rope, key, key_rope, value,
                       (("dy", dy), ("attention_in", attention_in)), head_num)   # rows 4-10
    if sparse_mode == 6:
        raise _invalid("sparse_mode", "sparse_mode 6 (prefix compression) is not supported by V3 (row 11)")
    _check_mask_present(atten_mask)                                               # row 12
    if pse_shift is not None:
        raise _invalid("pse_shift", "pse_shift must be None: V3 supports no pse (row 13)")
    if drop_mask is not None:
        raise _invalid("drop_mask", "drop_mask must be None: V3 supports no dropout (row 14)")
    if keep_prob < 1.0:
        raise _invalid("keep_prob", f"keep_prob must be 1.0 (no dropout), got {keep_prob} (row 15)")
    lenient = _lenient_seq_info(qlen, kvlen)
    reason = needs_padding(_dim(query), _dim(value), bool(deterministic), lenient, keep_prob)
    if reason:
        raise _invalid("query", f"head dims need padding, which V3 rejects: {reason} (row 16)")
    for name in ("softmax_max", "softmax_sum", "attention_in"):                   # row 18
        if arrays[name] is None:
            raise _nullptr(name, f"{name} is required (row 18)")
    if head_num != query.shape[1]:                                                # row 19
        raise _nullptr("head_num", f"head_num={head_num} must equal query.shape[1]={query.shape[1]} (row 19)")
    # Empty-tensor path: any gradient with 0 elements -> zero outputs, success.
    if min(query.size, key.size, value.size, query_rope.size, key_rope.size) == 0:
        return empty_call()
    if np.float32(keep_prob) > 1.0:                                               # row 17
        raise _nullptr("keep_prob", f"keep_prob must be 1.0, got {keep_prob} (row 17)")
    for name in ("softmax_max", "softmax_sum"):                                   # row 20
        if arrays[name].dtype != np.float32:
            raise _nullptr(name, f"{name} must be float32, got {arrays[name].dtype} (row 20)")
    if attention_in.dtype != query.dtype:
        raise _nullptr("attention_in", f"attention_in dtype {attention_in.dtype} must equal the query "
                       f"dtype {query.dtype} (row 20)")
    t1, n1 = query.shape[0], query.shape[1]
    for name in ("softmax_max", "softmax_sum"):                                   # row 21
        shape = tuple(arrays[name].shape)
        if shape != (t1, n1, COPIES):
            hint = " -- [N, T, 8] is the docs' notation; the op takes [T, N, 8]" if shape == (n1, t1, COPIES) else ""
            raise _nullptr(name, f"{name} shape must be [T1, N1, 8] = [{t1}, {n1}, 8], got {list(shape)}{hint} (row 21)")
    if attention_in.ndim != query.ndim or attention_in.shape[:-1] != query.shape[:-1]:
        raise _nullptr("attention_in", f"attention_in shape {attention_in.shape} must match query "
                       f"{query.shape} except the last dim (row 21)")
    if t1 == 0 or n1 == 0 or _dim(query) == 0:                                    # row 22
        raise _nullptr("query", f"T1, N1 and D must be > 0, got shape {query.shape} (row 22)")
    _check_seq_arrays(qlen, kvlen)                                                # row 23
    _check_heads(query, key)                                                      # row 24
    if dy.shape[:-1] != query.shape[:-1] or dy.ndim != query.ndim or _dim(dy) > _dim(query):  # row 25
        raise _nullptr("dy", f"dy shape {dy.shape} must equal query's {query.shape} except the last dim, "
                       "which must be <= D (row 25)")
    if value.ndim != key.ndim or value.shape[:-1] != key.shape[:-1] or _dim(value) > _dim(key):
        raise _nullptr("value", f"value shape {value.shape} must equal key's {key.shape} except the last "
                       "dim, which must be <= D (row 25)")
    _check_sparse_range(sparse_mode)                                              # row 26
    seqs = seq_info(qlen, kvlen)
    _check_mask_shape(atten_mask, sparse_mode, seqs, n1)                          # row 27
    pre_eff, next_eff = normalize_tokens(sparse_mode, pre_tokens, next_tokens)
    band_idx = band_index(sparse_mode, seqs)
    _check_tokens(sparse_mode, pre_eff, next_eff, seqs, band_idx)                 # row 28
    if pse_type != 1:                                                             # row 29
        raise _nullptr("pse_type", f"pse_type must be 1 when pse_shift is None, got {pse_type} (row 29)")
    if dy.dtype != query.dtype:                                                   # row 30
        raise _nullptr("dy", f"dy dtype {dy.dtype} must equal the query dtype {query.dtype} (row 30)")
    # Our own checks (stricter than the device; see module docstring). First the shape
    # consistency the kernel relies on (161001, as the tiling reports shape failures) ...
    if key.ndim != 3:
        raise _nullptr("key", f"key must be 3-D [T2, N2, D], got shape {key.shape}", stricter=True)
    for name, t in (("dy", dy), ("attention_in", attention_in)):
        if _dim(t) != _dim(value):
            raise _nullptr(name, f"{name} last dim {_dim(t)} must equal the value head dim "
                           f"Dv={_dim(value)}", stricter=True)
    # ... then the rest (161002).
    _check_sequences_strict(qlen, kvlen, t1, key.shape[0])
    _check_doc_constraints(query, query_rope, key, key_rope, seqs)
    _check_strict_mask_and_tokens(atten_mask, sparse_mode, seqs, pre_eff)
    _check_stats_copies("softmax_max", softmax_max)
    _check_stats_copies("softmax_sum", softmax_sum)
    _check_stats_layout((query, query_rope, key, key_rope, atten_mask, softmax_max, scale_value),
                        seqs, sparse_mode, pre_eff, next_eff, band_idx)
    if mla_basic_template_hit(query, key, value, atten_mask, sparse_mode, seqs, q_start_idx,
                              kv_start_idx, deterministic):
        if avoid_rope_free_kernel:
            # qStartIdx/kvStartIdx only feed inner-generated ALiBi pse (pseType 2/3), which V3
            # cannot use: [0] changes no math and steers the device away from that kernel.
            q_start_idx = kv_start_idx = (0,)
            common.update(q_start_idx=q_start_idx, kv_start_idx=kv_start_idx)
        else:
            raise _invalid("q_start_idx", "with these arguments the device selects its 'MLA basic' kernel, "
                       "which ignores query_rope/key_rope and leaves the rope gradients unwritten "
                       "(SEMANTICS.md Open question 3); pass q_start_idx=[0], kv_start_idx=[0] "
                       "(no effect on V3's math) to select a rope-aware kernel", stricter=True)
    _warn_ignored(padding_mask=padding_mask, softmax_in=softmax_in, prefix=prefix)
    return FagCall(head_num=head_num, seqs=seqs, pre_eff=pre_eff, next_eff=next_eff,
                   band_index=band_idx, **common)


def validate_forward(query, query_rope, key, key_rope, value, *, atten_mask, actual_seq_qlen,
                     actual_seq_kvlen, scale_value, pre_tokens=INT32_MAX, next_tokens=INT32_MAX,
                     head_num=None, sparse_mode=0, inner_precise=0) -> FwdCall:
    """The backward's rules that apply to the forward's inputs, in the same order and codes."""
    for name, value_ in dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope,
                             value=value, atten_mask=atten_mask).items():
        _check_array(name, value_)
    scale_value = _check_float("scale_value", scale_value)
    pre_tokens = _check_int("pre_tokens", pre_tokens)
    next_tokens = _check_int("next_tokens", next_tokens)
    head_num = _check_int("head_num", head_num, allow_none=True)
    sparse_mode = _check_int("sparse_mode", sparse_mode)
    inner_precise = _check_int("inner_precise", inner_precise)
    qlen = _check_int_list("actual_seq_qlen", actual_seq_qlen)
    kvlen = _check_int_list("actual_seq_kvlen", actual_seq_kvlen)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t is None:
            raise _nullptr(name, f"{name} is required")
    head_num = _resolve_head_num(head_num, query)
    _check_common_head(query, query_rope, key, key_rope, value, (), head_num)
    if sparse_mode == 6:
        raise _invalid("sparse_mode", "sparse_mode 6 (prefix compression) is not supported with rope inputs")
    _check_mask_present(atten_mask)
    if head_num != query.shape[1]:
        raise _nullptr("head_num", f"head_num={head_num} must equal query.shape[1]={query.shape[1]}")
    if min(query.shape[0], query.shape[1], _dim(query)) == 0:
        raise _nullptr("query", f"T1, N1 and D must be > 0, got shape {query.shape}")
    _check_seq_arrays(qlen, kvlen)
    _check_heads(query, key)
    if value.ndim != key.ndim or value.shape[:-1] != key.shape[:-1]:
        raise _nullptr("value", f"value shape {value.shape} must equal key's {key.shape} except the last dim")
    _check_sparse_range(sparse_mode)
    seqs = seq_info(qlen, kvlen)
    _check_mask_shape(atten_mask, sparse_mode, seqs, query.shape[1])
    pre_eff, next_eff = normalize_tokens(sparse_mode, pre_tokens, next_tokens)
    band_idx = band_index(sparse_mode, seqs)
    _check_tokens(sparse_mode, pre_eff, next_eff, seqs, band_idx)
    _check_sequences_strict(qlen, kvlen, query.shape[0], key.shape[0])
    _check_doc_constraints(query, query_rope, key, key_rope, seqs)
    _check_strict_mask_and_tokens(atten_mask, sparse_mode, seqs, pre_eff)
    return FwdCall(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value,
                   atten_mask=atten_mask, actual_seq_qlen=qlen, actual_seq_kvlen=kvlen,
                   scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
                   head_num=head_num, sparse_mode=sparse_mode, inner_precise=inner_precise,
                   seqs=seqs, pre_eff=pre_eff, next_eff=next_eff, band_index=band_idx)
