"""``aclnn-fag bench --suite overhead`` (docs/npu.md, "Host overhead"): host microseconds per
call of the NPU path against ``GOALS_US``, then where the time goes."""

from __future__ import annotations

import os
import statistics
import time
from ctypes import byref, c_uint32, c_void_p
from types import SimpleNamespace
from unittest import mock

from .. import acl, operands
from ..acl.runtime import DeviceBuffer
from ..api import flash_attention_unpadding_score_grad_v3 as fag
from ..device_run import run_backward_on_device
from ..rules import check_data_rules, validate_backward, validate_backward_args
from ..rules.arguments import names
from ..spec import BACKWARD_V3
from .cases import CaseSpec, make_inputs, with_forward
from .output import progress_writer

__all__ = ["run_overhead", "format_overhead", "GOALS_US"]

GOALS_US = {"device_call": 250.0, "plan_run": 50.0, "numpy_call": 500.0}
# the stubs' computation off, and fresh allocations not filled (a debugging aid of the stub
# that the real aclrtMalloc does not do); both ignored by a real CANN
STUB_VARS = {"ACL_STUB_SKIP_COMPUTE": "1", "ACL_STUB_MALLOC_FILL": "-1"}


class _ProtocolTensor:
    """The NPU tensor protocol of aclnn_fag.operands over device memory; ``new_empty`` models
    torch_npu's caching allocator (a freed block goes back to a pool by size, never freed)."""

    device = SimpleNamespace(type="npu", index=0)
    _free: dict = {}            # nbytes -> [DeviceBuffer]: the allocator's cached blocks
    _geometry: dict = {}        # (shape, dtype) -> (shape, nbytes, strides)

    __slots__ = ("shape", "dtype", "_ptr", "_strides", "_keep", "_block")

    def __init__(self, da=None):
        self._block = None
        if da is not None:
            self._keep = da
            self.shape = da.shape
            self.dtype = f"torch.{da.dtype.name}"      # a torch dtype's str() is its name
            self._ptr = da.buffer.ptr + da.offset * da.itemsize
            self._strides = da.strides

    def data_ptr(self):
        return self._ptr

    def stride(self):
        return self._strides

    def new_empty(self, shape, dtype=None):
        dtype = dtype or self.dtype
        key = (tuple(shape), dtype)
        if key not in self._geometry:   # sizes and strides: C++ arithmetic in torch, once here
            n, strides = 1, []
            for d in reversed(key[0]):
                strides.append(n)
                n *= d
            nbytes = n * operands.numpy_dtype_of_torch(dtype).itemsize
            self._geometry[key] = (key[0], nbytes, tuple(reversed(strides)))
        shape, nbytes, strides = self._geometry[key]
        pool = self._free.setdefault(nbytes, [])
        buf = pool.pop() if pool else DeviceBuffer(nbytes)     # a cached block, else a new one
        t = _ProtocolTensor()
        t.shape, t.dtype, t._ptr, t._strides, t._keep = shape, dtype, buf.ptr, strides, None
        t._block = (pool, buf)
        return t

    def __del__(self):
        if self._block is not None:
            self._block[0].append(self._block[1])


def _time(fn, repeat: int, inner: int, acc: dict = None):
    """(median CPU us, best CPU us, median wall us) per call over ``repeat`` rounds of ``inner``
    calls; CPU time is the thread's, less what ``fn`` adds to acc["cpu"] / acc["s"] (copies)."""
    fn()
    fn()
    acc = {} if acc is None else acc
    cpu, wall = [], []
    for _ in range(repeat):
        acc["s"] = acc["cpu"] = 0.0
        c0, t0 = time.thread_time(), time.perf_counter()
        for _ in range(inner):
            fn()
        cpu.append((time.thread_time() - c0 - acc["cpu"]) / inner)
        wall.append((time.perf_counter() - t0 - acc["s"]) / inner)
    return statistics.median(cpu) * 1e6, min(cpu) * 1e6, statistics.median(wall) * 1e6


def run_overhead(repeat: int = 5, inner: int = 200, progress=None) -> dict:
    """Measure every row; needs the NPU backend (or its stubs)."""
    say = progress_writer(progress)
    with mock.patch.dict(os.environ, STUB_VARS):        # the environment as it was after
        b = acl.runtime.api()
        is_stub = acl.stand_in()
        spec = CaseSpec(name="overhead", lengths_q=(128, 128), heads=2, d=128, d_rope=64,
                        d_v=128, sparse_mode=3, seed=0)
        inp = with_forward(make_inputs(spec))
        host = {n: inp[n] for n in ("query", "query_rope", "key", "key_rope", "value", "dy")}
        on_device = ("atten_mask", "softmax_max", "softmax_sum", "attention_in")
        kw = {n: inp[n] for n in on_device + ("actual_seq_qlen", "actual_seq_kvlen",
                                                "scale_value", "sparse_mode")}
        acl.runtime.ensure_device(0)
        stream_h = c_void_p()
        rc = b.aclrtCreateStream(byref(stream_h))
        if rc:
            raise RuntimeError(f"aclrtCreateStream returned {rc}")
        stream = stream_h.value
        rows = []

        def row(label, goal_key, fn, n=inner, acc=None):
            median_us, best_us, wall_us = _time(fn, repeat, n, acc)
            goal = GOALS_US.get(goal_key)
            rows.append({"label": label, "median_us": median_us, "best_us": best_us,
                         "wall_median_us": wall_us, "goal_us": goal,
                         "met": None if goal is None else median_us <= goal})
        try:
            dev = {n: acl.DeviceArray.from_numpy(a) for n, a in host.items()}
            dev_kw = dict(kw, **{n: acl.DeviceArray.from_numpy(kw[n]) for n in on_device})
            npu = {n: _ProtocolTensor(a) for n, a in dev.items()}
            npu_kw = dict(dev_kw, **{n: _ProtocolTensor(dev_kw[n]) for n in on_device})
            count = c_uint32()
            say("bare ctypes call ...")
            row("bare ctypes call (aclrtGetDeviceCount)", None,
                lambda: b.aclrtGetDeviceCount(byref(count)), inner * 10)
            say("device-resident public calls ...")
            row("device-resident public call: NPU tensors, stream=", "device_call",
                lambda: fag(*npu.values(), stream=stream, **npu_kw))
            q = npu["query"]
            row("  of which the test tensors' new_empty (5 results)", None,
                lambda: [q.new_empty(q.shape, dtype=q.dtype) for _ in range(5)])
            row("device-resident public call: DeviceArray, stream=", None,
                lambda: fag(*dev.values(), stream=stream, **dev_kw))
            row("device-resident public call: DeviceArray, own stream + sync", None,
                lambda: fag(*dev.values(), **dev_kw))
            row("device-resident public call: check_data=False, stream=", None,
                lambda: fag(*dev.values(), stream=stream, check_data=False, **dev_kw))
            say("breakdown ...")
            breakdown = _breakdown(npu, npu_kw, host, kw, stream, repeat, inner)
            say("FagPlan.run ...")
            plan = acl.FagPlan(**dev, **dev_kw)
            try:
                row("FagPlan.run(stream=)", "plan_run", lambda: plan.run(stream=stream), inner * 5)
                row("FagPlan.run() (own stream + sync)", None, lambda: plan.run(), inner * 5)
            finally:
                plan.close()
            say("numpy-in public call ...")
            copies = {"s": 0.0, "cpu": 0.0}

            def numpy_call():
                t = {}
                acl.run_backward(validate_backward(*host.values(), **kw), timings=t,
                                 cpu_timings=True)
                copies["s"] += t["copy_in"] + t["copy_out"]
                copies["cpu"] += t["copy_in_cpu"] + t["copy_out_cpu"]
            row("numpy-in public call, excluding copies", "numpy_call", numpy_call,
                max(1, inner // 4), copies)
            row("numpy-in public call, total (copies included)", None,
                lambda: fag(*host.values(), backend="npu", **kw), max(1, inner // 4))
        finally:
            acl.runtime.release_stream_workspace(stream)
            b.aclrtDestroyStream(stream)
            for pool in _ProtocolTensor._free.values():
                for buf in pool:
                    buf.free()
            _ProtocolTensor._free.clear()
            _ProtocolTensor._geometry.clear()
    return {"schema": "aclnn_fag.tools.bench_overhead/1", "stub_compute_off": is_stub,
            "shape": "T=256 (2 x 128), N=2, D=128+64, Dv=128, sparse_mode=3",
            "rows": rows, "all_goals_met": all(r["met"] for r in rows if r["met"] is not None),
            "breakdown": breakdown}


def _breakdown(npu, npu_kw, host, kw, stream, repeat, inner) -> list:
    """Where the time of two rows goes: each stage timed on its own, and the native calls made."""
    out, few = [], max(1, inner // 4)

    def stage(label, fn, n=inner) -> int:
        out.append({"label": label, "cpu_us": _time(fn, repeat, n)[0]})
        return 2 + repeat * n              # the calls of fn: two warm-ups, then the rounds

    def native_calls(label, fn, keys):
        """One call of ``fn``: how many of each counter of acl.runtime.stats() it adds."""
        before = acl.runtime.stats()
        fn()
        after = acl.runtime.stats()
        out.append({"label": f"    {label}: " + ", ".join(
            f"{k} {after[k] - before[k]}" for k in keys), "cpu_us": None})

    def of_which(timings, calls, parts):
        """The CPU time per call of parts of a stage, from the timings its calls summed."""
        for key, label in parts:
            out.append({"label": f"    of which {label}", "cpu_us": timings[key] / calls * 1e6})

    # the public call's own steps: its tensors in the spec's order, converted in one pass
    # (operands.convert_args), then validated as tuples (rules.validate_backward_args)
    tensor_names, scalar_names, list_names = names(BACKWARD_V3)
    args = {p.name: p.default for p in BACKWARD_V3.params}
    args.update(npu, deterministic=False, **npu_kw)
    tensors = tuple(args[n] for n in tensor_names)
    _, conv = operands.convert_args(tensor_names, tensors)
    scalars = tuple(args[n] for n in scalar_names)
    lists = tuple(args[n] for n in list_names)
    dcall = validate_backward_args(conv, scalars, lists, False)
    q = npu["query"]
    stage("NPU tensors, stream=: operand conversion (10 NPU tensors -> DeviceArray)",
          lambda: operands.convert_args(tensor_names, tensors))
    stage("NPU tensors, stream=: validation (every rule; data rules off on a caller's stream)",
          lambda: validate_backward_args(conv, scalars, lists, False))
    stage("NPU tensors, stream=: results (5 x new_empty + a DeviceArray over each)",
          lambda: [acl.device.foreign_view(t.data_ptr(), t.shape, dcall.query.dtype,
                                           t.stride(), 0, t)
                   for t in [q.new_empty(q.shape, dtype=q.dtype) for _ in range(5)]])
    stage("NPU tensors, stream=: run_backward_on_device (results + the op's host side)",
          lambda: run_backward_on_device(dcall, operands.NPU, q, stream))
    outs = {o: getattr(dcall, s) for o, s in BACKWARD_V3.output_like.items()}

    def op_hit():
        acl.run_backward(dcall, keep_on_device=True, stream=stream, outputs=outs)
    stage("  the op's host side, a cache hit (signature, repoint, phase 2; acl/exec_cache.py)",
          op_hit)
    native_calls("native handles per hit", op_hit,
                 ("tensors", "int_arrays", "phase1", "malloc", "memset"))
    t = {}

    def op_miss():
        acl.clear_executor_cache()
        acl.run_backward(dcall, keep_on_device=True, stream=stream, timings=t, cpu_timings=True,
                         outputs=outs)
    calls = stage("  the op's host side, a cache miss (the cache emptied before each call)",
                  op_miss, few)
    of_which(t, calls, (("marshal_cpu", "aclTensor/aclIntArray creates"),
                        ("phase1_cpu", "phase 1 (36 arguments through ctypes)")))
    hcall = validate_backward(*host.values(), **kw)
    stage("numpy-in: validation without the data rules", lambda: validate_backward(
        *host.values(), check_data=False, **kw), few)
    stage("numpy-in: data rules S6 + S8 + S9 (mask recognised, statistics sampled)",
          lambda: check_data_rules(hcall, True), few)
    th = {}
    calls = stage("numpy-in: the op's host side with copies (run_backward; acl/op.py)",
                  lambda: acl.run_backward(hcall, timings=th, cpu_timings=True), few)
    of_which(th, calls, (("copy_in_cpu", "copies in"), ("copy_out_cpu", "copies out"),
                         ("alloc_cpu", "device memory (kept from the last call) + zero fill"),
                         ("phase2_cpu", "phase 2 + synchronisation (a cache hit)"),
                         ("marshal_cpu", "aclTensor/aclIntArray creates + destroys"),
                         ("phase1_cpu", "phase 1")))
    native_calls("native calls per call", lambda: acl.run_backward(hcall),
                 ("tensors", "phase1", "malloc", "free", "memset", "h2d", "d2h"))
    return out


def format_overhead(report: dict) -> str:
    lines = [f"host overhead per call ({report['shape']}; "
             + ("stub op computation off" if report["stub_compute_off"] else "real NPU")
             + ")",
             "host CPU time of the calling thread per call (median and best of the rounds), "
             "wall time (median) beside it",
             f"{'row':<62s} {'cpu us':>9s} {'best':>8s} {'wall us':>9s} {'goal':>8s}  status"]
    lines.append("-" * len(lines[-1]))
    for r in report["rows"]:
        goal = "-" if r["goal_us"] is None else f"<= {r['goal_us']:.0f}"
        status = "" if r["met"] is None else ("met" if r["met"] else "MISSED")
        lines.append(f"{r['label']:<62s} {r['median_us']:>9.1f} {r['best_us']:>8.1f} "
                     f"{r['wall_median_us']:>9.1f} {goal:>8s}  {status}")
    if report.get("breakdown"):
        lines += ["", "where the time goes (each stage timed on its own; CPU us, median)"]
        for r in report["breakdown"]:
            v = "" if r["cpu_us"] is None else f"{r['cpu_us']:>9.1f}"
            lines.append(f"{r['label']:<86s} {v}")
    return "\n".join(lines)
