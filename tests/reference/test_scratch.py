"""The reference's scratch buffers (reference/common.py ``Scratch``): the tiles of a call and
the next calls on a thread reuse them, and nothing computed may depend on what they held.

* a repeated call allocates a fraction of what the first one did (tracemalloc);
* buffers poisoned with NaN between calls change no bit of any result, across shapes,
  GQA, sparse modes, precisions and the tile-by-tile key path;
* results never share memory with the buffers; a nested call gets its own set; threads
  have their own sets; the kept total is capped and ``release_scratch`` frees it;
* ``bench.peak_extra_memory`` still counts a call's buffers.
"""

from __future__ import annotations

import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O
from aclnn_fag.reference import common, release_scratch
from aclnn_fag.tools import bench

BF16 = O.BF16

CASES = {
    "causal_ragged": dict(seed=81, q_lens=[40, 0, 25, 37], n1=4, n2=4, d=32, dr=16, mode=3),
    "mask_gqa2": dict(seed=82, q_lens=[33, 19], kv_lens=[45, 7], n1=4, n2=2, d=32, dr=16,
                      mode=0, density=0.3),
    "band_gqa4": dict(seed=83, q_lens=[70], n1=4, n2=1, d=16, dr=16, mode=4, pre=20, nxt=5),
}
SMALL_TILES = {"ACLNN_FAG_BLOCK_Q": "16", "ACLNN_FAG_BLOCK_K": "8", "ACLNN_FAG_BLOCK_MIN": "4"}


@pytest.fixture(scope="module")
def cases():
    return {name: O.make_case(label=name, **cfg) for name, cfg in CASES.items()}


def _step(case, precision):
    """Forward (its output and statistics) and backward of ``case``: the eight results."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd = af.flash_attention_forward(case.q, case.qr, case.k, case.kr, case.v,
                                         **case.api_common(), precision=precision)
        grads = af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(),
            precision=precision, backend="numpy")
    return [np.asarray(x) for x in (*fwd, *grads)]


def _bits(x):
    return x.view(np.uint16) if x.dtype == BF16 else x.view(np.uint8)


def _poison():
    """Fill every kept buffer of this thread with NaN (as garbage a stale buffer may hold)."""
    for buf in common.scratch()._buffers.values():
        buf.fill(np.nan)


def _assert_same(got, want):
    for g, w in zip(got, want):
        np.testing.assert_array_equal(_bits(g), _bits(w))


@pytest.mark.parametrize("tiles", ["default", "small"])
@pytest.mark.parametrize("precision", ["device", "fp64"])
def test_stale_buffers_change_nothing(cases, precision, tiles, monkeypatch):
    if tiles == "small":
        for var, value in SMALL_TILES.items():
            monkeypatch.setenv(var, value)
        monkeypatch.setattr(common, "KEY_GATHER_BYTES", 0)     # keys gathered tile by tile
    fresh = {}
    for name, case in cases.items():
        release_scratch()
        fresh[name] = _step(case, precision)
    for order in (list(cases), list(cases)[::-1]):
        for name in order:
            _poison()
            _assert_same(_step(cases[name], precision), fresh[name])
    assert common.scratch().nbytes() > 0          # the buffers were kept and poisoned


def test_results_right_after_poison(cases):
    """Not only stable: right (fp64 against the dense float64 oracle) on poisoned buffers."""
    case = cases["mask_gqa2"]
    _step(cases["causal_ragged"], "fp64")
    _poison()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grads = af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(),
            precision="fp64", backend="numpy")
    for gname, got, want in zip(O.GRAD_NAMES, grads, case.oracle_backward()):
        assert O.normwise_error(got, want) <= 1e-10, gname


def test_repeated_call_reuses_the_buffers(cases):
    case = cases["mask_gqa2"]
    release_scratch()
    _step(case, "device")
    kept = {role: buf.ctypes.data for role, buf in common.scratch()._buffers.items()}
    _step(case, "device")
    assert kept and kept == {role: buf.ctypes.data
                             for role, buf in common.scratch()._buffers.items()}


def test_repeated_call_allocates_little():
    """A call at a size where the tiles dominate: the second one allocates a fraction of the
    first's temporaries (tracemalloc peak minus the results)."""
    case = O.make_case(label="big", seed=84, q_lens=[160, 96], n1=4, n2=4, d=64, dr=32, mode=3)
    _step(case, "device")              # first-call costs outside the tiles (caches, masks)
    release_scratch()

    def extra():
        tracemalloc.start()
        try:
            out = _step(case, "device")
            return tracemalloc.get_traced_memory()[1] - sum(x.nbytes for x in out)
        finally:
            tracemalloc.stop()
    first, again = extra(), extra()
    assert again < first / 3, (first, again)


def test_results_do_not_share_the_buffers(cases):
    out = _step(cases["band_gqa4"], "device")
    buffers = list(common.scratch()._buffers.values())
    assert buffers
    for x in out:
        assert not any(np.shares_memory(x, b) for b in buffers)


def test_nested_use_gets_its_own_set():
    kept = common.scratch()
    with kept:
        inner = common.scratch()
        assert inner is not kept
    assert common.scratch() is kept


def test_threads_have_their_own_sets(cases):
    want = {name: _step(case, "device") for name, case in cases.items()}
    got, errors = {}, []

    def run(name):
        try:
            for _ in range(3):
                got[name] = _step(cases[name], "device")
        except Exception as e:          # noqa: BLE001 -- reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(name,)) for name in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in cases:
        _assert_same(got[name], want[name])


def test_kept_total_is_capped_and_released(cases, monkeypatch):
    _step(cases["causal_ragged"], "device")
    assert common.scratch().nbytes() > 0
    release_scratch()
    assert common.scratch().nbytes() == 0
    monkeypatch.setattr(common, "SCRATCH_KEEP_BYTES", 1024)
    _step(cases["causal_ragged"], "device")
    assert common.scratch().nbytes() == 0


def test_peak_extra_memory_counts_the_buffers(cases):
    case = cases["causal_ragged"]
    _step(case, "device")                                   # buffers kept from this call

    def bwd():
        return _step(case, "device")[3:]
    _, extra = bench.peak_extra_memory(bwd)
    assert extra >= common.scratch().nbytes() // 2 > 0
