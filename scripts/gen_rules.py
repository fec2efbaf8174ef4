"""Write the artefacts generated from aclnn_fag/rules/table.py: native_stubs/src/rule_table.h
(each rule's status code and message, per op, in order) and the rule tables of
docs/validation.md (between ``<!-- rules:NAME -->`` markers). ``--check`` writes nothing and
exits 1 when a committed copy is stale (tests/docs/test_generated_rules.py makes the same
check)."""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aclnn_fag.constants import LIMITS  # noqa: E402
from aclnn_fag.rules.data_rules import STATS_LAYOUT_MAX_SKV, STATS_LAYOUT_SAMPLES  # noqa: E402
from aclnn_fag.rules.table import RULES, citation, rules_for  # noqa: E402
from aclnn_fag.spec import BACKWARD_V3, FORWARD_V3  # noqa: E402

PREFIX = {BACKWARD_V3.key: "BWD", FORWARD_V3.key: "FWD"}
# the stand-in op's messages, per op and rule of aclnn_fag/rules/table.py, in the order its
# C checks report them: printf formats after "<phase-1 symbol>: "; "{ref}" is the citation
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
STUB_MESSAGES = {BACKWARD_V3.key: _STUB_B, FORWARD_V3.key: _STUB_F}


def stub_formats(op_key: str, rule) -> tuple:
    """The stand-in op's messages of ``rule`` for ``op_key``; () when the stub has none."""
    fmt = STUB_MESSAGES[op_key].get(rule.id, ())
    return (fmt,) if type(fmt) is str else fmt


_CODES = {161001: "ACLNN_ERR_PARAM_NULLPTR", 161002: "ACLNN_ERR_PARAM_INVALID"}


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def stub_header() -> str:
    """rule_table.h: ``#define <OP>_<id>[_<n>] <status>, "<symbol>: <message>"`` for every
    message of every rule the stub checks, in the table's order."""
    out = ["/* Generated by `python3 scripts/gen_rules.py` from aclnn_fag/rules/table.py -- do not",
           " * edit. Per op, each rule the stand-in op checks, in the order it checks them: its",
           " * status code and its message (a printf format), as FAIL_RULE(<OP>_<id>, ...) takes",
           " * them. */",
           "#ifndef ACLNN_FAG_STUB_RULE_TABLE_H", "#define ACLNN_FAG_STUB_RULE_TABLE_H", "",
           "/* S3's documented limits (aclnn_fag/constants.py) and S9's sampling (data_rules.py) "
           "*/"]
    consts = dict(HEADS=LIMITS["max_heads"], HEAD_DIM=LIMITS["max_head_dim"],
                  TOKENS=LIMITS["max_tokens"], BATCH=LIMITS["max_batch"])
    out += [f"#define STUB_LIMIT_{k} {v}" for k, v in consts.items()]
    out += [f"#define STUB_STATS_LAYOUT_SAMPLES {STATS_LAYOUT_SAMPLES}",
            f"#define STUB_STATS_LAYOUT_MAX_SKV {STATS_LAYOUT_MAX_SKV}", ""]
    for op in (BACKWARD_V3, FORWARD_V3):
        out.append(f"/* {op.phase1} */")
        for rule in rules_for(op.key):
            for n, fmt in enumerate(stub_formats(op.key, rule)):
                name = f"{PREFIX[op.key]}_{rule.id}" + (f"_{n + 1}" if n else "")
                text = f"{op.phase1}: " + fmt.replace("{ref}", citation(rule.section))
                out.append(f"#define {name} {_CODES[rule.code]}, {_c_string(text)}")
        out.append("")
    out.append("#endif")
    return "\n".join(out) + "\n"


def _code(section: str) -> str:
    rows = [r for r in RULES if r.section == section and BACKWARD_V3.key in r.ops]
    device = [r for r in rows if not r.stricter] or rows
    return "/".join(str(c) for c in sorted({r.code for r in device}, reverse=True))


def docs_table(which: str, old: str) -> str:
    """The table ``which`` ("device": rules 1-30, "own": S1-S9) of docs/validation.md: its
    rows and their words ("what fails") as ``old`` has them, the code and the rows of the
    table generated; a section of the backward's rows missing from ``old`` is an error."""
    device = which == "device"
    first = "rule" if device else "check"
    rows = [line[2:-2].split(" | ")[:2] for line in old.strip().split("\n")[2:]]
    prefix = "rule " if device else ""
    wanted = {r.section for r in RULES
              if BACKWARD_V3.key in r.ops and r.section.startswith("rule ") == device}
    if {prefix + label for label, _ in rows} != wanted:
        raise ValueError(f"docs/validation.md's {which} rule table needs one row for each of "
                         f"{sorted(wanted)}")
    lines = [f"| {first} | what fails | code | table rows (aclnn_fag/rules/table.py) |",
             "|---|---|---|---|"]
    for label, text in rows:
        section = prefix + label
        ids = ", ".join(f"`{r.id}`" for r in RULES
                        if r.section == section and BACKWARD_V3.key in r.ops)
        lines.append(f"| {label} | {text} | {_code(section)} | {ids} |")
    return "\n".join(lines)


def update_docs(text: str) -> str:
    """docs/validation.md with its generated tables replaced by the current ones."""
    for which in ("device", "own"):
        begin, end = f"<!-- rules:{which} -->", f"<!-- rules:{which}:end -->"
        pattern = re.escape(begin) + "(.*?)" + re.escape(end)
        text = re.sub(pattern, lambda m: f"{begin}\n{docs_table(which, m.group(1))}\n{end}",
                      text, count=1, flags=re.S)
    return text

TARGETS = {ROOT / "native_stubs" / "src" / "rule_table.h": lambda _old: stub_header(),
           ROOT / "docs" / "validation.md": update_docs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    stale = []
    for path, render in TARGETS.items():
        old = path.read_text() if path.exists() else ""
        new = render(old)
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
