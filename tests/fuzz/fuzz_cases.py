"""Argument sets for the fuzz suite: valid calls of the public op, mutations that make them
(possibly) invalid, and the checks every outcome has to pass.

* ``base_case()`` (hypothesis strategy): a valid small call — 1-3 sequences (empty ones
  too, rows after the last end sometimes), GQA, D in {8, 16, 20, 24, 32, 72} (20 passes
  rule 16 only through the small-shape exception, 72 only when non-deterministic), every
  supported sparse mode with its mask (2-D / 4-D, dense or compressed, uint8 / bool,
  broadcast views), tokens, statistics from ``flash_attention_forward``.
* ``MUTATIONS``: named functions that change one thing: None in a slot, a dtype, a shape,
  the cumulative ends (per-sequence lengths, huge, negative, decreasing, last != T ...),
  tokens, sparse mode, head_num, keep_prob/scale (NaN, inf), pse_type, layout, the mask
  (full S x S for a compressed mode, inverted, ...), the statistics (token-major, copies
  differing, [T, N] ...), memory layouts (read-only, non-contiguous, negative strides,
  Fortran order, byte-swapped, zero strides, q/q_rope sharing a buffer). ``python_level``
  mutations (wrong Python types, values no C call can carry) are fuzzed through the public
  call only: they have no status code to compare with the stub.
* ``snapshot``/``assert_unchanged``: inputs are never modified.
* ``check_error``: only AclnnError / TypeError / ValueError, naming the parameter.
* ``compare_grads``: two results agree to bf16 accuracy; non-finite values may differ only
  where non-finite data (or an extreme scale) reached the computation.
"""

from __future__ import annotations

import collections
import copy
import gc
import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import aclnn_fag as af
from aclnn_fag import acl
from aclnn_fag.seqlens import seq_info

BF16 = np.dtype(ml_dtypes.bfloat16)
INT32_MAX = 2147483647
INT64_MAX, INT64_MIN = (1 << 63) - 1, -(1 << 63)

PROFILE = (os.environ.get("ACLNN_FAG_FUZZ_PROFILE", "ci").strip().lower() or "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"ACLNN_FAG_FUZZ_PROFILE must be 'ci' or 'long', got {PROFILE!r}")
SCALE = max(1, int(os.environ.get("ACLNN_FAG_FUZZ_SCALE", "25"))) if PROFILE == "long" else 1

TALLY: collections.Counter = collections.Counter()
TALLY["leaks"] = 0                      # shown even when zero
TALLY["verdict_disagreements"] = 0


def fuzz_settings(ci_examples: int):
    """The hypothesis settings of one property: ``ci_examples`` (times SCALE in 'long')."""
    return settings(max_examples=ci_examples * SCALE, deadline=None, database=None,
                    derandomize=PROFILE == "ci", print_blob=PROFILE == "long",
                    suppress_health_check=list(HealthCheck))


POSITIONAL = ("query", "query_rope", "key", "key_rope", "value", "dy")
TENSOR_SLOTS = ("query", "query_rope", "key", "key_rope", "value", "dy", "pse_shift", "drop_mask",
                "padding_mask", "atten_mask", "softmax_max", "softmax_sum", "softmax_in",
                "attention_in")
INT_ARRAY_SLOTS = ("prefix", "actual_seq_qlen", "actual_seq_kvlen", "q_start_idx", "kv_start_idx")
# dtypes the stub's aclCreateTensor represents (the verdict comparison stays inside them)
STUB_DTYPES = (BF16, np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64),
               np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.uint8), np.dtype(np.bool_))
OTHER_DTYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.complex64), np.dtype(object))


def _readonly(a):
    a.flags.writeable = False
    return a


CANONICAL = {np.dtype(np.uint8): _readonly(af.masks.compressed_causal_mask(np.uint8)),
             np.dtype(np.bool_): _readonly(af.masks.compressed_causal_mask(np.bool_))}


@dataclass
class Case:
    """One argument set of the public call (``args``: every keyword of
    flash_attention_unpadding_score_grad_v3 except backend/precision) and what is known
    about it (``meta``)."""

    args: dict
    meta: dict = field(default_factory=dict)
    applied: list = field(default_factory=list)

    def describe(self) -> str:
        parts = []
        for k, v in self.args.items():
            if isinstance(v, np.ndarray):
                parts.append(f"{k}={v.dtype}{list(v.shape)}")
            elif isinstance(v, (list, tuple)) and len(v) > 8:
                parts.append(f"{k}=[{len(v)} entries]")
            else:
                parts.append(f"{k}={v!r}")
        return f"mutations={self.applied} " + ", ".join(parts)


# ----------------------------------------------------------------------------- base cases
def _cumulative(lengths):
    out, acc = [], 0
    for n in lengths:
        acc += int(n)
        out.append(acc)
    return out


def _dense_mask(rng, kind, seqs, n1, density, dtype):
    shape = {"2d": (seqs.max_sq, seqs.max_skv), "11": (1, 1, seqs.max_sq, seqs.max_skv),
             "b1": (seqs.batch, 1, seqs.max_sq, seqs.max_skv),
             "bn": (seqs.batch, n1, seqs.max_sq, seqs.max_skv)}[kind]
    return (rng.random(shape) < density).astype(dtype)


def _compressed_mask(kind, seqs, dtype):
    m = CANONICAL[np.dtype(dtype)]
    if kind == "2d":
        return m
    if kind == "11":
        return np.broadcast_to(m, (1, 1) + m.shape)
    return np.broadcast_to(m, (seqs.batch, 1) + m.shape)


def build_case(*, q_lens, kv_lens, extra_q, extra_kv, n2, g, d, dr, dv, mode, pre, nxt, seed,
               mask_kind, mask_dtype, density, deterministic, scale, std=1.0) -> Case:
    rng = np.random.default_rng(seed)
    n1 = n2 * g
    q_ends, kv_ends = _cumulative(q_lens), _cumulative(kv_lens)
    seqs = seq_info(q_ends, kv_ends)
    t1, t2 = q_ends[-1] + extra_q, kv_ends[-1] + extra_kv

    def randn(*shape, s=std):
        return (rng.standard_normal(shape) * s).astype(BF16)

    if mode in (0, 1, 5):
        mask = _dense_mask(rng, mask_kind, seqs, n1, density, mask_dtype)
    else:
        mask = _compressed_mask(mask_kind, seqs, mask_dtype)
    scale = float(1.0 / math.sqrt(d + dr)) if scale is None else float(scale)
    q, qr, k, kr = randn(t1, n1, d), randn(t1, n1, dr), randn(t2, n2, d), randn(t2, n2, dr)
    v, dy = randn(t2, n2, dv, s=1.0), randn(t1, n1, dv, s=1.0)
    meta = dict(n1=n1, n2=n2, d=d, dr=dr, dv=dv, mode=mode, t1=t1, t2=t2, q_ends=q_ends,
                kv_ends=kv_ends, clean=True, forward_error=None, python_level=False,
                verdict_ok=True, nonfinite=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fwd = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=mask,
                                             actual_seq_qlen=q_ends, actual_seq_kvlen=kv_ends,
                                             scale_value=scale, pre_tokens=pre, next_tokens=nxt,
                                             sparse_mode=mode, backend="numpy")
        attn, smax, ssum = fwd.attention_out, fwd.softmax_max, fwd.softmax_sum
    except af.AclnnError as exc:
        meta["forward_error"] = exc.code
        attn = np.zeros((t1, n1, dv), BF16)
        smax = np.zeros((t1, n1, 8), np.float32)
        ssum = np.ones((t1, n1, 8), np.float32)
    args = dict(query=q, query_rope=qr, key=k, key_rope=kr, value=v, dy=dy, atten_mask=mask,
                softmax_max=smax, softmax_sum=ssum, attention_in=attn,
                actual_seq_qlen=list(q_ends), actual_seq_kvlen=list(kv_ends), scale_value=scale,
                keep_prob=1.0, pre_tokens=pre, next_tokens=nxt, head_num=None,
                input_layout="TND", inner_precise=0, sparse_mode=mode, pse_type=1,
                pse_shift=None, drop_mask=None, padding_mask=None, softmax_in=None, prefix=None,
                q_start_idx=None, kv_start_idx=None, deterministic=deterministic)
    return Case(args, meta)


TOKENS = {0: [(INT32_MAX, INT32_MAX), (65536, 65536), (2, 1), (1, 0), (0, 3), (4, -1), (-1, 4)],
          4: [(3, 3), (0, 2), (5, 0), (65536, 65536), (1, -1), (-1, 3)],
          1: [(INT32_MAX, INT32_MAX), (0, 0), (-5, -5)],
          2: [(INT32_MAX, INT32_MAX), (0, 0), (5, -9)]}
TOKENS[5], TOKENS[7], TOKENS[8], TOKENS[3] = TOKENS[0], TOKENS[4], TOKENS[4], TOKENS[2]


@st.composite
def base_case(draw, max_len=6) -> Case:
    nb = draw(st.integers(1, 3))
    lens = st.integers(0, max_len)
    q_lens = draw(st.lists(lens, min_size=nb, max_size=nb))
    kv_lens = list(q_lens) if draw(st.booleans()) else draw(st.lists(lens, min_size=nb, max_size=nb))
    d = draw(st.sampled_from((16, 16, 32, 8, 24, 20, 72)))
    mode = draw(st.sampled_from((0, 1, 2, 3, 4, 5, 7, 8)))
    pre, nxt = draw(st.sampled_from(TOKENS[mode]))
    return build_case(
        q_lens=q_lens, kv_lens=kv_lens, extra_q=draw(st.sampled_from((0, 0, 0, 1, 3))),
        extra_kv=draw(st.sampled_from((0, 0, 0, 2))), n2=draw(st.sampled_from((1, 1, 2))),
        g=draw(st.sampled_from((1, 2, 3))), d=d, dr=draw(st.sampled_from([x for x in (8, 16) if x <= d])),
        dv=d, mode=mode, pre=pre, nxt=nxt, seed=draw(st.integers(0, 2 ** 32 - 1)),
        mask_kind=draw(st.sampled_from(("2d", "2d", "11", "b1", "bn"))),
        mask_dtype=draw(st.sampled_from((np.uint8, np.bool_))),
        density=draw(st.sampled_from((0.0, 0.0, 0.3))),
        deterministic=draw(st.sampled_from((False, False, False, True))),
        scale=draw(st.sampled_from((None, None, 0.5, -0.25))))


# ----------------------------------------------------------------------------- mutations
def _arrays(case):
    return [k for k in TENSOR_SLOTS if isinstance(case.args.get(k), np.ndarray)]


def _pick_array(draw, case, slots=None):
    names = [k for k in (slots or TENSOR_SLOTS) if isinstance(case.args.get(k), np.ndarray)]
    return draw(st.sampled_from(names)) if names else None


def m_none_slot(draw, case):
    name = draw(st.sampled_from(TENSOR_SLOTS + ("actual_seq_qlen", "actual_seq_kvlen")))
    if name in ("pse_shift", "drop_mask", "padding_mask", "softmax_in"):
        shape = draw(st.sampled_from(((2, 2), (1,), (3, 1, 2))))
        case.args[name] = np.ones(shape, draw(st.sampled_from((np.uint8, np.float32))))
    else:
        case.args[name] = None
    case.meta["clean"] = False


def m_optional_lists(draw, case):
    name = draw(st.sampled_from(("prefix", "q_start_idx", "kv_start_idx")))
    case.args[name] = draw(st.lists(st.integers(-3, 9), max_size=3))


def m_dtype(draw, case):
    name = _pick_array(draw, case)
    if name is None:
        return
    dt = draw(st.sampled_from(STUB_DTYPES))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        case.args[name] = case.args[name].astype(np.float32).astype(dt)
    case.meta["clean"] = False


def m_dtype_exotic(draw, case):
    """Public call only: dtypes the stub cannot represent (int8, complex, object ...)."""
    name = _pick_array(draw, case)
    if name is None:
        return
    dt = draw(st.sampled_from(OTHER_DTYPES))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = case.args[name].astype(np.float32)
        case.args[name] = a.astype(object) if dt == np.dtype(object) else a.astype(dt)
    case.meta["verdict_ok"] = False
    case.meta["clean"] = False


def m_shape(draw, case):
    name = _pick_array(draw, case)
    if name is None:
        return
    a = case.args[name]
    how = draw(st.sampled_from(("add_lead", "add_last", "drop_last", "grow", "shrink", "swap01",
                                "scalar", "empty0", "reshape_nt8", "slice_last")))
    if how == "add_lead":
        a = a[None]
    elif how == "add_last":
        a = a[..., None]
    elif how == "drop_last" and a.ndim:
        a = a[..., 0]
    elif how in ("grow", "shrink") and a.ndim:
        axis = draw(st.integers(0, a.ndim - 1))
        if how == "grow":
            pad = [(0, 0)] * a.ndim
            pad[axis] = (0, draw(st.integers(1, 2)))
            a = np.pad(a, pad)
        else:
            a = np.take(a, range(max(0, a.shape[axis] - draw(st.integers(1, 2)))), axis=axis)
    elif how == "swap01" and a.ndim >= 2:
        a = np.swapaxes(a, 0, 1)
    elif how == "scalar":
        a = np.array(a.reshape(-1)[0] if a.size else 0, dtype=a.dtype)
    elif how == "empty0" and a.ndim:
        a = a[:0]
    elif how == "reshape_nt8" and a.ndim == 3:
        a = np.ascontiguousarray(np.swapaxes(a, 0, 1))
    elif how == "slice_last" and a.ndim and a.shape[-1] > 1:
        a = a[..., :draw(st.integers(1, a.shape[-1] - 1))]
    case.args[name] = a
    case.meta["clean"] = False


def m_ends(draw, case):
    name = draw(st.sampled_from(("actual_seq_qlen", "actual_seq_kvlen")))
    ends = case.args[name]
    if ends is None:
        return
    ends = [int(x) for x in ends]
    how = draw(st.sampled_from(("per_seq", "append", "drop", "negative", "huge", "decreasing",
                                "last_plus", "last_minus", "empty", "leading0", "numpy",
                                "numpy_u64", "extreme", "both_per_seq")))
    if how in ("per_seq", "both_per_seq"):
        for nm in ((name,) if how == "per_seq" else ("actual_seq_qlen", "actual_seq_kvlen")):
            e = case.args[nm]
            e = [] if e is None else [int(x) for x in e]
            case.args[nm] = [x - (e[i - 1] if i else 0) for i, x in enumerate(e)]
        return
    if how == "append":
        ends.append(ends[-1] + draw(st.integers(0, 3)) if ends else 1)
    elif how == "drop" and ends:
        ends.pop(draw(st.integers(0, len(ends) - 1)))
    elif how == "negative" and ends:
        i = draw(st.integers(0, len(ends) - 1))
        ends[i] = -ends[i] - draw(st.integers(1, 3))
    elif how == "huge" and ends:
        huge = draw(st.sampled_from((1 << 31, 1 << 40, 1 << 62, INT64_MAX)))
        ends[draw(st.integers(0, len(ends) - 1))] = huge
    elif how == "extreme" and ends:
        ends[draw(st.integers(0, len(ends) - 1))] = draw(st.sampled_from((INT64_MIN, INT64_MAX, -(1 << 62))))
    elif how == "decreasing" and len(ends) >= 2:
        ends[0], ends[-1] = ends[-1] + 1, ends[0]
    elif how == "last_plus" and ends:
        ends[-1] += draw(st.integers(1, 3))
    elif how == "last_minus" and ends:
        ends[-1] -= draw(st.integers(1, 2))
    elif how == "empty":
        ends = []
    elif how == "leading0":
        ends = [0] + ends
    elif how == "numpy":
        ends = np.asarray(ends, dtype=draw(st.sampled_from((np.int64, np.int32, np.uint32))))
    elif how == "numpy_u64":
        ends = np.asarray([x for x in ends if x >= 0], dtype=np.uint64)
    case.args[name] = ends
    case.meta["clean"] = False


def m_tokens(draw, case):
    values = st.one_of(st.integers(-10, 10), st.sampled_from(
        (0, INT32_MAX, INT32_MAX + 1, 1 << 40, -(1 << 40), INT64_MAX, INT64_MIN, 65536, -INT32_MAX)))
    case.args[draw(st.sampled_from(("pre_tokens", "next_tokens")))] = draw(values)
    case.meta["clean"] = False


def m_sparse_mode(draw, case):
    case.args["sparse_mode"] = draw(st.sampled_from(
        (-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100, (1 << 32) + 2, INT64_MIN, INT64_MAX)))
    case.meta["clean"] = False


def m_head_num(draw, case):
    n1 = case.meta["n1"]
    case.args["head_num"] = draw(st.sampled_from((None, 0, -1, n1, n1 + 1, 1 << 40, INT64_MAX,
                                                  INT64_MIN)))


def m_keep_scale(draw, case):
    if draw(st.booleans()):
        case.args["keep_prob"] = draw(st.sampled_from(
            (1.0, 0.5, 1.5, math.nan, math.inf, -math.inf, 1 + 1e-12, 1 - 1e-12, 0.0, 1 + 1e-7)))
    else:
        case.args["scale_value"] = draw(st.sampled_from((math.nan, math.inf, 0.0, -0.5, 1e30)))
        case.meta["nonfinite"] = True
    case.meta["clean"] = False


def m_attrs(draw, case):
    name = draw(st.sampled_from(("pse_type", "inner_precise")))
    case.args[name] = draw(st.sampled_from((0, 1, 2, 3, 4, -1, 1 << 40, INT64_MIN)))


def m_layout(draw, case):
    case.args["input_layout"] = draw(st.sampled_from(("TND", "BSH", "tnd", "", "TND ", None, "TN",
                                                      "TNDX", "BNSD", "TNDé")))


def m_mask(draw, case):
    meta, args = case.meta, case.args
    seqs = seq_info(meta["q_ends"], meta["kv_ends"])
    how = draw(st.sampled_from(("full_ss", "full_tt", "compressed", "inverted", "random2048",
                                "float", "lead_wrong", "rank3", "ones", "zeros2048", "bcast_lead")))
    m = args.get("atten_mask")
    if how == "full_ss":
        m = np.triu(np.ones((seqs.max_sq, seqs.max_skv), np.uint8), 1)
    elif how == "full_tt":
        m = np.triu(np.ones((meta["t1"], meta["t2"]), np.uint8), 1)
    elif how == "compressed":
        m = CANONICAL[np.dtype(np.uint8)]
    elif how == "inverted":
        m = (CANONICAL[np.dtype(np.uint8)] == 0).astype(np.uint8)
    elif how == "random2048":
        m = CANONICAL[np.dtype(np.uint8)].copy()
        m[draw(st.integers(0, 2047)), draw(st.integers(0, 2047))] ^= 1
    elif how == "float" and m is not None:
        m = m.astype(np.float32)
    elif how == "lead_wrong" and m is not None and m.ndim == 2:
        m = np.broadcast_to(m, (seqs.batch + 1, 2) + m.shape)
    elif how == "rank3" and m is not None and m.ndim in (2, 4):
        m = m[None] if m.ndim == 2 else m[0]
    elif how == "ones":
        m = np.ones((seqs.max_sq, seqs.max_skv), np.uint8)
    elif how == "zeros2048":
        m = np.zeros((2048, 2048), np.bool_)
    elif how == "bcast_lead" and m is not None and m.ndim == 2:
        m = np.broadcast_to(m, (seqs.batch, meta["n1"]) + m.shape)
    args["atten_mask"] = m
    case.meta["clean"] = False


def m_stats(draw, case):
    args, meta = case.args, case.meta
    smax, ssum = args.get("softmax_max"), args.get("softmax_sum")
    if not isinstance(smax, np.ndarray) or not isinstance(ssum, np.ndarray) or smax.ndim != 3:
        return
    ends = meta["q_ends"]
    how = draw(st.sampled_from(("token_major", "token_major_lse", "device_lse", "copy_differs",
                                "tn", "nt8", "float64", "sum_zero")))
    if how in ("token_major", "token_major_lse", "device_lse"):
        try:
            tm_max = af.softmax_layout.token_major_from_device_stats(smax, ends)
            tm_sum = af.softmax_layout.token_major_from_device_stats(ssum, ends)
        except ValueError:            # the shapes no longer fit the ends (other mutations)
            return
        if how != "token_major":
            with np.errstate(all="ignore"):
                tm_max = (tm_max.astype(np.float64) + np.log(tm_sum.astype(np.float64))).astype(np.float32)
            tm_sum = np.ones_like(tm_sum)
        if how == "device_lse":       # (lse, 1) in the device layout: valid, same math
            args["softmax_max"] = af.softmax_layout.device_stats_from_token_major(tm_max, ends)
            args["softmax_sum"] = af.softmax_layout.device_stats_from_token_major(tm_sum, ends)
            return
        args["softmax_max"] = np.ascontiguousarray(np.repeat(tm_max[..., None], 8, axis=-1))
        args["softmax_sum"] = np.ascontiguousarray(np.repeat(tm_sum[..., None], 8, axis=-1))
    elif how == "copy_differs" and smax.size:
        name = draw(st.sampled_from(("softmax_max", "softmax_sum")))
        a = args[name].copy()
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] += 1.0
        args[name] = a
    elif how == "tn":
        args["softmax_max"] = np.ascontiguousarray(smax[..., 0])
    elif how == "nt8":
        args["softmax_sum"] = np.ascontiguousarray(np.swapaxes(ssum, 0, 1))
    elif how == "float64":
        args["softmax_max"] = smax.astype(np.float64)
    elif how == "sum_zero":
        args["softmax_sum"] = np.zeros_like(ssum)
        meta["nonfinite"] = True
    meta["clean"] = False


def m_deterministic(draw, case):
    case.args["deterministic"] = not case.args.get("deterministic", False)


def m_memory_layout(draw, case):
    """Valid-preserving: the same values in another memory layout."""
    name = _pick_array(draw, case)
    if name is None:
        return
    a = case.args[name]
    how = draw(st.sampled_from(("readonly", "fortran", "strided", "negstride", "byteswap",
                                "broadcast", "shared")))
    if how == "readonly":
        a = _readonly(a.copy())
    elif how == "fortran":
        a = np.asfortranarray(a)
    elif how == "strided" and a.ndim:
        big = np.zeros(a.shape[:-1] + (a.shape[-1] * 2 + 1,), a.dtype)
        big[..., 1::2] = a
        a = big[..., 1::2]
    elif how == "negstride" and a.ndim and a.shape[0] > 1:
        a = np.ascontiguousarray(a[::-1])[::-1]
    elif how == "byteswap" and a.dtype.kind == "f" and a.dtype.itemsize > 1 and a.dtype != BF16:
        a = a.astype(a.dtype.newbyteorder(">" if a.dtype.byteorder in "=<" else "<"))
    elif how == "broadcast" and name in ("softmax_max", "softmax_sum") and a.ndim == 3:
        a = np.broadcast_to(a[..., :1], a.shape)
    elif how == "shared":
        for main, rope in (("query", "query_rope"), ("key", "key_rope")):
            x, y = case.args.get(main), case.args.get(rope)
            if isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == y.ndim == 3 \
                    and x.shape[:2] == y.shape[:2] and x.dtype == y.dtype:
                buf = np.concatenate([x, y], axis=-1)
                case.args[main], case.args[rope] = buf[..., :x.shape[2]], buf[..., x.shape[2]:]
        return
    case.args[name] = a


def m_python_types(draw, case):
    """Public call only: wrong Python types / values no C call can carry."""
    how = draw(st.sampled_from(("list_tensor", "str_scale", "float_mode", "bool_heads",
                                "dict_ends", "float_ends", "big_pre", "nul_layout", "bytes_layout",
                                "none_scale", "huge_ends_len", "big_int_ends", "2d_ends",
                                "str_ends", "huge_scale", "none_attr", "float_tokens")))
    a = case.args
    if how == "list_tensor":
        name = draw(st.sampled_from(POSITIONAL + ("softmax_max", "atten_mask")))
        a[name] = a[name].astype(np.float32).tolist() if isinstance(a[name], np.ndarray) else [1, 2]
    elif how == "str_scale":
        a["scale_value"] = "0.1"
    elif how == "float_mode":
        a["sparse_mode"] = 1.0
    elif how == "bool_heads":
        a["head_num"] = True
    elif how == "dict_ends":
        a["actual_seq_qlen"] = {"a": 1}
    elif how == "float_ends":
        a["actual_seq_kvlen"] = [float(x) for x in (a["actual_seq_kvlen"] or [1])]
    elif how == "big_pre":
        a["pre_tokens"] = 1 << 70
    elif how == "nul_layout":
        a["input_layout"] = "TND\x00junk"
    elif how == "bytes_layout":
        a["input_layout"] = b"TND"
    elif how == "none_scale":
        a["scale_value"] = None
    elif how == "huge_ends_len":
        a["actual_seq_qlen"] = np.broadcast_to(np.int64(1), (1 << 30,))
    elif how == "big_int_ends":
        a["actual_seq_qlen"] = [1 << 64]
    elif how == "2d_ends":
        a["actual_seq_qlen"] = np.asarray([a["actual_seq_qlen"] or [1]])
    elif how == "str_ends":
        a["actual_seq_kvlen"] = "123"
    elif how == "huge_scale":
        a["scale_value"] = 10 ** 400
    elif how == "none_attr":
        a[draw(st.sampled_from(("keep_prob", "pre_tokens", "next_tokens", "sparse_mode",
                                "pse_type", "inner_precise")))] = None
    elif how == "float_tokens":
        a["next_tokens"] = 3.5
    case.meta["python_level"] = True
    case.meta["verdict_ok"] = False
    case.meta["clean"] = False


MUTATIONS = {
    "none_slot": m_none_slot, "optional_lists": m_optional_lists, "dtype": m_dtype,
    "shape": m_shape, "ends": m_ends, "tokens": m_tokens, "sparse_mode": m_sparse_mode,
    "head_num": m_head_num, "keep_scale": m_keep_scale, "attrs": m_attrs, "layout": m_layout,
    "mask": m_mask, "stats": m_stats, "deterministic": m_deterministic,
    "memory_layout": m_memory_layout,
}
PUBLIC_ONLY = {"dtype_exotic": m_dtype_exotic, "python_types": m_python_types}


def mutated_case(verdict: bool, max_mutations: int = 3, min_mutations: int = 0):
    """A base case with min..max_mutations mutations (the public variant also draws the
    Python-level ones)."""
    names = sorted(MUTATIONS) + ([] if verdict else sorted(PUBLIC_ONLY))
    table = dict(MUTATIONS, **({} if verdict else PUBLIC_ONLY))

    @st.composite
    def strategy(draw):
        case = draw(base_case())
        chosen = draw(st.lists(st.sampled_from(names), min_size=min_mutations,
                               max_size=max_mutations))
        for name in chosen:
            try:
                table[name](draw, case)
            except (TypeError, ValueError, IndexError, OverflowError):
                # an earlier mutation left a value this one cannot work on: skip it
                TALLY["mutation_skipped"] += 1
                continue
            case.applied.append(name)
        return case
    return strategy()


# ----------------------------------------------------------------------------- calls
def public_call(case: Case, backend: str):
    """("ok", FagGrads) or ("err", exception) of the public call on ``backend``."""
    args = dict(case.args)
    pos = [args.pop(n) for n in POSITIONAL]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                return "ok", af.flash_attention_unpadding_score_grad_v3(*pos, backend=backend, **args)
    except (af.AclnnError, TypeError, ValueError) as exc:
        return "err", exc


def validator_verdict(case: Case):
    """0, the status code, or the exception class name of a Python-level error."""
    from aclnn_fag.rules import validate_backward
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_backward(**case.args)
        return 0
    except af.AclnnError as exc:
        return exc.code
    except (TypeError, ValueError) as exc:
        return type(exc).__name__


def raw_verdict(case: Case):
    """0, the status code of phase 1 (or of the call), or a Python-level error name."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acl.call_raw(**case.args)
        return 0, None
    except af.AclnnError as exc:
        return exc.code, exc
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, exc


# ----------------------------------------------------------------------------- checks
def compact(a: np.ndarray) -> np.ndarray:
    """The distinct elements of a view: zero-stride axes cut to length 1."""
    return a[tuple(slice(0, 1) if s == 0 and n > 1 else slice(None)
                   for n, s in zip(a.shape, a.strides))]


def _is_canonical_constant(c: np.ndarray) -> bool:
    """``c`` is one of the shared read-only CANONICAL masks (a full view of it)."""
    for m in CANONICAL.values():
        if (c.dtype == m.dtype and c.shape == m.shape and c.strides == m.strides
                and c.__array_interface__["data"][0] == m.__array_interface__["data"][0]):
            return True
    return False


def assert_canonical_constants_intact() -> None:
    """The shared CANONICAL masks are snapshot by identity only (hashing 4 MiB twice per case
    dominated the fuzz time); this checks their content once, at the end of each module."""
    for dtype, m in CANONICAL.items():
        assert not m.flags.writeable, f"CANONICAL[{dtype}] became writeable"
        assert np.array_equal(m, af.masks.compressed_causal_mask(dtype)), \
            f"CANONICAL[{dtype}] was modified by a call"


def _digest(a: np.ndarray) -> str:
    h = hashlib.sha1()          # any collision-resistant digest; sha1 is the fastest here
    c = compact(a)
    if c.ndim >= 2 and _is_canonical_constant(c.reshape(c.shape[-2:]) if c.ndim == 4
                                              and c.shape[:2] == (1, 1) else c):
        return f"canonical:{c.dtype}:{c.shape}"      # checked by assert_canonical_constants_intact
    if c.dtype == object:
        h.update(repr(c.tolist()).encode())
    elif c.size:
        h.update(np.ascontiguousarray(c).view(np.uint8).reshape(-1).data)
    return h.hexdigest()


def snapshot(args: dict) -> dict:
    """Everything observable about the inputs: shape, dtype, strides, flags and content."""
    snap = {}
    for k, v in args.items():
        if isinstance(v, np.ndarray):
            snap[k] = ("array", v.shape, v.dtype.str, v.strides, bool(v.flags.writeable),
                       v.__array_interface__["data"][0], _digest(v))
        else:
            snap[k] = ("value", copy.deepcopy(v))
    return snap


def assert_unchanged(before: dict, args: dict, what: str) -> None:
    after = snapshot(args)
    for k in before:
        b, a = before[k], after[k]
        if b[0] == "value" and isinstance(b[1], float) and isinstance(a[1], float) \
                and math.isnan(b[1]) and math.isnan(a[1]):
            continue
        assert a == b, f"{what}: input '{k}' was modified ({b} -> {a})"


def assert_no_leak(stub, before: dict, what: str) -> None:
    """The stub's live objects (tensors, int arrays, executors, device bytes) are back to
    ``before`` (a garbage collection is allowed first)."""
    now = stub.objects()
    if now != before:
        gc.collect()
        now = stub.objects()
    if now != before:
        TALLY["leaks"] += 1
    assert now == before, f"{what}: native objects leaked: before {before}, after {now}"


def check_error(exc, what: str) -> None:
    """Only AclnnError (a validation status naming the parameter), TypeError, ValueError."""
    if isinstance(exc, af.AclnnError):
        assert exc.code in (161001, 161002), f"{what}: unexpected status {exc.code}: {exc}"
        assert exc.param, f"{what}: the error names no parameter: {exc}"
        assert f"'{exc.param}'" in str(exc), f"{what}: the message does not name {exc.param}: {exc}"
        TALLY["rejected_with_status"] += 1
        TALLY[f"rejected_{exc.code}"] += 1
    else:
        assert isinstance(exc, (TypeError, ValueError)), f"{what}: {type(exc).__name__}: {exc}"
        assert "parameter '" in str(exc), f"{what}: the message names no parameter: {exc}"
        TALLY["rejected_python_level"] += 1


def _finite(x) -> np.ndarray:
    return np.isfinite(np.asarray(x, dtype=np.float64))


BF16_TOL = 2.0 ** -7
FLOOR = 1e-5


def compare_grads(ref, got, *, strict_finite: bool, what: str) -> None:
    """Elements finite in both agree normwise to bf16 accuracy: max|diff| <= 2^-7 * max|ref|
    of that output + 1e-5 * max(1, max|ref| over all five) -- an absolute floor for
    gradients that cancel to ~0 (exactly 0 in one fp32 summation order is ~1e-7 in another;
    the generated data is O(1), so the floor is never below 1e-5). With ``strict_finite``
    every element must be finite in both."""
    names = ("dq", "dq_rope", "dk", "dk_rope", "dv")
    finite_max = [float(np.max(np.abs(np.where(np.isfinite(x), x, 0)), initial=0.0))
                  for x in (np.asarray(r, np.float64) for r in ref)]
    floor = FLOOR * max(finite_max + [1.0])
    for name, r, g in zip(names, ref, got):
        assert r.shape == g.shape, f"{what} {name}: shape {g.shape} != {r.shape}"
        assert r.dtype == g.dtype, f"{what} {name}: dtype {g.dtype} != {r.dtype}"
        r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
        fr, fg = np.isfinite(r64), np.isfinite(g64)
        if strict_finite:
            assert fr.all() and fg.all(), (f"{what} {name}: non-finite values (reference "
                                           f"{int((~fr).sum())}, other {int((~fg).sum())})")
        both = fr & fg
        if not both.any():
            continue
        diff = float(np.max(np.abs(r64[both] - g64[both])))
        scale = float(np.max(np.abs(r64[both])))
        assert diff <= BF16_TOL * scale + floor, (f"{what} {name}: max |diff| {diff:.3e} > "
                                                  f"{BF16_TOL:.3g} * {scale:.3e} + {floor:.3e}")
