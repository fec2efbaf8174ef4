"""S8 on host arrays (rule S8 of aclnn_fag/rules/data_rules.py) against the rule written out here: every
row's 8 copies equal to its first as floats (NaN equal to NaN, 0.0 equal to -0.0), whatever
the memory layout (docs/validation.md, S8)."""

from __future__ import annotations

from types import SimpleNamespace
import numpy as np
import pytest

from aclnn_fag.rules.driver import run_rules
from aclnn_fag.errors import ParamInvalidError

COPIES = 8


def _rule(stats) -> bool:
    rows = np.asarray(stats, dtype=np.float64).reshape(-1, COPIES)
    first = rows[:, :1]
    return bool(np.all((rows == first) | (np.isnan(rows) & np.isnan(first))))


def _accepted(stats) -> bool:
    try:
        ok = np.zeros((1, 1, COPIES), np.float32)
        run_rules(("S8",), SimpleNamespace(softmax_max=ok, softmax_sum=stats, check_data=True))
    except ParamInvalidError as err:
        assert err.code == 161002 and "S8" in str(err) and err.param == "softmax_sum"
        return False
    return True


def _nan(payload: int) -> np.float32:
    return np.array([0x7FC00000 | payload], np.uint32).view(np.float32)[0]


def _layouts(stats):
    """The same values C-contiguous, Fortran-ordered and as a strided view."""
    wide = np.zeros(stats.shape[:2] + (2 * COPIES,), np.float32)
    wide[:, :, ::2] = stats
    return [np.ascontiguousarray(stats), np.asfortranarray(stats), wide[:, :, ::2]]


@pytest.mark.parametrize("copy", range(COPIES))
@pytest.mark.parametrize("value", ["next", "neg-zero", "nan", "inf", "other-nan"])
def test_one_copy_changed(copy, value):
    """One copy of one row changed (every copy position, the row-boundary copies 0 and 7
    included, rows at the start, middle and end): rejected unless the floats stay equal."""
    rng = np.random.default_rng(copy)
    base = np.repeat(rng.standard_normal((5, 3, 1)).astype(np.float32), COPIES, axis=2)
    base[2, 1] = 0.0
    base[3, 0] = _nan(1)
    for t, n in ((0, 0), (2, 1), (3, 0), (4, 2)):
        stats = base.copy()
        old = stats[t, n, copy]
        stats[t, n, copy] = {"next": np.nextafter(old, np.float32(np.inf)),
                             "neg-zero": -old if old == 0 else old,
                             "nan": _nan(0) if old == old else np.float32(1.0),
                             "inf": np.float32(np.inf),
                             "other-nan": _nan(5) if old != old else old}[value]
        for layout in _layouts(stats):
            assert _accepted(layout) == _rule(stats), (t, n, copy, value, layout.strides)


def test_equal_copies_accepted_in_every_layout():
    rng = np.random.default_rng(3)
    stats = np.repeat(rng.standard_normal((7, 4, 1)).astype(np.float32), COPIES, axis=2)
    stats[0, 0] = -0.0
    stats[1, 2] = np.inf
    stats[6, 3] = _nan(9)                      # the same NaN in every copy
    for layout in _layouts(stats):
        assert _accepted(layout) and _rule(layout)
    assert _accepted(np.broadcast_to(stats[:, :, :1], stats.shape))   # zero-stride copies


def test_zero_and_negative_zero_copies_accepted():
    """0.0 and -0.0 in one row differ in their bits but are equal floats: accepted, as by the
    float comparison."""
    stats = np.zeros((2, 2, COPIES), np.float32)
    stats[1, 1, 3] = -0.0
    for layout in _layouts(stats):
        assert _accepted(layout)


def test_random_rows_against_the_rule():
    rng = np.random.default_rng(11)
    for _ in range(200):
        t, n = int(rng.integers(1, 9)), int(rng.integers(1, 5))
        stats = np.repeat(rng.standard_normal((t, n, 1)).astype(np.float32), COPIES, axis=2)
        for _ in range(int(rng.integers(0, 3))):
            stats[rng.integers(t), rng.integers(n), rng.integers(COPIES)] = rng.choice(
                [np.nan, np.inf, 0.0, -0.0, 1.0])
        for layout in _layouts(stats):
            assert _accepted(layout) == _rule(stats)
