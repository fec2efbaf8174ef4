"""``aclnn-fag bench --suite overhead``: host time per call of the NPU path, in microseconds.

Rows (the documentation's shape with a causal mask: T = 256, N = 2, D = 128 + rope 64,
Dv = 128, sparse mode 3 with the package's compressed mask; every call validated in full):

* ``bare ctypes call``: one ``aclrtGetDeviceCount`` through the bound prototype -- the floor
  any call through ctypes pays;
* ``device-resident public call``: ``flash_attention_unpadding_score_grad_v3`` on NPU tensors
  (a minimal object implementing the tensor protocol over device memory, whose ``new_empty``
  reuses freed blocks like torch_npu's caching allocator) with ``stream=``: conversion,
  validation (the data checks are skipped on a caller's stream by default), results from
  ``new_empty``, and the op: every timed call after the first is an executor-cache hit
  (``acl/exec_cache.py``: signature, repoint, phase 2), as every training step after the
  first is; the same on ``acl.DeviceArray`` inputs (results from aclrtMalloc each call), and
  without ``stream=`` (own stream + sync: the data checks read their samples);
* ``FagPlan.run``: phase 2 on a built plan, with ``stream=`` and with its synchronisation;
* ``numpy-in public call, excluding copies``: the public call on host arrays minus the time
  spent in host<->device copies (``acl.run_backward(timings=...)`` copy_in/copy_out).

Goals (issue: a training step must not wait on the host): device-resident public call
<= 250 us, FagPlan.run <= 50 us, numpy-in call overhead <= 500 us.

On the stand-in libraries of ``native_stubs/`` the op's computation is switched off
(``ACL_STUB_SKIP_COMPUTE=1``; every check still runs) and fresh allocations are not filled
(``ACL_STUB_MALLOC_FILL=-1``), so the times are the binding's own.
On a real NPU they include the launch and, for the rows that synchronise, the kernel.
"""

from __future__ import annotations

import os
import statistics
import time
from ctypes import byref, c_uint32, c_void_p

from ..acl.runtime import DeviceBuffer
from .cases import CaseSpec, make_inputs, with_forward
from ..operands import numpy_dtype_of_torch

__all__ = ["run_overhead", "format_overhead", "GOALS_US"]

GOALS_US = {"device_call": 250.0, "plan_run": 50.0, "numpy_call": 500.0}
SKIP_COMPUTE_VAR = "ACL_STUB_SKIP_COMPUTE"
# the stubs' computation off, and fresh allocations not filled (a debugging aid of the stub
# that the real aclrtMalloc does not do); both ignored by a real CANN
STUB_VARS = {SKIP_COMPUTE_VAR: "1", "ACL_STUB_MALLOC_FILL": "-1"}


class _ProtocolTensor:
    """The NPU tensor protocol of aclnn_fag.operands over device memory (bench only).

    ``new_empty`` models torch_npu's caching allocator: a freed block goes back to a pool
    by size (when the tensor is garbage collected) and is handed out again, never returned
    to the device. Kept lean (plain attributes, no DeviceArray per result), as torch's C++
    allocator is: its own cost is measured in a row of its own."""

    class _Dev:
        type = "npu"
        index = 0

    class _DType:
        def __init__(self, name):
            self.name = name

        def __str__(self):
            return self.name

    _NAMES = {"bfloat16": "torch.bfloat16", "float32": "torch.float32", "uint8": "torch.uint8",
              "bool": "torch.bool"}
    device = _Dev()
    _free: dict = {}            # nbytes -> [DeviceBuffer]: the allocator's cached blocks
    _geometry: dict = {}        # (shape, dtype) -> (shape, nbytes, strides)

    __slots__ = ("shape", "dtype", "_ptr", "_strides", "_keep", "_block")

    def __init__(self, da=None):
        self._block = None
        if da is not None:
            self._keep = da
            self.shape = da.shape
            self.dtype = _PT_DTYPES[da.dtype.name]
            self._ptr = da.buffer.ptr + da.offset * da.itemsize
            self._strides = da.strides

    def data_ptr(self):
        return self._ptr

    def stride(self):
        return self._strides

    def new_empty(self, shape, dtype=None):
        dtype = dtype or self.dtype
        key = (tuple(shape), dtype)
        geom = self._geometry.get(key)
        if geom is None:                # sizes and strides: C++ arithmetic in torch, once here
            itemsize = numpy_dtype_of_torch(dtype).itemsize
            n, strides = 1, []
            for d in reversed(key[0]):
                strides.append(n)
                n *= d
            geom = self._geometry[key] = (key[0], n * itemsize, tuple(reversed(strides)))
        shape, nbytes, strides = geom
        pool = self._free.get(nbytes)
        if pool:                        # a cached block of this size
            buf = pool.pop()
        else:                           # none free: a new device allocation
            if pool is None:
                pool = self._free[nbytes] = []
            buf = DeviceBuffer(nbytes)
        t = _new(_ProtocolTensor)
        t.shape, t.dtype, t._ptr, t._strides = shape, dtype, buf.ptr, strides
        t._keep = None
        t._block = (pool, buf)
        return t

    def __del__(self):
        block = self._block
        if block is not None:
            block[0].append(block[1])


_PT_DTYPES = {n: _ProtocolTensor._DType(t) for n, t in _ProtocolTensor._NAMES.items()}
_new = object.__new__


def _time(fn, repeat: int, inner: int):
    """(median CPU us, best CPU us, median wall us) per call over ``repeat`` rounds of
    ``inner`` calls. CPU time is the calling thread's (``time.thread_time``): the host work
    of the call, unaffected by other processes competing for the cores; wall time is shown
    next to it."""
    fn()
    fn()
    cpu, wall = [], []
    for _ in range(repeat):
        c0, t0 = time.thread_time(), time.perf_counter()
        for _ in range(inner):
            fn()
        cpu.append((time.thread_time() - c0) / inner)
        wall.append((time.perf_counter() - t0) / inner)
    return statistics.median(cpu) * 1e6, min(cpu) * 1e6, statistics.median(wall) * 1e6


def run_overhead(repeat: int = 5, inner: int = 200, progress=None) -> dict:
    """Measure every row (see the module docstring); needs the NPU backend (or its stubs)."""
    from .. import acl
    from ..api import flash_attention_unpadding_score_grad_v3 as fag
    from ..rules import validate_backward

    def say(msg):
        if progress:
            progress.write(msg + "\n")
            progress.flush()

    saved = {v: os.environ.get(v) for v in STUB_VARS}
    os.environ.update(STUB_VARS)
    try:
        b = acl.runtime.api()
        is_stub = _is_stub(b)
        spec = CaseSpec(name="overhead", lengths_q=(128, 128), heads=2, d=128, d_rope=64,
                        d_v=128, sparse_mode=3, seed=0)
        inp = with_forward(make_inputs(spec))
        names = ("query", "query_rope", "key", "key_rope", "value", "dy")
        host = {n: inp[n] for n in names}
        kw = dict(atten_mask=inp["atten_mask"], softmax_max=inp["softmax_max"],
                  softmax_sum=inp["softmax_sum"], attention_in=inp["attention_in"],
                  actual_seq_qlen=inp["actual_seq_qlen"], actual_seq_kvlen=inp["actual_seq_kvlen"],
                  scale_value=inp["scale_value"], sparse_mode=inp["sparse_mode"])
        acl.runtime.ensure_device(0)
        stream_h = c_void_p()
        rc = b.aclrtCreateStream(byref(stream_h))
        if rc:
            raise RuntimeError(f"aclrtCreateStream returned {rc}")
        stream = stream_h.value
        rows = []
        try:
            dev = {n: acl.DeviceArray.from_numpy(a) for n, a in host.items()}
            dev_kw = dict(kw)
            for n in ("atten_mask", "softmax_max", "softmax_sum", "attention_in"):
                dev_kw[n] = acl.DeviceArray.from_numpy(kw[n])
            npu = {n: _ProtocolTensor(a) for n, a in dev.items()}
            npu_kw = dict(dev_kw)
            for n in ("atten_mask", "softmax_max", "softmax_sum", "attention_in"):
                npu_kw[n] = _ProtocolTensor(dev_kw[n])

            count = c_uint32()
            say("bare ctypes call ...")
            rows.append(("bare ctypes call (aclrtGetDeviceCount)", None,
                         _time(lambda: b.aclrtGetDeviceCount(byref(count)), repeat, inner * 10)))
            say("device-resident public calls ...")
            rows.append(("device-resident public call: NPU tensors, stream=", "device_call",
                         _time(lambda: fag(*npu.values(), stream=stream, **npu_kw), repeat, inner)))
            q = npu["query"]
            rows.append(("  of which the test tensors' new_empty (5 results)", None,
                         _time(lambda: [q.new_empty(q.shape, dtype=q.dtype) for _ in range(5)],
                               repeat, inner)))
            rows.append(("device-resident public call: DeviceArray, stream=", None,
                         _time(lambda: fag(*dev.values(), stream=stream, **dev_kw), repeat, inner)))
            rows.append(("device-resident public call: DeviceArray, own stream + sync", None,
                         _time(lambda: fag(*dev.values(), **dev_kw), repeat, inner)))
            rows.append(("device-resident public call: check_data=False, stream=", None,
                         _time(lambda: fag(*dev.values(), stream=stream, check_data=False,
                                           **dev_kw), repeat, inner)))
            say("breakdown ...")
            breakdown = _breakdown(acl, npu, npu_kw, host, kw, stream, repeat, inner)
            say("FagPlan.run ...")
            plan = acl.FagPlan(**dev, **dev_kw)
            try:
                rows.append(("FagPlan.run(stream=)", "plan_run",
                             _time(lambda: plan.run(stream=stream), repeat, inner * 5)))
                rows.append(("FagPlan.run() (own stream + sync)", None,
                             _time(lambda: plan.run(), repeat, inner * 5)))
            finally:
                plan.close()
            say("numpy-in public call ...")
            copies = {"s": 0.0, "cpu": 0.0}

            def numpy_call():
                call = validate_backward(*host.values(), **kw)
                t = {}
                acl.run_backward(call, timings=t, cpu_timings=True)
                copies["s"] += t["copy_in"] + t["copy_out"]
                copies["cpu"] += t["copy_in_cpu"] + t["copy_out_cpu"]
            rows.append(("numpy-in public call, excluding copies", "numpy_call",
                         _time_minus(numpy_call, copies, repeat, max(1, inner // 4))))
            rows.append(("numpy-in public call, total (copies included)", None,
                         _time(lambda: fag(*host.values(), backend="npu", **kw), repeat,
                               max(1, inner // 4))))
        finally:
            acl.runtime.release_stream_workspace(stream)
            b.aclrtDestroyStream(stream)
            for pool in _ProtocolTensor._free.values():
                for buf in pool:
                    buf.free()
            _ProtocolTensor._free.clear()
            _ProtocolTensor._geometry.clear()
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    out = []
    for label, goal_key, (median_us, best_us, wall_us) in rows:
        goal = GOALS_US.get(goal_key)
        out.append({"label": label, "median_us": median_us, "best_us": best_us,
                    "wall_median_us": wall_us,
                    "goal_us": goal, "met": None if goal is None else median_us <= goal})
    return {"schema": "aclnn_fag.tools.bench_overhead/1", "stub_compute_off": is_stub,
            "shape": "T=256 (2 x 128), N=2, D=128+64, Dv=128, sparse_mode=3",
            "rows": out, "all_goals_met": all(r["met"] for r in out if r["met"] is not None),
            "breakdown": breakdown}


def _breakdown(acl, npu, npu_kw, host, kw, stream, repeat, inner) -> list:
    """Where the time of two rows goes: each stage timed on its own (CPU us, median), plus
    the native handles and allocations one call makes (``acl.runtime.stats()``)."""
    from .. import operands
    from ..rules.arguments import names
    from ..spec import BACKWARD_V3
    from ..device_run import run_backward_on_device
    from ..rules import check_data_rules, validate_backward, validate_backward_args
    out = []

    def stage(label, fn, n=inner):
        out.append({"label": label, "cpu_us": _time(fn, repeat, n)[0]})

    def native_calls(label, fn, keys):
        """One call of ``fn``: how many of each counter of acl.runtime.stats() it adds."""
        before = acl.runtime.stats()
        fn()
        after = acl.runtime.stats()
        out.append({"label": f"    {label}: " + ", ".join(
            f"{k} {after[k] - before[k]}" for k in keys), "cpu_us": None})

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
    outs = {o: getattr(dcall, s) for o, s in
            (("dq", "query"), ("dq_rope", "query_rope"), ("dk", "key"), ("dk_rope", "key_rope"),
             ("dv", "value"))}

    def op_hit():
        acl.run_backward(dcall, keep_on_device=True, stream=stream, outputs=outs)
    stage("  the op's host side, a cache hit (signature, repoint, phase 2; acl/exec_cache.py)",
          op_hit)
    native_calls("native handles per hit", op_hit,
                 ("tensors", "int_arrays", "phase1", "malloc", "memset"))
    t = {}
    n_calls = [0]

    def op_miss():
        acl.clear_executor_cache()
        acl.run_backward(dcall, keep_on_device=True, stream=stream, timings=t, cpu_timings=True,
                         outputs=outs)
        n_calls[0] += 1
    stage("  the op's host side, a cache miss (the cache emptied before each call)", op_miss,
          max(1, inner // 4))
    for key, label in (("marshal_cpu", "aclTensor/aclIntArray creates"),
                       ("phase1_cpu", "phase 1 (36 arguments through ctypes)")):
        out.append({"label": f"    of which {label}", "cpu_us": t[key] / n_calls[0] * 1e6})
    hcall = validate_backward(*host.values(), **kw)
    stage("numpy-in: validation without the data rules", lambda: validate_backward(
        *host.values(), check_data=False, **kw), max(1, inner // 4))
    stage("numpy-in: data rules S6 + S8 + S9 (mask recognised, statistics sampled)",
          lambda: check_data_rules(hcall, True), max(1, inner // 4))
    th = {}
    nh = [0]

    def host_op():
        acl.run_backward(hcall, timings=th, cpu_timings=True)
        nh[0] += 1
    stage("numpy-in: the op's host side with copies (run_backward; acl/op.py)", host_op,
          max(1, inner // 4))
    for key, label in (("copy_in_cpu", "copies in"), ("copy_out_cpu", "copies out"),
                       ("alloc_cpu", "device memory (kept from the last call) + zero fill"),
                       ("phase2_cpu", "phase 2 + synchronisation (a cache hit)"),
                       ("marshal_cpu", "aclTensor/aclIntArray creates + destroys"),
                       ("phase1_cpu", "phase 1")):
        out.append({"label": f"    of which {label}", "cpu_us": th[key] / nh[0] * 1e6})
    native_calls("native calls per call", lambda: acl.run_backward(hcall),
                 ("tensors", "phase1", "malloc", "free", "memset", "h2d", "d2h"))
    return out


def _is_stub(b) -> bool:
    """True on the stand-in libraries of native_stubs/ (they export aclStubGetCounters)."""
    for lib in b.libraries.handles.values():
        try:
            getattr(lib, "aclStubGetCounters")
            return True
        except AttributeError:
            continue
    return False


def _time_minus(fn, acc: dict, repeat: int, inner: int):
    """As _time, minus the CPU (and wall) time ``fn`` reports in acc["cpu"] / acc["s"]."""
    fn()
    cpu, wall = [], []
    for _ in range(repeat):
        acc["s"] = acc["cpu"] = 0.0
        c0, t0 = time.thread_time(), time.perf_counter()
        for _ in range(inner):
            fn()
        cpu.append((time.thread_time() - c0 - acc["cpu"]) / inner)
        wall.append((time.perf_counter() - t0 - acc["s"]) / inner)
    return statistics.median(cpu) * 1e6, min(cpu) * 1e6, statistics.median(wall) * 1e6


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
        lines.append("")
        lines.append("where the time goes (each stage timed on its own; CPU us, median)")
        for r in report["breakdown"]:
            v = "" if r["cpu_us"] is None else f"{r['cpu_us']:>9.1f}"
            lines.append(f"{r['label']:<86s} {v}")
    return "\n".join(lines)
