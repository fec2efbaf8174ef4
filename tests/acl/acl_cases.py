"""Small random problems for the NPU-backend tests (inputs + forward statistics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import ml_dtypes
import numpy as np

import aclnn_fag as af

BF16 = np.dtype(ml_dtypes.bfloat16)
INT32_MAX = 2147483647


def cumulative(lengths):
    out, acc = [], 0
    for n in lengths:
        acc += int(n)
        out.append(acc)
    return out


@dataclass
class Problem:
    q: np.ndarray
    qr: np.ndarray
    k: np.ndarray
    kr: np.ndarray
    v: np.ndarray
    dy: np.ndarray
    mask: np.ndarray
    q_ends: list
    kv_ends: list
    scale: float
    mode: int = 0
    pre: int = INT32_MAX
    nxt: int = INT32_MAX
    fwd: Optional[object] = None
    extra: dict = field(default_factory=dict)

    def forward(self):
        self.fwd = af.flash_attention_forward(
            self.q, self.qr, self.k, self.kr, self.v, atten_mask=self.mask,
            actual_seq_qlen=self.q_ends, actual_seq_kvlen=self.kv_ends, scale_value=self.scale,
            pre_tokens=self.pre, next_tokens=self.nxt, sparse_mode=self.mode, backend="numpy")
        return self

    def kwargs(self, **over) -> dict:
        kw = dict(atten_mask=self.mask, softmax_max=self.fwd.softmax_max,
                  softmax_sum=self.fwd.softmax_sum, attention_in=self.fwd.attention_out,
                  actual_seq_qlen=self.q_ends, actual_seq_kvlen=self.kv_ends,
                  scale_value=self.scale, pre_tokens=self.pre, next_tokens=self.nxt,
                  sparse_mode=self.mode)
        kw.update(over)
        return kw

    def raw_kwargs(self, **over) -> dict:
        """Keyword arguments for ``acl.call_raw`` (the 36-slot names)."""
        kw = dict(query=self.q, query_rope=self.qr, key=self.k, key_rope=self.kr, value=self.v,
                  dy=self.dy, **self.kwargs())
        kw.update(over)
        return kw

    def grads(self, backend: str, **over):
        return af.flash_attention_unpadding_score_grad_v3(
            self.q, self.qr, self.k, self.kr, self.v, self.dy, backend=backend,
            **self.kwargs(**over))


def make_problem(seed: int = 0, q_lens=(9, 0, 14), kv_lens=None, *, n2: int = 1, g: int = 1,
                 d: int = 32, dr: int = 16, dv: Optional[int] = None, mode: int = 0,
                 pre: int = INT32_MAX, nxt: int = INT32_MAX, density: float = 0.0) -> Problem:
    rng = np.random.default_rng(seed)
    kv_lens = q_lens if kv_lens is None else kv_lens
    dv = d if dv is None else dv
    n1 = n2 * g
    q_ends, kv_ends = cumulative(q_lens), cumulative(kv_lens)
    t1, t2 = q_ends[-1], kv_ends[-1]

    def randn(*shape):
        return rng.standard_normal(shape).astype(BF16)

    if mode in (0, 1):
        mq, mk = max(max(q_lens), 1), max(max(kv_lens), 1)
        mask = (rng.random((mq, mk)) < density).astype(np.uint8)
        mask[:, 0] = 0     # no fully masked row
    else:
        mask = af.masks.compressed_causal_mask()
    p = Problem(q=randn(t1, n1, d), qr=randn(t1, n1, dr), k=randn(t2, n2, d), kr=randn(t2, n2, dr),
                v=randn(t2, n2, dv), dy=randn(t1, n1, dv), mask=mask, q_ends=q_ends,
                kv_ends=kv_ends, scale=float(1.0 / np.sqrt(d + dr)), mode=mode, pre=pre, nxt=nxt)
    return p.forward()


def plan_host_inputs(p: Problem) -> dict:
    """The ten tensor inputs of a plan (or of ``acl.call_raw``) for a problem, by slot name."""
    f = p.fwd
    return dict(query=p.q, query_rope=p.qr, key=p.k, key_rope=p.kr, value=p.v, dy=p.dy,
                atten_mask=p.mask, softmax_max=f.softmax_max, softmax_sum=f.softmax_sum,
                attention_in=f.attention_out)


def raw_grads(p: Problem, **over):
    """``acl.call_raw`` on the problem (no Python validation), slots overridden by ``over``."""
    from aclnn_fag import acl
    kw = dict(plan_host_inputs(p), actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends,
              scale_value=p.scale, sparse_mode=p.mode)
    kw.update(over)
    return acl.call_raw(**kw)


def plan_for(p: Problem, **kw):
    """An ``acl.FagPlan`` over the problem's numpy inputs (``kw``: outputs, plan options)."""
    from aclnn_fag.acl import FagPlan
    return FagPlan(**plan_host_inputs(p), actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends,
                   scale_value=p.scale, sparse_mode=p.mode, **kw)


def max_rel_error(actual, expected) -> float:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(e))), 1e-30)
    return float(np.max(np.abs(a - e)) / scale)


BF16_TOL = 2.0 ** -7   # a few bf16 ulps, relative to the largest gradient element


def result_bits(results) -> list:
    """Each result's bytes (a copy; None stays None): bitwise comparable (-0.0 vs 0.0, NaN
    payloads)."""
    return [None if r is None else np.asarray(r).view(np.uint8).copy() for r in results]


def assert_same_bits(actual, expected) -> None:
    """The same results bit for bit (None where the other is None)."""
    assert len(actual) == len(expected)
    for x, y in zip(result_bits(actual), result_bits(expected)):
        assert (x is None) == (y is None)
        if x is not None:
            assert np.array_equal(x, y)


def assert_grads_close(actual, expected, tol: float = BF16_TOL) -> None:
    names = ("dq", "dq_rope", "dk", "dk_rope", "dv")
    for name, a, e in zip(names, actual, expected):
        assert a is not None and e is not None, name
        assert a.dtype == e.dtype == BF16, (name, a.dtype, e.dtype)
        assert np.all(np.isfinite(a.astype(np.float32))), f"{name}: non-finite values"
        if name in ("dq", "dk", "dv"):
            assert np.any(e.astype(np.float32) != 0), f"{name}: the reference is all zero"
        err = max_rel_error(a, e)
        assert err <= tol, f"{name}: normwise error {err:.3g} > {tol:.3g}"
