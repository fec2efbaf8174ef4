#!/usr/bin/env python3
"""Run ``aclnn-fag parity`` on every NPU of this host in parallel and merge the reports.

One process per device id (``ACLNN_FAG_DEVICE=<id>`` in its environment), each writing
``<out>/parity_device<id>.json`` and ``<out>/parity_device<id>.log``; the merged report
(``<out>/parity_all_devices.json``, schema ``aclnn_fag.parity_multi/1``) holds every
device's report, its exit status and an overall ``ok``.

Usage::

    python scripts/parity_all_devices.py                      # every device, shipped suite
    python scripts/parity_all_devices.py --devices 0,3 --out reports -- --quick --k 3

Arguments after ``--`` go to ``aclnn-fag parity`` unchanged. Exit status: 0 when every
device passed, 1 otherwise, 2 when there is no device to run on.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MERGED_SCHEMA = "aclnn_fag.parity_multi/1"


def _device_ids(spec):
    if spec:
        return [int(x) for x in spec.split(",") if x.strip()]
    sys.path.insert(0, str(ROOT))
    from aclnn_fag.tools.envinfo import npu_status
    status = npu_status()
    count = status.get("device_count") or 0
    if not status.get("ok") or not count:
        print(f"parity_all_devices: no NPU available: {status.get('reason') or 'device count 0'}",
              file=sys.stderr)
        return []
    return list(range(int(count)))


def _run_one(device: int, out: pathlib.Path, backend: str, extra: list) -> dict:
    report = out / f"parity_device{device}.json"
    log = out / f"parity_device{device}.log"
    env = dict(os.environ, ACLNN_FAG_DEVICE=str(device))
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "aclnn_fag", "parity", "--backend", backend, "--report", str(report),
           *extra]
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    entry = {"device": device, "returncode": proc.returncode, "command": cmd, "log": str(log),
             "report_path": str(report), "wall_s": time.perf_counter() - t0, "report": None}
    try:
        entry["report"] = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        entry["report_error"] = f"{type(exc).__name__}: {exc}"
    return entry


def merge(entries: list) -> dict:
    """The merged report of several devices' runs."""
    devices = {str(e["device"]): e for e in entries}
    ok = bool(entries) and all(e["returncode"] == 0 and e["report"] and e["report"].get("ok")
                               for e in entries)
    totals = {"cases": 0, "passed": 0, "failed": 0, "errors": 0}
    for e in entries:
        for k in totals:
            totals[k] += (e["report"] or {}).get("summary", {}).get(k, 0)
    return {"schema": MERGED_SCHEMA, "ok": ok, "devices_run": sorted(devices, key=int),
            "summary": totals, "devices": devices}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="", help="comma-separated device ids (default: all devices)")
    p.add_argument("--out", default="parity_reports", help="directory for the reports and logs")
    p.add_argument("--backend", default="npu", choices=("npu", "auto", "numpy"),
                   help="backend each process tests (default: npu)")
    from aclnn_fag.tools.cliargs import nonnegative_int
    p.add_argument("--jobs", type=nonnegative_int, default=0,
                   help="parallel processes (default: one per device)")
    args = p.parse_args(argv)
    devices = _device_ids(args.devices)
    if not devices:
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"parity on devices {devices} ({args.backend}), reports in {out}/", file=sys.stderr)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs or len(devices)) as pool:
        entries = list(pool.map(lambda d: _run_one(d, out, args.backend, extra), devices))
    merged = merge(entries)
    path = out / "parity_all_devices.json"
    path.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    for e in entries:
        s = (e["report"] or {}).get("summary", {})
        state = "ok" if e["returncode"] == 0 else f"FAILED (exit {e['returncode']})"
        print(f"device {e['device']}: {state}: {s.get('passed', 0)}/{s.get('cases', 0)} cases passed "
              f"in {e['wall_s']:.1f} s; log {e['log']}")
    print(f"merged report: {path}")
    return 0 if merged["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
