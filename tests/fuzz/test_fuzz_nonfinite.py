"""Property: NaN/Inf in the data (query, keys, value, dy, attention_in, the statistics) never
crash, never make a backend reject the call, and propagate the way they would on the device:

* a NaN that takes part in a kept (query, key) pair shows up as NaN in the gradients of
  both backends (it is never silently absorbed);
* batches that hold no non-finite value get finite gradients, equal (to bf16 accuracy) on
  both backends -- a NaN never leaks into another sequence;
* rows no kept pair reaches stay exactly 0;
* where both backends give finite values they agree.

Where exactly a non-finite value spreads *inside* its batch (e.g. 0 * inf from a masked
position) depends on the evaluation order -- on the device on its block tiling -- so the
element patterns of the two backends are not compared there.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import oracle as O
from fuzz_cases import (TALLY, assert_no_leak, assert_unchanged, base_case, compare_grads,
                        fuzz_settings, public_call, snapshot, validator_verdict)

TARGETS = ("query", "query_rope", "key", "key_rope", "value", "dy", "attention_in",
           "softmax_max", "softmax_sum")
Q_SIDE = ("query", "query_rope", "dy", "attention_in")


def _locate_stat_row(flat_row, q_ends, n1):
    """(batch, t, head) of a [T1*N1] row index of the statistics in the device layout."""
    start = 0
    for b, end in enumerate(q_ends):
        sq = end - start
        if start * n1 <= flat_row < end * n1:
            r = flat_row - start * n1
            return b, start + r % sq, r // sq
        start = end
    return None, None, None


@fuzz_settings(80)
@given(case=base_case(), target=st.sampled_from(TARGETS),
       value=st.sampled_from((math.nan, math.inf, -math.inf, math.nan)),
       where=st.integers(0, 2 ** 31 - 1))
def test_nonfinite_data_propagates_like_the_device(case, target, value, where, stub):
    meta, args = case.meta, case.args
    if meta["forward_error"] is not None or args[target].size == 0 or validator_verdict(case) != 0:
        return
    TALLY["nonfinite_cases"] += 1
    q_ends, kv_ends, n1, n2 = meta["q_ends"], meta["kv_ends"], meta["n1"], meta["n2"]
    arr = args[target].astype(args[target].dtype, copy=True)
    if target in ("softmax_max", "softmax_sum"):
        row = where % (arr.shape[0] * arr.shape[1])
        arr.reshape(-1, 8)[row] = value              # all 8 copies: S8 stays satisfied
        b, t, h = _locate_stat_row(row, q_ends, n1)
        rows = ("q", t, h)
    else:
        idx = np.unravel_index(where % arr.size, arr.shape)
        arr[idx] = value
        rows = ("q" if target in Q_SIDE else "kv", int(idx[0]), int(idx[1]))
    args[target] = arr
    before = snapshot(args)
    objects = stub.objects()
    kind_np, res_np = public_call(case, "numpy")
    kind_npu, res_npu = public_call(case, "npu")
    assert_unchanged(before, args, "non-finite data")
    assert_no_leak(stub, objects, "non-finite data")
    assert kind_np == "ok", f"numpy backend rejected non-finite data: {res_np!r}"
    assert kind_npu == "ok", f"npu backend rejected non-finite data: {res_npu!r}"
    what = f"{target}{rows} = {value}: {case.describe()}"
    compare_grads(res_np, res_npu, strict_finite=False, what=what)

    lay = O.layout(q_ends, kv_ends)
    q_touched, kv_touched = O.touched(meta["mode"], lay, args["pre_tokens"], args["next_tokens"],
                                      args["atten_mask"], meta["t1"], n1, meta["t2"], n2)
    side, r, h = rows
    reached = r is not None and (q_touched[r, h] if side == "q" else kv_touched[r, h])
    # the batch holding the value (None: rows outside every sequence)
    ends = q_ends if side == "q" else kv_ends
    batch = None if r is None else next((b for b, e in enumerate(ends) if r < e), None)
    if batch is not None and batch >= lay.B:
        batch = None
    for backend, res in (("numpy", res_np), ("npu", res_npu)):
        grads = dict(zip(O.GRAD_NAMES, (np.asarray(x, np.float64) for x in res)))
        if math.isnan(value) and reached:
            assert any(np.isnan(g).any() for g in grads.values()), \
                f"{backend}: a NaN taking part in a kept pair vanished: {what}"
            TALLY["nonfinite_nan_propagated"] += 1
        for name, g in grads.items():
            q_side = name.startswith("dq")
            touched = q_touched if q_side else kv_touched
            starts, lens = (lay.q_starts, lay.sq) if q_side else (lay.kv_starts, lay.skv)
            covered = np.zeros(g.shape[0], bool)
            for b in range(lay.B):
                rows_b = slice(starts[b], starts[b] + lens[b])
                covered[rows_b] = True
                part, reach = g[rows_b], touched[rows_b]
                if lay.sq[b] == 0 or lay.skv[b] == 0:       # no block of this batch is computed
                    assert np.all(part == 0), f"{backend} {name}: batch {b} computes nothing: {what}"
                elif b != batch:                            # a batch with finite data only
                    assert np.isfinite(part).all(), \
                        f"{backend} {name}: a non-finite value leaked into batch {b}: {what}"
                    assert np.all(part[~reach] == 0), \
                        f"{backend} {name}: rows no kept pair reaches are not 0 (batch {b}): {what}"
            assert np.all(g[~covered] == 0), f"{backend} {name}: rows outside every sequence: {what}"
