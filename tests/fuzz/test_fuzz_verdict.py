"""Property: for every generated argument set the Python validator and the stub op called
directly (``acl.call_raw``, no Python validation, the ends as the binding passes them)
return the same status code (0 when both accept), on a CANN release drawn per example (the
stubs emulate it, the validator applies its rules; docs/releases.md). Python-level errors (wrong Python types) have no stub equivalent and are
excluded from the comparison (they are fuzzed through the public call)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aclnn_fag import releases
from fuzz_cases import (TALLY, assert_no_leak, assert_unchanged, emulating, fuzz_settings,
                        mutated_case, raw_verdict, snapshot, validator_verdict)


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
    TALLY[f"verdict_status_{expected}"] += 1
