"""Whether the head dims would need padding, which both V3 ops reject: rule 16 of the backward
(GetInputShapeInfo + CheckTndIsNeedPad) and F6 of the forward (AnalysisInput + IsNeedPad),
with the op API's own length arithmetic (exact Python ints)."""

from __future__ import annotations

__all__ = ["needs_padding", "forward_needs_padding", "clamped_total"]


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


def _small_call(qlen, kvlen, q_limit) -> bool:
    """The small-shape exception: the longest KV sequence <= 1024 and the last positive
    query end below ``q_limit``, both non-zero (None or unequal ends: not small)."""
    if qlen is None or kvlen is None or len(qlen) != len(kvlen) or not qlen:
        return False
    kv_max, q_sum = _kv_max_segment(kvlen), _last_positive_end(qlen)
    return kv_max != 0 and q_sum != 0 and kv_max <= 1024 and q_sum < q_limit


def needs_padding(query, key, value, qlen, kvlen, deterministic: bool, keep_prob: float) -> str:
    """Rule 16: why D/Dv needs padding (which V3 rejects), or ''. D = query.shape[2],
    Dv = value.shape[2]."""
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


def forward_needs_padding(query, value, qlen, kvlen) -> bool:
    """F6's pad decision: True when D/Dv would be padded, which the forward rejects with rope
    inputs."""
    d, dv = query.shape[2], value.shape[2]
    align = 16 if (d < 196 or d == 448) else 128
    need = d % align != 0 or dv % align != 0
    # "hardware affinity" padding of the source: its HEAD_DIM_128 constant is 88
    if d != dv and d in (88, 64, 80):
        need = True
    if d < 96 and _small_call(qlen, kvlen, 160 * 1024):
        need = False
    return need


def clamped_total(ends) -> int:
    """F10: the forward tiling's sum of sequence lengths: ends[0] + sum of max(0, consecutive
    differences)."""
    total = ends[0]
    for i in range(1, len(ends)):
        total += max(0, ends[i] - ends[i - 1])
    return total
