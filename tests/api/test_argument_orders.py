"""The public calls hand their arguments to the validator by the spec's names and orders
(aclnn_fag/spec.py, ``rules.arguments.names``): every keyword reaches the parameter it names,
whatever the order of the spec's parameters."""

from __future__ import annotations

import inspect

import pytest

import aclnn_fag as af
from aclnn_fag import api
from aclnn_fag.rules.arguments import names
from aclnn_fag.spec import BACKWARD_V3, FORWARD_V3

CALL_OPTIONS = ("backend", "precision", "check_data", "stream", "progress")


class _Seen(Exception):
    pass


def _arguments(fn) -> dict:
    """A distinct marker for every argument of ``fn`` the op takes (the call's own options:
    a NumPy run)."""
    return {n: f"<{n}>" for n in inspect.signature(fn).parameters if n not in CALL_OPTIONS}


def _run(fn, monkeypatch, validator):
    seen = {}

    def capture(*args):
        seen["args"] = args
        raise _Seen
    monkeypatch.setattr(api, validator, capture)
    args = _arguments(fn)
    with pytest.raises(_Seen):
        fn(**args, backend="numpy")
    return args, seen["args"]


def test_the_backward_passes_each_argument_in_the_spec_order(monkeypatch):
    args, (tensors, scalars, lists, _, _) = _run(af.flash_attention_unpadding_score_grad_v3,
                                                 monkeypatch, "validate_backward_args")
    got = {}
    for group, values in zip(names(BACKWARD_V3), (tensors, scalars, lists)):
        assert len(group) == len(values)
        got.update(zip(group, values))
    assert got == args


def test_the_forward_passes_each_argument_by_its_name(monkeypatch):
    args, (op, given, _, _) = _run(af.flash_attention_forward, monkeypatch, "validate")
    assert op is FORWARD_V3 and given == args
    assert set(given) == set(FORWARD_V3.inputs + FORWARD_V3.attrs + FORWARD_V3.int_arrays
                             + ("deterministic",))
