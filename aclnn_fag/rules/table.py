"""Every validation rule of both ops, once, as data (docs/validation.md, docs/forward.md).

One row per check, in the order the device evaluates them: an op runs the rows that name it,
in table order (:func:`rules_for`). A row holds its status code (0: the op succeeds without
computing), the parameter it blames (``{name}``: the one its check names), whether it is
stricter than the device, its message (a ``str.format`` template over the call and the
fields its check returns; ``{ref}`` cites ``section``), its section of the docs, whether it
reads tensor data and the CANN releases it applies to. scripts/gen_rules.py writes the
stand-in op's header (with the stub's own messages, which it holds) and the docs' rule
tables from these rows.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

__all__ = ["Rule", "RULES", "RELEASES", "EOD_RELEASES", "rules_for", "citation",
           "release_key"]

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


_r = Rule


RULES: Tuple[Rule, ...] = (
    # ---- the backward's op-API checks (161002 unless null), rules 1-16
    _r("R1_null", B, NULLPTR, "input_layout", "input_layout is None; it must be 'TND' (the "
       "device would crash in strcmp on a NULL layout; {ref})", "rule 1", stricter=True),
    _r("R1", B, INVALID, "input_layout", "input_layout must be exactly 'TND', got "
       "{input_layout!r} ({ref})", "rule 1"),
    _r("R2", B, NULLPTR, "{name}", "{name} is required ({ref})", "rule 2"),
    _r("R3", B, 0, "", "", "rule 3"),
    _r("R4", B, INVALID, "head_num", "head_num must be > 0, got {heads} ({ref})", "rule 4"),
    _r("R5", B, INVALID, "{name}", "{name} needs >= 3 dims, got shape {shape} ({ref})", "rule 5"),
    _r("R6", B, INVALID, "key", "head dim D of key ({dk}) must equal that of query ({d}) ({ref})",
       "rule 6"),
    _r("R7", B, INVALID, "value", "value head dim Dv={dv} must be <= query head dim D={d} "
       "({ref})", "rule 7"),
    _r("R8", B, NULLPTR, "{name}", "{name} is None while the other rope input is given ({ref})",
       "rule 8"),
    _r("R8_both", B, NULLPTR, "query_rope", _ROPE_BOTH, "rule 8", stricter=True),
    _r("R9", B, INVALID, "{name}", "rope head dim Dr={shape[2]} of {name} must be <= D={d} ({ref})",
       "rule 9"),
    _r("R10", B, INVALID, "{name}", "{name} must be bfloat16 (ml_dtypes.bfloat16), got {dtype}"
       + _BF16_HINT.replace("{what}", "op") + " ({ref})", "rule 10"),
    _r("R11", B, INVALID, "sparse_mode", "sparse_mode 6 (prefix compression) is not supported "
       "by V3 ({ref})", "rule 11"),
    _r("R12", B, NULLPTR, "atten_mask", _MASK_NEEDED.replace("{where}", "{ref}"), "rule 12"),
    _r("R13", B, INVALID, "pse_shift", "pse_shift must be None: V3 supports no pse ({ref})",
       "rule 13"),
    _r("R14", B, INVALID, "drop_mask", "drop_mask must be None: V3 supports no dropout ({ref})",
       "rule 14"),
    _r("R15", B, INVALID, "keep_prob", "keep_prob must be 1.0 (no dropout), got {keep_prob} "
       "({ref})", "rule 15"),
    _r("R16", B, INVALID, "query", "head dims need padding, which V3 rejects: {reason} ({ref})",
       "rule 16"),
    _r("R_eod", B, INVALID, "{name}", "{problem} ({ref})", "rule EOD", releases=EOD_RELEASES),
    # ---- tiling (161001), rules 17-30, after the empty-tensor path
    _r("R18", B, NULLPTR, "{name}", "{name} is required and must not be a scalar ({ref})",
       "rule 18"),
    _r("R19", B, NULLPTR, "head_num", "head_num={heads} must equal query.shape[1]={n1} ({ref})",
       "rule 19"),
    _r("R_empty", B, 0, "", "", "rule 3"),
    _r("R17", B, NULLPTR, "keep_prob", "keep_prob must be 1.0, got {keep_prob} ({ref})",
       "rule 17"),
    _r("R20", B, NULLPTR, "{name}", "{name} must be float32, got {dtype} ({ref})", "rule 20"),
    _r("R20_attn", B, NULLPTR, "attention_in", "attention_in dtype {attention_in.dtype} must "
       "equal the query dtype {query.dtype} ({ref})", "rule 20"),
    _r("R21", B, NULLPTR, "{name}", "{name} shape must be [T1, N1, 8] = [{t1}, {n1}, 8], got "
       "{shape}{hint} ({ref})", "rule 21"),
    _r("R21_attn", B, NULLPTR, "attention_in", "attention_in shape {attention_in.shape} must "
       "match query {query.shape} except the last dim ({ref})", "rule 21"),
    _r("R22", B, NULLPTR, "query", "T1, N1 and D must be > 0, got shape {query.shape} ({ref})",
       "rule 22"),
    # ---- the forward's op-API checks, F1-F8
    _r("F1", F, NULLPTR, "{name}", "{name} is required ({ref})", "rule F1"),
    _r("F1_layout", F, NULLPTR, "input_layout", "input_layout is None; it must be 'TND' "
       "({ref})", "rule F1"),
    _r("F2", F, 0, "", "", "rule F2"),
    _r("F3", F, INVALID, "input_layout", "input_layout must be exactly 'TND', got "
       "{input_layout!r} ({ref})", "rule F3"),
    _r("F4", F, INVALID, "{name}", "{name} dtype {dtype} must equal the query dtype "
       "{query.dtype} ({ref})", "rule F4"),
    _r("F4_pse", F, INVALID, "pse_shift", "pse_type {pse_type} needs pse_shift ({ref})",
       "rule F4"),
    _r("F4_pse_dtype", F, INVALID, "pse_shift", "pse_shift dtype {pse_shift.dtype} must equal "
       "the query dtype {query.dtype} ({ref})", "rule F4"),
    _r("F5_heads", F, INVALID, "head_num", "head_num must be > 0, got {heads} ({ref})",
       "rule F5"),
    _r("F5_rank", F, INVALID, "query", "query must be 3-D [T1, N1, D] for TND, got shape "
       "{query.shape} ({ref})", "rule F5"),
    _r("F5_kv_rank", F, INVALID, "{name}", "{name} needs 3 dims, got shape {shape} (the device "
       "reads dims 1 and 2 of it; {ref})", "rule F5", stricter=True),
    _r("F5_d", F, INVALID, "key", "head dim D of key ({dk}) must equal that of query ({d}) "
       "({ref})", "rule F5"),
    _r("F5_dv", F, INVALID, "value", "value head dim Dv={dv} must be <= query head dim D={d} "
       "({ref})", "rule F5"),
    _r("F5_max_d", F, INVALID, "query", "head dim D={d} must be <= {limit} ({ref})", "rule F5"),
    _r("F6_rope", F, NULLPTR, "{name}", "{name} is None while the other rope input is given "
       "({ref})", "rule F6"),
    _r("F6_rope_both", F, NULLPTR, "query_rope", _ROPE_BOTH, "rule F6", stricter=True),
    _r("F6_rope_rank", F, NULLPTR, "{name}", "{name} needs 3 dims, got shape {shape} (the "
       "device reads dim 2 of it; {ref})", "rule F6", stricter=True),
    _r("F6_dr", F, NULLPTR, "{name}", "rope head dim Dr={shape[2]} of {name} must be <= D={d} "
       "({ref})", "rule F6"),
    _r("F6_bf16", F, NULLPTR, "{name}", "{name} must be bfloat16 (ml_dtypes.bfloat16), got "
       "{dtype}" + _BF16_HINT.replace("{what}", "forward") + " ({ref})", "rule F6"),
    _r("F6_sparse6", F, NULLPTR, "sparse_mode", "sparse_mode 6 (prefix compression) is not "
       "supported with rope inputs ({ref})", "rule F6"),
    _r("F6_mask", F, NULLPTR, "atten_mask", _MASK_NEEDED.replace("{where}", "forward rule F6"),
       "rule F6"),
    _r("F6_pse", F, NULLPTR, "pse_shift", "pse_shift must be None with rope inputs ({ref})",
       "rule F6"),
    _r("F6_drop", F, NULLPTR, "drop_mask", "drop_mask must be None with rope inputs ({ref})",
       "rule F6"),
    _r("F6_keep", F, NULLPTR, "keep_prob", "keep_prob must be 1.0 with rope inputs, got "
       "{keep_prob} ({ref})", "rule F6"),
    _r("F6_pad", F, NULLPTR, "query", "head dims D={d}, Dv={dv} would be padded, which the "
       "forward rejects with rope inputs: D and Dv must be multiples of 16 (D < 196) or 128, "
       "D == Dv when D is 64 or 80 (or 88), unless D < 96 with every KV length <= 1024 and the "
       "last query end < 163840 ({ref})", "rule F6"),
    _r("F7_keep", F, NULLPTR, "keep_prob", "keep_prob must be in (0, 1], got {keep_prob} "
       "({ref})", "rule F7"),
    _r("F7_pse", F, NULLPTR, "pse_type", "pse_type must be in [0, 4), got {pse_type} ({ref})",
       "rule F7"),
    _r("F8", F, NULLPTR, "key", "key must be 3-D [T2, N2, D] for TND, got shape {key.shape} "
       "({ref})", "rule F8"),
    # ---- both: the cumulative length arrays (rule 23 = F9)
    _r("R23_q", BF, NULLPTR, "actual_seq_qlen", "actual_seq_qlen is required ({ref})",
       "rule 23"),
    _r("R23_kv", BF, NULLPTR, "actual_seq_kvlen", "actual_seq_kvlen is required ({ref})",
       "rule 23"),
    _r("R23_empty", BF, NULLPTR, "actual_seq_qlen", "actual_seq_qlen must have at least one "
       "entry ({ref})", "rule 23"),
    _r("R23_len", BF, NULLPTR, "actual_seq_kvlen", "actual_seq_kvlen has {nkv} entries but "
       "actual_seq_qlen has {nq}; they must be equal ({ref})", "rule 23"),
    _r("R24_rank", B, NULLPTR, "query", "query must be 3-D [T, N, D] for TND, got shape "
       "{query.shape} ({ref})", "rule 24"),
    _r("R24_n2", B, NULLPTR, "key", "key heads N2={n2} must be >= 1 and <= query heads N1={n1} "
       "({ref})", "rule 24"),
    _r("R24_mod", B, NULLPTR, "key", "query heads N1={n1} must be a multiple of key heads "
       "N2={n2} (the device fails in the softmax-shape check; {ref})", "rule 24"),
    _r("R25_dy", B, NULLPTR, "dy", "dy shape {dy.shape} must equal query's {query.shape} except "
       "the last dim, which must be <= D ({ref})", "rule 25"),
    _r("R25_value", B, NULLPTR, "value", "value shape {value.shape} must equal key's "
       "{key.shape} except the last dim, which must be <= that of key ({ref})", "rule 25"),
    _r("R26", B, NULLPTR, "sparse_mode", "sparse_mode must be in 0..8 (not 6), got "
       "{sparse_mode} ({ref})", "rule 26"),
    _r("F10", F, NULLPTR, "{name}", "{tname} = {total} is below the sum of the sequence lengths "
       "of {name} ({need}){hint} ({ref})", "rule F10"),
    _r("F_eod", F, NULLPTR, "{name}", "{problem} (the forward's tiling fails; {ref})",
       "rule EOD", releases=EOD_RELEASES),
    _r("F11_heads", F, NULLPTR, "head_num", "head_num={heads} must equal query.shape[1]={n1} "
       "({ref})", "rule F11"),
    _r("F11_n2", F, NULLPTR, "key", "key heads N2={n2} must be >= 1 and <= query heads N1={n1} "
       "({ref})", "rule F11"),
    _r("F11_d", F, NULLPTR, "query", "head dim D must be > 0, got shape {query.shape} ({ref})",
       "rule F11"),
    _r("F11_mod", F, NULLPTR, "key", "query heads N1={n1} must be a multiple of key heads "
       "N2={n2} ({ref})", "rule F11"),
    _r("F12", F, NULLPTR, "pse_type", "pse_type must be 1 when pse_shift is None, got "
       "{pse_type} ({ref})", "rule F12"),
    # ---- both: the attention mask (rule 27 = F12) and the tokens (rule 28 = F14)
    _r("R27_dtype", BF, NULLPTR, "atten_mask", "atten_mask must be bool or uint8, got "
       "{atten_mask.dtype} ({ref})", "rule 27"),
    _r("R27_rank", BF, NULLPTR, "atten_mask", "atten_mask must be 2-D or 4-D, got shape "
       "{atten_mask.shape} ({ref})", "rule 27"),
    _r("R27_lead", BF, NULLPTR, "atten_mask", "a 4-D atten_mask needs leading dims (B, N1), "
       "(B, 1) or (1, 1) with B={batch}, N1={n1}; got {lead}{hint} ({ref})", "rule 27"),
    _r("R27_compressed", BF, NULLPTR, "atten_mask", "sparse_mode {sparse_mode} needs the "
       "compressed 2048x2048 mask, got last dims {last}{hint} ({ref})", "rule 27"),
    _r("R27_dense", BF, NULLPTR, "atten_mask", "sparse_mode {sparse_mode} needs mask last dims "
       "[maxSq, maxSkv] = [{seqs.max_sq}, {seqs.max_skv}], got {last}{hint} ({ref})", "rule 27"),
    _r("F13", F, NULLPTR, "sparse_mode", "sparse_mode must be in 0..8 (not 6), got "
       "{sparse_mode} ({ref})", "rule 26"),
    _r("R28_mode0", BF, NULLPTR, "pre_tokens", "sparse_mode 0 tokens pre={pre_eff}, "
       "next={next_eff} are invalid for batch {b} (Sq={sq}, Skv={skv}): need -pre <= Skv, "
       "-next <= Sq and pre + next > 0 ({ref})", "rule 28"),
    _r("R28_band", BF, NULLPTR, "pre_tokens", "sparse_mode {sparse_mode} tokens pre={pre_eff}, "
       "next={next_eff} are invalid for batch {b} (Sq={sq}, Skv={skv}): need -pre <= Sq, "
       "-next <= Skv and pre + next > 0 ({ref})", "rule 28"),
    _r("R29", B, NULLPTR, "pse_type", "pse_type must be 1 when pse_shift is None, got "
       "{pse_type} ({ref})", "rule 29"),
    _r("R30", B, NULLPTR, "dy", "dy dtype {dy.dtype} must equal the query dtype {query.dtype} "
       "({ref})", "rule 30"),
    # ---- the package's own checks (stricter than the device)
    _r("S1", B, NULLPTR, "key", "key must be 3-D [T2, N2, D], got shape {key.shape} ({ref})",
       "S1", stricter=True),
    _r("S2", B, NULLPTR, "{name}", "{name} last dim {shape[2]} must equal the value head dim "
       "Dv={dv} (the kernel reads [T1, N1, Dv] rows) ({ref})", "S2", stricter=True),
    _r("SF1", F, NULLPTR, "value", "value shape {value.shape} must be [T2, N2, Dv] = "
       "[{t2}, {n2}, {dv}] (T2, N2 of key; the kernel would read out of bounds)", "SF1",
       stricter=True),
    _r("S3_heads", BF, INVALID, "query", "N1={n1} exceeds the documented limit of {limit} heads "
       "({ref})", "S3", stricter=True),
    _r("S3_dim", BF, INVALID, "query", "D={d} exceeds the documented limit of {limit} ({ref})",
       "S3", stricter=True),
    _r("S3_tokens", BF, INVALID, "{name}", "T={shape[0]} of {name} exceeds the documented limit of "
       "{limit} tokens; split the batch into several calls ({ref})", "S3", stricter=True),
    _r("S3_batch", BF, INVALID, "actual_seq_qlen", "{nq} sequences exceed the documented limit "
       "of {limit} ({ref})", "S3", stricter=True),
    _r("S4", BF, INVALID, "{name}", "{problem} ({ref})", "S4", stricter=True),
    _r("S5_q", BF, INVALID, "query_rope", "query_rope shape {query_rope.shape} must be "
       "[T1, N1, Dr] = {want} (T1, N1 of query) ({ref})", "S5", stricter=True),
    _r("S5_k", BF, INVALID, "key_rope", "key_rope shape {key_rope.shape} must be [T2, N2, Dr] = "
       "{want} (T2, N2 of key, Dr of query_rope){hint} ({ref})", "S5", stricter=True),
    _r("S5_dr", BF, INVALID, "query_rope", "rope head dim Dr={dr} must be a multiple of 8 "
       "(docs) ({ref})", "S5", stricter=True),
    _r("S6_sample", BF, INVALID, "atten_mask", _NOT_CANONICAL + "a sample of this device mask "
       "differs from it. Upload aclnn_fag.masks.compressed_causal_mask() ({ref})", "S6",
       stricter=True, data=True),
    _r("S6", BF, INVALID, "atten_mask", _NOT_CANONICAL + "with other content the device's "
       "result depends on its tiling. Use aclnn_fag.masks.compressed_causal_mask(){hint} "
       "({ref})", "S6", stricter=True, data=True),
    _r("S7", BF, INVALID, "pre_tokens", "pre_tokens={pre_eff} + Sq - Skv of batch {b} overflows "
       "the kernel's int32 block-skip bound (blocks would be wrongly skipped); pass a smaller "
       "pre_tokens (any value >= the longest sequence gives the same kept set) ({ref})", "S7",
       stricter=True),
    _r("S8", B, INVALID, "{name}", _COPIES + "{sampled} ({ref})", "S8", stricter=True,
       data=True),
    _r("S9", B, INVALID, "softmax_max", "softmax_max/softmax_sum look token-major ([T, N] "
       "values broadcast to [T, N, 8]); the device reads them per batch as [N, Sq_b, 8] blocks "
       "and would compute wrong gradients without any error. Convert with aclnn_fag."
       "softmax_layout.device_stats_from_token_major(stats[..., 0], actual_seq_qlen) ({ref})",
       "S9", stricter=True, data=True),
)


def release_key(release) -> str:
    """The key of :data:`RELEASES` for an :class:`aclnn_fag.releases.Release` ("9.1")."""
    return "%d.%d" % release.version[:2]


def rules_for(op_key: str, release: Optional[str] = None) -> Tuple[Rule, ...]:
    """The rows ``op_key`` runs, in order (those of ``release`` only, when given)."""
    return tuple(r for r in RULES if op_key in r.ops
                 and (release is None or release in r.releases))
