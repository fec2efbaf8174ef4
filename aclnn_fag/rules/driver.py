"""The one validation driver of both ops: an op's rows of the table (those of one CANN
release) run in order on the call's :class:`Context`; the first that fails raises its code's
error, a row of code 0 ends validation with an empty call. The verdict cache: every rule but
the data rules (S6, S8, S9) is a function of :func:`.arguments.signature`, so a call described
like one that passed before (and did not warn) runs only the data rules.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from functools import cached_property

import numpy as np

from .. import releases
from ..call import FagCall, FwdCall
from ..constants import BF16
from ..errors import IgnoredArgumentWarning, caller_stacklevel, error_class_for
from ..semantics.sparse import band_index, normalize_tokens
from ..seqlens import seq_info, with_device_padding, without_padding
from ..spec import BACKWARD_V3, FORWARD_V3, OpVersion
from . import data_rules
from .arguments import IGNORED, names, normalize, signature, start_indices
from .checks import CHECKS
from .table import RELEASES, RULES, citation, release_key, rules_for

__all__ = ["Context", "validate", "validate_backward", "validate_backward_args",
           "validate_forward", "check_data_rules", "run_rules"]

_CALLS = {BACKWARD_V3.key: FagCall, FORWARD_V3.key: FwdCall}
_DERIVED = ("head_num", "seqs", "pre_eff", "next_eff", "band_index", "empty_result",
            "device_seq_qlen", "device_seq_kvlen")
# per (op, release key): the rows that op runs on that release, in order
_PLANS = {(op.key, rel): tuple((r, CHECKS[r.id]) for r in rules_for(op.key, rel))
          for op in (BACKWARD_V3, FORWARD_V3) for rel in RELEASES}
_DATA_PLAN = tuple(p for p in _PLANS[BACKWARD_V3.key, RELEASES[-1]] if p[0].data)


class Context:
    """One call as the rules see it: its arguments by parameter name and the facts derived
    from them, each computed when a rule first asks (the rules before it made it safe)."""

    def __init__(self, args: dict, check_data: bool = True, release=None) -> None:
        self.__dict__.update(args)
        self.check_data, self.release, self.samples = check_data, release, []
        self.qlen, self.kvlen = args["actual_seq_qlen"], args["actual_seq_kvlen"]

    @cached_property
    def heads(self):
        """head_num, None meaning query.shape[1]."""
        if self.head_num is None and self.query.ndim >= 2:
            return self.query.shape[1]
        return self.head_num

    d = property(lambda self: self.query.shape[2])
    dk = property(lambda self: self.key.shape[2])
    dv = property(lambda self: self.value.shape[2])
    t1 = property(lambda self: self.query.shape[0])
    n1 = property(lambda self: self.query.shape[1])
    t2 = property(lambda self: self.key.shape[0])
    n2 = property(lambda self: self.key.shape[1])

    @cached_property
    def seqs(self):
        """The batches: end-of-data padding entries are no batches (docs/releases.md)."""
        return seq_info(without_padding(self.qlen), without_padding(self.kvlen))

    @cached_property
    def device_ends(self):
        """(q ends, kv ends) as the device gets them (seqlens.with_device_padding)."""
        return with_device_padding(self.qlen, self.kvlen, self.t1, self.t2, self.release)

    @cached_property
    def pre_eff(self):
        return normalize_tokens(self.sparse_mode, self.pre_tokens, self.next_tokens)[0]

    @cached_property
    def next_eff(self):
        return normalize_tokens(self.sparse_mode, self.pre_tokens, self.next_tokens)[1]

    @cached_property
    def band_index(self):
        return band_index(self.sparse_mode, self.seqs)

    @cached_property
    def sampler(self):
        """The bounded reader of device-resident data, one per validated call."""
        return data_rules.Sampler()


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
    """The rows ``ids`` alone, in table order, on anything with the attributes they read."""
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
        return cls(head_num=empty["head_num"] or 0, seqs=seq_info((), ()),
                   pre_eff=0, next_eff=0, band_index=-1, empty_result=True, **fields)
    q_dev, kv_dev = c.device_ends
    return cls(head_num=c.heads, seqs=c.seqs, pre_eff=c.pre_eff, next_eff=c.next_eff,
               band_index=c.band_index, device_seq_qlen=q_dev, device_seq_kvlen=kv_dev,
               **fields)


def validate(op: OpVersion, args: dict, check_data: bool = True, release=None):
    """Every rule of ``op`` in order on ``args`` (by parameter name, with ``deterministic``);
    returns the FagCall / FwdCall. ``check_data=False`` skips S6, S8, S9; ``release``: the
    :class:`aclnn_fag.releases.Release` whose rules apply (None: the NumPy backend's)."""
    if release is None:
        release = releases.numpy_release()
    args = dict(normalize(op, args), deterministic=args.get("deterministic", False))
    args["q_start_idx"], args["kv_start_idx"] = start_indices(args["q_start_idx"],
                                                              args["kv_start_idx"])
    c = Context(args, check_data, release)
    empty = _run(_PLANS[op.key, release_key(release)], c)
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
        c = Context(call.__dict__)
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
            or not ends_q or not ends_kv or without_padding(ends_q)[-1] < call.query.shape[0]
            or without_padding(ends_kv)[-1] < call.key.shape[0])


def validate_backward_args(tensors: tuple, scalars: tuple, lists: tuple,
                           check_data: bool = True, release=None) -> FagCall:
    """``validate_backward`` on the arguments as three tuples in the orders of
    ``arguments.names(BACKWARD_V3)`` (the public call's form)."""
    if release is None:
        release = releases.numpy_release()
    key = signature(tensors, scalars, lists)
    if key is not None:
        key = (release.name, key)       # a verdict holds for one release
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
    args = dict(zip(_TENSORS + _SCALARS + _LISTS, (*tensors, *scalars, *lists)))
    call = validate(BACKWARD_V3, args, check_data, release)
    if key is not None and not _would_warn(call, args):
        if len(_VERDICTS) >= _VERDICTS_MAX:
            _VERDICTS.clear()
        # no reference to the caller's tensors
        _VERDICTS[key] = dataclasses.replace(call, **dict.fromkeys(_CALL_TENSORS))
    return call


def validate_backward(query, query_rope, key, key_rope, value, dy, *, atten_mask, softmax_max,
                      softmax_sum, attention_in, actual_seq_qlen, actual_seq_kvlen, scale_value,
                      check_data=True, release=None, **optional) -> FagCall:
    """Every rule of docs/validation.md in the device's order, then S1-S9; returns the
    FagCall. The optional keywords (the other parameters of aclnn_fag/spec.py's backward and
    ``deterministic``) default as the spec says; ``release`` as for :func:`validate`."""
    args = _with_defaults(BACKWARD_V3, optional, query=query, query_rope=query_rope, key=key,
                          key_rope=key_rope, value=value, dy=dy, atten_mask=atten_mask,
                          softmax_max=softmax_max, softmax_sum=softmax_sum,
                          attention_in=attention_in, actual_seq_qlen=actual_seq_qlen,
                          actual_seq_kvlen=actual_seq_kvlen, scale_value=scale_value)
    return validate_backward_args(*(get(args) for get in _GETTERS), check_data, release)


def validate_forward(query, query_rope, key, key_rope, value, *, atten_mask, actual_seq_qlen,
                     actual_seq_kvlen, scale_value, check_data=True, release=None,
                     **optional) -> FwdCall:
    """The forward's checks in its order and with its codes (docs/forward.md, F1-F14), then
    the package's own (SF1, S3-S7); returns the FwdCall. Keywords as for validate_backward."""
    args = _with_defaults(FORWARD_V3, optional, query=query, query_rope=query_rope, key=key,
                          key_rope=key_rope, value=value, atten_mask=atten_mask,
                          actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen,
                          scale_value=scale_value)
    return validate(FORWARD_V3, args, check_data, release)


_DEFAULTS = {op.key: dict({p.name: p.default for p in op.params
                            if p.role in ("input", "int_array", "attr")}, deterministic=False)
             for op in (BACKWARD_V3, FORWARD_V3)}
_GETTERS = tuple(operator.itemgetter(*group) for group in names(BACKWARD_V3))


def _with_defaults(op: OpVersion, optional: dict, **given) -> dict:
    """The arguments of ``op`` (and deterministic): the given ones, the spec's defaults for
    the rest; an unknown keyword is a TypeError, as in a call."""
    args = dict(_DEFAULTS[op.key])
    unknown = optional.keys() - args.keys()
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    args.update(given)
    args.update(optional)
    return args
