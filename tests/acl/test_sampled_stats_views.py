"""The sampled S8 check (8 equal copies) on statistics that are strided views of device memory:
only the (token, head) entries of the view are read, never the memory between them."""

from __future__ import annotations

import numpy as np
import pytest

import aclnn_fag.acl as acl
from aclnn_fag.rules.data_rules import Sampler


def _stats_with_gaps(t: int, n: int, pick) -> tuple:
    """A [t, n, 8] view (``pick`` of a larger host array); outside it, values that are not
    8 equal copies. Returns (the host view, the same view of device memory)."""
    big = np.arange(t * n * 64, dtype=np.float32).reshape(t * 2, n * 2, 16)
    view = big[pick]
    view[...] = np.arange(t * n, dtype=np.float32).reshape(t, n, 1) + 1.0
    dev = acl.DeviceArray.from_numpy(big)[pick]
    assert dev.shape == (t, n, 8) and view.shape == (t, n, 8)
    return view, dev


PICKS = {
    "one token, heads 16 apart": (1, 3, np.s_[:1, :3, :8]),
    "one token, every other head": (1, 3, np.s_[:1, ::2, :8]),
    "one head, tokens apart": (5, 1, np.s_[:5, :1, :8]),
    "one head of two, copies 0..7 of 16": (4, 1, np.s_[::2, 1:2, 8:]),
    "tokens and heads apart": (3, 2, np.s_[1:4, 2:4, :8]),
}


@pytest.mark.parametrize("case", PICKS)
def test_equal_copies_in_a_strided_view_are_accepted(case):
    t, n, pick = PICKS[case]
    host, dev = _stats_with_gaps(t, n, pick)
    assert (host == host[..., :1]).all()                      # the oracle: the view is valid
    assert Sampler().stats_copies_equal(dev)


@pytest.mark.parametrize("entry", [0, 1])
@pytest.mark.parametrize("case", PICKS)
def test_a_differing_copy_in_a_strided_view_is_found(case, entry):
    """Entries 0 and 1 are in every sample (the first run's first two entries)."""
    t, n, pick = PICKS[case]
    host, _ = _stats_with_gaps(t, n, pick)
    host[entry // n, entry % n, 3] += 0.5
    big = np.arange(t * n * 64, dtype=np.float32).reshape(t * 2, n * 2, 16)
    big[pick] = host
    bad = acl.DeviceArray.from_numpy(big)[pick]
    assert not (host == host[..., :1]).all()
    assert not Sampler().stats_copies_equal(bad)
