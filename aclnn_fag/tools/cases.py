"""Test cases as data: shapes, arguments and a seed, never arrays (the suite format:
docs/parity.md, "1. Run")."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import pathlib
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np

from ..api import flash_attention_forward
from ..call import INT32_MAX
from ..constants import BF16
from ..masks import compressed_causal_mask
from ..semantics.sparse import COMPRESSED_MODES
from ..seqlens import lengths_to_cumulative
from ..spec import FORWARD_V3

__all__ = ["CaseSpec", "Suite", "SuiteError", "DOC_EXAMPLE", "load_suite", "default_suite_path",
           "select_cases", "make_inputs", "forward", "with_stats", "with_forward", "case_arguments",
           "MASK_KINDS", "FORWARD_KEYS", "forward_arguments"]

SUITE_SCHEMA = "aclnn_fag.suite/1"
MASK_KINDS = ("zeros", "causal", "band", "random")
INT_KEYS = ("heads", "kv_heads", "d", "d_rope", "d_v", "sparse_mode", "pre_tokens",
            "next_tokens", "seed")
# the backward's keyword arguments the forward takes too
FORWARD_KEYS = FORWARD_V3.inputs + FORWARD_V3.int_arrays + FORWARD_V3.attrs + ("deterministic",)


class SuiteError(ValueError):
    """A suite file or case description is malformed."""


@dataclass(frozen=True)
class CaseSpec:
    """One case: everything needed to regenerate its inputs bit for bit."""

    name: str
    lengths_q: tuple
    heads: int
    d: int = 128
    d_rope: int = 64
    d_v: Optional[int] = None
    lengths_kv: Optional[tuple] = None
    kv_heads: Optional[int] = None
    sparse_mode: int = 0
    pre_tokens: int = INT32_MAX
    next_tokens: int = INT32_MAX
    scale: Optional[float] = None
    mask: str = "zeros"
    mask_density: float = 0.3
    deterministic: bool = False
    seed: int = 0
    tags: tuple = ()
    note: str = ""

    @property
    def kv_lengths(self) -> tuple:
        return tuple(self.lengths_kv if self.lengths_kv is not None else self.lengths_q)

    @property
    def n2(self) -> int:
        return self.kv_heads if self.kv_heads is not None else self.heads

    @property
    def dv(self) -> int:
        return self.d_v if self.d_v is not None else self.d

    @property
    def scale_value(self) -> float:
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.d + self.d_rope)

    @property
    def t1(self) -> int:
        return int(sum(self.lengths_q))

    @property
    def t2(self) -> int:
        return int(sum(self.kv_lengths))

    @property
    def compressed_mask(self) -> bool:
        return self.sparse_mode in COMPRESSED_MODES

    def to_dict(self) -> dict:
        """The JSON form (only the keys that differ from the defaults, plus the essentials)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "lengths_q", "heads", "seed", "tags") or value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, raw: dict, defaults: Optional[dict] = None) -> "CaseSpec":
        data = {**(defaults or {}), **raw}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        label = data.get("name", "<unnamed case>")
        if unknown:
            raise SuiteError(f"case {label!r}: unknown keys {unknown} (known: {sorted(known)})")
        for key in ("name", "lengths_q", "heads"):
            if key not in data:
                raise SuiteError(f"case {label!r}: missing key {key!r}")
        try:
            for key in ("lengths_q", "lengths_kv", "tags"):
                value = data.get(key)
                if value is not None and (isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")):
                    raise TypeError(f"{key} must be a list")
            for key in ("lengths_q", "lengths_kv"):
                if key == "lengths_q" or data.get(key) is not None:
                    data[key] = tuple(_as_int(key, x) for x in data[key])
            for key in INT_KEYS:
                if data.get(key) is not None:
                    data[key] = _as_int(key, data[key])
            data["tags"] = tuple(str(t) for t in data.get("tags", ()))
            spec = cls(**data)
        except (TypeError, ValueError) as exc:
            raise SuiteError(f"case {label!r}: {exc}") from None
        spec.check()
        return spec

    def check(self) -> None:
        """Structural checks (the op's own rules are left to the validator)."""
        problems = [text for bad, text in (
            (not self.lengths_q, "lengths_q is empty"),
            (len(self.kv_lengths) != len(self.lengths_q),
             "lengths_kv must have as many entries as lengths_q"),
            (any(x < 0 for x in self.lengths_q + self.kv_lengths), "lengths must be >= 0"),
            (self.mask not in MASK_KINDS, f"mask must be one of {MASK_KINDS}, got {self.mask!r}"),
            (not 0.0 <= self.mask_density < 1.0, "mask_density must be in [0, 1)")) if bad]
        if problems:
            raise SuiteError(f"case {self.name!r}: " + "; ".join(problems))


def _as_int(key, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{key} must be an integer, got {value!r}")
    return int(value)


# The documentation's example (docs of aclnnFlashAttentionUnpaddingScoreGradV3, "调用示例").
DOC_EXAMPLE = CaseSpec(name="doc-example", lengths_q=(256,), heads=1, d=128, d_rope=64, d_v=128,
                       sparse_mode=0, pre_tokens=65536, next_tokens=65536, scale=0.088388,
                       mask="zeros", seed=0, tags=("doc", "quick"),
                       note="the operator documentation's example, random bf16 data")


@dataclass(frozen=True)
class Suite:
    """A loaded suite file."""

    path: str
    description: str
    cases: tuple
    default_exclude_tags: tuple = ()
    raw_sha256: str = ""


def default_suite_path() -> pathlib.Path:
    """The shipped parity suite (package data)."""
    return pathlib.Path(__file__).resolve().parent / "data" / "parity_suite.json"


def load_suite(path=None) -> Suite:
    """Read and check a suite file (default: the shipped one)."""
    p = pathlib.Path(path) if path is not None else default_suite_path()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read suite file {p}: {exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuiteError(f"suite file {p} is not valid JSON: {exc}") from None
    if isinstance(raw, list):
        raw = {"cases": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("cases"), list):
        raise SuiteError(f"suite file {p}: expected an object with a 'cases' list")
    schema = raw.get("schema", SUITE_SCHEMA)
    if schema != SUITE_SCHEMA:
        raise SuiteError(f"suite file {p}: unsupported schema {schema!r} (expected {SUITE_SCHEMA!r})")
    cases = tuple(CaseSpec.from_dict(c, raw.get("defaults", {})) for c in raw["cases"])
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SuiteError(f"suite file {p}: duplicate case names {dup}")
    return Suite(path=str(p), description=str(raw.get("description", "")), cases=cases,
                 default_exclude_tags=tuple(raw.get("default_exclude_tags", ())),
                 raw_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


def select_cases(suite: Suite, tags=None, names=None, include_all=False) -> list:
    """Cases by ``names`` (globs) and/or ``tags`` (any); with neither, all but those carrying a tag
    of ``suite.default_exclude_tags`` (unless ``include_all``)."""
    excluded = set() if names or tags or include_all else set(suite.default_exclude_tags)
    return [case for case in suite.cases
            if (not names or any(fnmatch.fnmatchcase(case.name, pat) for pat in names))
            and (not tags or set(tags) & set(case.tags)) and not set(case.tags) & excluded]


def _explicit_mask(spec: CaseSpec, rng) -> np.ndarray:
    max_sq, max_skv = max(spec.lengths_q), max(spec.kv_lengths)
    if spec.mask == "zeros":
        return np.zeros((max_sq, max_skv), dtype=np.uint8)
    diff = np.arange(max_skv)[None, :] - np.arange(max_sq)[:, None]     # j - i
    if spec.mask == "causal":
        return (diff > 0).astype(np.uint8)
    if spec.mask == "band":
        return ((diff > spec.next_tokens) | (-diff > spec.pre_tokens)).astype(np.uint8)
    mask = (rng.random((max_sq, max_skv), dtype=np.float32) < spec.mask_density).astype(np.uint8)
    if max_skv:
        # never a fully masked row: keep the diagonal and column 0 (a key every batch has)
        rows = np.arange(max_sq)
        mask[rows, np.minimum(rows, max_skv - 1)] = 0
        mask[:, 0] = 0
    return mask


def make_inputs(spec: CaseSpec) -> dict:
    """The backward's keyword arguments without the forward results, drawn from
    ``default_rng(seed)`` in order: query ... dy (standard normal rounded to bf16), the mask."""
    rng = np.random.default_rng(spec.seed)
    shapes = {"query": (spec.t1, spec.heads, spec.d), "query_rope": (spec.t1, spec.heads, spec.d_rope),
              "key": (spec.t2, spec.n2, spec.d), "key_rope": (spec.t2, spec.n2, spec.d_rope),
              "value": (spec.t2, spec.n2, spec.dv), "dy": (spec.t1, spec.heads, spec.dv)}
    out = {name: rng.standard_normal(shape, dtype=np.float32).astype(BF16)
           for name, shape in shapes.items()}
    mask = compressed_causal_mask() if spec.compressed_mask else _explicit_mask(spec, rng)
    return dict(out, atten_mask=mask,
                actual_seq_qlen=[int(x) for x in lengths_to_cumulative(spec.lengths_q)],
                actual_seq_kvlen=[int(x) for x in lengths_to_cumulative(spec.kv_lengths)],
                scale_value=spec.scale_value, pre_tokens=spec.pre_tokens,
                next_tokens=spec.next_tokens, sparse_mode=spec.sparse_mode,
                deterministic=spec.deterministic)


def forward_arguments(inputs: dict) -> dict:
    """The forward's keyword arguments out of the backward's."""
    return {k: inputs[k] for k in FORWARD_KEYS if k in inputs}


def forward(inputs: dict, backend: str = "numpy", precision: str = "device"):
    """The forward (FagForward) of the backward's keyword arguments ``inputs``."""
    return flash_attention_forward(**forward_arguments(inputs), backend=backend,
                                   precision=precision)


def with_stats(inputs: dict, fwd) -> dict:
    """``inputs`` plus attention_in / softmax_max / softmax_sum from ``fwd``, in the op's dtypes
    (an fp32/fp64 forward is rounded to them)."""
    return dict(inputs, attention_in=np.asarray(fwd.attention_out).astype(inputs["query"].dtype,
                                                                          copy=False),
                softmax_max=np.asarray(fwd.softmax_max, np.float32),
                softmax_sum=np.asarray(fwd.softmax_sum, np.float32))


def with_forward(inputs: dict, backend: str = "numpy") -> dict:
    """``inputs`` plus the results of the device-precision forward on ``backend``."""
    return with_stats(inputs, forward(inputs, backend))


def case_arguments(spec: CaseSpec, inputs: dict) -> dict:
    """The exact call as JSON-ready data: scalar arguments, shapes and dtypes, seed."""
    arrays = {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in inputs.items() if not isinstance(v, np.ndarray)}
    scalars.update(head_num=spec.heads, input_layout="TND", keep_prob=1.0, inner_precise=0,
                   pse_type=1)
    return {"seed": spec.seed, "mask": "compressed_causal_mask" if spec.compressed_mask else spec.mask,
            "arguments": scalars,
            "shapes": {k: list(v.shape) for k, v in arrays.items()},
            "dtypes": {k: str(v.dtype) for k, v in arrays.items()},
            "spec": spec.to_dict()}
