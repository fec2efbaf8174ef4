"""numpy's BLAS and its threads: reported (info, bench, parity reports) and capped for the
NumPy reference on request (set_reference_threads, $ACLNN_FAG_BLAS_THREADS, reference_threads),
for the duration of a call only."""

from __future__ import annotations

import json
import threading
import warnings

import pytest

import aclnn_fag as af
import aclnn_fag.api as api
from aclnn_fag import blas
import oracle as O


@pytest.fixture
def controllable(monkeypatch):
    ctl = blas._probe()
    if ctl is None or ctl._set is None:
        pytest.skip("numpy's BLAS exposes no thread control on this machine")
    monkeypatch.delenv(blas.ENV_VAR, raising=False)
    before = ctl.get()
    if before < 2:                       # make a cap observable
        ctl.set(2)
    yield ctl
    af.set_reference_threads(None)
    blas._cap_state["setting"] = None
    ctl.set(before)


def _call():
    case = O.make_case(7, [9, 4], [9, 6], n1=2, n2=1, d=16, dr=8, mode=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(), backend="numpy")


def _spy(monkeypatch):
    seen = []
    original = api.attention_backward

    def spy(call, precision, **kw):
        seen.append(blas.blas_threads())
        return original(call, precision, **kw)
    monkeypatch.setattr(api, "attention_backward", spy)
    return seen


def test_blas_info_names_the_library_and_threads(controllable):
    info = af.blas_info()
    assert info["library"] and info["kind"] in ("openblas", "mkl", "blis")
    assert info["threads"] == controllable.get() >= 1
    assert info["threads_via"] and info["path"]
    json.dumps(info)


def test_reference_threads_caps_and_restores(controllable):
    before = controllable.get()
    with af.reference_threads(1):
        assert blas.blas_threads() == 1
    assert blas.blas_threads() == before
    with af.reference_threads(before + 8):          # a cap never raises the count
        assert blas.blas_threads() == before


def test_restored_after_an_exception(controllable):
    before = controllable.get()
    with pytest.raises(RuntimeError):
        with af.reference_threads(1):
            raise RuntimeError("boom")
    assert blas.blas_threads() == before


def test_package_setting_applies_during_calls_only(controllable, monkeypatch):
    before = controllable.get()
    seen = _spy(monkeypatch)
    _call()
    af.set_reference_threads(1)
    _call()
    af.set_reference_threads(None)
    _call()
    assert seen == [before, 1, before]
    assert blas.blas_threads() == before


def test_environment_variable_sets_the_default(controllable, monkeypatch):
    seen = _spy(monkeypatch)
    monkeypatch.setenv(blas.ENV_VAR, "1")
    _call()
    assert seen == [1] and blas.blas_threads() >= 2
    assert af.blas_info()["cap"] == 1
    monkeypatch.setenv(blas.ENV_VAR, "many")
    with pytest.raises(ValueError, match=blas.ENV_VAR):
        _call()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_caps_are_rejected(bad):
    with pytest.raises(ValueError):
        af.set_reference_threads(bad)


def test_concurrent_blocks_restore_once(controllable):
    before = controllable.get()
    inside, release = threading.Barrier(3), threading.Event()

    def worker():
        with af.reference_threads(1):
            inside.wait()
            release.wait(10)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert blas.blas_threads() == 1
    release.set()
    for t in threads:
        t.join()
    assert blas.blas_threads() == before


def test_reports_record_the_blas(tmp_path):
    from aclnn_fag.tools import bench, envinfo
    env = envinfo.environment("numpy", "device", npu={"ok": False})
    assert env["versions"]["blas"]["threads"] == blas.blas_threads()
    line = bench.format_blas(blas.blas_info())
    assert line.startswith("BLAS: ") and "threads" in line


def test_set_none_overrides_the_environment_variable(controllable, monkeypatch):
    """set_reference_threads(None) means "no cap", also over $ACLNN_FAG_BLAS_THREADS (which
    only gives the default while set_reference_threads was never called)."""
    before = controllable.get()
    seen = _spy(monkeypatch)
    monkeypatch.setenv(blas.ENV_VAR, "1")
    _call()                                    # the variable's default applies
    af.set_reference_threads(None)
    _call()                                    # explicitly uncapped: the variable is ignored
    assert seen == [1, before] and before >= 2
    assert blas.get_reference_threads() is None and af.blas_info()["cap"] is None
    monkeypatch.setenv(blas.ENV_VAR, "many")   # not even read any more
    _call()
    assert seen[-1] == before
