"""The one validation driver of both ops: the table's rows of an op run in order on the call's
:class:`~.context.Context`; the first that fails raises its code's error (161001
``ParamNullptrError``, 161002 ``ParamInvalidError``) with the row's parameter, message and
stricter flag; a row of code 0 ends validation with an empty call (the op succeeds without
computing). Host arrays and device-resident inputs go through the same rows: only the data
rules read differently (:mod:`.data_rules`).

Verdict cache: every rule except the data rules (S6, S8, S9) is a function of the arguments'
shapes, dtypes, strides, Python types and scalar / int-list values. A call whose description
(:func:`.arguments.signature`, compared by value, never by identity) equals one that passed
before passes again: only the data rules run on its (new) data. Calls that would warn are
not cached (the warnings must be emitted every time).
"""

from __future__ import annotations

import operator
import warnings

import numpy as np

from ..call import FagCall, FwdCall
from ..constants import BF16
from ..errors import IgnoredArgumentWarning, caller_stacklevel, error_class_for
from ..seqlens import seq_info
from ..spec import BACKWARD_V3, FORWARD_V3, OpVersion
from . import data_rules
from .arguments import IGNORED, names, normalize, signature, start_indices
from .checks import CHECKS
from .context import Context, for_call
from .table import RULES, citation, rules_for

__all__ = ["validate", "validate_backward", "validate_backward_args", "validate_forward",
           "check_data_rules", "run_rules"]

_CALLS = {BACKWARD_V3.key: FagCall, FORWARD_V3.key: FwdCall}
_DERIVED = ("head_num", "seqs", "pre_eff", "next_eff", "band_index", "empty_result")
_PLANS = {op.key: tuple((r, CHECKS[r.id]) for r in rules_for(op.key))
          for op in (BACKWARD_V3, FORWARD_V3)}
_DATA_PLAN = tuple(p for p in _PLANS[BACKWARD_V3.key] if p[0].data)


class _Fields(dict):
    """A rule's message fields: those its check returned, then the call's context."""

    def __init__(self, c, extra, ref):
        super().__init__(extra if type(extra) is dict else ())
        self["ref"] = ref
        self.context = c

    def __missing__(self, key):
        return getattr(self.context, key)


def _run(plan, c):
    """The rows of ``plan`` in order: None when all hold, the empty call's fields when a row of
    code 0 ends validation; raises the first failure."""
    for rule, check in plan:
        if rule.data and not c.check_data:
            continue
        out = check(c)
        if not out:
            continue
        if rule.code == 0:
            return out
        fields = _Fields(c, out, citation(rule.section))
        raise error_class_for(rule.code)(rule.message.format_map(fields), code=rule.code,
                                         param=rule.param.format_map(fields),
                                         stricter=rule.stricter)
    return None


def run_rules(ids, c) -> None:
    """The rows ``ids`` alone, in table order, on a context (anything with the attributes
    their checks read, and ``check_data``): raises the first failure."""
    _run(tuple((r, CHECKS[r.id]) for r in RULES if r.id in ids), c)


def _call(op: OpVersion, c: Context, empty):
    """The validated call (FagCall / FwdCall) of a context that passed."""
    cls = _CALLS[op.key]
    fields = {f: c.__dict__[f] for f in cls.__dataclass_fields__ if f not in _DERIVED}
    fields.update(actual_seq_qlen=c.qlen or (), actual_seq_kvlen=c.kvlen or (),
                  deterministic=bool(c.deterministic))
    if empty is not None:
        # Nothing is computed. Rule 3 succeeds before the rope inputs are looked at, so one
        # may be None: it gets an empty placeholder and its gradient comes back empty.
        for name, like in (("query_rope", c.query), ("key_rope", c.key)):
            if fields[name] is None:
                fields[name] = np.zeros(like.shape[:-1] + (0,), BF16)
        head_num = empty["head_num"]
        return cls(head_num=head_num if head_num is not None else 0, seqs=seq_info((), ()),
                   pre_eff=0, next_eff=0, band_index=-1, empty_result=True, **fields)
    return cls(head_num=c.heads, seqs=c.seqs, pre_eff=c.pre_eff, next_eff=c.next_eff,
               band_index=c.band_index, **fields)


def validate(op: OpVersion, args: dict, check_data: bool = True):
    """Every rule of ``op`` in the device's order on ``args`` (keyed by parameter name, with
    ``deterministic``); returns the FagCall / FwdCall. ``check_data=False`` skips the rules
    that read tensor data (S6, S8, S9); with device-resident inputs they read back only a
    bounded sample (:mod:`.device_sample`)."""
    det = args.pop("deterministic", False)
    args = normalize(op, args)
    args["deterministic"] = det
    args["q_start_idx"], args["kv_start_idx"] = start_indices(args["q_start_idx"],
                                                              args["kv_start_idx"])
    c = Context(args, check_data)
    c.samples = []
    empty = _run(_PLANS[op.key], c)
    if empty is None:
        for name in IGNORED:
            if args.get(name) is not None:
                warnings.warn(f"parameter '{name}' is accepted by the op but not used; it is "
                              "ignored", IgnoredArgumentWarning, stacklevel=caller_stacklevel())
        data_rules.warn_stats_mismatch(c.samples, c.scale_value)
    return _call(op, c, empty)


def check_data_rules(call: FagCall, check_data: bool = True) -> None:
    """S6, S8, S9 (and the mismatch warning) of a backward call whose other rules passed."""
    if check_data:
        c = for_call(call)
        c.samples = []
        _run(_DATA_PLAN, c)
        data_rules.warn_stats_mismatch(c.samples, c.scale_value)


# ---------------------------------------------------------------- the public entry points
_TENSORS, _SCALARS, _LISTS = names(BACKWARD_V3)
_VERDICTS: dict = {}
_VERDICTS_MAX = 256
_new = object.__new__
# the tensor arguments that are FagCall fields (pse_shift, drop_mask, padding_mask and
# softmax_in are not), and a getter of them from the tensors in spec order
_CALL_TENSORS = tuple(n for n in _TENSORS if n in FagCall.__dataclass_fields__)
_call_tensors = operator.itemgetter(*(_TENSORS.index(n) for n in _CALL_TENSORS))


def _would_warn(call: FagCall, args: dict) -> bool:
    ends_q, ends_kv = call.actual_seq_qlen, call.actual_seq_kvlen
    return (any(args.get(n) is not None for n in IGNORED) or call.empty_result
            or not ends_q or not ends_kv or ends_q[-1] < call.query.shape[0]
            or ends_kv[-1] < call.key.shape[0])


def validate_backward_args(tensors: tuple, scalars: tuple, lists: tuple,
                           check_data: bool = True) -> FagCall:
    """``validate_backward`` on the arguments as three tuples, in the orders of
    ``arguments.names(BACKWARD_V3)`` (the public call's form: no keyword arguments rebuilt
    into dicts on the cached path)."""
    key = signature(tensors, scalars, lists)
    try:
        cached = _VERDICTS.get(key)       # None for key None (never stored)
    except TypeError:                     # unhashable: not cached
        cached = key = None
    if cached is not None:
        call = _new(FagCall)
        fields = call.__dict__
        fields.update(cached.__dict__)
        fields.update(zip(_CALL_TENSORS, _call_tensors(tensors)))
        check_data_rules(call, check_data)
        return call
    args = dict(zip(_TENSORS, tensors))
    args.update(zip(_SCALARS, scalars))
    args.update(zip(_LISTS, lists))
    call = validate(BACKWARD_V3, dict(args), check_data)
    if key is not None and not _would_warn(call, args):
        if len(_VERDICTS) >= _VERDICTS_MAX:
            _VERDICTS.clear()
        bare = _new(FagCall)                     # no reference to the caller's tensors
        bare.__dict__.update(call.__dict__)
        bare.__dict__.update(dict.fromkeys(_CALL_TENSORS))
        _VERDICTS[key] = bare
    return call


def validate_backward(query, query_rope, key, key_rope, value, dy, *, atten_mask, softmax_max,
                      softmax_sum, attention_in, actual_seq_qlen, actual_seq_kvlen, scale_value,
                      check_data=True, **optional) -> FagCall:
    """Check every rule of docs/validation.md in the device's order, then S1-S9; return the
    FagCall. The optional keywords (keep_prob, pre_tokens, next_tokens, head_num,
    input_layout, inner_precise, sparse_mode, pse_type, pse_shift, drop_mask, padding_mask,
    softmax_in, prefix, q_start_idx, kv_start_idx, deterministic) default as aclnn_fag/spec.py
    says. Start indices left None become (0,) (:func:`.arguments.start_indices`)."""
    args = _with_defaults(BACKWARD_V3, optional, query=query, query_rope=query_rope, key=key,
                          key_rope=key_rope, value=value, dy=dy, atten_mask=atten_mask,
                          softmax_max=softmax_max, softmax_sum=softmax_sum,
                          attention_in=attention_in, actual_seq_qlen=actual_seq_qlen,
                          actual_seq_kvlen=actual_seq_kvlen, scale_value=scale_value)
    return validate_backward_args(_get_tensors(args), _get_scalars(args), _get_lists(args),
                                  check_data)


def validate_forward(query, query_rope, key, key_rope, value, *, atten_mask, actual_seq_qlen,
                     actual_seq_kvlen, scale_value, check_data=True, **optional) -> FwdCall:
    """The forward's checks in its order and with its codes (docs/forward.md, "Validation",
    F1-F14), then the package's own (SF1, S3-S7); returns the FwdCall. Optional keywords as
    for validate_backward (the forward has no softmax_in)."""
    args = _with_defaults(FORWARD_V3, optional, query=query, query_rope=query_rope, key=key,
                          key_rope=key_rope, value=value, atten_mask=atten_mask,
                          actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen,
                          scale_value=scale_value)
    return validate(FORWARD_V3, args, check_data)


_DEFAULTS = {op.key: dict({p.name: p.default for p in op.params
                            if p.role in ("input", "int_array", "attr")}, deterministic=False)
             for op in (BACKWARD_V3, FORWARD_V3)}
_get_tensors, _get_scalars, _get_lists = (operator.itemgetter(*n) for n in names(BACKWARD_V3))


def _with_defaults(op: OpVersion, optional: dict, **given) -> dict:
    """The inputs, int arrays and attributes of ``op`` (and deterministic): the given ones,
    the spec's defaults for the rest; an unknown keyword is a TypeError, as in a call."""
    args = dict(_DEFAULTS[op.key])
    unknown = (optional.keys() - args.keys()) or (optional.keys() & given.keys())
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    args.update(given)
    args.update(optional)
    return args
