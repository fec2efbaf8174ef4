"""The registry of the acl layer's caches (aclnn_fag/acl/caches.py): every cache is in it,
``clear_all`` (shutdown, tests) releases what they hold and ``forget_all`` (a forked child)
drops it unreleased."""

from __future__ import annotations

import aclnn_fag.acl as acl
from aclnn_fag.acl import caches, call_pool, device_constants, exec_cache
from acl_cases import make_problem

CACHES = {"executor cache", "call memory pool", "package mask device copies"}


def _fill():
    """One numpy-in call with the package's mask: every cache holds something."""
    make_problem(seed=21, q_lens=(5, 6), mode=2).grads("npu")
    assert exec_cache.size() == 1 and call_pool.idle_bytes() > 0
    assert device_constants.size() == 1


def test_every_cache_is_registered():
    assert CACHES <= set(caches.names())


def test_clear_all_releases_everything_they_hold(no_leaks):
    base = no_leaks.objects(keep_cache=True)
    _fill()
    counts = caches.clear_all()
    assert counts["executor cache"] == 1 and counts["package mask device copies"] == 1
    assert exec_cache.size() == 0 and call_pool.idle_bytes() == 0
    assert device_constants.size() == 0
    assert no_leaks.objects(keep_cache=True) == base


def test_shutdown_empties_them_too(no_leaks):
    _fill()
    acl.shutdown(finalize=False)
    assert exec_cache.size() == 0 and call_pool.idle_bytes() == 0
    assert device_constants.size() == 0
