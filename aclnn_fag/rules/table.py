"""Every validation rule of both ops, once, as data, in the device's order (docs/validation.md,
docs/forward.md): an op runs the rows that name it (:func:`rules_for`). A message is a
``str.format`` template over the call and its check's fields (``{ref}``: the citation); code
0 ends validation without computing. :data:`STUB_MESSAGES`: the stand-in op's printf formats,
which scripts/gen_rules.py writes to its header with the docs' rule tables."""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

__all__ = ["Rule", "RULES", "RELEASES", "EOD_RELEASES", "STUB_MESSAGES", "rules_for",
           "citation", "release_key", "stub_formats"]

RELEASES = ("8.5", "9.0", "9.1")      # the CANN releases the rules are known for
EOD_RELEASES = ("9.0", "9.1")         # those that check end-of-data padding (docs/releases.md)
B, F = ("backward_v3",), ("forward_v3",)
BF = B + F
NULLPTR, INVALID = 161001, 161002


class Rule(NamedTuple):
    id: str
    ops: Tuple[str, ...]
    code: int
    param: str
    message: str
    section: str
    stricter: bool = False
    data: bool = False
    releases: Tuple[str, ...] = RELEASES


def citation(section: str) -> str:
    """``docs/forward.md, rule F5`` / ``docs/validation.md, rule 4`` / ``..., S3``."""
    doc = "docs/forward.md" if section.startswith("rule F") else "docs/validation.md"
    return f"{doc}, {section}"


_BF16_HINT = "; the V3 {what} with rope inputs accepts only BF16{hint}"
_NOT_CANONICAL = ("sparse_mode {sparse_mode} reads the compressed mask at shifted offsets and "
                  "assumes the canonical content (1 strictly above the diagonal); ")
_COPIES = ("the {copies} copies in the last dim of {name} differ; the device reads copy "
           "(j mod {copies}) for column j, so they must be identical. If you have token-major "
           "[T, N] statistics, convert them with aclnn_fag.softmax_layout."
           "device_stats_from_token_major(stats, actual_seq_qlen), which also writes the 8 "
           "copies")
_MASK_NEEDED = ("atten_mask is required and must not be a scalar ({where}); pass "
                "aclnn_fag.masks.compressed_causal_mask() for sparse modes 2/3/4/7/8 or an "
                "all-zero [maxSq, maxSkv] mask for no masking")
_ROPE_BOTH = ("query_rope and key_rope are both None: V3 needs the rope inputs (the device "
              "dereferences them and crashes; {ref})")


def _r(id, ops, code, param, message, section="", **flags) -> Rule:
    """A row; its section follows from its id unless given (R6: rule 6, F5_d: rule F5, S3_x: S3)."""
    head = id.split("_")[0]
    section = section or {"R": "rule " + head[1:], "F": "rule " + head}.get(head[0], head)
    return Rule(id, ops, code, param, message, section, **flags)


RULES: Tuple[Rule, ...] = (
    # ---- the backward's op-API checks (161002 unless null), rules 1-16
    _r("R1_null", B, NULLPTR, "input_layout", "input_layout is None; it must be 'TND' (the device "
       "would crash in strcmp on a NULL layout; {ref})", stricter=True),
    _r("R1", B, INVALID, "input_layout", "input_layout must be exactly 'TND', got {input_layout!r} "
       "({ref})"),
    _r("R2", B, NULLPTR, "{name}", "{name} is required ({ref})"),
    _r("R3", B, 0, "", ""),
    _r("R4", B, INVALID, "head_num", "head_num must be > 0, got {heads} ({ref})"),
    _r("R5", B, INVALID, "{name}", "{name} needs >= 3 dims, got shape {shape} ({ref})"),
    _r("R6", B, INVALID, "key", "head dim D of key ({dk}) must equal that of query ({d}) ({ref})"),
    _r("R7", B, INVALID, "value", "value head dim Dv={dv} must be <= query head dim D={d} ({ref})"),
    _r("R8", B, NULLPTR, "{name}", "{name} is None while the other rope input is given ({ref})"),
    _r("R8_both", B, NULLPTR, "query_rope", _ROPE_BOTH, stricter=True),
    _r("R9", B, INVALID, "{name}", "rope head dim Dr={shape[2]} of {name} must be <= D={d} "
       "({ref})"),
    _r("R10", B, INVALID, "{name}", "{name} must be bfloat16 (ml_dtypes.bfloat16), got {dtype}"
       + _BF16_HINT.replace("{what}", "op") + " ({ref})"),
    _r("R11", B, INVALID, "sparse_mode", "sparse_mode 6 (prefix compression) is not supported by "
       "V3 ({ref})"),
    _r("R12", B, NULLPTR, "atten_mask", _MASK_NEEDED.replace("{where}", "{ref}")),
    _r("R13", B, INVALID, "pse_shift", "pse_shift must be None: V3 supports no pse ({ref})"),
    _r("R14", B, INVALID, "drop_mask", "drop_mask must be None: V3 supports no dropout ({ref})"),
    _r("R15", B, INVALID, "keep_prob", "keep_prob must be 1.0 (no dropout), got {keep_prob} "
       "({ref})"),
    _r("R16", B, INVALID, "query", "head dims need padding, which V3 rejects: {reason} ({ref})"),
    _r("R_eod", B, INVALID, "{name}", "{problem} ({ref})", "rule EOD", releases=EOD_RELEASES),
    # ---- tiling (161001), rules 17-30, after the empty-tensor path
    _r("R18", B, NULLPTR, "{name}", "{name} is required and must not be a scalar ({ref})"),
    _r("R19", B, NULLPTR, "head_num", "head_num={heads} must equal query.shape[1]={n1} ({ref})"),
    _r("R_empty", B, 0, "", "", "rule 3"),
    _r("R17", B, NULLPTR, "keep_prob", "keep_prob must be 1.0, got {keep_prob} ({ref})"),
    _r("R20", B, NULLPTR, "{name}", "{name} must be float32, got {dtype} ({ref})"),
    _r("R20_attn", B, NULLPTR, "attention_in", "attention_in dtype {attention_in.dtype} must equal "
       "the query dtype {query.dtype} ({ref})"),
    _r("R21", B, NULLPTR, "{name}", "{name} shape must be [T1, N1, 8] = [{t1}, {n1}, 8], got "
       "{shape}{hint} ({ref})"),
    _r("R21_attn", B, NULLPTR, "attention_in", "attention_in shape {attention_in.shape} must match "
       "query {query.shape} except the last dim ({ref})"),
    _r("R22", B, NULLPTR, "query", "T1, N1 and D must be > 0, got shape {query.shape} ({ref})"),
    # ---- the forward's op-API checks, F1-F8
    _r("F1", F, NULLPTR, "{name}", "{name} is required ({ref})"),
    _r("F1_layout", F, NULLPTR, "input_layout", "input_layout is None; it must be 'TND' ({ref})"),
    _r("F2", F, 0, "", ""),
    _r("F3", F, INVALID, "input_layout", "input_layout must be exactly 'TND', got {input_layout!r} "
       "({ref})"),
    _r("F4", F, INVALID, "{name}", "{name} dtype {dtype} must equal the query dtype {query.dtype} "
       "({ref})"),
    _r("F4_pse", F, INVALID, "pse_shift", "pse_type {pse_type} needs pse_shift ({ref})"),
    _r("F4_pse_dtype", F, INVALID, "pse_shift", "pse_shift dtype {pse_shift.dtype} must equal the "
       "query dtype {query.dtype} ({ref})"),
    _r("F5_heads", F, INVALID, "head_num", "head_num must be > 0, got {heads} ({ref})"),
    _r("F5_rank", F, INVALID, "query", "query must be 3-D [T1, N1, D] for TND, got shape "
       "{query.shape} ({ref})"),
    _r("F5_kv_rank", F, INVALID, "{name}", "{name} needs 3 dims, got shape {shape} (the device "
       "reads dims 1 and 2 of it; {ref})", stricter=True),
    _r("F5_d", F, INVALID, "key", "head dim D of key ({dk}) must equal that of query ({d}) "
       "({ref})"),
    _r("F5_dv", F, INVALID, "value", "value head dim Dv={dv} must be <= query head dim D={d} "
       "({ref})"),
    _r("F5_max_d", F, INVALID, "query", "head dim D={d} must be <= {limit} ({ref})"),
    _r("F6_rope", F, NULLPTR, "{name}", "{name} is None while the other rope input is given "
       "({ref})"),
    _r("F6_rope_both", F, NULLPTR, "query_rope", _ROPE_BOTH, stricter=True),
    _r("F6_rope_rank", F, NULLPTR, "{name}", "{name} needs 3 dims, got shape {shape} (the device "
       "reads dim 2 of it; {ref})", stricter=True),
    _r("F6_dr", F, NULLPTR, "{name}", "rope head dim Dr={shape[2]} of {name} must be <= D={d} "
       "({ref})"),
    _r("F6_bf16", F, NULLPTR, "{name}", "{name} must be bfloat16 (ml_dtypes.bfloat16), got "
       "{dtype}" + _BF16_HINT.replace("{what}", "forward") + " ({ref})"),
    _r("F6_sparse6", F, NULLPTR, "sparse_mode", "sparse_mode 6 (prefix compression) is not "
       "supported with rope inputs ({ref})"),
    _r("F6_mask", F, NULLPTR, "atten_mask", _MASK_NEEDED.replace("{where}", "forward rule F6")),
    _r("F6_pse", F, NULLPTR, "pse_shift", "pse_shift must be None with rope inputs ({ref})"),
    _r("F6_drop", F, NULLPTR, "drop_mask", "drop_mask must be None with rope inputs ({ref})"),
    _r("F6_keep", F, NULLPTR, "keep_prob", "keep_prob must be 1.0 with rope inputs, got "
       "{keep_prob} ({ref})"),
    _r("F6_pad", F, NULLPTR, "query", "head dims D={d}, Dv={dv} would be padded, which the forward "
       "rejects with rope inputs: D and Dv must be multiples of 16 (D < 196) or 128, D == Dv when "
       "D is 64 or 80 (or 88), unless D < 96 with every KV length <= 1024 and the last query end < "
       "163840 ({ref})"),
    _r("F7_keep", F, NULLPTR, "keep_prob", "keep_prob must be in (0, 1], got {keep_prob} ({ref})"),
    _r("F7_pse", F, NULLPTR, "pse_type", "pse_type must be in [0, 4), got {pse_type} ({ref})"),
    _r("F8", F, NULLPTR, "key", "key must be 3-D [T2, N2, D] for TND, got shape {key.shape} "
       "({ref})"),
    # ---- both: the cumulative length arrays (rule 23 = F9)
    _r("R23_q", BF, NULLPTR, "actual_seq_qlen", "actual_seq_qlen is required ({ref})"),
    _r("R23_kv", BF, NULLPTR, "actual_seq_kvlen", "actual_seq_kvlen is required ({ref})"),
    _r("R23_empty", BF, NULLPTR, "actual_seq_qlen", "actual_seq_qlen must have at least one entry "
       "({ref})"),
    _r("R23_len", BF, NULLPTR, "actual_seq_kvlen", "actual_seq_kvlen has {nkv} entries but "
       "actual_seq_qlen has {nq}; they must be equal ({ref})"),
    _r("R24_rank", B, NULLPTR, "query", "query must be 3-D [T, N, D] for TND, got shape "
       "{query.shape} ({ref})"),
    _r("R24_n2", B, NULLPTR, "key", "key heads N2={n2} must be >= 1 and <= query heads N1={n1} "
       "({ref})"),
    _r("R24_mod", B, NULLPTR, "key", "query heads N1={n1} must be a multiple of key heads N2={n2} "
       "(the device fails in the softmax-shape check; {ref})"),
    _r("R25_dy", B, NULLPTR, "dy", "dy shape {dy.shape} must equal query's {query.shape} except "
       "the last dim, which must be <= D ({ref})"),
    _r("R25_value", B, NULLPTR, "value", "value shape {value.shape} must equal key's {key.shape} "
       "except the last dim, which must be <= that of key ({ref})"),
    _r("R26", B, NULLPTR, "sparse_mode", "sparse_mode must be in 0..8 (not 6), got {sparse_mode} "
       "({ref})"),
    _r("F10", F, NULLPTR, "{name}", "{tname} = {total} is below the sum of the sequence lengths of "
       "{name} ({need}){hint} ({ref})"),
    _r("F_eod", F, NULLPTR, "{name}", "{problem} (the forward's tiling fails; {ref})", "rule EOD",
       releases=EOD_RELEASES),
    _r("F11_heads", F, NULLPTR, "head_num", "head_num={heads} must equal query.shape[1]={n1} "
       "({ref})"),
    _r("F11_n2", F, NULLPTR, "key", "key heads N2={n2} must be >= 1 and <= query heads N1={n1} "
       "({ref})"),
    _r("F11_d", F, NULLPTR, "query", "head dim D must be > 0, got shape {query.shape} ({ref})"),
    _r("F11_mod", F, NULLPTR, "key", "query heads N1={n1} must be a multiple of key heads N2={n2} "
       "({ref})"),
    _r("F12", F, NULLPTR, "pse_type", "pse_type must be 1 when pse_shift is None, got {pse_type} "
       "({ref})"),
    # ---- both: the attention mask (rule 27 = F12) and the tokens (rule 28 = F14)
    _r("R27_dtype", BF, NULLPTR, "atten_mask", "atten_mask must be bool or uint8, got "
       "{atten_mask.dtype} ({ref})"),
    _r("R27_rank", BF, NULLPTR, "atten_mask", "atten_mask must be 2-D or 4-D, got shape "
       "{atten_mask.shape} ({ref})"),
    _r("R27_lead", BF, NULLPTR, "atten_mask", "a 4-D atten_mask needs leading dims (B, N1), (B, 1) "
       "or (1, 1) with B={batch}, N1={n1}; got {lead}{hint} ({ref})"),
    _r("R27_compressed", BF, NULLPTR, "atten_mask", "sparse_mode {sparse_mode} needs the "
       "compressed 2048x2048 mask, got last dims {last}{hint} ({ref})"),
    _r("R27_dense", BF, NULLPTR, "atten_mask", "sparse_mode {sparse_mode} needs mask last dims "
       "[maxSq, maxSkv] = [{seqs.max_sq}, {seqs.max_skv}], got {last}{hint} ({ref})"),
    _r("F13", F, NULLPTR, "sparse_mode", "sparse_mode must be in 0..8 (not 6), got {sparse_mode} "
       "({ref})", "rule 26"),
    _r("R28_mode0", BF, NULLPTR, "pre_tokens", "sparse_mode 0 tokens pre={pre_eff}, "
       "next={next_eff} are invalid for batch {b} (Sq={sq}, Skv={skv}): need -pre <= Skv, -next <= "
       "Sq and pre + next > 0 ({ref})"),
    _r("R28_band", BF, NULLPTR, "pre_tokens", "sparse_mode {sparse_mode} tokens pre={pre_eff}, "
       "next={next_eff} are invalid for batch {b} (Sq={sq}, Skv={skv}): need -pre <= Sq, -next <= "
       "Skv and pre + next > 0 ({ref})"),
    _r("R29", B, NULLPTR, "pse_type", "pse_type must be 1 when pse_shift is None, got {pse_type} "
       "({ref})"),
    _r("R30", B, NULLPTR, "dy", "dy dtype {dy.dtype} must equal the query dtype {query.dtype} "
       "({ref})"),
    # ---- the package's own checks (stricter than the device)
    _r("S1", B, NULLPTR, "key", "key must be 3-D [T2, N2, D], got shape {key.shape} ({ref})",
       stricter=True),
    _r("S2", B, NULLPTR, "{name}", "{name} last dim {shape[2]} must equal the value head dim "
       "Dv={dv} (the kernel reads [T1, N1, Dv] rows) ({ref})", stricter=True),
    _r("SF1", F, NULLPTR, "value", "value shape {value.shape} must be [T2, N2, Dv] = [{t2}, {n2}, "
       "{dv}] (T2, N2 of key; the kernel would read out of bounds)", stricter=True),
    _r("S3_heads", BF, INVALID, "query", "N1={n1} exceeds the documented limit of {limit} heads "
       "({ref})", stricter=True),
    _r("S3_dim", BF, INVALID, "query", "D={d} exceeds the documented limit of {limit} ({ref})",
       stricter=True),
    _r("S3_tokens", BF, INVALID, "{name}", "T={shape[0]} of {name} exceeds the documented limit of "
       "{limit} tokens; split the batch into several calls ({ref})", stricter=True),
    _r("S3_batch", BF, INVALID, "actual_seq_qlen", "{nq} sequences exceed the documented limit of "
       "{limit} ({ref})", stricter=True),
    _r("S4", BF, INVALID, "{name}", "{problem} ({ref})", stricter=True),
    _r("S5_q", BF, INVALID, "query_rope", "query_rope shape {query_rope.shape} must be [T1, N1, "
       "Dr] = {want} (T1, N1 of query) ({ref})", stricter=True),
    _r("S5_k", BF, INVALID, "key_rope", "key_rope shape {key_rope.shape} must be [T2, N2, Dr] = "
       "{want} (T2, N2 of key, Dr of query_rope){hint} ({ref})", stricter=True),
    _r("S5_dr", BF, INVALID, "query_rope", "rope head dim Dr={dr} must be a multiple of 8 (docs) "
       "({ref})", stricter=True),
    _r("S6_sample", BF, INVALID, "atten_mask", _NOT_CANONICAL + "a sample of this device mask "
       "differs from it. Upload aclnn_fag.masks.compressed_causal_mask() ({ref})",
       stricter=True, data=True),
    _r("S6", BF, INVALID, "atten_mask", _NOT_CANONICAL + "with other content the device's "
       "result depends on its tiling. Use aclnn_fag.masks.compressed_causal_mask(){hint} "
       "({ref})", stricter=True, data=True),
    _r("S7", BF, INVALID, "pre_tokens", "pre_tokens={pre_eff} + Sq - Skv of batch {b} overflows "
       "the kernel's int32 block-skip bound (blocks would be wrongly skipped); pass a smaller "
       "pre_tokens (any value >= the longest sequence gives the same kept set) ({ref})",
       stricter=True),
    _r("S8", B, INVALID, "{name}", _COPIES + "{sampled} ({ref})", stricter=True, data=True),
    _r("S9", B, INVALID, "softmax_max", "softmax_max/softmax_sum look token-major ([T, N] values "
       "broadcast to [T, N, 8]); the device reads them per batch as [N, Sq_b, 8] blocks and would "
       "compute wrong gradients without any error. Convert with "
       "aclnn_fag.softmax_layout.device_stats_from_token_major(stats[..., 0], actual_seq_qlen) "
       "({ref})", stricter=True, data=True),
)

_STUB_B = {
    "R1_null": 'inputLayout is NULL (must be "TND") [stub addition: the real op crashes here]',
    "R1": 'inputLayout "%.32s" is not "TND" ({ref})',
    "R2": "%s is NULL; it is required ({ref})",
    "R4": "headNum %lld must be > 0 ({ref})",
    "R5": "%s has %lld dims; tensors with fewer than 3 dims are not supported ({ref})",
    "R6": "head dim of query (%lld) != head dim of keyIn (%lld) ({ref})",
    "R7": "head dim of value (%lld) is larger than that of query (%lld) ({ref})",
    "R8": "%s is NULL while %s is not; queryRope and keyInRope must both be given ({ref})",
    "R8_both": "queryRope and keyInRope are both NULL; V3 needs them (the real op dereferences "
               "them and crashes) ({ref})",
    "R9": "rope head dim (queryRope %lld, keyInRope %lld) must not exceed the query head dim %lld "
          "({ref})",
    "R10": "query[%s], queryRope[%s], keyIn[%s], keyInRope[%s], value[%s] must all be BF16 "
           "({ref})",
    "R11": "sparseMode 6 is not supported with queryRope/keyInRope ({ref})",
    "R12": "attenMaskOptional is %s; V3 with rope requires an attention mask ({ref})",
    "R13": "pseShiftOptional must be NULL with queryRope/keyInRope ({ref})",
    "R14": "dropMaskOptional must be NULL with queryRope/keyInRope ({ref})",
    "R15": "keepProb %g must be 1 ({ref})",
    "R16": "query/keyIn/value: %s ({ref})",
    "R18": "%s is missing (NULL or 0-dim); it is required ({ref})",
    "R19": "headNum %lld != query.shape[1] %lld ({ref})",
    "R17": "keepProb %g must be 1 ({ref})",
    "R20": "softmaxMaxOptional[%s] and softmaxSumOptional[%s] must be FLOAT ({ref})",
    "R20_attn": "attentionInOptional dtype %s != query dtype %s ({ref})",
    "R21": "%s shape %s must be [T1, N1, 8] = [%lld,%lld,8] ({ref})",
    "R21_attn": "attentionInOptional shape %s must match query shape %s except the last dim "
                "({ref})",
    "R22": "query shape %s has a zero T, N or D ({ref})",
    "R23_q": "%s is NULL; TND needs both cumulative length arrays ({ref})",
    "R23_empty": "actualSeqQLenOptional (length %llu) and actualSeqKvLenOptional (length %llu) "
                 "must have the same non-zero length ({ref})",
    "R24_rank": "query must have 3 dims [T,N,D], got %s ({ref})",
    "R24_n2": "keyIn head count N2=%lld must be > 0 and <= query head count N1=%lld ({ref})",
    "R24_mod": "query head count N1=%lld must be a multiple of keyIn head count N2=%lld (softmax "
               "shape check) ({ref})",
    "R25_dy": "dy shape %s must match query shape %s except the last dim, which must be <= D "
              "({ref})",
    "R25_value": "value shape %s must match keyIn shape %s except the last dim, which must be <= "
                 "that of keyIn ({ref})",
    "R26": "sparseMode %lld must be in 0..8 ({ref})",
    "R_eod": "actualSeqQLenOptional ends at %lld < T1 %lld and actualSeqKvLenOptional at %lld < "
             "T2 %lld: the last entries of both must be 0 (end-of-data padding, CANN >= 9.0) "
             "({ref})",
    "R27_dtype": "attenMaskOptional dtype %s must be BOOL or UINT8 ({ref})",
    "R27_rank": "attenMaskOptional must have 2 or 4 dims, got %s ({ref})",
    "R27_lead": "attenMaskOptional shape %s: the first two dims must be (B,N1), (B,1) or (1,1) "
                "with B=%lld, N1=%lld ({ref})",
    "R27_compressed": "attenMaskOptional shape %s: for sparseMode %lld the last two dims must be "
                      "%s ({ref})",
    "R28_mode0": "preTokens %lld / nextTokens %lld are invalid for sparseMode %lld at batch %lld "
                 "({ref})",
    "R29": ("pseType %lld must be in [0,4) ({ref})",
            "pseType %lld must be 1 when pseShiftOptional is NULL ({ref})"),
    "R30": "dy dtype %s != query dtype %s ({ref})",
    "S1": "keyIn must have 3 dims [T2,N2,D], got %s [stub addition] ({ref})",
    "S2": "%s last dim %lld must equal value head dim Dv=%lld [stub addition] ({ref})",
    "S3_heads": "beyond the documented limits (N1 %lld <= %d, D %lld <= %d, T1 %lld and T2 %lld "
                "<= %lld, %lld sequences <= %d) [stub addition] ({ref})",
    "S4": ("%s must be non-negative non-decreasing cumulative ends; entry %llu is %lld [stub "
           "addition] ({ref})",
           "%s last cumulative end %lld exceeds %s = %lld [stub addition] ({ref})"),
    "S5_q": "queryRope shape %s must be [T1, N1, Dr] = [%lld,%lld,%lld] [stub addition S5]",
    "S5_k": "keyInRope shape %s must be [T2, N2, Dr] = [%lld,%lld,%lld] (Dr of queryRope) [stub "
            "addition] ({ref})",
    "S5_dr": "rope head dim Dr=%lld must be a multiple of 8 [stub addition] ({ref})",
    "S6": "sparseMode %lld needs the canonical compressed mask (1 strictly above the diagonal) in "
          "the first 2048x2048 slice of attenMaskOptional [stub addition S6]",
    "S7": "preTokens %lld + Sq - Skv of batch %lld overflows the kernel's int32 block-skip bound "
          "[stub addition] ({ref})",
    "S8": "the 8 copies in the last dim of %s differ [stub addition] ({ref})",
    "S9": "softmaxMaxOptional/softmaxSumOptional look token-major ([T,N] broadcast to [T,N,8]); "
          "the op reads them per batch as [N,Sq_b,8] blocks [stub addition] ({ref})",
}
_STUB_F = {
    "F1": "%s is NULL; it is required (forward rule F1)",
    "F3": 'inputLayout "%.32s" is not "TND" (forward rule F3)',
    "F4": "the dtypes of query, key and value differ (forward rule F4)",
    "F4_pse": "pseType %lld needs realShiftOptional (forward rule F4)",
    "F4_pse_dtype": "realShiftOptional dtype differs from query's (forward rule F4)",
    "F5_heads": "headNum %lld must be > 0 (forward rule F5)",
    "F5_rank": "query must have 3 dims for TND, got %s (forward rule F5)",
    "F5_kv_rank": "%s has fewer than 3 dims (forward rule F5) [stub addition]",
    "F5_d": "head dim of query (%lld) != that of key (%lld) (forward rule F5)",
    "F5_dv": "head dim of value (%lld) > that of query (%lld) (forward rule F5)",
    "F5_max_d": "head dim %lld must be <= 768 (forward rule F5)",
    "F6_rope": "exactly one of queryRope/keyRope is NULL (forward rule F6)",
    "F6_rope_both": "queryRope and keyRope are both NULL (forward rule F6: the real op "
                    "dereferences them and crashes) [stub addition]",
    "F6_rope_rank": "%s has fewer than 3 dims (forward rule F6) [stub addition]",
    "F6_dr": "rope head dim exceeds the query head dim %lld (forward rule F6)",
    "F6_bf16": "query, queryRope, key, keyRope and value must all be BF16 (forward rule F6)",
    "F6_sparse6": "sparseMode 6 is not supported with rope inputs (forward rule F6)",
    "F6_mask": "attenMaskOptional is %s; rope inputs need a mask (forward rule F6)",
    "F6_pse": "realShiftOptional must be NULL with rope inputs (forward rule F6)",
    "F6_drop": "dropMaskOptional must be NULL with rope inputs (forward rule F6)",
    "F6_keep": "keepProb %g must be 1 with rope inputs (forward rule F6)",
    "F6_pad": "D=%lld / Dv=%lld would be padded, which rope inputs do not support (forward rule "
              "F6)",
    "F7_keep": "keepProb %g must be in (0, 1] (forward rule F7)",
    "F7_pse": "pseType %lld must be in [0, 4) (forward rule F7)",
    "F8": "key must have 3 dims for TND, got %s (forward rule F8)",
    "R23_q": "%s is NULL; TND needs both cumulative length arrays (forward rule F9)",
    "R23_empty": "the cumulative length arrays must have the same non-zero length (%llu, %llu) "
                 "(forward rule F9)",
    "F_eod": "the last cumulative ends (%lld < T1 %lld, %lld < T2 %lld) need end-of-data padding "
             "in both arrays (CANN >= 9.0; forward tiling)",
    "F10": "%s = %lld is below the sum of the sequence lengths (forward rule F10)",
    "F11_heads": "headNum %lld != query dim 1 %lld (forward rule F11)",
    "F11_n2": "key heads N2=%lld must be >= 1 and <= N1=%lld (forward rule F11)",
    "F11_d": "head dim D is 0 (forward rule F11)",
    "F11_mod": "N1=%lld must be a multiple of N2=%lld (forward rule F11)",
    "F12": "pseType %lld must be 1 without realShiftOptional (forward rule F12)",
    "R27_dtype": "attenMaskOptional must be BOOL or UINT8 (forward rule F12)",
    "R27_rank": "attenMaskOptional must have 2 or 4 dims, got %s (forward rule F12)",
    "R27_lead": "attenMaskOptional %s: leading dims must be (B,N1), (B,1) or (1,1) with B=%lld "
                "(forward rule F12)",
    "R27_compressed": "attenMaskOptional %s: sparseMode %lld needs last dims %s (forward rule "
                      "F12)",
    "F13": "sparseMode %lld must be in 0..8 (forward rule F13)",
    "R28_mode0": "preTokens %lld / nextTokens %lld are invalid for sparseMode %lld at batch %lld "
                 "(forward rule F14)",
    "SF1": "value %s must be [T2,N2,Dv] [stub addition SF1]",
    "S3_heads": "beyond the documented limits [stub addition S3]",
    "S4": ("%s must be non-negative non-decreasing cumulative ends [stub addition S4]",
           "the last cumulative end exceeds T [stub addition S4]"),
    "S5_q": "queryRope %s must be [T1,N1,Dr] [stub addition S5]",
    "S5_k": "keyRope %s must be [T2,N2,Dr] (Dr of queryRope) [stub addition S5]",
    "S5_dr": "rope head dim %lld must be a multiple of 8 [stub addition S5]",
    "S6": "sparseMode %lld needs the canonical compressed mask [stub addition S6]",
    "S7": "preTokens + Sq - Skv of batch %lld overflows the kernel's int32 block-skip bound [stub "
          "addition S7]",
}

# The stand-in op's messages after "<phase-1 symbol>: ", per op and rule, in its C order.
STUB_MESSAGES = {B[0]: _STUB_B, F[0]: _STUB_F}


def stub_formats(op_key: str, rule: Rule) -> Tuple[str, ...]:
    """The stand-in op's messages of ``rule`` for ``op_key``; () when the stub has none."""
    fmt = STUB_MESSAGES[op_key].get(rule.id, ())
    return (fmt,) if type(fmt) is str else fmt


def release_key(release) -> str:
    """The key of :data:`RELEASES` for an :class:`aclnn_fag.releases.Release` ("9.1")."""
    return "%d.%d" % release.version[:2]


def rules_for(op_key: str, release: Optional[str] = None) -> Tuple[Rule, ...]:
    """The rows ``op_key`` runs, in order (those of ``release`` only, when given)."""
    return tuple(r for r in RULES if op_key in r.ops
                 and (release is None or release in r.releases))
