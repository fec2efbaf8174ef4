#!/usr/bin/env python3
"""Fault-injection sweep on the stubs: one failure at every call of every native function.

For each workload of ``scripts/interrupt_storm.py`` (public call, deterministic
run_backward, call_raw, one-shot FagPlan, repeatable FagPlan with a swapped buffer,
DeviceArrays) the calls of one clean run are counted; then, for every function and every
call position, the stubs are told to fail exactly that call (``aclStubInjectFailure``)
and the workload runs again. Each run must either succeed or raise an ``AclnnError`` (a
failed release may warn instead); after ``acl.shutdown()`` every stub counter must be at
zero and no handle may have been released twice.

    python scripts/fault_sweep.py [--code 507899] [--repeat 1]

prints a JSON report and exits 1 on a leak, a double release or an unexpected exception.
"""

from __future__ import annotations

import argparse
import collections
import gc
import importlib.util
import json
import os
import pathlib
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sweep(stub, code: int = 507899, repeat: int = 1) -> dict:
    import aclnn_fag.acl as acl
    from aclnn_fag import errors
    from aclnn_fag.acl import runtime

    storm = _load("_interrupt_storm", ROOT / "scripts" / "interrupt_storm.py")
    work, _ = storm._workloads(0)
    b = runtime.api()
    counts = collections.Counter()
    names = [n for n in dir(b) if n.startswith("acl") and callable(getattr(b, n, None))]
    real = {n: getattr(b, n) for n in names}

    def counting(n):
        def f(*args):
            counts[n] += 1
            return real[n](*args)
        return f

    report = {"injections": 0, "runs": 0, "raised": 0, "succeeded": 0, "release_warnings": 0,
              "unexpected": [], "leaks": [], "bad_releases": 0, "per_workload": {}}
    bad0 = stub.bad_releases()
    t0 = time.perf_counter()
    for wname, fn in sorted(work.items()):
        acl.shutdown(finalize=False)
        gc.collect()
        for n in names:
            setattr(b, n, counting(n))
        counts.clear()
        try:
            fn()
        finally:
            for n in names:
                setattr(b, n, real[n])
        positions = [(f, i) for f, k in sorted(counts.items()) if f != "aclGetRecentErrMsg"
                     for i in range(k)]
        report["per_workload"][wname] = len(positions)
        for _ in range(repeat):
            for f, i in positions:
                stub.clear()
                stub.inject(f, i, code)
                report["injections"] += 1
                report["runs"] += 1
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        fn()
                        report["succeeded"] += 1
                    except errors.AclnnError:
                        report["raised"] += 1
                    except Exception as exc:        # anything else is a defect
                        report["unexpected"].append(f"{wname}: {f}#{i}: {exc!r}")
                report["release_warnings"] += sum(
                    issubclass(w.category, errors.ResourceReleaseWarning) for w in caught)
                stub.clear()
                gc.collect()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    acl.shutdown(finalize=False)
                gc.collect()
                c = stub.counters()
                if any(c.values()):
                    report["leaks"].append(f"{wname}: {f}#{i}: {c}")
    report["bad_releases"] = stub.bad_releases() - bad0
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["ok"] = not (report["unexpected"] or report["leaks"] or report["bad_releases"])
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=int, default=507899)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    build = _load("_stub_build", ROOT / "native_stubs" / "build.py")
    lib_dir = os.environ.get("ACLNN_FAG_STUB_DIR") or str(build.build())
    os.environ["ACLNN_FAG_LIB_DIR"] = lib_dir
    for var in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME", "ACLNN_FAG_BACKEND", "ACLNN_FAG_DEVICE"):
        os.environ.pop(var, None)
    sys.path.insert(0, str(ROOT))
    kit = _load("_aclnn_fag_stub_kit", ROOT / "tests" / "stub_kit.py")
    report = sweep(kit.StubControls(lib_dir), code=args.code, repeat=args.repeat)
    if len(report["leaks"]) > 20:
        report["leaks"] = report["leaks"][:20] + [f"... {len(report['leaks']) - 20} more"]
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
