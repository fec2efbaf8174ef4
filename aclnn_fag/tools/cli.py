"""The ``aclnn-fag`` command (docs/cli.md): ``info`` and ``demo`` here, ``parity``, ``bench``
and ``report`` in their own modules. ``main(argv)`` returns the exit status."""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from .. import __version__
from . import cliargs
from .output import STDOUT, add_json_argument, human_stream, usage_error, write_json

__all__ = ["main", "build_parser"]


def _cmd_info(args) -> int:
    from ..acl.versions import version_summary_line
    from ..api import resolve_backend
    from .envinfo import environment, npu_status

    npu = npu_status(refresh=True)
    auto = auto_error = None
    try:
        auto = resolve_backend("auto")
    except Exception as exc:
        auto_error = f"{type(exc).__name__}: {exc}"
    env = environment(auto, "device", npu)
    if args.json:
        write_json({"version": __version__, "auto_backend": auto, "auto_error": auto_error,
                    "npu": npu, "environment": env}, args.json)
    if args.quiet or args.json == STDOUT:
        return 0
    ok, features = bool(npu.get("ok")), npu.get("features") or {}
    reason = str(npu.get("reason") or "").strip().splitlines()
    lines = [f"aclnn_fag {__version__}  (python {env['python']}, numpy {env['numpy_version']}, "
             f"ml_dtypes {env['ml_dtypes_version']}, {env['platform']})",
             f"auto backend:    {auto if auto else 'cannot resolve: ' + str(auto_error)}",
             f"NPU backend:     {'available' if ok else 'unavailable'}"
             + ("" if ok or not reason else f" -- {reason[0]}")]
    if npu.get("stand_in"):
        lines.append(f"                 *** {npu.get('stand_in_note')} ***")
    libs = npu.get("libraries")
    if isinstance(libs, dict) and libs:
        lines += ["libraries:"] + [f"  {role:<10s} {where}" for role, where in libs.items()]
    if npu.get("search_order"):
        lines.append("search order:    " + "; ".join(npu["search_order"]))
    if not ok and npu.get("search_notes"):
        lines.append("skipped:         " + "; ".join(npu["search_notes"]))
    if not ok and npu.get("info_error"):
        lines.append(f"info:            {npu['info_error']}")
    lines.append(f"device count:    {npu.get('device_count') or 0}")
    soc = npu.get("soc_name") or (f"unknown ({npu['soc_name_error']})" if npu.get("soc_name_error")
                                  else "unknown (no device)")
    lines.append(f"SoC name:        {soc}")
    v = env.get("versions") or {}
    cann = v.get("cann") or {}
    lines.append(f"CANN version:    {version_summary_line(v.get('cann'))}")
    if cann:
        lines += [f"{pkg + ':':<17s}{cann.get(pkg + '_version') or 'unknown'} "
                  f"(aclsysGetVersionStr(\"{pkg}\"))" for pkg in ("runtime", "ops_transformer")]
    if cann.get("acl_api_version"):
        lines.append(f"ACL API version: {cann['acl_api_version']} (aclrtGetVersion)")
    tk, drv, blas = v.get("toolkit_install") or {}, v.get("driver") or {}, v.get("blas") or {}
    lines.append("toolkit install: " + (f"{tk.get('version')} ({tk['path']})" if tk.get("path")
                                        else "no install-info file found"))
    lines.append("driver version:  " + (f"{drv.get('version')} ({drv['path']})" if drv.get("path")
                                        else "not readable"))
    if blas:
        threads = blas.get("threads")
        lines.append(f"BLAS:            {blas.get('library') or 'unknown'} {blas.get('version') or ''}".rstrip()
                     + f", threads {threads if threads is not None else 'unknown'}"
                     + (f" ({blas['threads_via']})" if blas.get("threads_via") else "")
                     + (f", {blas['path']}" if blas.get("path") else ""))
    rules = env.get("cann_rules") or {}
    lines.append(f"rules of CANN:   {rules.get('release')} (from {rules.get('from')})"
                 + (f"; {rules['note']}" if rules.get("note") else ""))
    lines.append(f"determinism:     {_yes_no(features, 'determinism_setter', 'determinism_getter')}"
                 " (aclrtCtxSetSysParamOpt/aclrtCtxGetSysParamOpt)")
    lines.append(f"repeatable executors: {_yes_no(features, 'repeatable_executor')}"
                 " (aclSetAclOpExecutorRepeatable)")
    others = {k: v for k, v in features.items()
              if k not in ("determinism_setter", "determinism_getter", "repeatable_executor")}
    if others:
        lines.append("other features:  " + ", ".join(f"{k}={'yes' if v else 'no'}"
                                                     for k, v in others.items()))
    print("\n".join(lines))
    return 0


def _yes_no(features: dict, *keys) -> str:
    if not features or any(k not in features for k in keys):
        return "unknown (libraries not loaded)"
    return "yes" if all(features[k] for k in keys) else "no"


# The checksums are rounded to this fraction of sum |x| (then to a power of ten): a BLAS build
# with another fp32 summation order flips a few bf16 roundings, which moves the sums by about
# 1e-6 of sum |x|; the digits printed stay the same.
CHECKSUM_RESOLUTION = 1e-5


def _checksums(x: np.ndarray) -> tuple:
    """(sum, sum |x|) in float64, then both as text rounded to the digits that do not depend
    on the BLAS build."""
    x64 = x.astype(np.float64)
    total, total_abs = float(x64.sum()), float(np.abs(x64).sum())
    if not (math.isfinite(total) and math.isfinite(total_abs)) or total_abs == 0:
        return total, total_abs, f"{total:g}", f"{total_abs:g}"
    exponent = math.ceil(math.log10(total_abs * CHECKSUM_RESOLUTION))
    decimals = max(0, -exponent)

    def fmt(v):
        rounded = round(v / 10.0 ** exponent) * 10.0 ** exponent
        return f"{rounded + 0.0 if rounded else 0.0:.{decimals}f}"

    return total, total_abs, fmt(total), fmt(total_abs)


def _cmd_demo(args) -> int:
    from ..api import flash_attention_unpadding_score_grad_v3, last_backend, resolve_backend
    from .cases import DOC_EXAMPLE, make_inputs, with_forward
    from dataclasses import replace

    spec = replace(DOC_EXAMPLE, seed=args.seed)
    try:
        backend = resolve_backend(args.backend)
    except Exception as exc:
        return usage_error("aclnn-fag demo", str(exc))
    t0 = time.perf_counter()
    inputs = make_inputs(spec)
    t1 = time.perf_counter()
    inputs = with_forward(inputs, backend=backend)
    ran_fwd = last_backend()
    t2 = time.perf_counter()
    grads = flash_attention_unpadding_score_grad_v3(**inputs, backend=backend)
    t3 = time.perf_counter()
    ran = last_backend()
    rows = [(n, inputs[n]) for n in ("attention_in", "softmax_max", "softmax_sum")]
    rows += list(grads._asdict().items())
    times = {"inputs": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "total": t3 - t0}
    from .envinfo import backend_label
    if args.json:
        tensors = {}
        for name, arr in rows:
            total, total_abs, shown, shown_abs = _checksums(arr)
            tensors[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "sum": total,
                             "sum_abs": total_abs, "sum_shown": shown, "sum_abs_shown": shown_abs}
        write_json({"schema": "aclnn_fag.demo/1", "requested": args.backend, "backend": ran,
                    "forward_backend": ran_fwd, "backend_label": backend_label(ran),
                    "case": spec.to_dict(), "actual_seq_qlen": list(inputs["actual_seq_qlen"]),
                    "tensors": tensors, "times_s": times}, args.json)
    if args.quiet:
        return 0
    out = human_stream(args.json)
    print("aclnnFlashAttentionUnpaddingScoreGradV3 -- the documentation's example", file=out)
    print(f"  T={spec.t1} N={spec.heads} D={spec.d} Dr={spec.d_rope} Dv={spec.dv} bf16, sparse_mode "
          f"{spec.sparse_mode}, all-zero {spec.t1}x{spec.t1} mask, scale {spec.scale_value}, "
          f"pre=next={spec.pre_tokens}, actual_seq_qlen=actual_seq_kvlen={inputs['actual_seq_qlen']}, "
          f"seed {spec.seed}", file=out)
    print(f"backend: {backend_label(ran)}  (requested {args.backend}; forward: "
          f"{backend_label(ran_fwd)})", file=out)
    print(f"  {'tensor':<13s} {'shape':<16s} {'dtype':<9s} {'sum':>12s} {'sum |x|':>12s}"
          f"   (float64 sums, rounded to 1e-5 of sum |x|)", file=out)
    for name, arr in rows:
        s, a = _checksums(arr)[2:]
        print(f"  {name:<13s} {str(list(arr.shape)):<16s} {str(arr.dtype):<9s} {s:>12s} {a:>12s}",
              file=out)
    print(f"time: inputs {times['inputs']:.4f} s, forward {times['forward']:.4f} s ({ran_fwd}), "
          f"backward {times['backward']:.4f} s ({ran}), total {times['total']:.4f} s", file=out)
    if args.json and args.json != STDOUT:
        print(f"json: {args.json}", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import bench, parity_cli

    parser = argparse.ArgumentParser(
        prog="aclnn-fag",
        description="aclnnFlashAttentionUnpaddingScoreGradV3 (backward) and "
                    "aclnnFlashAttentionVarLenScoreV3 (forward) through ctypes on an Ascend NPU, "
                    "and their NumPy reference where there is none.")
    parser.add_argument("--version", action="version", version=f"aclnn_fag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions, CANN libraries, devices, the backend 'auto' picks (runs no op)",
                       description="Package version; the CANN libraries found (with paths) or why "
                                   "not; device count and SoC name; the backend 'auto' would pick; "
                                   "determinism and repeatable-executor support. Loads the "
                                   "libraries and queries the runtime, runs no op; works without "
                                   "CANN.")
    add_json_argument(p, "the same information", optional_value=True)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no text (with --json FILE: only the file)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="the documentation's example: forward and backward on the chosen backend",
                       description="The operator documentation's example (T=256, N=1, D=128, rope "
                                   "64, Dv=128, bf16, sparse mode 0, all-zero mask, scale 0.088388, "
                                   "pre=next=65536) with seeded random data drawn on the host: the "
                                   "forward and then the backward, both on the chosen backend "
                                   "(auto: the NPU when usable, else NumPy); prints the backend each "
                                   "ran on, shapes, checksums (float64 sum and sum of |x|) and times.",
                       epilog="Exit status: 0 done, 2 usage error or backend unavailable.")
    p.add_argument("--backend", choices=("auto", "numpy", "npu"), default="auto",
                   help="backend of the forward and the backward (default: auto)")
    p.add_argument("--seed", type=cliargs.seed, default=0, help="seed of the random inputs, >= 0 (default: 0)")
    add_json_argument(p, "the backends, shapes, checksums and times")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no text (with --json FILE: only the file)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("parity", help="judge a backend against the fp64 golden (NumPy) on a case suite",
                       description="Run a case suite on a backend and judge every output (dq, "
                                   "dq_rope, dk, dk_rope, dv) against the fp64 golden (NumPy) by "
                                   "flash-attention's criterion (max abs error <= k x that of the "
                                   "NumPy device-precision reference, plus a tiny floor) and "
                                   "Ascend's double-thousandths (bf16: the share of elements with "
                                   "|y-g| / max(|g|, RMS(g)) > 2^-6 stays below 1e-3). The golden "
                                   "(fp64) and the reference (device precision) always run on "
                                   "NumPy; only the backend under test runs on --backend (or is "
                                   "--backend-module). Prints a table and progress on stderr; "
                                   "--json, --junit and --html write reports.",
                       epilog="Details: docs/parity.md. "
                              "Exit status: 0 all passed, 1 a case failed or errored, 2 usage "
                              "error (bad suite, no case selected, backend unavailable).")
    parity_cli.add_arguments(p)
    p.set_defaults(func=parity_cli.main)

    p = sub.add_parser("bench", help="time the backward on a backend next to this machine's sgemm",
                       description="Time the backward on the chosen backend (its inputs from the "
                                   "NumPy forward) over "
                                   "a few sizes: GFLOP/s over the kept area of the mask next to "
                                   "this machine's sgemm (numpy float32 matmul, measured in the "
                                   "same run), the host time per call in marshaling and the two "
                                   "phases on the NPU, and the peak extra memory of a call. "
                                   "--suite targets measures the project's performance targets.",
                       epilog="Targets are reported, not enforced, unless --check is given (then "
                              "a missed target gives exit status 1). Exit status 2: usage error "
                              "or backend unavailable.")
    bench.add_arguments(p)
    p.set_defaults(func=bench.main)

    parity_cli.add_report_command(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:            # usage error (2) or --help/--version (0): a status
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..progress import enable_call_progress
    previous = enable_call_progress(True)   # long NumPy calls report progress on stderr
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    finally:
        enable_call_progress(previous)      # main() run in-process leaves it as it was


if __name__ == "__main__":
    sys.exit(main())
