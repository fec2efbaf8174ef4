"""Each op version as data: its C symbols, its ordered parameters with their C types and
roles, and the defaults the Python calls use (docs/abi.md §2; docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, Mapping, Tuple

from .constants import INT32_MAX

__all__ = ["Param", "OpVersion", "BACKWARD_V3", "FORWARD_V3", "OPS", "INT_ARRAYS", "ATTRIBUTES",
           "PHASE2_PARAMS"]

TENSOR, INT_ARRAY = "const aclTensor *", "const aclIntArray *"


@dataclass(frozen=True)
class Param:
    """One C parameter: ``name`` is the Python keyword, ``c_name`` the header's name."""

    name: str
    c_name: str
    c_type: str
    role: str      # input, int_array, attr, output, workspace_size, executor (C order)
    optional: bool = False       # a tensor the header names ``...Optional``
    default: object = None


@dataclass(frozen=True)
class OpVersion:
    """One op version: ``symbol`` is phase 2, ``symbol + "GetWorkspaceSize"`` phase 1."""

    key: str
    symbol: str
    header: str
    params: Tuple[Param, ...]
    output_like: Mapping[str, str] = field(default_factory=dict)
    optional_symbols: bool = False      # a CANN without this op still loads (the forward)

    phase1 = property(lambda self: self.symbol + "GetWorkspaceSize")
    phase2 = property(lambda self: self.symbol)

    def names(self, role: str) -> Tuple[str, ...]:
        return tuple(p.name for p in self.params if p.role == role)

    inputs = cached_property(lambda self: self.names("input"))
    int_arrays = cached_property(lambda self: self.names("int_array"))
    attrs = cached_property(lambda self: self.names("attr"))
    outputs = cached_property(lambda self: self.names("output"))

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def c_parameters(self) -> str:
        """The phase-1 parameter list as C text (``const aclTensor *query, ...``)."""
        return ", ".join(_c_decl(p) for p in self.params)

    def c_prototype(self, phase: int = 1) -> str:
        """``aclnnStatus <symbol>(...)`` of phase 1 or 2, on one line."""
        if phase == 1:
            return f"aclnnStatus {self.phase1}({self.c_parameters()})"
        return f"aclnnStatus {self.phase2}({', '.join(_c_decl(p) for p in PHASE2_PARAMS)})"


def _c_decl(p: Param) -> str:
    return f"{p.c_type}{p.c_name}" if p.c_type.endswith("*") else f"{p.c_type} {p.c_name}"


def _tensors(role: str, *names) -> Tuple[Param, ...]:
    """Tensors from (name, header name) pairs, optional exactly when the header says so."""
    return tuple(Param(n, c, TENSOR, role, c.endswith("Optional")) for n, c in names)


# The five int arrays and nine attributes both ops share, in their C order.
INT_ARRAYS = tuple(Param(n, c, INT_ARRAY, "int_array", True) for n, c in (
    ("prefix", "prefixOptional"), ("actual_seq_qlen", "actualSeqQLenOptional"),
    ("actual_seq_kvlen", "actualSeqKvLenOptional"), ("q_start_idx", "qStartIdxOptional"),
    ("kv_start_idx", "kvStartIdxOptional")))
ATTRIBUTES = (
    Param("scale_value", "scaleValue", "double", "attr", default=1.0),
    Param("keep_prob", "keepProb", "double", "attr", default=1.0),
    Param("pre_tokens", "preTokens", "int64_t", "attr", default=INT32_MAX),
    Param("next_tokens", "nextTokens", "int64_t", "attr", default=INT32_MAX),
    Param("head_num", "headNum", "int64_t", "attr", default=None),     # None: query.shape[1]
    Param("input_layout", "inputLayout", "char *", "attr", default="TND"),
    Param("inner_precise", "innerPrecise", "int64_t", "attr", default=0),
    Param("sparse_mode", "sparseMode", "int64_t", "attr", default=0),
    Param("pse_type", "pseType", "int64_t", "attr", default=1),
)
PHASE1_TAIL = (Param("workspace_size", "workspaceSize", "uint64_t *", "workspace_size"),
               Param("executor", "executor", "aclOpExecutor **", "executor"))
PHASE2_PARAMS = (Param("workspace", "workspace", "void *", "phase2"),
                 Param("workspace_size", "workspaceSize", "uint64_t", "phase2"),
                 Param("executor", "executor", "aclOpExecutor *", "phase2"),
                 Param("stream", "stream", "const aclrtStream", "phase2"))

# aclnnFlashAttentionUnpaddingScoreGradV3 (aclnnop/aclnn_flash_attention_score_grad.h): 36.
BACKWARD_V3 = OpVersion(
    key="backward_v3",
    symbol="aclnnFlashAttentionUnpaddingScoreGradV3",
    header="aclnnop/aclnn_flash_attention_score_grad.h",
    params=_tensors(
        "input", ("query", "query"), ("query_rope", "queryRope"), ("key", "keyIn"),
        ("key_rope", "keyInRope"), ("value", "value"), ("dy", "dy"),
        ("pse_shift", "pseShiftOptional"), ("drop_mask", "dropMaskOptional"),
        ("padding_mask", "paddingMaskOptional"), ("atten_mask", "attenMaskOptional"),
        ("softmax_max", "softmaxMaxOptional"), ("softmax_sum", "softmaxSumOptional"),
        ("softmax_in", "softmaxInOptional"), ("attention_in", "attentionInOptional"),
    ) + INT_ARRAYS + ATTRIBUTES + _tensors(
        "output", ("dq", "dqOut"), ("dq_rope", "dqRopeOut"), ("dk", "dkOut"),
        ("dk_rope", "dkRopeOut"), ("dv", "dvOut"), ("dpse", "dpseOut"),
    ) + PHASE1_TAIL,
    output_like={"dq": "query", "dq_rope": "query_rope", "dk": "key", "dk_rope": "key_rope",
                 "dv": "value"},
)

# aclnnFlashAttentionVarLenScoreV3 (aclnnop/aclnn_flash_attention_score.h): 29.
FORWARD_V3 = OpVersion(
    key="forward_v3",
    symbol="aclnnFlashAttentionVarLenScoreV3",
    header="aclnnop/aclnn_flash_attention_score.h",
    params=_tensors(
        "input", ("query", "query"), ("query_rope", "queryRope"), ("key", "key"),
        ("key_rope", "keyRope"), ("value", "value"), ("pse_shift", "realShiftOptional"),
        ("drop_mask", "dropMaskOptional"), ("padding_mask", "paddingMaskOptional"),
        ("atten_mask", "attenMaskOptional"),
    ) + INT_ARRAYS + ATTRIBUTES + _tensors(
        "output", ("softmax_max", "softmaxMaxOut"), ("softmax_sum", "softmaxSumOut"),
        ("softmax_out", "softmaxOutOut"), ("attention_out", "attentionOutOut"),
    ) + PHASE1_TAIL,
    optional_symbols=True,
)

OPS: Dict[str, OpVersion] = {op.key: op for op in (BACKWARD_V3, FORWARD_V3)}

assert len(BACKWARD_V3.params) == 36 and len(FORWARD_V3.params) == 29
