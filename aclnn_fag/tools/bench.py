"""``aclnn-fag bench`` (docs/cli.md): time a backend over a few sizes next to this machine's
sgemm, the work counted exactly over the kept area of the mask."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import blas
from ..api import resolve_backend
from ..reference import attention_backward, attention_forward, release_scratch
from ..rules import validate_backward, validate_forward
from ..semantics.sparse import MaskReader, batch_keep
from .cases import CaseSpec, forward_arguments, make_inputs, with_forward
from .cliargs import positive_int
from .envinfo import environment
from .output import add_json_argument, emit_report, progress_writer, usage_error

__all__ = ["kept_pairs", "flop_count", "measure_sgemm", "peak_extra_memory", "SUITES",
           "run_bench", "add_arguments", "main", "BENCH_SCHEMA"]

BENCH_SCHEMA = "aclnn_fag.tools.bench/1"
MiB = float(1 << 20)


def kept_pairs(call) -> list:
    """Kept (i, j) pairs per batch of a validated call, exactly (per-head mask: mean over heads)."""
    seqs = call.seqs
    mask = (MaskReader(call.atten_mask, seqs, call.query.shape[1])
            if call.sparse_mode in (0, 1, 5) else None)
    out = []
    for b, _, sq, _, skv in seqs.batches():
        if sq == 0 or skv == 0:
            out.append(0)
            continue
        keep = batch_keep(call.sparse_mode, b, sq, skv, call.pre_eff, call.next_eff, call.band_index)
        if mask is None or not keep.uses_mask:
            i = np.arange(sq, dtype=np.float64)
            first, last = np.clip(i + keep.lo, 0, skv), np.clip(i + keep.hi, -1, skv - 1)
            out.append(int(np.maximum(0.0, last - first + 1).sum()))
            continue
        total, rows = 0, max(1, (1 << 24) // max(1, skv))
        for i0 in range(0, sq, rows):
            i1 = min(sq, i0 + rows)
            d = np.arange(skv)[None, :] - np.arange(i0, i1)[:, None]
            kept = ~mask.block(b, i0, i1, 0, skv) & (d >= keep.lo) & (d <= keep.hi)
            # a per-head [N1, r, c] mask: the mean over heads, so that x N1 gives the total
            total += np.count_nonzero(kept) / (kept.shape[0] if kept.ndim == 3 else 1)
        out.append(total)
    return out


def flop_count(call, direction: str) -> float:
    """Flops of one call: kept pairs x N1 x 2(3 Dqk + 2 Dv) (bwd) or 2(Dqk + Dv) (fwd)."""
    dqk, dv = call.query.shape[2] + call.query_rope.shape[2], call.value.shape[2]
    per_pair = 2 * (3 * dqk + 2 * dv) if direction == "bwd" else 2 * (dqk + dv)
    return float(sum(kept_pairs(call))) * call.query.shape[1] * per_pair


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_sgemm(sizes=(1024, 1536, 2048), repeats: int = 3) -> dict:
    """Best float32 matmul GFLOP/s of NumPy on square matrices."""
    rng = np.random.default_rng(0)
    per_size = {}
    for n in sizes:
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        c = np.empty((n, n), np.float32)
        np.matmul(a, b, out=c)                                    # warm-up
        best = min(_timed(lambda: np.matmul(a, b, out=c)) for _ in range(repeats))
        per_size[str(n)] = 2.0 * n ** 3 / best / 1e9
    return {"gflops": max(per_size.values()), "per_size_gflops": per_size, "repeats": repeats}


def peak_extra_memory(fn) -> tuple:
    """(result, tracemalloc peak during ``fn()`` minus the bytes of the arrays it returns);
    the reference's scratch buffers are released first, so that a call's own count."""
    release_scratch()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    out_bytes = sum(x.nbytes for x in (result if isinstance(result, tuple) else (result,))
                    if isinstance(x, np.ndarray))
    return result, max(0, peak - base - out_bytes)


@dataclass(frozen=True)
class Row:
    """One measurement: ``direction`` "bwd"/"fwd" of ``spec`` in ``precision``."""

    key: str
    label: str
    spec: CaseSpec
    direction: str = "bwd"
    precision: Optional[str] = None          # None: the --precision option
    memory: bool = True                      # also measure the peak extra memory


def _mla(name, lengths, heads, mode=0, **kw) -> CaseSpec:
    extra = {"mask": "zeros", **kw} if mode in (0, 1) else kw
    return CaseSpec(name=name, lengths_q=tuple(lengths), heads=heads, d=128, d_rope=64, d_v=128,
                    sparse_mode=mode, seed=7, **extra)


def _default_rows():
    specs = [CaseSpec(name="doc-example", lengths_q=(256,), heads=1, sparse_mode=0, mask="zeros",
                      scale=0.088388, pre_tokens=65536, next_tokens=65536, seed=0),
             _mla("mla-1k-n16", [1024], 16), _mla("mla-2x1k-n16-causal", [1024, 1024], 16, mode=3),
             _mla("gqa-1k-32x4-causal", [1024], 32, mode=3, kv_heads=4)]
    return [Row(f"{d}:{s.name}", f"{d} {s.name}", s, d, memory=d == "bwd")
            for s in specs for d in ("bwd", "fwd")]


def _smoke_rows():
    s1 = CaseSpec(name="tiny", lengths_q=(128,), heads=2, d=64, d_rope=32, d_v=64, mask="zeros", seed=1)
    s2 = CaseSpec(name="tiny-causal-gqa", lengths_q=(96, 64), heads=4, kv_heads=2, sparse_mode=3, seed=2)
    return [Row("bwd:tiny", "bwd tiny", s1), Row("fwd:tiny", "fwd tiny", s1, "fwd", memory=False),
            Row("bwd:tiny-causal-gqa", "bwd tiny-causal-gqa", s2)]


def _target_rows():
    band = dict(mode=4, pre_tokens=256, next_tokens=256)
    specs = {"unmasked": ("unmasked", _mla("mla-2x2048-n8", (2048, 2048), 8)),
             "causal": ("causal", _mla("mla-2x2048-n8-causal", (2048, 2048), 8, mode=3)),
             "band": ("band256", _mla("mla-2x2048-n8-band256", (2048, 2048), 8, **band))}
    plan = [("bwd", "unmasked", "fp32"), ("bwd", "unmasked", "device"), ("bwd", "causal", "device"),
            ("bwd", "band", "device"), ("bwd", "unmasked", "fp64"), ("fwd", "unmasked", "fp32"),
            ("fwd", "unmasked", "device"), ("fwd", "causal", "device"), ("fwd", "band", "device")]
    rows = [Row(f"{d}:{k}:{p}", f"{d} {specs[k][0]} {p}", specs[k][1], d, p, memory=False)
            for d, k, p in plan]
    mem = _mla("mla-32k-n8-band256", (32768,), 8, **band)
    return rows + [Row("mem:32k", "bwd T=32768 N=8 band256 device (memory)", mem, "bwd", "device")]


SUITES = {"default": _default_rows, "smoke": _smoke_rows, "targets": _target_rows}


def _measure_row(row: Row, inputs: dict, backend: str, precision: str, repeat: int,
                 sgemm: float) -> dict:
    call = validate_backward(**inputs)
    flops, pairs = flop_count(call, row.direction), sum(kept_pairs(call))
    full = sum(sq * skv for _, _, sq, _, skv in call.seqs.batches())
    ran_on = backend if (row.direction == "bwd" and precision == "device") else "numpy"
    host = []
    if row.direction == "fwd":
        fwd_call = validate_forward(**forward_arguments(inputs))
        fn = lambda: attention_forward(fwd_call, precision)       # noqa: E731
    elif ran_on == "npu":
        from .. import acl

        def fn():
            t = {}
            out = acl.run_backward(call, device_id=None, timings=t)   # None: $ACLNN_FAG_DEVICE or 0
            host.append(t)
            return out
    else:
        fn = lambda: attention_backward(call, precision)          # noqa: E731
    times = [_timed(fn) for _ in range(repeat)]
    best = min(times)
    result = {"key": row.key, "label": row.label, "direction": row.direction, "backend": ran_on,
              "precision": precision, "case": row.spec.to_dict(),
              "shapes": {k: list(v.shape) for k, v in inputs.items() if isinstance(v, np.ndarray)},
              "kept_pairs": pairs, "area_share": pairs / full if full else 0.0,
              "gflop": flops / 1e9, "times_s": times, "best_s": best,
              "median_s": statistics.median(times), "gflops": flops / best / 1e9 if best > 0 else 0.0}
    result["ratio_to_sgemm"] = result["gflops"] / sgemm if sgemm else None
    if host:
        med = {k: statistics.median([t.get(k, 0.0) for t in host])
               for k in sorted({k for t in host for k in t})}
        med["host_excluding_copies"] = sum(med.get(k, 0.0) for k in ("marshal", "phase1", "phase2"))
        result["host_timings_s"] = med
    if row.memory:
        result["peak_extra_mib"] = peak_extra_memory(fn)[1] / MiB
    return result


def _goal_rows(results: dict) -> list:
    """The targets from the measured rows (missing rows are skipped)."""
    t = []

    def add(name, measured, goal_text, ok, detail=""):
        t.append({"target": name, "measured": measured, "goal": goal_text, "met": bool(ok),
                  "detail": detail})

    def sgemm_goal(key, name, goal):
        r = results.get(key)
        if r and r.get("ratio_to_sgemm") is not None:
            add(name.format(**r), f"{r['ratio_to_sgemm']:.2f} x sgemm ({r['gflops']:.1f} GFLOP/s)",
                f">= {goal:.2f} x sgemm", r["ratio_to_sgemm"] >= goal)

    for prec in ("fp32", "device"):
        sgemm_goal(f"bwd:unmasked:{prec}", f"bwd MLA 2x2048 N=8 unmasked, {prec} ({{backend}})", 0.65)
    un = results.get("bwd:unmasked:device")
    r = results.get("bwd:causal:device")
    if r and un:
        ratio = r["best_s"] / un["best_s"]
        add("bwd causal (mode 3) time / unmasked", f"{ratio:.2f}", "<= 0.60", ratio <= 0.6,
            f"area share {r['area_share']:.3f}")
    r = results.get("bwd:band:device")
    if r and un:
        ratio = r["best_s"] / un["best_s"]
        per_area = ratio / r["area_share"] if r["area_share"] else float("inf")
        add("bwd band (mode 4, 256/256) time / unmasked", f"{ratio:.2f} = {per_area:.2f} x area "
            f"share {r['area_share']:.3f}", "<= 1.2 x area share (time ∝ area)", per_area <= 1.2)
    for prec in ("fp32", "device"):
        sgemm_goal(f"fwd:unmasked:{prec}", f"fwd MLA 2x2048 N=8 unmasked, {prec} (numpy)", 0.6)
    r = results.get("mem:32k")
    if r and "peak_extra_mib" in r:
        add(f"peak extra memory, bwd T=32768 N=8 ({r['precision']}, {r['backend']})",
            f"{r['peak_extra_mib']:.1f} MiB", "<= 64 MiB", r["peak_extra_mib"] <= 64.0)
    r64, r32 = results.get("bwd:unmasked:fp64"), results.get("bwd:unmasked:fp32")
    if r64 and r32:
        ratio = r64["best_s"] / r32["best_s"]
        add("bwd fp64 time / fp32 time (numpy)", f"{ratio:.2f}", "<= 2.5", ratio <= 2.5)
    return t


def run_bench(suite: str = "default", backend: str = "auto", precision: str = "device",
              repeat: int = 3, progress=None, sgemm: Optional[dict] = None) -> dict:
    """Run a named suite; returns the JSON-ready result."""
    if suite not in SUITES:
        raise ValueError(f"unknown bench suite {suite!r}; choose from {sorted(SUITES)}")
    name = resolve_backend(backend, "device")
    rows = SUITES[suite]()

    say = progress_writer(progress)
    with blas.capped():        # sgemm and the NumPy rows with the threads the package's calls get
        blas_used = blas.blas_info()
        say(format_blas(blas_used))
        say("measuring sgemm (numpy float32 matmul 1024/1536/2048, best of 3) ...")
        sgemm = sgemm or measure_sgemm()
        results, inputs = {}, {}
        t0 = time.perf_counter()
        for i, row in enumerate(rows, 1):
            say(f"[{i}/{len(rows)}] {row.label} ...")
            if row.spec not in inputs:                   # one input set alive at a time
                inputs = {row.spec: with_forward(make_inputs(row.spec))}
            results[row.key] = _measure_row(row, inputs[row.spec], name, row.precision or precision,
                                            repeat, sgemm["gflops"])
    inputs.clear()
    targets = _goal_rows(results) if suite == "targets" else []
    return {"schema": BENCH_SCHEMA, "suite": suite, "backend": name, "precision": precision,
            "repeat": repeat, "blas": blas_used, "sgemm": sgemm, "results": list(results.values()),
            "targets": targets,
            "all_targets_met": all(t["met"] for t in targets) if targets else None,
            "environment": environment(name, precision), "wall_s": time.perf_counter() - t0}


def format_blas(info: dict) -> str:
    """One line: numpy's BLAS, its thread count and the CPUs this process may use."""
    if not info or info.get("error"):
        return f"BLAS: unknown ({(info or {}).get('error', 'not reported')})"
    threads, cap = info.get("threads"), info.get("cap")
    return (f"BLAS: {info.get('library') or 'unknown'} {info.get('version') or ''}".rstrip()
            + f", {threads if threads is not None else 'unknown'} threads"
            + (f" (capped at {cap} during NumPy-backend calls)" if cap else "")
            + f"; {info.get('usable_cpus') or info.get('cpu_count')} usable CPUs"
            + "".join(f", {k}={v}" for k, v in sorted((info.get("env") or {}).items())))


def _table(head: str, rows: list) -> list:
    return [head, "-" * len(head)] + rows


def format_bench(report: dict) -> str:
    sg = report["sgemm"]
    lines = [format_blas(report.get("blas") or report.get("environment", {}).get("blas")),
             f"sgemm (numpy float32): {sg['gflops']:.1f} GFLOP/s best "
             f"({', '.join(f'{n}: {g:.1f}' for n, g in sg['per_size_gflops'].items())})"]
    rows = []
    for r in report["results"]:
        mem = f"{r['peak_extra_mib']:.1f}" if "peak_extra_mib" in r else "-"
        ratio = f"{r['ratio_to_sgemm']:.2f}" if r.get("ratio_to_sgemm") is not None else "-"
        rows.append(f"{r['label']:<44s} {r['backend']:<7s} {r['precision']:<6s} {r['gflop']:>8.2f} "
                    f"{r['best_s']:>8.4f} {r['median_s']:>8.4f} {r['gflops']:>8.1f} {ratio:>7s} "
                    f"{r['area_share']:>5.2f} {mem:>8s}")
        if "host_timings_s" in r:
            rows.append("    host per call (median): " + ", ".join(
                f"{k} {v * 1e3:.3f} ms" for k, v in r["host_timings_s"].items()))
    lines += _table(f"{'row':<44s} {'backend':<7s} {'prec':<6s} {'GFLOP':>8s} {'best_s':>8s} "
                    f"{'median_s':>8s} {'GFLOP/s':>8s} {'x sgemm':>7s} {'area':>5s} {'peak MiB':>8s}",
                    rows)
    if report["targets"]:
        lines += [""] + _table(f"{'target':<58s} {'measured':<40s} {'goal':<36s} status", [
            f"{t['target']:<58s} {t['measured']:<40s} {t['goal']:<36s} "
            f"{'met' if t['met'] else 'MISSED'}{('  (' + t['detail'] + ')') if t['detail'] else ''}"
            for t in report["targets"]])
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "numpy", "npu"), default="auto",
                   help="backend of the device-precision backward rows (default: auto; the "
                        "forward and fp32/fp64 rows always run on numpy)")
    p.add_argument("--precision", choices=("device", "fp32", "fp64"), default="device",
                   help="precision of the default/smoke suites' rows (default: device; fp32/fp64 "
                        "run on numpy; the targets suite fixes its own precisions)")
    p.add_argument("--suite", choices=sorted(SUITES) + ["overhead", "torch"], default="default",
                   help="named suite: default (a few sizes; the default), smoke (tiny, for CI), "
                        "targets (the project's performance targets), overhead (host "
                        "microseconds per call on the NPU path; needs the NPU backend or "
                        "the stubs, whose computation it switches off), torch (forward + "
                        "backward against torch's CPU scaled_dot_product_attention; needs torch)")
    p.add_argument("--repeat", type=positive_int, default=3,
                   help="timed calls per row; best and median are reported (default: 3)")
    add_json_argument(p, "the results")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="--suite torch: torch's and the BLAS's threads for both sides (default: 1)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="--suite torch: wall time (default) or this process's CPU time")


def main(args) -> int:
    """The ``bench`` subcommand."""
    try:
        resolve_backend(args.backend, "device")
    except Exception as exc:
        return usage_error("aclnn-fag bench", str(exc))
    progress = None if args.quiet else sys.stderr
    if args.suite == "overhead":
        from .bench_overhead import format_overhead, run_overhead
        try:
            resolve_backend("npu", "device")
        except Exception as exc:
            return usage_error("aclnn-fag bench --suite overhead",
                               f"needs the NPU backend: {exc}")
        report = run_overhead(repeat=max(args.repeat, 3), progress=progress)
        return emit_report(args, format_overhead(report), report, report["all_goals_met"])
    if args.suite == "torch":
        from .bench_torch import main_torch
        return main_torch(args)
    report = run_bench(args.suite, args.backend, args.precision, args.repeat, progress=progress)
    return emit_report(args, format_bench(report), report,
                       not report["targets"] or report["all_targets_met"])
