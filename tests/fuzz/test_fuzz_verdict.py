"""Property: for every generated argument set the Python validator and the stub op called
directly (``acl.call_raw``, no Python validation, the ends as the binding passes them)
return the same status code (0 when both accept), on a CANN release drawn per example (the
stubs emulate it, the validator applies its rules; docs/releases.md). Python-level errors (wrong Python types) have no stub equivalent and are
excluded from the comparison (they are fuzzed through the public call)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aclnn_fag import releases
import numpy as np

from fuzz_cases import (TALLY, assert_no_leak, assert_unchanged, build_case, emulating,
                        fuzz_settings, mutated_case, raw_verdict, snapshot, validator_verdict)


@fuzz_settings(300)
@given(case=mutated_case(verdict=True, min_mutations=1, max_mutations=4),
       release=st.sampled_from([r.name for r in releases.KNOWN]))
def test_validator_and_stub_op_return_the_same_status(case, release, stub):
    TALLY["verdict_cases"] += 1
    what = f"CANN {release}: {case.describe()}"
    before = snapshot(case.args)
    objects = stub.objects()
    with emulating(release):
        expected = validator_verdict(case, releases.by_name(release))
        got, exc = raw_verdict(case, releases.by_name(release))
    assert_unchanged(before, case.args, f"validator / call_raw: {what}")
    assert_no_leak(stub, objects, what)
    if isinstance(expected, str):
        TALLY["verdict_excluded_python_level"] += 1
        return
    if got != expected:
        TALLY["verdict_disagreements"] += 1
    assert got == expected, (f"validator says {expected}, the stub op says {got} ({exc}); "
                             f"{what}")
    TALLY["verdict_compared"] += 1
    if exc is not None and "rule EOD" in str(exc):
        TALLY["verdict_rule_eod"] += 1          # the end-of-data padding check (9.0+) decided
    TALLY[f"verdict_status_{expected}"] += 1


@fuzz_settings(200)
@given(data=st.data(), release=st.sampled_from([r.name for r in releases.KNOWN]))
def test_end_of_data_padding_verdicts_agree(data, release, stub):
    """Ends short of T on one side, both sides or neither, each array padded with 0-2 zero
    entries (or not): the validator and the stub op emulating the release agree (rule EOD,
    S4's padding, rule 27's B, the padding the binding appends)."""
    draw = data.draw
    nb = draw(st.integers(1, 3))
    case = build_case(
        q_lens=draw(st.lists(st.integers(0, 5), min_size=nb, max_size=nb)),
        kv_lens=draw(st.lists(st.integers(0, 5), min_size=nb, max_size=nb)),
        extra_q=draw(st.sampled_from((0, 2))), extra_kv=draw(st.sampled_from((0, 3))), n2=1,
        g=draw(st.sampled_from((1, 2))), d=16, dr=8, dv=16, mode=draw(st.sampled_from((0, 3, 7))),
        pre=3, nxt=1, seed=draw(st.integers(0, 99)),
        mask_kind=draw(st.sampled_from(("2d", "b1"))), mask_dtype=np.uint8, density=0.0,
        deterministic=False, scale=None)
    for name in ("actual_seq_qlen", "actual_seq_kvlen"):
        case.args[name] = list(case.args[name]) + [0] * draw(st.integers(0, 2))
    with emulating(release):
        expected = validator_verdict(case, releases.by_name(release))
        got, exc = raw_verdict(case, releases.by_name(release))
    assert got == expected, f"CANN {release}: validator {expected}, stub op {got} ({exc}); " \
                            f"{case.args['actual_seq_qlen']} / {case.args['actual_seq_kvlen']}"
    TALLY[f"eod_verdict_{release}_{expected}"] += 1
    if exc is not None and "rule EOD" in str(exc):
        TALLY["eod_verdict_rule_eod"] += 1
