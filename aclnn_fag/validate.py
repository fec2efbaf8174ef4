"""Argument validation: the rules of docs/validation.md, one by one, in the device's order.

One module, shared by every backend, so a CPU run rejects exactly what the
device rejects, with the same aclnn status code:

* 161002 (``ParamInvalidError``) for the checks of the op-API layer (rules 1-16),
* 161001 (``ParamNullptrError``) for null arguments and every tiling failure
  (rules 17-30): the device reports a failed tiling as a null result.

Details taken from the op-API source (ops-transformer @c29bc10,
``aclnn_flash_attention_score_grad.cpp`` and the TND tiling): D, Dk, Dv and Dr are
dimension **2** of their tensors (``GetDim(2)``, also for a rank > 3 tensor); rule 25
compares the **last** dims (``IsSameShapeButValueDLeEqD``); rule 16's small-shape
exception uses ``max(ends[0], consecutive differences)`` of the KV ends and the last
positive query end (``ends[0]`` when none is positive), both must be non-zero, and the
keep-prob test is ``!(p < 1) && !(p > 1)``; maxSq/maxSkv of rule 27 are the plain
maximum of the per-batch lengths. All integer arithmetic is exact (Python ints); the
stub op computes the same in 128 bits.

After rule 30 come the checks the device does **not** make but that protect against
a crash, an out-of-bounds read or silently wrong results (docs/validation.md, S1-S9;
docs/abi.md §7, rope-blind kernels), ``stricter=True``. The stub
op (``native_stubs/src/opapi_stub.c``) makes the same checks in the same order with
the same codes, so the two return the same status for every input:

== ================================================================== =======
S1 key rank != 3                                                       161001
S2 dy, then attention_in: last dim != Dv                               161001
S3 documented limits: N1 <= 256, D <= 768, T1 <= 1M, T2 <= 1M, B <= 2K 161002
S4 cumulative ends (query, then KV): negative, decreasing, last > T    161002
S5 query_rope != [T1,N1,Dr], key_rope != [T2,N2,Dr] (Dr of query_rope), 161002
   Dr % 8 != 0
S6 compressed modes: the first 2048x2048 mask slice is not canonical   161002
S7 modes 4/7/8: pre + Sq_b - Skv_b reaches INT32_MAX (block-skip bound) 161002
S8 softmax_max, then softmax_sum: the 8 copies differ                  161002
S9 softmax statistics fit the token-major reading, not the device's    161002
== ================================================================== =======

Before any rule, arguments of the wrong Python type raise ``TypeError`` and values no
C call can carry (an int beyond int64, an int array with more than
``MAX_INT_ARRAY_ENTRIES`` entries, a NUL inside ``input_layout``) raise ``ValueError``,
both naming the parameter. Validation never copies or allocates in proportion to a
tensor (zero-stride arrays of any size are fine): it reads a few elements, the
2048x2048 mask slice in row chunks, and the statistics in bounded chunks.

``validate_backward`` returns a ``FagCall``; ``validate_forward`` a ``FwdCall``.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
import sys
import warnings

import numpy as np

from .call import FagCall, FwdCall
from .errors import ParamInvalidError, ParamNullptrError
from .masks import COMPRESSED_SIZE, is_canonical_compressed, is_package_mask
from .row_lse import rows_lse
from .seqlens import SeqInfo, ends_problem, int_list, per_sequence_hint, seq_info
from .semantics.sparse import COMPRESSED_MODES, INT32_MAX, band_index, batch_keep, normalize_tokens
from .softmax_layout import COPIES
from .constants import BF16, INT64_MIN, INT64_MAX, LIMITS, MAX_INT_ARRAY_ENTRIES

__all__ = ["validate_backward", "validate_forward", "IgnoredArgumentWarning",
           "SequenceEndWarning", "SoftmaxStatsMismatchWarning", "LIMITS", "MAX_INT_ARRAY_ENTRIES",
           "start_indices", "START_INDEX_DEFAULT", "needs_padding"]

MASK_DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8))

# S9: how many (row, head) samples are checked at most, and the longest KV sequence sampled.
STATS_LAYOUT_SAMPLES = 8
STATS_LAYOUT_MAX_SKV = 65536
STATS_LAYOUT_KEY_CHUNK = 4096
# S8: statistics elements compared per chunk (host arrays)
_S8_CHUNK = 1 << 20
_F32 = np.dtype(np.float32)
# SoftmaxStatsMismatchWarning: how far (relative) max + log(sum) may fall below the recomputed
# log-sum-exp -- fp32 statistics of a bf16 forward agree to about 1e-6
STATS_MISMATCH_TOLERANCE = 1e-3


class IgnoredArgumentWarning(UserWarning):
    """An argument the op accepts but does not use (paddingMask, softmaxIn, prefix)."""


class SoftmaxStatsMismatchWarning(UserWarning):
    """Sampled softmax statistics make a row's probabilities sum to more than 1: they were not
    computed from these scores (e.g. another scale_value) and the gradients will be wrong."""


class SequenceEndWarning(UserWarning):
    """The last cumulative end is below T: the rows after it get zero gradients."""


def _cite(rule, check):
    """The message with the package check it enforces (S1-S9) cited at its end."""
    return f"{rule} (docs/validation.md, {check})" if check else rule


def _stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the calling function point at the
    first frame outside this package (the user's call), however deep the package's own
    frames are (public call, validation cache, helpers)."""
    import os
    pkg = os.path.dirname(os.path.abspath(__file__))
    level, f = 1, sys._getframe(1)
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(pkg + os.sep):
        f = f.f_back
        level += 1
    return level


def _nullptr(param, rule, stricter=False, check=None):
    return ParamNullptrError(_cite(rule, check), code=161001, param=param,
                             stricter=stricter or check is not None)


def _invalid(param, rule, stricter=False, check=None):
    return ParamInvalidError(_cite(rule, check), code=161002, param=param,
                             stricter=stricter or check is not None)


# --------------------------------------------------------------------------- types
def _is_device(value) -> bool:
    """An aclnn_fag.acl.DeviceArray (looked up without importing the NPU backend)."""
    mod = sys.modules.get("aclnn_fag.acl.device")
    return mod is not None and isinstance(value, mod.DeviceArray)


def _check_array(name, value):
    if value is not None and not isinstance(value, np.ndarray) and not _is_device(value):
        raise TypeError(f"parameter '{name}' must be a numpy.ndarray, a torch CPU or NPU tensor, "
                        f"an aclnn_fag.acl.DeviceArray or None, got {type(value).__name__}")
    return value


def _check_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"parameter '{name}' must be an int, got {type(value).__name__}")
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"parameter '{name}' = {value} does not fit in int64")
    return value


def _check_float(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"parameter '{name}' must be a float, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"parameter '{name}' = {value} does not fit in a double") from None


def _check_layout(value):
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"parameter 'input_layout' must be a str ('TND'), got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"parameter 'input_layout' contains a NUL character: {value!r}")
    return value


# --------------------------------------------------------------------------- helpers
def _dim(a, axis=-1):
    return a.shape[axis] if a.ndim else 0


def _native(dt: np.dtype) -> np.dtype:
    """The dtype in native byte order (the binding uploads byte-swapped arrays natively)."""
    if dt.byteorder in ("<", ">") and dt.kind in "biufc":
        return dt.newbyteorder("=")
    return dt


def _dtype_is(a, dtype) -> bool:
    return _native(a.dtype) == np.dtype(dtype)


def _same_dtype(a, b) -> bool:
    return _native(a.dtype) == _native(b.dtype)


def _lengths(ends) -> list:
    """Per-batch lengths of cumulative ends (first entry = first length), exact."""
    return [e - (ends[i - 1] if i else 0) for i, e in enumerate(ends)]


def _kv_max_segment(kv_ends) -> int:
    """GetSumIntArrayMaxValue of the op API: ends[0], or max(ends[0], consecutive diffs)."""
    best = kv_ends[0]
    for i in range(1, len(kv_ends)):
        best = max(best, kv_ends[i] - kv_ends[i - 1])
    return best


def _last_positive_end(q_ends) -> int:
    """getSeqLenQSum of the op API: the last positive end, scanning from the back (the first
    entry when none is positive)."""
    value = 0
    for x in reversed(q_ends):
        value = x
        if value > 0:
            break
    return value


def needs_padding(query, key, value, qlen, kvlen, deterministic: bool, keep_prob: float) -> str:
    """Rule 16 (GetInputShapeInfo + CheckTndIsNeedPad): why D/Dv needs padding (which V3
    rejects), or ''. D = query.shape[2], Dv = value.shape[2]."""
    d, dv = query.shape[2], value.shape[2]
    nondet = not deterministic
    mla_shape = d == 192 and dv == 128 and nondet
    pad_value = d != dv and not mla_shape
    align = 16 if d < 128 else 128
    pad_dim = d % align != 0 and query.size != 0 and key.size != 0
    if pad_dim:
        if nondet and d % 8 == 0:
            pad_dim = False
        elif (nondet and qlen is not None and kvlen is not None and len(qlen) == len(kvlen)
              and len(qlen) > 0):
            kv_max, q_sum = _kv_max_segment(kvlen), _last_positive_end(qlen)
            no_drop = not keep_prob < 1.0 and not keep_prob > 1.0
            if (kv_max != 0 and q_sum != 0 and kv_max <= 1024 and d < 96 and q_sum < 163840
                    and no_drop):
                pad_dim = False
        if mla_shape:
            pad_dim = False
    reasons = []
    if pad_dim:
        if deterministic:
            reasons.append(f"D={d} must be a multiple of {align} in deterministic mode")
        elif d % 8:
            reasons.append(f"D={d} is not a multiple of 8 (allowed only when max Skv <= 1024, "
                           "D < 96 and the last positive query end < 163840)")
        else:
            reasons.append(f"D={d} must be a multiple of {align}")
    if pad_value:
        reasons.append(f"D={d} != Dv={dv} (only D=192 with Dv=128 in non-deterministic mode "
                       "is allowed)")
    return "; ".join(reasons)


START_INDEX_DEFAULT = (0,)


def start_indices(q_start_idx, kv_start_idx):
    """qStartIdx / kvStartIdx as every call passes them: the caller's values when given, else
    ``(0,)`` -- never None (NULL).

    Why: with both arrays NULL the device may select one of its "MLA basic" templates (1001,
    non-deterministic: causal modes 2/3 with a 2-D mask, equal q/kv lengths, D == Dv <= 128;
    1002, deterministic: modes 1 and 3, D == Dv <= 128, D % 16 == 0). Their kernels take no
    rope inputs: they compute without the rope terms and copy uninitialised memory into the
    rope gradients, with no error. Both templates refuse a non-NULL start index. The arrays
    themselves only feed ALiBi position encodings (pse_type 2/3), which V3 cannot use, so
    ``[0]`` changes no math. torch_npu passes non-NULL arrays too. (docs/forward.md,
    "Start indices".)
    """
    q = int_list("q_start_idx", q_start_idx)
    kv = int_list("kv_start_idx", kv_start_idx)
    return (START_INDEX_DEFAULT if q is None else q,
            START_INDEX_DEFAULT if kv is None else kv)


def _compact(a: np.ndarray) -> np.ndarray:
    """A view with every zero-stride axis cut to length 1 (same distinct elements)."""
    return a[tuple(slice(0, 1) if s == 0 and n > 1 else slice(None)
                   for n, s in zip(a.shape, a.strides))]


# --------------------------------------------------------------------------- rules
def _check_common_head(query, query_rope, key, key_rope, value, extra_3d, head_num):
    """Rules 4-10 (in order), shared by the forward and the backward."""
    if head_num is not None and head_num <= 0:
        raise _invalid("head_num", f"head_num must be > 0, got {head_num} (docs/validation.md, rule 4)")
    if query_rope is not None and key_rope is not None:
        for name, t in (("query_rope", query_rope), ("key_rope", key_rope)):
            if t.ndim < 3:
                raise _invalid(name, f"{name} needs >= 3 dims, got shape {t.shape}"
                                     " (docs/validation.md, rule 5)")
    for name, t in (("query", query), ("key", key), ("value", value)) + tuple(extra_3d):
        if t.ndim < 3:
            raise _invalid(name, f"{name} needs >= 3 dims, got shape {t.shape} (docs/validation.md, rule 5)")
    d, dk, dv = query.shape[2], key.shape[2], value.shape[2]     # GetDim(2) for TND
    if d != dk:
        raise _invalid("key", f"head dim D of key ({dk}) must equal that of query ({d})"
                              " (docs/validation.md, rule 6)")
    if d < dv:
        raise _invalid("value", f"value head dim Dv={dv} must be <= query head dim D={d}"
                                " (docs/validation.md, rule 7)")
    if (query_rope is None) != (key_rope is None):
        missing = "query_rope" if query_rope is None else "key_rope"
        raise _nullptr(missing, f"{missing} is None while the other rope input is given"
                                " (docs/validation.md, rule 8)")
    if query_rope is None:
        raise _nullptr("query_rope", "query_rope and key_rope are both None: V3 needs the rope "
                       "inputs (the device dereferences them and crashes; docs/validation.md, "
                       "rule 8)", stricter=True)
    for name, t in (("query_rope", query_rope), ("key_rope", key_rope)):
        if t.shape[2] > d:
            raise _invalid(name, f"rope head dim Dr={t.shape[2]} of {name} must be <= D={d}"
                                 " (docs/validation.md, rule 9)")
    for name, t in (("query", query), ("query_rope", query_rope), ("key", key),
                    ("key_rope", key_rope), ("value", value)):
        if not _dtype_is(t, BF16):
            hint = ""
            if t.dtype.kind == "f":
                hint = f"; convert with {name}.astype(ml_dtypes.bfloat16)"
            raise _invalid(name, f"{name} must be bfloat16 (ml_dtypes.bfloat16), got {t.dtype}; "
                           f"the V3 op with rope inputs accepts only BF16{hint}"
                           " (docs/validation.md, rule 10)")


def _check_mask_present(atten_mask):
    if atten_mask is None or atten_mask.ndim == 0:
        raise _nullptr("atten_mask", "atten_mask is required and must not be a scalar "
                       "(docs/validation.md, rule 12); pass aclnn_fag.masks.compressed_causal_mask() for sparse modes 2/3/4/7/8 "
                       "or an all-zero [maxSq, maxSkv] mask for no masking")


def _check_seq_arrays(qlen, kvlen):
    """Rule 23."""
    if qlen is None:
        raise _nullptr("actual_seq_qlen", "actual_seq_qlen is required (docs/validation.md, rule 23)")
    if kvlen is None:
        raise _nullptr("actual_seq_kvlen", "actual_seq_kvlen is required (docs/validation.md, rule 23)")
    if len(qlen) == 0:
        raise _nullptr("actual_seq_qlen", "actual_seq_qlen must have at least one entry"
                                          " (docs/validation.md, rule 23)")
    if len(qlen) != len(kvlen):
        raise _nullptr("actual_seq_kvlen", f"actual_seq_kvlen has {len(kvlen)} entries but "
                       f"actual_seq_qlen has {len(qlen)}; they must be equal (docs/validation.md, rule 23)")


def _check_heads(query, key):
    """Rule 24."""
    if query.ndim != 3:
        raise _nullptr("query", f"query must be 3-D [T, N, D] for TND, got shape {query.shape}"
                                " (docs/validation.md, rule 24)")
    n1, n2 = query.shape[1], key.shape[1]
    if n2 == 0 or n1 // n2 == 0:
        raise _nullptr("key", f"key heads N2={n2} must be >= 1 and <= query heads N1={n1}"
                              " (docs/validation.md, rule 24)")
    if n1 % n2:
        raise _nullptr("key", f"query heads N1={n1} must be a multiple of key heads N2={n2} "
                       "(the device fails in the softmax-shape check; docs/validation.md, rule 24)")


def _check_sparse_range(sparse_mode):
    if sparse_mode > 8 or sparse_mode < 0:
        raise _nullptr("sparse_mode", f"sparse_mode must be in 0..8 (not 6), got {sparse_mode}"
                                      " (docs/validation.md, rule 26)")


def _per_seq_hint(qlen, kvlen, t1, t2) -> str:
    """' -- ...' when the ends look like per-sequence lengths (they sum to T, the last != T)."""
    return per_sequence_hint(qlen, t1) or (per_sequence_hint(kvlen, t2) if kvlen else "")


def _check_mask_shape(atten_mask, sparse_mode, seqs: SeqInfo, n1, qlen, kvlen, t1, t2):
    """Rule 27 (with hints for the common mistakes)."""
    if atten_mask.dtype not in MASK_DTYPES:
        raise _nullptr("atten_mask", f"atten_mask must be bool or uint8, got {atten_mask.dtype}"
                                     " (docs/validation.md, rule 27)")
    if atten_mask.ndim not in (2, 4):
        raise _nullptr("atten_mask", f"atten_mask must be 2-D or 4-D, got shape {atten_mask.shape}"
                                     " (docs/validation.md, rule 27)")
    if atten_mask.ndim == 4:
        lead = tuple(atten_mask.shape[:2])
        if lead not in ((seqs.batch, n1), (seqs.batch, 1), (1, 1)):
            hint = ""
            if lead[0] == seqs.batch - 1 and qlen and qlen[0] == 0 and kvlen and kvlen[0] == 0:
                hint = (" -- the ends start with 0 (flash-attn's cu_seqlens convention), which the "
                        "op reads as an empty first sequence counted in B: drop the leading 0 "
                        "(cu_seqlens[1:]) or append one mask block "
                        "(docs/semantics.md, The leading-0 form)")
            elif lead[0] == seqs.batch_raw and seqs.batch != seqs.batch_raw:
                hint = (f" -- B excludes the trailing batches with Sq = Skv = 0 "
                        f"({seqs.batch_raw} entries, B = {seqs.batch})")
            raise _nullptr("atten_mask", f"a 4-D atten_mask needs leading dims (B, N1), (B, 1) or "
                           f"(1, 1) with B={seqs.batch}, N1={n1}; got {lead}{hint}"
                           " (docs/validation.md, rule 27)")
    last = tuple(atten_mask.shape[-2:])
    if sparse_mode in COMPRESSED_MODES:
        if last != (COMPRESSED_SIZE, COMPRESSED_SIZE):
            hint = ""
            if last in ((seqs.max_sq, seqs.max_skv), (t1, t2)) or last[0] == last[1]:
                hint = (" -- this looks like a full S x S mask; sparse modes 2/3/4/7/8 take the "
                        "compressed 2048x2048 mask aclnn_fag.masks.compressed_causal_mask() "
                        "(the kernel derives each batch's causal/band pattern from it)")
            raise _nullptr("atten_mask", f"sparse_mode {sparse_mode} needs the compressed "
                           f"{COMPRESSED_SIZE}x{COMPRESSED_SIZE} mask, got last dims {last}{hint}"
                           " (docs/validation.md, rule 27)")
    elif last != (seqs.max_sq, seqs.max_skv):
        hint = ""
        if last == (COMPRESSED_SIZE, COMPRESSED_SIZE):
            hint = (" -- the compressed 2048x2048 mask belongs to sparse modes 2/3/4/7/8; for a "
                    "causal mask pass sparse_mode=2 or 3")
        elif seqs.batch > 1 and last == (t1, t2):
            hint = (" -- this looks like a full [T1, T2] mask; sparse modes 0/1/5 read a "
                    "[maxSq, maxSkv] mask top-left for every batch (or a 4-D [B, 1|N1, maxSq, "
                    "maxSkv] mask per batch)")
        else:
            per_seq = _per_seq_hint(qlen, kvlen, t1, t2)
            if per_seq and last == (max(qlen), max(kvlen)):
                hint = per_seq
        raise _nullptr("atten_mask", f"sparse_mode {sparse_mode} needs mask last dims "
                       f"[maxSq, maxSkv] = [{seqs.max_sq}, {seqs.max_skv}], got {last}{hint}"
                       " (docs/validation.md, rule 27)")


def _check_tokens(sparse_mode, pre, nxt, seqs: SeqInfo, band_idx):
    """Rule 28 (tokens already clamped)."""
    if sparse_mode == 0:
        for b in range(seqs.batch):
            if -pre > seqs.skv[b] or -nxt > seqs.sq[b] or pre + nxt <= 0:
                raise _nullptr("pre_tokens", f"sparse_mode 0 tokens pre={pre}, next={nxt} are invalid for "
                               f"batch {b} (Sq={seqs.sq[b]}, Skv={seqs.skv[b]}): need -pre <= Skv, "
                               "-next <= Sq and pre + next > 0 (docs/validation.md, rule 28)")
    elif sparse_mode in (4, 7, 8):
        batches = range(seqs.batch) if sparse_mode == 4 else [band_idx]
        for b in batches:
            if -pre > seqs.sq[b] or -nxt > seqs.skv[b] or pre + nxt <= 0:
                raise _nullptr("pre_tokens", f"sparse_mode {sparse_mode} tokens pre={pre}, next={nxt} are "
                               f"invalid for batch {b} (Sq={seqs.sq[b]}, Skv={seqs.skv[b]}): need "
                               "-pre <= Sq, -next <= Skv and pre + next > 0 (docs/validation.md, rule 28)")


# --------------------------------------------------------------------------- our own checks (S*)
def _check_limits(query, key, qlen):
    """S3: the documented limits (N1 <= 256, D <= 768, T <= 1M, B <= 2048)."""
    if query.shape[1] > LIMITS["max_heads"]:
        raise _invalid("query", f"N1={query.shape[1]} exceeds the documented limit of "
                       f"{LIMITS['max_heads']} heads", check="S3")
    if query.shape[2] > LIMITS["max_head_dim"]:
        raise _invalid("query", f"D={query.shape[2]} exceeds the documented limit of "
                       f"{LIMITS['max_head_dim']}", check="S3")
    for name, t in (("query", query), ("key", key)):
        if t.shape[0] > LIMITS["max_tokens"]:
            raise _invalid(name, f"T={t.shape[0]} of {name} exceeds the documented limit of "
                           f"{LIMITS['max_tokens']} tokens; split the batch into several calls",
                           check="S3")
    if len(qlen) > LIMITS["max_batch"]:
        raise _invalid("actual_seq_qlen", f"{len(qlen)} sequences exceed the documented limit "
                       f"of {LIMITS['max_batch']}", check="S3")


def _check_sequences_strict(qlen, kvlen, t1, t2):
    """S4: non-negative, non-decreasing cumulative ends within T (the kernel would read out
    of bounds), with hints for per-sequence lengths; a last end below T warns."""
    for name, ends, total, tname in (("actual_seq_qlen", qlen, t1, "T1 (query.shape[0])"),
                                     ("actual_seq_kvlen", kvlen, t2, "T2 (key.shape[0])")):
        problem = ends_problem(name, ends, total, tname)
        if problem:
            raise _invalid(name, problem, check="S4")
        hint = per_sequence_hint(ends, total)
        if ends[-1] < total:
            warnings.warn(f"{name} ends at {ends[-1]} < {tname} = {total}: rows after it are not "
                          f"part of any sequence and get zero outputs (the last cumulative end "
                          f"is normally T){hint}", SequenceEndWarning, stacklevel=_stacklevel())


def _check_rope_shapes(query, query_rope, key, key_rope):
    """S5: rope tensors [T1, N1, Dr] / [T2, N2, Dr] with Dr of query_rope, Dr % 8 == 0."""
    dr = query_rope.shape[2]
    want_q = (query.shape[0], query.shape[1], dr)
    if query_rope.ndim != 3 or tuple(query_rope.shape) != want_q:
        raise _invalid("query_rope", f"query_rope shape {query_rope.shape} must be [T1, N1, Dr] = "
                       f"{list(want_q)} (T1, N1 of query)", check="S5")
    want_k = (key.shape[0], key.shape[1], dr)
    if key_rope.ndim != 3 or tuple(key_rope.shape) != want_k:
        hint = ""
        if key_rope.ndim == 3 and key_rope.shape[2] != dr:
            hint = " -- its Dr differs from query_rope's (the kernel uses query_rope's Dr for both)"
        raise _invalid("key_rope", f"key_rope shape {key_rope.shape} must be [T2, N2, Dr] = "
                       f"{list(want_k)} (T2, N2 of key, Dr of query_rope){hint}", check="S5")
    if dr % 8:
        raise _invalid("query_rope", f"rope head dim Dr={dr} must be a multiple of 8 (docs)",
                       check="S5")


def _first_compressed_slice(mask):
    return mask if mask.ndim == 2 else mask[0, 0]      # no reshape: never a copy


def _check_strict_mask_and_tokens(atten_mask, sparse_mode, seqs, pre_eff, sampler=None,
                                  check_data=True):
    """S6 and S7 (S6 only with ``check_data``; on a sample for device arrays)."""
    if sparse_mode in COMPRESSED_MODES and check_data and not is_package_mask(atten_mask):
        if _is_device(atten_mask):
            if not sampler.compressed_mask_is_canonical(atten_mask):
                raise _invalid("atten_mask", f"sparse_mode {sparse_mode} reads the compressed mask at "
                               "shifted offsets and assumes the canonical content (1 strictly above "
                               "the diagonal); a sample of this device mask differs from it. Upload "
                               "aclnn_fag.masks.compressed_causal_mask()", check="S6")
            first = None
        else:
            first = _first_compressed_slice(atten_mask)
        if first is not None and not is_canonical_compressed(first):
            hint = ""
            if _is_inverted_compressed(first):
                hint = (" -- it looks inverted (nonzero on and below the diagonal): in aclnn masks "
                        "nonzero means MASKED, the opposite of a 'keep' mask")
            elif not first[:64, :64].any() and not _any_nonzero(first):
                hint = " -- it is all zero"
            raise _invalid("atten_mask", f"sparse_mode {sparse_mode} reads the compressed mask at shifted "
                           "offsets and assumes the canonical content (1 strictly above the diagonal); "
                           "with other content the device's result depends on its tiling. Use "
                           f"aclnn_fag.masks.compressed_causal_mask(){hint}", check="S6")
    if sparse_mode in (4, 7, 8):
        for b in range(seqs.batch):
            if pre_eff + seqs.sq[b] - seqs.skv[b] >= INT32_MAX:
                raise _invalid("pre_tokens", f"pre_tokens={pre_eff} + Sq - Skv of batch {b} overflows the "
                               "kernel's int32 block-skip bound (blocks would be wrongly skipped); "
                               "pass a smaller pre_tokens (any value >= the longest sequence gives the "
                               "same kept set)", check="S7")


def _any_nonzero(m) -> bool:
    for r0 in range(0, m.shape[0], 256):
        if m[r0:r0 + 256].any():
            return True
    return False


def _is_inverted_compressed(m) -> bool:
    cols = np.arange(m.shape[1])
    for r0 in range(0, m.shape[0], 128):
        rows = np.arange(r0, min(r0 + 128, m.shape[0]))[:, None]
        if not np.array_equal(m[r0:r0 + 128] != 0, cols[None, :] <= rows):
            return False
    return True


def _warn_ignored(**kwargs):
    for name, value in kwargs.items():
        if value is not None:
            warnings.warn(f"parameter '{name}' is accepted by the op but not used; it is ignored",
                          IgnoredArgumentWarning, stacklevel=_stacklevel())


_COPIES_MESSAGE = ("the {copies} copies in the last dim of {name} differ; the device "
                   "reads copy (j mod {copies}) for column j, so they must be identical. If "
                   "you have token-major [T, N] statistics, convert them with "
                   "aclnn_fag.softmax_layout.device_stats_from_token_major(stats, "
                   "actual_seq_qlen), which also writes the 8 copies")


def _check_stats_copies(name, stats, sampler=None):
    """S8: the 8 copies must be identical (the kernel reads copy j mod 8 for column j).
    Zero-stride axes are read once; the rest in chunks of bounded size (device arrays: a
    bounded sample)."""
    if stats.strides[2] == 0:
        return
    if _is_device(stats):
        if not sampler.stats_copies_equal(stats):
            raise _invalid(name, _COPIES_MESSAGE.format(copies=COPIES, name=name)
                           + " (found in a sample of the device array)", check="S8")
        return
    if stats.flags.c_contiguous and stats.size <= _S8_CHUNK:     # the common case, at once
        if stats.dtype == _F32:
            # every copy bitwise equal to the next one within its row: the neighbours of
            # the flat array compared as 32-bit words, the row boundaries (every 8th
            # comparison) left out; anything else (a difference, -0.0 beside 0.0, NaN
            # payloads) is judged by the float comparison below
            flat = stats.reshape(-1).view(np.uint32)
            differ = np.not_equal(flat[1:], flat[:-1])
            if np.count_nonzero(differ) == np.count_nonzero(differ[COPIES - 1::COPIES]):
                return
        rows = stats.reshape(-1, COPIES)
        if (rows == rows[:, :1]).all():
            return
    part_all = _compact(stats)
    rows_per_chunk = max(1, _S8_CHUNK // max(1, part_all.shape[1] * COPIES))
    for r0 in range(0, part_all.shape[0], rows_per_chunk):
        part = part_all[r0:r0 + rows_per_chunk]
        if (part == part[..., :1]).all():       # the common case, cheaply: no NaN, all equal
            continue
        if not np.array_equal(part, np.broadcast_to(part[..., :1], part.shape), equal_nan=True):
            raise _invalid(name, _COPIES_MESSAGE.format(copies=COPIES, name=name), check="S8")


def _mask_row(mask, seqs: SeqInfo, n1, b, h, i, skv) -> np.ndarray:
    """Row i of batch b, head h of an explicit (modes 0/1/5) mask as the kernel addresses it:
    bool 'masked' [skv]; reads only those skv elements (no copy of the mask)."""
    if mask.ndim == 2:
        return mask[i, :skv] != 0
    d0, d1, ms, mk = mask.shape
    if d0 == 1 and d1 == 1:
        return mask[0, 0, i, :skv] != 0
    per_head = d1 != 1
    base = 0
    for bb in range(b):
        base += (n1 if per_head else 1) * seqs.sq[bb] * seqs.skv[bb]
    sq = seqs.sq[b]
    start = base + ((h * sq + i) * skv if per_head else i * skv)
    flat = np.arange(start, start + skv, dtype=np.int64)
    idx = np.unravel_index(flat, mask.shape)
    return mask[idx] != 0


def _kept_keys(keep, mask, seqs: SeqInfo, n1, b, h, i, skv):
    """The kept keys of row i (batch b, head h) as local indices: a (j0, j1) range when the
    kept set is the band alone, an index array when a mask takes part; None when no key is
    kept."""
    j0 = 0 if keep.lo == -math.inf else max(0, i + keep.lo)
    j1 = skv if keep.hi == math.inf else min(skv, i + keep.hi + 1)
    if j1 <= j0:
        return None
    if not keep.uses_mask:
        return (j0, j1)
    sel = np.flatnonzero(~_mask_row(mask, seqs, n1, b, h, i, skv)[j0:j1])
    return sel + j0 if sel.size else None


# batch_keep of the sampled batches, remembered across calls (its arguments are ints, its
# result immutable): a training loop calls with the same lengths again and again
_batch_keep = functools.lru_cache(maxsize=1024)(batch_keep)


def _fits(m, l, lse) -> bool:
    """max + log(sum) equals ``lse`` within 1e-3 relative; False for a sum <= 0 or NaN and a
    lse that is not finite -- and for an infinite or NaN max or sum, through the arithmetic
    (inf or NaN is never within the finite tolerance). The criterion of both variants of
    S9 (host arrays, the device sample)."""
    m, l = float(m), float(l)
    if not (l > 0 and math.isfinite(lse)):
        return False
    return abs(m + math.log(l) - lse) <= 1e-3 * max(1.0, abs(lse))


def _check_stats_layout(q, qr, k, kr, mask, smax, ssum, scale_value, seqs: SeqInfo,
                        sparse_mode, pre_eff, next_eff, band_idx, sampler=None):
    """S9: a few sampled (row, head) pairs of the statistics must describe the row's scores.

    For each sample the two readings of the [T1, N1, 8] arrays are taken: the device's
    (flat (qStart·N1 + h·Sq_b + i)·8) and the token-major one (flat ((qStart + i)·N1 + h)·8).
    A reading fits when max + log(sum) equals the row's log-sum-exp of scale·S over the kept
    keys (so (max, sum) pairs and (lse, 1) pairs are both recognised) within 1e-3 relative.
    Rejected: every checked sample fits the token-major reading and none fits the device's.
    Samples where the two readings coincide or the row has no kept key are skipped;
    statistics that fit neither reading are the caller's business -- except those that make
    a row's probabilities sum to more than 1, which ``_warn_stats_mismatch`` reports.
    Returns the samples [(b, i, h, lse, max, sum)] read with the device's layout.
    """
    nd = _ND
    host = (type(q) is nd and type(qr) is nd and type(k) is nd and type(kr) is nd
            and type(smax) is nd and type(ssum) is nd and (mask is None or type(mask) is nd))
    on_device = () if host else [_is_device(a) for a in (q, qr, k, kr, mask, smax, ssum)]
    if any(on_device):
        if not all(on_device) or sampler is None:
            return []   # host and device arrays mixed (a FagPlan's inputs): not sampled
        checked, device_fits, token_fits = sampler.stats_layout_votes(
            q, qr, k, kr, mask, smax, ssum, scale_value, seqs, sparse_mode, pre_eff, next_eff,
            band_idx, _fits)
        _judge_stats_layout(checked, device_fits, token_fits)
        return []
    n1, group = q.shape[1], q.shape[1] // k.shape[1]
    picked = []           # (b, i, h, dm, dl, tm, tl, same) of the rows recomputed, in order
    rows = []             # their rows_lse descriptions
    lses = []             # their log-sum-exps where already computed (else None)
    scale32 = np.float32(scale_value)
    checked = 0
    same_rows = 0         # rows where both readings coincide: sampled for the warning only
    max_item, sum_item = smax.item, ssum.item         # by flat C-order index
    sqs, skvs, q_starts, kv_starts = seqs.sq, seqs.skv, seqs.q_starts, seqs.kv_starts
    for b in range(seqs.batch):
        sq, skv = sqs[b], skvs[b]
        if sq <= 0 or skv <= 0 or skv > STATS_LAYOUT_MAX_SKV:
            continue
        qs, ks = q_starts[b], kv_starts[b]
        keep = _batch_keep(sparse_mode, b, sq, skv, pre_eff, next_eff, band_idx)
        for i, h in ((0, n1 - 1), (sq // 2, n1 // 2), (sq - 1, 0)):
            dev_flat = (qs * n1 + h * sq + i) * COPIES
            tok_flat = ((qs + i) * n1 + h) * COPIES
            dm, dl = max_item(dev_flat), sum_item(dev_flat)
            tm, tl = max_item(tok_flat), sum_item(tok_flat)
            same = (dm == tm or (dm != dm and tm != tm)) and (dl == tl or (dl != dl and tl != tl))
            if same and same_rows >= STATS_LAYOUT_SAMPLES:
                continue
            keys = _kept_keys(keep, mask, seqs, n1, b, h, i, skv)
            if keys is None:
                continue
            picked.append((b, i, h, dm, dl, tm, tl, same))
            rows.append((qs + i, h, h // group,
                         (ks + keys[0], ks + keys[1]) if type(keys) is tuple else keys + ks))
            lses.append(None)
            if same:
                same_rows += 1
                continue
            if not checked:
                # the first checked row, recomputed at once: when its statistics fit the
                # device's reading the call can no longer be rejected, and they describe the
                # scores where checked -- done (the common case costs one row, not every
                # sampled row; docs/validation.md, "What S9 samples")
                lse = lses[-1] = rows_lse(q, qr, k, kr, rows[-1:], scale32,
                                          STATS_LAYOUT_KEY_CHUNK)[0]
                if _fits(dm, dl, lse):
                    return [(b, i, h, lse, dm, dl)]
            checked += 1
            if checked >= STATS_LAYOUT_SAMPLES:
                break
        if checked >= STATS_LAYOUT_SAMPLES:
            break
    rest = [r for r, lse in enumerate(lses) if lse is None]
    if rest:                    # every other sampled row, recomputed together
        for r, lse in zip(rest, rows_lse(q, qr, k, kr, [rows[r] for r in rest], scale32,
                                         STATS_LAYOUT_KEY_CHUNK)):
            lses[r] = lse
    device_fits = token_fits = 0
    samples = []          # every recomputed row (for the mismatch warning)
    for (b, i, h, dm, dl, tm, tl, same), lse in zip(picked, lses):
        samples.append((b, i, h, lse, dm, dl))
        if not same:
            device_fits += _fits(dm, dl, lse)
            token_fits += _fits(tm, tl, lse)
    _judge_stats_layout(checked, device_fits, token_fits)
    return samples


def _judge_stats_layout(checked, device_fits, token_fits):
    if checked and device_fits == 0 and token_fits == checked:
        raise _invalid("softmax_max", "softmax_max/softmax_sum look token-major ([T, N] values "
                       "broadcast to [T, N, 8]); the device reads them per batch as [N, Sq_b, 8] "
                       "blocks and would compute wrong gradients without any error. Convert with "
                       "aclnn_fag.softmax_layout.device_stats_from_token_major(stats[..., 0], "
                       "actual_seq_qlen)", check="S9")


def _warn_stats_mismatch(samples, scale_value):
    """SoftmaxStatsMismatchWarning when a sampled row's statistics give max + log(sum) below
    the log-sum-exp of the row's scaled scores: its probabilities exp(S - max) / sum would sum
    to more than 1, which no softmax does (a wrong scale_value, other inputs or another mask).
    A larger max + log(sum) is not reported: statistics over more keys than this call sees
    (context parallelism, ring attention) are legitimate."""
    isfinite = math.isfinite
    for b, i, h, lse, m, l in samples:
        if isfinite(m) and isfinite(l) and l > 0:
            if not isfinite(lse):
                continue
            stored = m + math.log(l)
            if lse - stored <= STATS_MISMATCH_TOLERANCE * max(1.0, abs(lse)):
                continue
        else:
            stored = None
        if stored is None:
            what = f"max = {m:g}, sum = {l:g} cannot be a softmax's statistics"
        else:
            excess = lse - stored
            ratio = f"{math.exp(excess):.3g}" if excess < 700 else f"e^{excess:.3g}"
            what = (f"max + log(sum) = {stored:.6g} is below the log-sum-exp {lse:.6g} of the "
                    f"row's scores (scale_value={scale_value:g}), so its probabilities would sum "
                    f"to {ratio}")
        warnings.warn(f"softmax_max/softmax_sum do not match the scores: at batch {b}, head {h}, "
                      f"query row {i}: {what}; the gradients will be wrong. Were the statistics "
                      "computed with another scale_value, other inputs or another mask? "
                      "(docs/validation.md, Statistics that do not match the scores)",
                      SoftmaxStatsMismatchWarning, stacklevel=_stacklevel())
        return


def _stats_shape_hint(shape, t1, n1) -> str:
    if shape == (n1, t1, COPIES):
        return " -- [N, T, 8] is the docs' notation; the op takes [T, N, 8]"
    if shape in ((t1, n1), (t1, n1, 1)):
        return (" -- these look like token-major [T, N] statistics (e.g. a log-sum-exp); convert "
                "them with aclnn_fag.softmax_layout.device_stats_from_token_major(stats, "
                "actual_seq_qlen)")
    if shape == (n1, t1):
        return (" -- these look like [N, T] statistics; transpose to [T, N] and convert with "
                "aclnn_fag.softmax_layout.device_stats_from_token_major(stats.T, actual_seq_qlen)")
    return ""


def _sampler_for(arrays):
    """A bounded device reader when any tensor is device-resident (else None)."""
    if any(_is_device(a) for a in arrays.values()):
        from .device_checks import Sampler
        return Sampler()
    return None


def _resolve_head_num(head_num, query):
    if head_num is None and query.ndim >= 2:
        return query.shape[1]
    return head_num


def _check_optional_int(name, value):
    return _check_int(name, value, allow_none=True)


# How each scalar argument of the public calls is checked (TypeError / ValueError).
_SCALAR_CHECKS = {
    "scale_value": _check_float, "keep_prob": _check_float,
    "pre_tokens": _check_int, "next_tokens": _check_int, "inner_precise": _check_int,
    "sparse_mode": _check_int, "pse_type": _check_int, "head_num": _check_optional_int,
    "actual_seq_qlen": int_list, "actual_seq_kvlen": int_list,
    "q_start_idx": int_list, "kv_start_idx": int_list, "prefix": int_list,
    "input_layout": lambda _name, value: _check_layout(value),
}


def _preamble(arrays: dict, **scalars) -> dict:
    """The Python-level checks both validators make before any rule: every tensor argument
    is a numpy array or None, every scalar has the right type and fits its C type. Returns
    the scalars normalised (ints, floats, int tuples), keyed by parameter name."""
    for name, value in arrays.items():
        _check_array(name, value)
    return {name: _SCALAR_CHECKS[name](name, value) for name, value in scalars.items()}


# --------------------------------------------------------------------------- public
# --------------------------------------------------------------------------- verdict cache
# Every rule except the data rules (S6, S8, S9) is a function of the arguments' shapes,
# dtypes, strides, Python types and scalar / int-list values. A call whose description --
# all of those, compared by value -- equals one that passed before passes again: only the
# data rules are run on its (new) data. Never keyed by object identity. Calls that would
# warn are not cached (the warnings must be emitted every time).
_VERDICTS: dict = {}
_VERDICTS_MAX = 256
_TENSOR_NAMES = ("query", "query_rope", "key", "key_rope", "value", "dy", "atten_mask",
                 "softmax_max", "softmax_sum", "attention_in", "pse_shift", "drop_mask",
                 "padding_mask", "softmax_in")
_SCALAR_NAMES = ("scale_value", "keep_prob", "pre_tokens", "next_tokens", "head_num",
                 "input_layout", "inner_precise", "sparse_mode", "pse_type", "deterministic")
_LIST_NAMES = ("actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "kv_start_idx", "prefix")
_ND = np.ndarray
_copysign = math.copysign
_DEVICE_TYPES: set = set()      # DeviceArray and its subclasses met so far (by type)


def _tensor_sig(a):
    if a is None:
        return None
    t = type(a)
    if t is _ND:
        return (0, a.shape, a.dtype, a.strides)
    if t in _DEVICE_TYPES or _is_device(a):
        _DEVICE_TYPES.add(t)
        return (1, a.shape, a.dtype, a.strides, a.offset)
    raise TypeError


def _list_sig(v):
    if v is None:
        return None
    t = type(v)
    if t is list or t is tuple:
        if len(v) > 4096:
            raise TypeError
        return (t, tuple(map(type, v)), tuple(v))
    raise TypeError       # numpy arrays and other sequences: not cached


def _signature(tensors: tuple, scalars: tuple, lists: tuple):
    """The hashable description of a call (its tensors, scalars and int lists in the orders
    of _TENSOR_NAMES, _SCALAR_NAMES, _LIST_NAMES), or None when it cannot be described
    safely. Types are part of it: 128.0 == 128, but only 128 passed the checks. (Its hash
    may still fail: an unhashable scalar.)"""
    nd, dev = _ND, _DEVICE_TYPES
    try:
        # _tensor_sig / _list_sig inline for the common cases (this runs on every call)
        return (tuple([None if a is None
                       else (0, a.shape, a.dtype, a.strides) if type(a) is nd
                       else (1, a.shape, a.dtype, a.strides, a.offset) if type(a) in dev
                       else _tensor_sig(a) for a in tensors]),
                tuple(map(type, scalars)), scalars,
                # the sign of each zero: 0.0 == -0.0, but the op gets the one passed (equal
                # values of one type differ in no other way; NaN equals nothing)
                tuple([_copysign(1.0, v) if v == 0 else None for v in scalars]),
                tuple([None if v is None else _list_sig(v) for v in lists]))
    except Exception:             # e.g. an array where a scalar belongs: validation says so
        return None


def _check_data_rules(call: FagCall, check_data: bool) -> None:
    """S6, S8, S9 of a call whose other rules have passed."""
    if not check_data:
        return
    nd = _ND
    if (type(call.query) is nd and type(call.key) is nd and type(call.softmax_max) is nd
            and type(call.softmax_sum) is nd and type(call.atten_mask) in (nd, type(None))):
        sampler = None                # host arrays (the numpy-in call): nothing to sample
    else:
        sampler = _sampler_for(dict(q=call.query, m=call.atten_mask, s=call.softmax_max,
                                    t=call.softmax_sum, k=call.key))
    _check_strict_mask_and_tokens(call.atten_mask, call.sparse_mode, call.seqs, call.pre_eff,
                                  sampler, True)
    _check_stats_copies("softmax_max", call.softmax_max, sampler)
    _check_stats_copies("softmax_sum", call.softmax_sum, sampler)
    samples = _check_stats_layout(call.query, call.query_rope, call.key, call.key_rope,
                                  call.atten_mask, call.softmax_max, call.softmax_sum,
                                  call.scale_value, call.seqs, call.sparse_mode, call.pre_eff,
                                  call.next_eff, call.band_index, sampler)
    _warn_stats_mismatch(samples, call.scale_value)


def _would_warn(call: FagCall, tensors: dict, lists: dict) -> bool:
    ends_q, ends_kv = call.actual_seq_qlen, call.actual_seq_kvlen
    return (tensors["padding_mask"] is not None or tensors["softmax_in"] is not None
            or lists["prefix"] is not None or call.empty_result
            or not ends_q or not ends_kv or ends_q[-1] < call.query.shape[0]
            or ends_kv[-1] < call.key.shape[0])


def validate_backward(query, query_rope, key, key_rope, value, dy, *, atten_mask, softmax_max,
                      softmax_sum, attention_in, actual_seq_qlen, actual_seq_kvlen, scale_value,
                      keep_prob=1.0, pre_tokens=INT32_MAX, next_tokens=INT32_MAX, head_num=None,
                      input_layout="TND", inner_precise=0, sparse_mode=0, pse_type=1,
                      pse_shift=None, drop_mask=None, padding_mask=None, softmax_in=None,
                      prefix=None, q_start_idx=None, kv_start_idx=None,
                      deterministic=False, check_data=True) -> FagCall:
    """Check every rule of docs/validation.md in the device's order, then S1-S9 (module
    docstring); return the FagCall. (Documented in full on ``_validate_backward_full``; a
    call described exactly like one that passed before runs only the data rules.)"""
    tensors = (query, query_rope, key, key_rope, value, dy, atten_mask, softmax_max,
               softmax_sum, attention_in, pse_shift, drop_mask, padding_mask, softmax_in)
    scalars = (scale_value, keep_prob, pre_tokens, next_tokens, head_num, input_layout,
               inner_precise, sparse_mode, pse_type, deterministic)
    lists = (actual_seq_qlen, actual_seq_kvlen, q_start_idx, kv_start_idx, prefix)
    return validate_backward_args(tensors, scalars, lists, check_data)


def validate_backward_args(tensors: tuple, scalars: tuple, lists: tuple,
                           check_data: bool = True) -> FagCall:
    """``validate_backward`` on the arguments as three tuples, in the orders of
    _TENSOR_NAMES, _SCALAR_NAMES and _LIST_NAMES (the public calls' form: no keyword
    arguments rebuilt into dicts on the cached path)."""
    key_ = _signature(tensors, scalars, lists)
    try:
        cached = _VERDICTS.get(key_)       # None for key_ None (never stored)
    except TypeError:                      # unhashable: not cached
        cached = key_ = None
    if cached is not None:
        call = _new(FagCall)
        fields = call.__dict__
        fields.update(cached.__dict__)
        fields.update(zip(_CALL_TENSORS, _call_tensors(tensors)))
        _check_data_rules(call, check_data)
        return call
    tensors = dict(zip(_TENSOR_NAMES, tensors))
    lists = dict(zip(_LIST_NAMES, lists))
    call = _validate_backward_full(**tensors, **dict(zip(_SCALAR_NAMES, scalars)), **lists,
                                   check_data=check_data)
    if key_ is not None and not _would_warn(call, tensors, lists):
        if len(_VERDICTS) >= _VERDICTS_MAX:
            _VERDICTS.clear()
        bare = _new(FagCall)                     # no reference to the caller's tensors
        bare.__dict__.update(call.__dict__)
        bare.__dict__.update(dict.fromkeys(_CALL_TENSORS))
        _VERDICTS[key_] = bare
    return call


_new = object.__new__
# the tensor arguments that are FagCall fields (pse_shift, drop_mask, padding_mask and
# softmax_in are not), and a getter of them from the tensors in _TENSOR_NAMES order
_CALL_TENSORS = tuple(n for n in _TENSOR_NAMES if n in FagCall.__dataclass_fields__)
_call_tensors = operator.itemgetter(*(_TENSOR_NAMES.index(n) for n in _CALL_TENSORS))


def _validate_backward_full(query, query_rope, key, key_rope, value, dy, *, atten_mask, softmax_max,
                            softmax_sum, attention_in, actual_seq_qlen, actual_seq_kvlen,
                            scale_value, keep_prob=1.0, pre_tokens=INT32_MAX,
                            next_tokens=INT32_MAX, head_num=None, input_layout="TND",
                            inner_precise=0, sparse_mode=0, pse_type=1, pse_shift=None,
                            drop_mask=None, padding_mask=None, softmax_in=None, prefix=None,
                            q_start_idx=None, kv_start_idx=None, deterministic=False,
                            check_data=True) -> FagCall:
    """Check every rule of docs/validation.md in the device's order, then S1-S9 (module
    docstring); return the FagCall.

    ``q_start_idx``/``kv_start_idx`` left None become ``(0,)`` (:func:`start_indices`): every
    call passes non-NULL start indices, so no rope-blind 'MLA basic' kernel runs
    (docs/forward.md, "Start indices").

    ``check_data``: False skips the rules that read tensor data (S6 canonical compressed
    mask, S8 equal statistic copies, S9 statistics layout); every shape, dtype and attribute
    rule still runs. With device-resident inputs (DeviceArray) those rules read back only a
    bounded sample (``aclnn_fag.device_checks``).
    """
    arrays = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value, dy=dy,
                  atten_mask=atten_mask, softmax_max=softmax_max, softmax_sum=softmax_sum,
                  attention_in=attention_in, pse_shift=pse_shift, drop_mask=drop_mask,
                  padding_mask=padding_mask, softmax_in=softmax_in)
    a = _preamble(arrays, scale_value=scale_value, keep_prob=keep_prob, pre_tokens=pre_tokens,
                  next_tokens=next_tokens, head_num=head_num, inner_precise=inner_precise,
                  sparse_mode=sparse_mode, pse_type=pse_type, actual_seq_qlen=actual_seq_qlen,
                  actual_seq_kvlen=actual_seq_kvlen, q_start_idx=q_start_idx,
                  kv_start_idx=kv_start_idx, prefix=prefix, input_layout=input_layout)
    scale_value, keep_prob, pre_tokens, next_tokens = (a["scale_value"], a["keep_prob"],
                                                       a["pre_tokens"], a["next_tokens"])
    head_num, inner_precise, sparse_mode, pse_type = (a["head_num"], a["inner_precise"],
                                                      a["sparse_mode"], a["pse_type"])
    qlen, kvlen = a["actual_seq_qlen"], a["actual_seq_kvlen"]
    input_layout = a["input_layout"]
    q_start_idx, kv_start_idx = start_indices(a["q_start_idx"], a["kv_start_idx"])

    # rule 1: layout first, before the null checks.
    if input_layout is None:
        raise _nullptr("input_layout", "input_layout is None; it must be 'TND' (the device would "
                       "crash in strcmp on a NULL layout; docs/validation.md, rule 1)", stricter=True)
    if input_layout != "TND":
        raise _invalid("input_layout", f"input_layout must be exactly 'TND', got {input_layout!r}"
                                       " (docs/validation.md, rule 1)")
    # rule 2: required tensors.
    for name in ("query", "key", "value", "dy", "attention_in"):
        if arrays[name] is None:
            raise _nullptr(name, f"{name} is required (docs/validation.md, rule 2)")
    common = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value,
                  atten_mask=atten_mask, actual_seq_qlen=qlen or (), actual_seq_kvlen=kvlen or (),
                  scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
                  sparse_mode=sparse_mode, inner_precise=inner_precise, dy=dy,
                  softmax_max=softmax_max, softmax_sum=softmax_sum, attention_in=attention_in,
                  keep_prob=keep_prob, input_layout=input_layout, pse_type=pse_type,
                  q_start_idx=q_start_idx, kv_start_idx=kv_start_idx,
                  deterministic=bool(deterministic))

    def empty_call():
        # Nothing is computed. Rule 3 succeeds before the rope inputs are looked at, so one
        # may be None: it gets an empty placeholder and its gradient comes back empty.
        fields = dict(common)
        for name, like in (("query_rope", query), ("key_rope", key)):
            if fields[name] is None:
                fields[name] = np.zeros(like.shape[:-1] + (0,), BF16)
        return FagCall(head_num=head_num if head_num is not None else 0,
                       seqs=seq_info((), ()), pre_eff=0, next_eff=0, band_index=-1,
                       empty_result=True, **fields)

    # rule 3: dq, dk, dv all empty -> success, nothing computed.
    if query.size == 0 and key.size == 0 and value.size == 0:
        return empty_call()
    head_num = _resolve_head_num(head_num, query)
    _check_common_head(query, query_rope, key, key_rope, value,
                       (("dy", dy), ("attention_in", attention_in)), head_num)   # rules 4-10
    if sparse_mode == 6:
        raise _invalid("sparse_mode", "sparse_mode 6 (prefix compression) is not supported by V3"
                                      " (docs/validation.md, rule 11)")
    _check_mask_present(atten_mask)                                               # rule 12
    if pse_shift is not None:
        raise _invalid("pse_shift", "pse_shift must be None: V3 supports no pse"
                                    " (docs/validation.md, rule 13)")
    if drop_mask is not None:
        raise _invalid("drop_mask", "drop_mask must be None: V3 supports no dropout"
                                    " (docs/validation.md, rule 14)")
    if keep_prob < 1.0:
        raise _invalid("keep_prob", f"keep_prob must be 1.0 (no dropout), got {keep_prob}"
                                    " (docs/validation.md, rule 15)")
    reason = needs_padding(query, key, value, qlen, kvlen, bool(deterministic), keep_prob)
    if reason:
        raise _invalid("query", f"head dims need padding, which V3 rejects: {reason}"
                                " (docs/validation.md, rule 16)")
    for name in ("softmax_max", "softmax_sum"):                                   # rule 18
        if arrays[name] is None or arrays[name].ndim == 0:
            raise _nullptr(name, f"{name} is required and must not be a scalar (docs/validation.md, rule 18)")
    if head_num != query.shape[1]:                                                # rule 19
        raise _nullptr("head_num", f"head_num={head_num} must equal query.shape[1]={query.shape[1]}"
                                   " (docs/validation.md, rule 19)")
    # Empty-tensor path: any gradient with 0 elements -> zero outputs, success.
    if min(query.size, key.size, value.size, query_rope.size, key_rope.size) == 0:
        return empty_call()
    if np.float32(keep_prob) > 1.0:                                               # rule 17
        raise _nullptr("keep_prob", f"keep_prob must be 1.0, got {keep_prob} (docs/validation.md, rule 17)")
    for name in ("softmax_max", "softmax_sum"):                                   # rule 20
        if not _dtype_is(arrays[name], np.float32):
            raise _nullptr(name, f"{name} must be float32, got {arrays[name].dtype}"
                                 " (docs/validation.md, rule 20)")
    if not _same_dtype(attention_in, query):
        raise _nullptr("attention_in", f"attention_in dtype {attention_in.dtype} must equal the query "
                       f"dtype {query.dtype} (docs/validation.md, rule 20)")
    t1, n1 = query.shape[0], query.shape[1]
    for name in ("softmax_max", "softmax_sum"):                                   # rule 21
        shape = tuple(arrays[name].shape)
        if shape != (t1, n1, COPIES):
            raise _nullptr(name, f"{name} shape must be [T1, N1, 8] = [{t1}, {n1}, 8], got "
                           f"{list(shape)}{_stats_shape_hint(shape, t1, n1)} (docs/validation.md, rule 21)")
    if attention_in.ndim != query.ndim or attention_in.shape[:-1] != query.shape[:-1]:
        raise _nullptr("attention_in", f"attention_in shape {attention_in.shape} must match query "
                       f"{query.shape} except the last dim (docs/validation.md, rule 21)")
    if t1 == 0 or n1 == 0 or query.shape[2] == 0:                                 # rule 22
        raise _nullptr("query", f"T1, N1 and D must be > 0, got shape {query.shape}"
                                " (docs/validation.md, rule 22)")
    _check_seq_arrays(qlen, kvlen)                                                # rule 23
    _check_heads(query, key)                                                      # rule 24
    if dy.ndim != query.ndim or dy.shape[:-1] != query.shape[:-1] or _dim(dy) > _dim(query):  # rule 25
        raise _nullptr("dy", f"dy shape {dy.shape} must equal query's {query.shape} except the last dim, "
                       "which must be <= D (docs/validation.md, rule 25)")
    if value.ndim != key.ndim or value.shape[:-1] != key.shape[:-1] or _dim(value) > _dim(key):
        raise _nullptr("value", f"value shape {value.shape} must equal key's {key.shape} except the last "
                       "dim, which must be <= that of key (docs/validation.md, rule 25)")
    _check_sparse_range(sparse_mode)                                              # rule 26
    seqs = seq_info(qlen, kvlen)
    _check_mask_shape(atten_mask, sparse_mode, seqs, n1, qlen, kvlen, t1, key.shape[0])  # rule 27
    pre_eff, next_eff = normalize_tokens(sparse_mode, pre_tokens, next_tokens)
    band_idx = band_index(sparse_mode, seqs)
    _check_tokens(sparse_mode, pre_eff, next_eff, seqs, band_idx)                 # rule 28
    if pse_type != 1:                                                             # rule 29
        raise _nullptr("pse_type", f"pse_type must be 1 when pse_shift is None, got {pse_type}"
                                   " (docs/validation.md, rule 29)")
    if not _same_dtype(dy, query):                                                # rule 30
        raise _nullptr("dy", f"dy dtype {dy.dtype} must equal the query dtype {query.dtype}"
                             " (docs/validation.md, rule 30)")
    # ---- our own checks S1-S9 (module docstring; the stub op makes the same, same order)
    if key.ndim != 3:                                                             # S1
        raise _nullptr("key", f"key must be 3-D [T2, N2, D], got shape {key.shape}", check="S1")
    dv = value.shape[2]
    for name, t in (("dy", dy), ("attention_in", attention_in)):                  # S2
        if t.shape[2] != dv:
            raise _nullptr(name, f"{name} last dim {t.shape[2]} must equal the value head dim "
                           f"Dv={dv} (the kernel reads [T1, N1, Dv] rows)", check="S2")
    _check_limits(query, key, qlen)                                               # S3
    _check_sequences_strict(qlen, kvlen, t1, key.shape[0])                        # S4
    _check_rope_shapes(query, query_rope, key, key_rope)                          # S5
    sampler = _sampler_for(arrays) if check_data else None
    _check_strict_mask_and_tokens(atten_mask, sparse_mode, seqs, pre_eff,         # S6, S7
                                  sampler, check_data)
    samples = []
    if check_data:
        _check_stats_copies("softmax_max", softmax_max, sampler)                  # S8
        _check_stats_copies("softmax_sum", softmax_sum, sampler)
        samples = _check_stats_layout(query, query_rope, key, key_rope, atten_mask,  # S9
                                      softmax_max, softmax_sum, scale_value, seqs, sparse_mode,
                                      pre_eff, next_eff, band_idx, sampler)
    _warn_ignored(padding_mask=padding_mask, softmax_in=softmax_in, prefix=prefix)
    _warn_stats_mismatch(samples, scale_value)
    return FagCall(head_num=head_num, seqs=seqs, pre_eff=pre_eff, next_eff=next_eff,
                   band_index=band_idx, **common)


def _forward_needs_padding(query, value, qlen, kvlen) -> bool:
    """Forward rule F5's pad decision (AnalysisInput + IsNeedPad of the forward's op API, TND):
    True when D/Dv would be padded, which the forward rejects with rope inputs (F6)."""
    d, dv = query.shape[2], value.shape[2]
    align = 16 if (d < 196 or d == 448) else 128
    need = d % align != 0 or dv % align != 0
    # "hardware affinity" padding of the source: its HEAD_DIM_128 constant is 88
    if d != dv and d in (88, 64, 80):
        need = True
    if d < 96 and qlen is not None and kvlen is not None and len(qlen) == len(kvlen) and qlen:
        kv_max, q_sum = _kv_max_segment(kvlen), _last_positive_end(qlen)
        if kv_max != 0 and q_sum != 0 and kv_max <= 1024 and q_sum < 160 * 1024:
            need = False
    return need


def _clamped_total(ends) -> int:
    """The forward tiling's sum of sequence lengths: ends[0] + sum of max(0, consecutive
    differences)."""
    total = ends[0]
    for i in range(1, len(ends)):
        total += max(0, ends[i] - ends[i - 1])
    return total


def validate_forward(query, query_rope, key, key_rope, value, *, atten_mask, actual_seq_qlen,
                     actual_seq_kvlen, scale_value, keep_prob=1.0, pre_tokens=INT32_MAX,
                     next_tokens=INT32_MAX, head_num=None, input_layout="TND", inner_precise=0,
                     sparse_mode=0, pse_type=1, pse_shift=None, drop_mask=None,
                     padding_mask=None, prefix=None, q_start_idx=None, kv_start_idx=None,
                     deterministic=False, check_data=True) -> FwdCall:
    """The forward aclnnFlashAttentionVarLenScoreV3's checks in its order and with its codes
    (docs/forward.md, "Validation", rules F1-F14), then the package's own stricter checks
    (SF1, S3-S7); returns the FwdCall. Start indices left None become (0,) (start_indices);
    ``check_data`` as for validate_backward.

    F1  query, key, value, input_layout None                                     161001
    F2  T1 * N1 == 0: every output empty -> success, nothing computed             0
    F3  input_layout != "TND"                                                    161002
    F4  query/key/value dtypes differ; pse_type 2/3 without pse_shift;
        pse_shift dtype != query dtype                                           161002
    F5  head_num <= 0; query rank != 3 (key/value rank < 3: stricter);
        D(query) != D(key); D < Dv; D > 768                                      161002
    F6  rope rules (the op API wraps them in CHECK_RET -> 161001): exactly one
        rope None (both None: stricter); rope rank < 3 (stricter); Dr > D;
        not all five BF16; sparse_mode 6; mask None/0-dim; pse_shift given;
        drop_mask given; keep_prob < 1; D/Dv would be padded                     161001
    F7  tiling: float32(keep_prob) <= 0 or > 1; pse_type not in [0, 4)          161001
    F8  key rank != 3                                                            161001
    F9  actual_seq_qlen/kvlen None, empty or of different lengths                161001
    F10 T1 / T2 below the sum of the (negative-clamped) sequence lengths         161001
    F11 head_num != N1; N2 == 0; N1 < N2; D == 0; N1 % N2 != 0                   161001
    F12 pse_type != 1 (no pse_shift); attention mask dtype/rank/shape (the
        backward's rule 27)                                                      161001
    F13 sparse_mode outside 0..8                                                 161001
    F14 tokens (the backward's rule 28)                                          161001
    SF1 value not [T2, N2, Dv] (the kernel would read out of bounds)             161001
    S3-S7 as the backward (limits, cumulative ends, rope shapes, canonical
        compressed mask, int32 block-skip bound)                                 161002
    """
    arrays = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value,
                  atten_mask=atten_mask, pse_shift=pse_shift, drop_mask=drop_mask,
                  padding_mask=padding_mask)
    a = _preamble(arrays, scale_value=scale_value, keep_prob=keep_prob, pre_tokens=pre_tokens,
                  next_tokens=next_tokens, head_num=head_num, inner_precise=inner_precise,
                  sparse_mode=sparse_mode, pse_type=pse_type, actual_seq_qlen=actual_seq_qlen,
                  actual_seq_kvlen=actual_seq_kvlen, q_start_idx=q_start_idx,
                  kv_start_idx=kv_start_idx, prefix=prefix, input_layout=input_layout)
    scale_value, keep_prob, pre_tokens, next_tokens = (a["scale_value"], a["keep_prob"],
                                                       a["pre_tokens"], a["next_tokens"])
    head_num, inner_precise, sparse_mode, pse_type = (a["head_num"], a["inner_precise"],
                                                      a["sparse_mode"], a["pse_type"])
    qlen, kvlen, input_layout = a["actual_seq_qlen"], a["actual_seq_kvlen"], a["input_layout"]
    q_start_idx, kv_start_idx = start_indices(a["q_start_idx"], a["kv_start_idx"])

    for name in ("query", "key", "value"):                                       # F1
        if arrays[name] is None:
            raise _nullptr(name, f"{name} is required (docs/forward.md, rule F1)")
    if input_layout is None:
        raise _nullptr("input_layout", "input_layout is None; it must be 'TND' (docs/forward.md, rule F1)")
    head_num = _resolve_head_num(head_num, query)
    common = dict(query=query, query_rope=query_rope, key=key, key_rope=key_rope, value=value,
                  atten_mask=atten_mask, actual_seq_qlen=qlen or (), actual_seq_kvlen=kvlen or (),
                  scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
                  sparse_mode=sparse_mode, inner_precise=inner_precise, keep_prob=keep_prob,
                  input_layout=input_layout, pse_type=pse_type, q_start_idx=q_start_idx,
                  kv_start_idx=kv_start_idx, deterministic=bool(deterministic))
    if query.ndim >= 2 and query.shape[0] * query.shape[1] == 0:                  # F2
        fields = dict(common)
        for name, like in (("query_rope", query), ("key_rope", key)):
            if fields[name] is None:
                fields[name] = np.zeros(like.shape[:-1] + (0,), BF16)
        return FwdCall(head_num=head_num if head_num is not None else 0, seqs=seq_info((), ()),
                       pre_eff=0, next_eff=0, band_index=-1, empty_result=True, **fields)
    if input_layout != "TND":                                                    # F3
        raise _invalid("input_layout", f"input_layout must be exactly 'TND', got {input_layout!r} "
                       "(docs/forward.md, rule F3)")
    for name in ("key", "value"):                                                # F4
        if not _same_dtype(arrays[name], query):
            raise _invalid(name, f"{name} dtype {arrays[name].dtype} must equal the query dtype "
                           f"{query.dtype} (docs/forward.md, rule F4)")
    if pse_type in (2, 3) and pse_shift is None:
        raise _invalid("pse_shift", f"pse_type {pse_type} needs pse_shift (docs/forward.md, rule F4)")
    if pse_shift is not None and pse_type not in (2, 3) and not _same_dtype(pse_shift, query):
        raise _invalid("pse_shift", f"pse_shift dtype {pse_shift.dtype} must equal the query "
                       f"dtype {query.dtype} (docs/forward.md, rule F4)")
    if head_num is not None and head_num <= 0:                                   # F5
        raise _invalid("head_num", f"head_num must be > 0, got {head_num} (docs/forward.md, rule F5)")
    if query.ndim != 3:
        raise _invalid("query", f"query must be 3-D [T1, N1, D] for TND, got shape {query.shape} "
                       "(docs/forward.md, rule F5)")
    for name in ("key", "value"):
        if arrays[name].ndim < 3:
            raise _invalid(name, f"{name} needs 3 dims, got shape {arrays[name].shape} (the "
                           "device reads dims 1 and 2 of it; docs/forward.md, rule F5)", stricter=True)
    d, dk, dv = query.shape[2], key.shape[2], value.shape[2]
    if d != dk:
        raise _invalid("key", f"head dim D of key ({dk}) must equal that of query ({d}) "
                       "(docs/forward.md, rule F5)")
    if d < dv:
        raise _invalid("value", f"value head dim Dv={dv} must be <= query head dim D={d} "
                       "(docs/forward.md, rule F5)")
    if d > LIMITS["max_head_dim"]:
        raise _invalid("query", f"head dim D={d} must be <= {LIMITS['max_head_dim']} "
                       "(docs/forward.md, rule F5)")
    need_pad = key.shape[1] != 0 and d != 0 and _forward_needs_padding(query, value, qlen, kvlen)
    # F6: the rope rules (isSupportMultiInput, wrapped in CHECK_RET -> 161001)
    if (query_rope is None) != (key_rope is None):
        missing = "query_rope" if query_rope is None else "key_rope"
        raise _nullptr(missing, f"{missing} is None while the other rope input is given "
                       "(docs/forward.md, rule F6)")
    if query_rope is None:
        raise _nullptr("query_rope", "query_rope and key_rope are both None: V3 needs the rope "
                       "inputs (the device dereferences them and crashes; docs/forward.md, rule F6)",
                       stricter=True)
    for name in ("query_rope", "key_rope"):
        if arrays[name].ndim < 3:
            raise _nullptr(name, f"{name} needs 3 dims, got shape {arrays[name].shape} (the "
                           "device reads dim 2 of it; docs/forward.md, rule F6)", stricter=True)
    for name in ("query_rope", "key_rope"):
        if arrays[name].shape[2] > d:
            raise _nullptr(name, f"rope head dim Dr={arrays[name].shape[2]} of {name} must be <= "
                           f"D={d} (docs/forward.md, rule F6)")
    for name in ("query", "query_rope", "key", "key_rope", "value"):
        t = arrays[name]
        if not _dtype_is(t, BF16):
            hint = f"; convert with {name}.astype(ml_dtypes.bfloat16)" if t.dtype.kind == "f" else ""
            raise _nullptr(name, f"{name} must be bfloat16 (ml_dtypes.bfloat16), got {t.dtype}; the "
                           f"V3 forward with rope inputs accepts only BF16{hint} (docs/forward.md, rule F6)")
    if sparse_mode == 6:
        raise _nullptr("sparse_mode", "sparse_mode 6 (prefix compression) is not supported with "
                       "rope inputs (docs/forward.md, rule F6)")
    if atten_mask is None or atten_mask.ndim == 0:
        raise _nullptr("atten_mask", "atten_mask is required and must not be a scalar (forward "
                       "rule F6); pass aclnn_fag.masks.compressed_causal_mask() for sparse modes "
                       "2/3/4/7/8 or an all-zero [maxSq, maxSkv] mask for no masking")
    if pse_shift is not None:
        raise _nullptr("pse_shift", "pse_shift must be None with rope inputs (docs/forward.md, rule F6)")
    if drop_mask is not None:
        raise _nullptr("drop_mask", "drop_mask must be None with rope inputs (docs/forward.md, rule F6)")
    if keep_prob < 1.0:
        raise _nullptr("keep_prob", f"keep_prob must be 1.0 with rope inputs, got {keep_prob} "
                       "(docs/forward.md, rule F6)")
    if need_pad:
        raise _nullptr("query", f"head dims D={d}, Dv={dv} would be padded, which the forward "
                       "rejects with rope inputs: D and Dv must be multiples of 16 (D < 196) or "
                       "128, D == Dv when D is 64 or 80 (or 88), unless D < 96 with every KV "
                       "length <= 1024 and the last query end < 163840 (docs/forward.md, rule F6)")
    # ---- tiling (161001)
    if np.float32(keep_prob) <= 0.0 or np.float32(keep_prob) > 1.0:              # F7
        raise _nullptr("keep_prob", f"keep_prob must be in (0, 1], got {keep_prob} (docs/forward.md, rule F7)")
    if not 0 <= pse_type < 4:
        raise _nullptr("pse_type", f"pse_type must be in [0, 4), got {pse_type} (docs/forward.md, rule F7)")
    if key.ndim != 3:                                                            # F8
        raise _nullptr("key", f"key must be 3-D [T2, N2, D] for TND, got shape {key.shape} "
                       "(docs/forward.md, rule F8)")
    _check_seq_arrays(qlen, kvlen)                                               # F9
    t1, n1, t2 = query.shape[0], query.shape[1], key.shape[0]
    for name, ends, total, tname in (("actual_seq_qlen", qlen, t1, "T1"),        # F10
                                     ("actual_seq_kvlen", kvlen, t2, "T2")):
        need = _clamped_total(ends)
        if total < need:
            raise _nullptr(name, f"{tname} = {total} is below the sum of the sequence lengths "
                           f"of {name} ({need}){_per_seq_hint(ends, None, total, None)} "
                           "(docs/forward.md, rule F10)")
    if head_num != n1:                                                           # F11
        raise _nullptr("head_num", f"head_num={head_num} must equal query.shape[1]={n1} "
                       "(docs/forward.md, rule F11)")
    n2 = key.shape[1]
    if n2 == 0 or n1 // n2 == 0:
        raise _nullptr("key", f"key heads N2={n2} must be >= 1 and <= query heads N1={n1} "
                       "(docs/forward.md, rule F11)")
    if d == 0:
        raise _nullptr("query", f"head dim D must be > 0, got shape {query.shape} (docs/forward.md, rule F11)")
    if n1 % n2:
        raise _nullptr("key", f"query heads N1={n1} must be a multiple of key heads N2={n2} "
                       "(docs/forward.md, rule F11)")
    if pse_type != 1:                                                            # F12
        raise _nullptr("pse_type", f"pse_type must be 1 when pse_shift is None, got {pse_type} "
                       "(docs/forward.md, rule F12)")
    seqs = seq_info(qlen, kvlen)
    _check_mask_shape(atten_mask, sparse_mode, seqs, n1, qlen, kvlen, t1, t2)
    _check_sparse_range(sparse_mode)                                             # F13
    pre_eff, next_eff = normalize_tokens(sparse_mode, pre_tokens, next_tokens)
    band_idx = band_index(sparse_mode, seqs)
    _check_tokens(sparse_mode, pre_eff, next_eff, seqs, band_idx)                # F14
    # ---- our own checks (the stub's forward makes the same, same order)
    if value.ndim != 3 or tuple(value.shape[:2]) != (t2, n2):                    # SF1
        raise _nullptr("value", f"value shape {value.shape} must be [T2, N2, Dv] = "
                       f"[{t2}, {n2}, {dv}] (T2, N2 of key; the kernel would read out of bounds)",
                       stricter=True)
    _check_limits(query, key, qlen)                                              # S3
    _check_sequences_strict(qlen, kvlen, t1, t2)                                 # S4
    _check_rope_shapes(query, query_rope, key, key_rope)                         # S5
    sampler = _sampler_for(dict(atten_mask=atten_mask)) if check_data else None
    _check_strict_mask_and_tokens(atten_mask, sparse_mode, seqs, pre_eff,        # S6, S7
                                  sampler, check_data)
    _warn_ignored(padding_mask=padding_mask, prefix=prefix)
    return FwdCall(head_num=head_num, seqs=seqs, pre_eff=pre_eff, next_eff=next_eff,
                   band_index=band_idx, **common)
