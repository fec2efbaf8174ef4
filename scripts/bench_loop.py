#!/usr/bin/env python3
"""Time forward + backward steps back to back, nothing else between them (a loop over a
dataset, a parity run): the regime ``aclnn-fag bench --suite torch`` does not show, since
its runners take turns step by step.

MLA dims (D = 128 + rope 64, Dv = 128), bf16, NumPy backend, device precision, one BLAS
thread. Prints the median step time (this process's CPU time) and the minor page faults per
step. ``--torch`` runs ``aclnn_fag.torch.varlen_attention`` + ``backward()`` on CPU tensors
(the process then imports torch) instead of the two plain API calls.

Usage::

    python3 scripts/bench_loop.py                              # T = 256 (100, 0, 60, 96) causal
    python3 scripts/bench_loop.py --lengths 512,512 --full     # 2 x 512, no mask
    python3 scripts/bench_loop.py --torch --steps 60

To compare two trees in one sitting, run it alternately with ``PYTHONPATH`` set to each.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import ml_dtypes
import numpy as np


def _steps(args):
    import aclnn_fag as af
    lengths = [int(x) for x in args.lengths.split(",")]
    ends = [int(x) for x in np.cumsum(lengths)]
    rng = np.random.default_rng(0)
    q, qr, k, kr, v, dy = (rng.standard_normal((ends[-1], args.heads, d))
                           .astype(ml_dtypes.bfloat16) for d in (128, 64, 128, 64, 128, 128))
    mask = (np.zeros((max(lengths),) * 2, np.uint8) if args.full
            else af.masks.compressed_causal_mask())
    opts = dict(actual_seq_qlen=ends, actual_seq_kvlen=ends, scale_value=192 ** -0.5,
                sparse_mode=0 if args.full else 3, backend="numpy")
    if args.torch:
        import torch
        from aclnn_fag.torch import varlen_attention
        torch.set_num_threads(1)

        def tensor(a):
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        leaves = [tensor(x).requires_grad_() for x in (q, qr, k, kr, v)]
        grad = tensor(dy)
        torch_mask = torch.from_numpy(mask) if args.full else None    # None: the package's

        def step():
            for x in leaves:
                x.grad = None
            varlen_attention(*leaves, atten_mask=torch_mask, **opts).backward(grad)
        return step

    def step():
        f = af.flash_attention_forward(q, qr, k, kr, v, atten_mask=mask, **opts)
        af.flash_attention_unpadding_score_grad_v3(
            q, qr, k, kr, v, dy, atten_mask=mask, softmax_max=f.softmax_max,
            softmax_sum=f.softmax_sum, attention_in=f.attention_out, **opts)
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="100,0,60,96", help="sequence lengths (q and kv)")
    p.add_argument("--full", action="store_true", help="sparse mode 0, all-zero mask (default: "
                   "causal, mode 3)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--torch", action="store_true",
                   help="the torch layer instead of the plain API")
    args = p.parse_args(argv)
    from aclnn_fag import blas
    step = _steps(args)
    with blas.reference_threads(1):
        for _ in range(3):
            step()                                          # warm-up
        times = []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(args.steps):
            t0 = time.process_time()
            step()
            times.append(time.process_time() - t0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(f"{'torch' if args.torch else 'plain'} lengths={args.lengths} "
          f"{'full' if args.full else 'causal'} N={args.heads}: median "
          f"{statistics.median(times) * 1e3:.2f} ms per step, "
          f"{faults / args.steps:.0f} minor page faults per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
