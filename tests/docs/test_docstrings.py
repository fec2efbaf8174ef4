"""help(aclnn_fag) shows the whole public API; the public calls document every argument, the
order of their results and the warnings they emit."""

from __future__ import annotations

import inspect
import pydoc

import aclnn_fag as af


def test_help_names_every_public_call_and_helper():
    text = pydoc.render_doc(af, renderer=pydoc.plaintext)
    for name in ("flash_attention_unpadding_score_grad_v3", "flash_attention_forward",
                 "resolve_backend", "last_backend", "band_mask", "lengths_to_cumulative",
                 "device_stats_from_token_major", "set_reference_threads", "FagGrads",
                 "SoftmaxStatsMismatchWarning", "docs/validation.md"):
        assert name in text, name


def test_grad_docstring_covers_every_parameter():
    doc = inspect.getdoc(af.flash_attention_unpadding_score_grad_v3)
    params = inspect.signature(af.flash_attention_unpadding_score_grad_v3).parameters
    missing = [p for p in params if p not in doc]
    assert not missing, missing
    for word in ("SequenceEndWarning", "FullyMaskedRowWarning", "SoftmaxStatsMismatchWarning",
                 "IgnoredArgumentWarning", "FagGrads(dq, dq_rope, dk, dk_rope, dv)", "161002"):
        assert word in doc, word


def test_result_types_document_their_order():
    assert "(dq, dq_rope, dk, dk_rope, dv)" in af.FagGrads.__doc__
    assert af.FagGrads._fields == ("dq", "dq_rope", "dk", "dk_rope", "dv")
    assert "(attention_out, softmax_max, softmax_sum)" in af.FagForward.__doc__


def test_forward_docstring_covers_every_parameter():
    doc = inspect.getdoc(af.flash_attention_forward)
    params = inspect.signature(af.flash_attention_forward).parameters
    missing = [p for p in params if p not in doc]
    assert not missing, missing
