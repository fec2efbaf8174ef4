"""``aclnn-fag bench --suite torch``: forward + backward of the package against torch's CPU
attention (needs torch).

Per case (MLA dims: N = 8 query and KV heads, D = 128 + rope 64, Dv = 128, bf16 inputs) the
median time of ``--repeat`` forward + backward steps of each runner, after one untimed
warm-up step each; the runners take turns step by step, so that a burst of other load on a
shared host falls on all of them alike, each round starting with the next runner:

* ``torch``: ``aclnn_fag.torch.varlen_attention`` on bf16 CPU tensors, ``out.backward(dy)``;
* ``plain``: ``flash_attention_forward`` + ``flash_attention_unpadding_score_grad_v3`` on
  numpy arrays (both on the NumPy backend, precision "device");
* ``sdpa``: torch's ``scaled_dot_product_attention`` in float32, one call per sequence (query
  and key with the rope part concatenated, ``is_causal`` for the causal cases), forward +
  ``backward`` -- the peer a torch user would pick on a CPU;
* ``ref64``: an explicit float64 torch attention, one call per sequence (a float64 golden).

Ratios printed: torch / sdpa, plain / sdpa, torch / plain and ref64 / sdpa, with the goals
(docs/torch.md). ``--threads`` (default 1) sets both torch's intra-op threads and the BLAS
threads of the package's calls; ``--clock cpu`` measures this process's CPU time instead of
wall time (with one thread: robust to other load on a shared host).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import NamedTuple, Optional

import ml_dtypes
import numpy as np

from .. import blas
from ..progress import progress_bar

__all__ = ["TorchCase", "CASES", "run_torch_bench", "format_torch_bench", "main_torch"]

BENCH_TORCH_SCHEMA = "aclnn_fag.bench_torch/1"
HEADS, D, DR, DV = 8, 128, 64, 128


class TorchCase(NamedTuple):
    name: str
    lengths: tuple          # per-sequence lengths (q and kv alike)
    causal: bool            # sparse mode 3 (else 0 with an all-zero mask)
    goal: float             # the time goal as a multiple of sdpa's


CASES = (
    TorchCase("T=256 ragged (100,0,60,96) causal", (100, 0, 60, 96), True, 1.5),
    TorchCase("2x512 full", (512, 512), False, 1.0),
    TorchCase("2x512 causal", (512, 512), True, 1.0),
    TorchCase("2x2048 full", (2048, 2048), False, 1.0),
    TorchCase("2x2048 causal", (2048, 2048), True, 1.0),
    TorchCase("1x4096 causal", (4096,), True, 1.0),
)
WRAPPER_GOAL = 1.10         # torch API time / plain API time


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _median_times(runners: dict, repeat: int, clock) -> dict:
    """name -> median time of ``repeat`` calls, the runners called in turn, each round
    starting one runner later (a runner that always followed ``ref64`` measured ~7 % slower
    than in any other place)."""
    for fn in runners.values():
        fn()                                        # warm-up (caches, first-call costs)
    times = {name: [] for name in runners}
    names = list(runners)
    for i in range(repeat):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = clock()
            runners[name]()
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _runners(case: TorchCase, heads: int = HEADS):
    """(name -> a no-argument callable doing one forward + backward step)."""
    import torch
    import torch.nn.functional as F

    import aclnn_fag as af
    from ..torch import varlen_attention

    bf16 = ml_dtypes.bfloat16
    lengths = list(case.lengths)
    ends = [int(x) for x in np.cumsum(lengths)]
    t = ends[-1]
    rng = np.random.default_rng(0)
    q, qr, k, kr, v, dy = (rng.standard_normal((t, heads, d)).astype(bf16)
                           for d in (D, DR, D, DR, DV, DV))
    mode = 3 if case.causal else 0
    mask = (af.masks.compressed_causal_mask() if case.causal
            else np.zeros((max(max(lengths), 1),) * 2, np.uint8))
    scale = 1 / (D + DR) ** 0.5
    opts = dict(actual_seq_qlen=ends, actual_seq_kvlen=ends, scale_value=scale,
                sparse_mode=mode, backend="numpy")

    def plain():
        f = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=mask, **opts)
        af.flash_attention_unpadding_score_grad_v3(
            q, qr, k, kr, v, dy, atten_mask=mask, softmax_max=f.softmax_max,
            softmax_sum=f.softmax_sum, attention_in=f.attention_out, **opts)

    def tensor(a):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    # copies: a runner that shared plain's memory would find its inputs in cache after it
    leaves = [tensor(x.copy()).requires_grad_() for x in (q, qr, k, kr, v)]
    tdy = tensor(dy.copy())

    def torch_api():
        for x in leaves:
            x.grad = None
        out = varlen_attention(*leaves, **opts)      # the default mask (as "plain"'s)
        out.backward(tdy)

    def dense(dtype, attend):
        """One step of ``attend`` per non-empty sequence on [1, N, S, C] tensors in ``dtype``
        (the rope parts concatenated)."""
        seqs = []
        for a, b in zip([0] + ends[:-1], ends):
            if b > a:
                xs = [tensor(np.concatenate([x[a:b] for x in part], -1)).to(dtype)
                      .transpose(0, 1).contiguous()[None]
                      for part in ((q, qr), (k, kr), (v,), (dy,))]
                seqs.append([x.requires_grad_() for x in xs[:3]] + xs[3:])

        def step():
            for qq, kk, vv, gg in seqs:
                for x in (qq, kk, vv):
                    x.grad = None
                attend(qq, kk, vv).backward(gg)
        return step

    def sdpa(qq, kk, vv):
        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=case.causal, scale=scale)

    def ref64(qq, kk, vv):
        s = (qq @ kk.transpose(-1, -2)) * scale
        if case.causal:
            n = s.shape[-1]
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        return torch.softmax(s, -1) @ vv

    return {"torch": torch_api, "plain": plain, "sdpa": dense(torch.float32, sdpa),
            "ref64": dense(torch.float64, ref64)}


def run_torch_bench(repeat: int = 3, threads: Optional[int] = 1, cases=CASES,
                    heads: int = HEADS, progress: bool = True, clock: str = "wall") -> dict:
    """Time every case (module docstring); returns the JSON-ready report. ``clock``: "wall"
    or "cpu" (this process's CPU time: with one thread, what the step costs however busy
    the machine is)."""
    if clock not in CLOCKS:
        raise ValueError(f"parameter 'clock' must be one of {sorted(CLOCKS)}, got {clock!r}")
    import torch
    old_threads = torch.get_num_threads()
    rows = []
    t_start = time.perf_counter()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with blas.reference_threads(threads), \
                progress_bar(total=len(cases), desc="bench torch", unit="case",
                             enabled=progress) as bar:
            for case in cases:
                bar.set_postfix_str(case.name)
                runners = _runners(case, heads)
                times = _median_times(runners, repeat, CLOCKS[clock])
                del runners
                rows.append(_row(case, times))
                bar.update(1)
    finally:
        torch.set_num_threads(old_threads)
    return {"schema": BENCH_TORCH_SCHEMA, "suite": "torch", "repeat": repeat, "clock": clock,
            "threads": threads, "torch": torch.__version__, "heads": heads,
            "dims": {"D": D, "Dr": DR, "Dv": DV}, "rows": rows,
            "all_goals_met": all(r["met"] for r in rows),
            "blas": blas.blas_info(), "wall_s": time.perf_counter() - t_start}


def _row(case: TorchCase, times: dict) -> dict:
    sdpa = times["sdpa"]
    ratios = {"torch/sdpa": times["torch"] / sdpa, "plain/sdpa": times["plain"] / sdpa,
              "torch/plain": times["torch"] / times["plain"], "ref64/sdpa": times["ref64"] / sdpa}
    met = (ratios["torch/sdpa"] <= case.goal and ratios["plain/sdpa"] <= case.goal
           and ratios["torch/plain"] <= WRAPPER_GOAL)
    return {"case": case.name, "lengths": list(case.lengths), "causal": case.causal,
            "median_s": times, "ratios": ratios, "goal_x_sdpa": case.goal,
            "goal_torch_over_plain": WRAPPER_GOAL, "met": met}


def format_torch_bench(report: dict) -> str:
    lines = [f"forward + backward, N={report['heads']}, D={report['dims']['D']} + rope "
             f"{report['dims']['Dr']}, Dv={report['dims']['Dv']}; median of {report['repeat']} "
             f"({report['clock']} clock); "
             f"{report['threads']} thread(s) for torch and the BLAS; torch {report['torch']}",
             f"{'case':<36s} {'torch ms':>9s} {'plain ms':>9s} {'sdpa ms':>9s} {'ref64 ms':>9s} "
             f"{'torch/sdpa':>10s} {'plain/sdpa':>10s} {'torch/plain':>11s} {'goal':>6s} status"]
    lines.append("-" * len(lines[-1]))
    for r in report["rows"]:
        t, x = r["median_s"], r["ratios"]
        lines.append(f"{r['case']:<36s} {t['torch'] * 1e3:9.1f} {t['plain'] * 1e3:9.1f} "
                     f"{t['sdpa'] * 1e3:9.1f} {t['ref64'] * 1e3:9.1f} {x['torch/sdpa']:10.2f} "
                     f"{x['plain/sdpa']:10.2f} {x['torch/plain']:11.2f} "
                     f"{r['goal_x_sdpa']:5.1f}x {'met' if r['met'] else 'MISSED'}")
    lines.append(f"goals: torch/sdpa and plain/sdpa <= the row's goal, torch/plain <= "
                 f"{WRAPPER_GOAL:.2f}")
    return "\n".join(lines)


def main_torch(args) -> int:
    """``aclnn-fag bench --suite torch``."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("aclnn-fag bench --suite torch needs torch (pip install -e '.[torch]')",
              file=sys.stderr)
        return 2
    from .output import emit_report
    report = run_torch_bench(args.repeat, args.threads, cases=CASES, progress=not args.quiet,
                             clock=args.clock)
    return emit_report(args, format_torch_bench(report), report, report["all_goals_met"])
