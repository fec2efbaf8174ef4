"""ACL_OPT_DETERMINISTIC: set on the context for the call, restored afterwards."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import aclnn_fag.acl as acl
from aclnn_fag import errors
from aclnn_fag.acl import runtime
from acl_cases import assert_grads_close, make_problem

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _set(value: int) -> None:
    b = runtime.ensure_device(0)
    runtime._set_determinism(b, value)


@pytest.fixture
def d40():
    """D=40: accepted non-deterministically, rejected (161002) in deterministic mode."""
    return make_problem(seed=51, q_lens=(8, 5), d=40, dr=8)


def test_flag_is_on_during_the_call_and_restored(d40, no_leaks):
    _set(0)
    with pytest.raises(errors.ParamInvalidError):          # phase 1 saw the flag on
        acl.call_raw(**d40.raw_kwargs(), deterministic=True)
    assert runtime.get_determinism(0) == 0                 # restored, also after an error
    _set(1)
    got = acl.call_raw(**d40.raw_kwargs(), deterministic=False)   # phase 1 saw it off
    assert_grads_close(got, d40.grads("numpy"))                    # and computed the gradients
    assert runtime.get_determinism(0) == 1
    _set(2)                                                # any non-zero value means on
    with pytest.raises(errors.ParamInvalidError):
        acl.call_raw(**d40.raw_kwargs(), deterministic=True)
    assert runtime.get_determinism(0) == 2
    with pytest.raises(errors.ParamInvalidError):          # None leaves the option alone
        acl.call_raw(**d40.raw_kwargs(), deterministic=None)
    _set(0)


def test_none_leaves_the_option_alone_on_a_fresh_hold(d40, no_leaks):
    """deterministic=None never writes the option: ``acl.determinism(dev, None)`` and the
    first call of a new thread."""
    _set(1)
    with acl.determinism(0, None):
        assert runtime.get_determinism(0) == 1
    assert runtime.get_determinism(0) == 1
    out = {}

    def first_call_of_a_thread():
        try:      # D=40 is rejected only in deterministic mode: the option stays 1
            acl.call_raw(**d40.raw_kwargs(), deterministic=None)
            out["verdict"] = "accepted"
        except errors.ParamInvalidError:
            out["verdict"] = "rejected"
        out["after"] = runtime.get_determinism(0)

    t = threading.Thread(target=first_call_of_a_thread)
    t.start()
    t.join()
    _set(0)
    assert out == {"verdict": "rejected", "after": 1}


def test_public_api_deterministic_flag(no_leaks):
    p = make_problem(seed=52, q_lens=(7, 0, 9), n2=1, g=2, d=32, dr=16)
    _set(0)
    got = p.grads("npu", deterministic=True)
    assert runtime.get_determinism(0) == 0
    assert_grads_close(got, p.grads("numpy", deterministic=True))


def test_inside_the_block():
    _set(0)
    with acl.determinism(0, True):
        assert runtime.get_determinism(0) == 1
        with acl.determinism(0, True):                     # same mode: nests/overlaps
            assert runtime.get_determinism(0) == 1
        assert runtime.get_determinism(0) == 1
    assert runtime.get_determinism(0) == 0


def test_conflicting_modes_are_serialised():
    _set(0)
    entered_a, release_a = threading.Event(), threading.Event()
    log = []

    def a():
        with acl.determinism(0, True):
            log.append(("a in", runtime.get_determinism(0)))
            entered_a.set()
            release_a.wait(5)
            log.append(("a out", runtime.get_determinism(0)))

    def b():
        entered_a.wait(5)
        with acl.determinism(0, False):
            log.append(("b in", runtime.get_determinism(0)))

    ta, tb = threading.Thread(target=a), threading.Thread(target=b)
    ta.start()
    tb.start()
    entered_a.wait(5)
    time.sleep(0.2)
    assert [e[0] for e in log] == ["a in"]                 # b waits for a
    release_a.set()
    ta.join(5)
    tb.join(5)
    assert log == [("a in", 1), ("a out", 1), ("b in", 0)]
    assert runtime.get_determinism(0) == 0


def test_the_last_holder_restores_before_a_waiting_mode_enters(monkeypatch):
    """The last holder of one mode writes the previous value back before a call waiting for
    the other mode may enter: otherwise the waiter reads the not-yet-restored value as "the
    previous one" and writes it back when it leaves, leaving the option wrong for good."""
    _set(0)
    real_set = runtime._set_determinism
    a_restored = threading.Event()
    a_ident = []

    def slow_restore_in_a(b, value):
        if threading.get_ident() in a_ident and value == 0:
            time.sleep(0.3)            # a's write-back is slow: b has time to enter if it can
            real_set(b, value)
            a_restored.set()
            return
        real_set(b, value)

    monkeypatch.setattr(runtime, "_set_determinism", slow_restore_in_a)
    entered_a, release_a = threading.Event(), threading.Event()
    seen = {}

    def a():
        a_ident.append(threading.get_ident())
        with acl.determinism(0, True):
            entered_a.set()
            release_a.wait(5)

    def b():
        entered_a.wait(5)
        with acl.determinism(0, False):
            seen["b in"] = runtime.get_determinism(0)
            a_restored.wait(5)         # leave only after a's write-back has happened

    ta, tb = threading.Thread(target=a), threading.Thread(target=b)
    ta.start()
    tb.start()
    entered_a.wait(5)
    time.sleep(0.1)
    release_a.set()
    ta.join(10)
    tb.join(10)
    assert seen == {"b in": 0}
    assert runtime.get_determinism(0) == 0


def test_without_the_setter(monkeypatch, d40, no_leaks):
    b = runtime.api()
    _set(0)
    monkeypatch.setattr(b, "aclrtCtxSetSysParamOpt", None)
    with pytest.raises(errors.BackendUnavailableError, match="aclrtCtxSetSysParamOpt"):
        acl.call_raw(**d40.raw_kwargs(), deterministic=True)
    # deterministic=False proceeds without touching the option
    assert acl.call_raw(**d40.raw_kwargs(), deterministic=False).dq is not None


def test_unset_option_is_written_back_as_zero(stub_lib_dir):
    """On a fresh context the option is unset (unreadable); after a deterministic call it is
    0 (the op's documented default)."""
    script = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, %r)
        import aclnn_fag.acl as acl
        from aclnn_fag.acl import runtime
        from acl_cases import make_problem
        p = make_problem(seed=53, q_lens=(6,), d=32, dr=16)
        out = {"before": runtime.get_determinism(0)}
        acl.call_raw(**p.raw_kwargs(), deterministic=True)
        out["after"] = runtime.get_determinism(0)
        print(json.dumps(out))
    """ % str(pathlib.Path(__file__).resolve().parent))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_")}
    env["ACLNN_FAG_LIB_DIR"] = str(stub_lib_dir)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"before": None, "after": 0}


def test_nested_conflicting_request_on_one_thread_raises_instead_of_deadlocking(d40, no_leaks):
    _set(0)
    with acl.determinism(0, True):
        with pytest.raises(RuntimeError, match="wait for itself"):
            acl.call_raw(**d40.raw_kwargs(), deterministic=False)
        assert runtime.get_determinism(0) == 1
    assert runtime.get_determinism(0) == 0


TWO_DEVICES = textwrap.dedent("""
    import json, sys, threading
    sys.path.insert(0, %r)
    import aclnn_fag.acl as acl
    from aclnn_fag import errors
    from aclnn_fag.acl import runtime
    from acl_cases import make_problem
    from stub_kit import StubControls
    p = make_problem(seed=51, q_lens=(8, 5), d=40, dr=8)   # D=40: rejected only when deterministic
    stub = StubControls(%r)
    stub.set_delay(300)                                  # every native call: a window to overlap in
    runtime.ensure_device(1); runtime._set_determinism(runtime.api(), 0)
    runtime.ensure_device(0); runtime._set_determinism(runtime.api(), 0)
    wrong = []

    def calls(dev, want):
        for _ in range(12):
            try:
                acl.call_raw(**p.raw_kwargs(), deterministic=want, device_id=dev)
                saw = False
            except errors.ParamInvalidError:
                saw = True
            if saw != want:
                wrong.append((dev, want))

    threads = [threading.Thread(target=calls, args=(0, True)),
               threading.Thread(target=calls, args=(1, False))]
    for t in threads: t.start()
    for t in threads: t.join()
    stub.set_delay(0)
    print(json.dumps({"wrong": len(wrong), "process": runtime.get_process_determinism(),
                      "ctx0": runtime.get_determinism(0), "ctx1": runtime.get_determinism(1)}))
""")


@pytest.mark.parametrize("release", ["9.1.0", "8.5.0"])
def test_concurrent_calls_on_two_devices_with_different_settings(stub_lib_dir, release):
    """From CANN 9.0 the op reads one process-wide option: a call on device 0 wanting
    determinism and one on device 1 not wanting it must never overlap (each call saw the
    value it asked for: D=40 is rejected exactly when deterministic), and every value is
    restored afterwards. On 8.5 (per-context option) the same holds."""
    here = pathlib.Path(__file__).resolve().parent
    script = TWO_DEVICES % (str(here), str(stub_lib_dir))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASCEND_")}
    env.update(ACLNN_FAG_LIB_DIR=str(stub_lib_dir), ACL_STUB_DEVICE_COUNT="2",
               ACL_STUB_CANN_VERSION=release,
               PYTHONPATH=os.pathsep.join([str(ROOT), str(here.parent)]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"wrong": 0, "process": 0, "ctx0": 0, "ctx1": 0}


def test_the_process_option_is_set_for_the_call_and_restored(d40, no_leaks, monkeypatch):
    """The process-wide value (aclrtSetSysParamOpt) is held with the context's and put back
    exactly as found, also when the context setter writes it too (9.0 and later)."""
    b = runtime.ensure_device(0)
    _set(0)
    runtime._set_process_determinism(b, 0)
    with pytest.raises(errors.ParamInvalidError):          # phase 1 saw the flag on
        acl.call_raw(**d40.raw_kwargs(), deterministic=True)
    assert (runtime.get_process_determinism(), runtime.get_determinism(0)) == (0, 0)
    _set(1)                                    # (from 9.0 this writes the process value too)
    runtime._set_process_determinism(b, 3)
    acl.call_raw(**d40.raw_kwargs(), deterministic=False)
    assert (runtime.get_process_determinism(), runtime.get_determinism(0)) == (3, 1)
    _set(0)
    runtime._set_process_determinism(b, 0)


def test_the_last_holder_restores_before_a_call_of_the_other_mode_enters(monkeypatch, no_leaks):
    """The last holder writes the previous value back while it still holds the gate: a call
    waiting for the other mode must read the restored value as its own "previous" one. The
    write-back is slowed down until the waiting call has read (or 0.3 s passed): correct
    code makes the waiting call wait for it; code that writes after unlocking lets it read
    the stale value, and the option ends wrong after both calls."""
    b = runtime.ensure_device(0)
    _set(0)
    runtime._set_process_determinism(b, 0)
    gate = runtime._process_gate(runtime._get_state(), b)
    read, write = gate.read, gate.write
    main = threading.get_ident()
    other_read = threading.Event()

    def slow_write(value):
        if threading.get_ident() == main and value == 0:     # the first holder's write-back
            other_read.wait(0.3)
        write(value)

    def noted_read():
        got = read()
        if threading.get_ident() != main:
            other_read.set()
        return got

    monkeypatch.setattr(gate, "write", slow_write)
    monkeypatch.setattr(gate, "read", noted_read)
    hold = acl.determinism(0, True).acquire()

    def other_mode():
        with acl.determinism(0, False):
            pass

    t = threading.Thread(target=other_mode)
    t.start()
    time.sleep(0.05)                               # the other call waits for the gate
    hold.release()
    t.join()
    assert runtime.get_process_determinism() == 0 and runtime.get_determinism(0) == 0
