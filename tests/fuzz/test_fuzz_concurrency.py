"""Threads and processes on the stub NPU backend.

* 8 threads x 50 public calls (x ``ACLNN_FAG_FUZZ_SCALE`` in the long profile; several
  problems, both determinism settings, an invalid call mixed in every 50) give the single-threaded results bit for bit and leave the
  stub's live counters at zero.
* fork: a child forked after the parent initialised ACL gets a clear ForkedProcessError
  (explicit backend="npu" and the acl API), while backend="auto" falls back to NumPy and
  works; a child of a parent that never initialised ACL uses the NPU backend normally; a
  fork that bypasses Python's at-fork hooks is caught by the pid check. No child hangs
  (every wait has a timeout).
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

import aclnn_fag as af
from aclnn_fag import acl
from fuzz_cases import SCALE, TALLY, Case, build_case, public_call

THREADS, CALLS = 8, 50 * SCALE
CHILD_TIMEOUT = 60


def _problem(seed, mode, q_lens, kv_lens, g, deterministic=False) -> Case:
    case = build_case(q_lens=q_lens, kv_lens=kv_lens, extra_q=0, extra_kv=0, n2=1, g=g, d=16,
                      dr=8, dv=16, mode=mode, pre=6, nxt=6, seed=seed, mask_kind="2d",
                      mask_dtype=np.uint8, density=0.2, deterministic=deterministic, scale=None)
    assert case.meta["forward_error"] is None
    return case


def _bits(grads):
    return [np.asarray(x).view(np.uint16).copy() for x in grads]


def test_threads_give_the_single_threaded_results_and_leak_nothing(stub):
    problems = [_problem(1, 0, [5, 0, 7], [6, 2, 7], 2), _problem(2, 3, [4, 6], [6, 6], 1),
                _problem(3, 4, [7], [5], 3, deterministic=True), _problem(4, 1, [3, 3], [2, 4], 2)]
    bad = Case(dict(problems[0].args, sparse_mode=9), {})            # rule 26: 161001
    expected = []
    for p in problems:
        kind, res = public_call(p, "npu")
        assert kind == "ok", res
        expected.append(_bits(res))
    gc.collect()
    acl.release_thread_resources()
    base = stub.objects()
    failures = []
    barrier = threading.Barrier(THREADS)

    def worker(idx):
        try:
            barrier.wait(timeout=CHILD_TIMEOUT)
            for j in range(CALLS):
                if j % 50 == 49:
                    kind, res = public_call(bad, "npu")
                    assert kind == "err" and res.code == 161001, res
                    continue
                k = (idx + j) % len(problems)
                kind, res = public_call(problems[k], "npu")
                assert kind == "ok", res
                for got, want in zip(_bits(res), expected[k]):
                    assert np.array_equal(got, want), f"thread {idx} call {j}: results differ"
        except BaseException as exc:              # reported below
            failures.append((idx, exc))

    threads = [threading.Thread(target=worker, args=(i,), name=f"fuzz-worker-{i}")
               for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hangs"
    assert not failures, failures[:3]
    TALLY["thread_calls"] += THREADS * CALLS
    gc.collect()
    acl.release_thread_resources()            # the ended threads' streams
    after = stub.counters()
    assert {k: after[k] for k in base} == base, f"leaked: {base} -> {after}"
    assert after["tensors"] == after["int_arrays"] == after["executors"] == 0
    assert after["device_bytes"] == 0


# ----------------------------------------------------------------------------- fork
def _child_after_init(case, queue):
    out = {}
    try:
        public_result = public_call(case, "npu")
        out["npu"] = ("err", type(public_result[1]).__name__, str(public_result[1])) \
            if public_result[0] == "err" else ("ok",)
        try:
            acl.DeviceArray.empty((4,), np.float32)
            out["acl"] = ("ok",)
        except Exception as exc:
            out["acl"] = ("err", type(exc).__name__, str(exc))
        out["available"] = bool(acl.availability().ok)
        kind, res = public_call(case, "auto")
        out["auto"] = (kind, af.last_backend(),
                       [np.asarray(x).view(np.uint16).tolist() for x in res] if kind == "ok" else str(res))
    except BaseException as exc:           # pragma: no cover - reported by the parent
        out["crash"] = repr(exc)
    queue.put(pickle.dumps(out))


def test_fork_after_initialisation_fails_clearly_and_auto_falls_back():
    case = _problem(5, 0, [5, 3], [6, 3], 2)
    kind, npu_res = public_call(case, "npu")               # the parent initialises ACL
    assert kind == "ok"
    _, ref = public_call(case, "numpy")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # fork() with threads alive
        proc = ctx.Process(target=_child_after_init, args=(case, queue))
        proc.start()
    try:
        out = pickle.loads(queue.get(timeout=CHILD_TIMEOUT))
    finally:
        proc.join(timeout=CHILD_TIMEOUT)
        if proc.is_alive():
            proc.kill()
            pytest.fail("the forked child hangs")
    assert proc.exitcode == 0 and "crash" not in out, out
    for key in ("npu", "acl"):
        assert out[key][0] == "err", out
        assert out[key][1] in ("ForkedProcessError", "BackendUnavailableError"), out
        assert "fork" in out[key][2] and "spawn" in out[key][2], out
    assert out["available"] is False
    kind, backend, bits = out["auto"]
    assert kind == "ok" and backend == "numpy", out["auto"]
    assert bits == [np.asarray(x).view(np.uint16).tolist() for x in ref]
    # the parent is unaffected
    kind, again = public_call(case, "npu")
    assert kind == "ok"
    for a, b in zip(again, npu_res):
        assert np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))


FRESH_PARENT = textwrap.dedent("""
    import multiprocessing, os, sys, pickle
    import numpy as np
    sys.path[:0] = sys.argv[1:3]
    os.environ["ACLNN_FAG_LIB_DIR"] = sys.argv[3]
    import aclnn_fag as af
    from fuzz_cases import build_case, public_call

    case = build_case(q_lens=[5, 3], kv_lens=[6, 3], extra_q=0, extra_kv=0, n2=1, g=2, d=16,
                      dr=8, dv=16, mode=0, pre=6, nxt=6, seed=7, mask_kind="2d",
                      mask_dtype=np.uint8, density=0.2, deterministic=False, scale=None)

    def child(q):
        kind, res = public_call(case, "npu")
        q.put(pickle.dumps((kind, af.last_backend(),
                            [np.asarray(x).view(np.uint16).tolist() for x in res]
                            if kind == "ok" else repr(res))))

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        kind, backend, bits = pickle.loads(q.get(timeout=60))
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        assert kind == "ok" and backend == "npu", (kind, backend, bits)
        ref = public_call(case, "numpy")[1]
        got = [np.asarray(b, np.uint16).view(ref[0].dtype).astype(np.float32) for b in bits]
        for g, r in zip(got, ref):
            err = np.max(np.abs(g - r.astype(np.float32)), initial=0.0)
            assert err <= 2 ** -7 * max(np.max(np.abs(r.astype(np.float32)), initial=0.0), 1e-6) + 1e-5, err
        print("CHILD-OK")
""")


def test_fork_from_a_parent_that_never_initialised_works(fuzz_stub_dir, tmp_path):
    script = tmp_path / "fresh_parent.py"
    script.write_text(FRESH_PARENT)
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, str(script), here, root, str(fuzz_stub_dir)],
                         capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0 and "CHILD-OK" in out.stdout, out.stdout + out.stderr


def test_raw_fork_is_caught_by_the_pid_check():
    """A fork that bypasses os.register_at_fork (libc fork() called directly, as a C
    extension might) is recognised by the pid check."""
    case = _problem(6, 0, [4], [4], 1)
    assert public_call(case, "npu")[0] == "ok"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fork.restype = ctypes.c_int
    r, w = os.pipe()
    pid = libc.fork()
    if pid == 0:                                           # child: no pytest machinery here
        code = 1
        try:
            os.close(r)
            reason = acl.runtime.forked_child_reason()
            try:
                acl.DeviceArray.empty((2,), np.float32)
                verdict = b"used the parent's runtime"
            except acl.ForkedProcessError as exc:
                verdict = b"ok" if "fork" in str(exc) else b"unclear message"
            os.write(w, verdict if reason else b"no reason")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = b""
        import select
        ready, _, _ = select.select([r], [], [], CHILD_TIMEOUT)
        if ready:
            data = os.read(r, 200)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert data == b"ok", data
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
