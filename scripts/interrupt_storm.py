#!/usr/bin/env python3
"""Ctrl-C storm: SIGINT at random moments over many mixed NPU-backend calls on the stubs.

Runs public calls, ``acl.run_backward`` (deterministic on), ``acl.call_raw``, one-shot and
repeatable ``FagPlan``s (with a swapped buffer) and ``DeviceArray`` uploads/downloads in a
random order on the main thread, while a helper thread sends SIGINT to it at a random
moment of each call; the stub libraries sleep before every ABI call to widen the windows.
Afterwards every stub counter (tensors, int arrays, executors, device bytes, streams)
must be back at zero after ``acl.shutdown()``, no handle may have been released twice
(the stubs' bad-release counter), the package must still compute the same gradients, and
every KeyboardInterrupt the handler raised must have reached the storm's loop: counted
where it is caught (``interrupted``), not where it is raised, so one raised inside a
garbage-collection finalizer and dropped there ("Exception ignored") shows up as
``lost`` (also counted by ``sys.unraisablehook``: ``dropped_in_finalizers``).

    python scripts/interrupt_storm.py --seconds 60 [--delay-us 200] [--seed 1]

prints a JSON report and exits 1 when something leaked or was released twice. The CI test
``tests/acl/test_interrupts.py`` runs :func:`storm` with a small budget.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import pathlib
import random
import signal
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _stub_controls(lib_dir):
    spec = importlib.util.spec_from_file_location("_aclnn_fag_stub_kit", ROOT / "tests" / "stub_kit.py")
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    return kit.StubControls(lib_dir)


def _workloads(rng_seed: int):
    """name -> callable, each one a few native sequences."""
    import numpy as np
    import ml_dtypes
    import aclnn_fag as af
    import aclnn_fag.acl as acl
    from aclnn_fag.rules import validate_backward

    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(rng_seed)
    lens = [5, 0, 7]
    ends = list(np.cumsum(lens))
    t, n, d, dr = ends[-1], 2, 16, 8
    q, k, v, dy = (rng.standard_normal((t, n, d)).astype(bf16) for _ in range(4))
    qr, kr = (rng.standard_normal((t, n, dr)).astype(bf16) for _ in range(2))
    mask = np.zeros((max(lens), max(lens)), np.uint8)
    scale = 1 / np.sqrt(d + dr)
    fwd = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=mask, actual_seq_qlen=ends,
                                     actual_seq_kvlen=ends, scale_value=scale)
    kw = dict(atten_mask=mask, softmax_max=fwd.softmax_max, softmax_sum=fwd.softmax_sum,
              attention_in=fwd.attention_out, actual_seq_qlen=ends, actual_seq_kvlen=ends,
              scale_value=scale)
    call = validate_backward(q, qr, k, kr, v, dy, **kw)
    call_det = validate_backward(q, qr, k, kr, v, dy, deterministic=True, **kw)
    dy2 = rng.standard_normal(dy.shape).astype(bf16)
    host = rng.standard_normal((64, 48)).astype(np.float32)

    def public():
        af.flash_attention_unpadding_score_grad_v3(q, qr, k, kr, v, dy, backend="npu", **kw)

    def run_det():
        acl.run_backward(call_det)

    def raw():
        acl.call_raw(query=q, query_rope=qr, key=k, key_rope=kr, value=v, dy=dy, **kw)

    def plan_one_shot():
        with acl.FagPlan.from_call(call, repeatable=False) as plan:
            plan.run()
            plan.run()
            plan.grads()

    def plan_swap():
        with acl.FagPlan.from_call(call) as plan:
            plan.run()
            plan.run(dy=acl.DeviceArray.from_numpy(dy2))
            plan.grads()

    def arrays():
        a = acl.DeviceArray.from_numpy(host)
        b = acl.DeviceArray.zeros((16, 16), np.float32)
        views = acl.upload_arrays([host[:, :16], host[:, 16:], host.T])
        a.numpy()
        views[2].numpy()
        b.free()
        a.free()

    work = dict(public=public, run_det=run_det, raw=raw, plan_one_shot=plan_one_shot,
                plan_swap=plan_swap, arrays=arrays)
    return work, call


def storm(stub, *, iterations: int = 200, seconds: float = None, seed: int = 0,
          delay_us: int = 200) -> dict:
    """Run the storm (on the main thread) and return a report. ``stub``: stub_kit.StubControls."""
    import numpy as np
    import aclnn_fag.acl as acl
    from aclnn_fag.acl import ownership

    main_id = threading.main_thread().ident
    if threading.get_ident() != main_id:
        raise RuntimeError("the storm must run on the main thread (SIGINT goes there)")
    work, call = _workloads(seed)
    names = sorted(work)
    acl.shutdown(finalize=False)
    gc.collect()
    start_counters = stub.counters()
    bad0 = stub.bad_releases()
    expected = acl.run_backward(call)
    # how long each workload takes with the delay on: the signal lands uniformly inside it
    stub.set_delay(delay_us)
    durations = {}
    for name in names:                          # the median of three runs
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            work[name]()
            runs.append(time.perf_counter() - t0)
        durations[name] = sorted(runs)[1]

    class State:
        inside = False
        gen = 0
        stop = False
        window = 0.0
        sent = 0
        raised = 0
        late = 0
        delivered = 0           # KeyboardInterrupts that reached this loop
        dropped = 0             # KeyboardInterrupts CPython dropped (unraisable)

    st = State()
    arm = threading.Event()

    def handler(signum, frame):
        if st.inside:
            st.raised += 1
            raise KeyboardInterrupt
        st.late += 1

    def sender():
        r = random.Random(seed + 1)
        while True:
            arm.wait()
            arm.clear()
            if st.stop:
                return
            gen = st.gen
            time.sleep(r.uniform(0.0, st.window))
            if st.gen == gen and st.inside and not st.stop:
                signal.pthread_kill(main_id, signal.SIGINT)
                st.sent += 1

    def one(fn):
        st.inside = True
        try:
            fn()
        finally:
            st.inside = False

    def unraisable(u):
        if isinstance(u.exc_value, KeyboardInterrupt):
            st.dropped += 1
        else:
            old_hook(u)

    rng = random.Random(seed)
    per_name = {n: [0, 0] for n in names}      # runs, interrupted
    old = signal.signal(signal.SIGINT, handler)
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    thread = threading.Thread(target=sender, name="sigint-sender", daemon=True)
    thread.start()
    t_start = time.perf_counter()
    done = 0
    try:
        while True:
            if seconds is not None:
                if time.perf_counter() - t_start >= seconds:
                    break
            elif done >= iterations:
                break
            name = names[rng.randrange(len(names))]
            while True:                        # a stray second signal: try the bookkeeping again
                try:
                    st.gen += 1
                    st.window = durations[name] * 1.1
                    arm.set()
                    try:
                        one(work[name])
                        hit = False
                    except KeyboardInterrupt:
                        st.inside = False
                        st.delivered += 1
                        hit = True
                    break
                except KeyboardInterrupt:
                    st.inside = False
                    st.delivered += 1
            per_name[name][0] += 1
            per_name[name][1] += hit
            done += 1
    finally:
        st.stop = True
        st.inside = False
        arm.set()
        thread.join(5)
        while ownership.deferred_interrupts():  # caught in a finalizer, not delivered yet
            try:
                ownership.deliver_deferred()
            except KeyboardInterrupt:
                st.delivered += 1
        signal.signal(signal.SIGINT, old)
        sys.unraisablehook = old_hook
        stub.set_delay(0)
    elapsed = time.perf_counter() - t_start
    gc.collect()
    acl.release_thread_resources()
    gc.collect()
    before_shutdown = stub.counters()
    pending = [repr(c) for c in ownership.pending()]
    acl.shutdown(finalize=False)
    gc.collect()
    after = stub.counters()
    bad = stub.bad_releases() - bad0
    got = acl.run_backward(call)
    same = all(np.array_equal(a.view(np.uint16), b.view(np.uint16)) for a, b in zip(got, expected))
    acl.shutdown(finalize=False)
    lost = st.raised - st.delivered
    ok = (all(v == 0 for v in after.values()) and bad == 0 and same and lost == 0
          and all(v == 0 for v in start_counters.values()))
    return dict(ok=ok, iterations=done, seconds=round(elapsed, 2), delay_us=delay_us,
                signals_sent=st.sent, raised=st.raised, interrupted=st.delivered, lost=lost,
                dropped_in_finalizers=st.dropped, late_signals=st.late,
                per_workload={n: {"runs": r, "interrupted": i} for n, (r, i) in per_name.items()},
                counters_before_shutdown=before_shutdown, pending_claims_before_shutdown=pending,
                counters_after_shutdown=after, bad_releases=bad, same_gradients_after=same,
                workload_ms={n: round(1e3 * v, 2) for n, v in durations.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--delay-us", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("_stub_build", ROOT / "native_stubs" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    lib_dir = os.environ.get("ACLNN_FAG_STUB_DIR") or str(build.build())
    os.environ["ACLNN_FAG_LIB_DIR"] = lib_dir
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ACLNN_FAG_BACKEND", "ACLNN_FAG_DEVICE"):
        os.environ.pop(var, None)
    sys.path.insert(0, str(ROOT))
    report = storm(_stub_controls(lib_dir), seconds=args.seconds, seed=args.seed,
                   delay_us=args.delay_us)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
