"""End-of-data padding and the batch count per CANN release (docs/releases.md), on the
helpers of aclnn_fag/seqlens.py, against the rules written out by hand."""

from __future__ import annotations

import pytest

from aclnn_fag import releases, seqlens

R85, R90, R91 = (releases.by_name(n) for n in ("8.5.0", "9.0.0", "9.1.0"))


@pytest.mark.parametrize("ends,start", [
    ([2, 5, 9, 0, 0], 3), ([2, 5, 9, 0], 3), ([2, 5, 9], 3), ([0], 1), ([0, 0], 2),
    ([2, 0, 5], 3), ([2, 4, 4], 3), ([3, 0], 1)])
def test_padding_is_a_trailing_run_of_zeros_after_a_positive_end(ends, start):
    assert seqlens.padding_start(ends) == start
    assert seqlens.without_padding(ends) == tuple(ends[:start])
    assert seqlens.is_padded(ends) == (start < len(ends))


@pytest.mark.parametrize("release,expected", [(R85, 2), (R90, 2), (R91, 3)])
def test_batch_count_of_a_zero_length_last_sequence(release, expected):
    """[2, 4, 4]: the last sequence is empty on both sides. 9.1 counts it (its ends are not
    0); before, the trailing empty batch is dropped."""
    assert seqlens.device_batch_count([2, 4, 4], [2, 4, 4], release) == expected


@pytest.mark.parametrize("release,expected", [(R85, 4), (R90, 4), (R91, 3)])
def test_batch_count_of_padded_ends(release, expected):
    """[2, 5, 9, 0]: 9.1 drops the 0 entry; before, its lengths are negative, not 0."""
    assert seqlens.device_batch_count([2, 5, 9, 0], [3, 6, 10, 0], release) == expected


def test_the_binding_pads_only_where_the_release_checks_padding():
    assert seqlens.with_device_padding([2, 5, 9], [3, 6, 10], 12, 12, R85) == ((2, 5, 9), (3, 6, 10))
    for release in (R90, R91):
        assert seqlens.with_device_padding([2, 5, 9], [3, 6, 10], 12, 12, release) == \
            ((2, 5, 9, 0), (3, 6, 10, 0))
        # one side ends at T, or the user padded already: nothing is appended
        assert seqlens.with_device_padding([2, 5, 12], [3, 6, 10], 12, 12, release) == \
            ((2, 5, 12), (3, 6, 10))
        assert seqlens.with_device_padding([2, 5, 9, 0], [3, 6, 10, 0], 12, 12, release) == \
            ((2, 5, 9, 0), (3, 6, 10, 0))


@pytest.mark.parametrize("q,kv,problem", [
    ([2, 5, 9], [3, 6, 10], "both not padded"),
    ([2, 5, 9, 0], [3, 6, 10], "actual_seq_kvlen not padded"),
    ([2, 5, 9], [3, 6, 10, 0], "actual_seq_qlen not padded"),
    ([2, 5, 9, 0], [3, 6, 10, 0], ""),
    ([2, 5, 12], [3, 6, 10], ""),             # the query side ends at T1: no padding needed
])
def test_padding_problem_on_releases_that_check_it(q, kv, problem):
    for release in (R90, R91):
        got = seqlens.padding_problem(q, kv, 12, 12, release)
        assert (got == "") if not problem else (problem in got and release.name in got)
    assert seqlens.padding_problem(q, kv, 12, 12, R85) == ""
