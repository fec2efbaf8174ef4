"""Gradients are derivatives of the forward.

The chain:
1. The oracle's backward (given the exact float64 statistics and output) equals central
   finite differences of the oracle's float64 forward, for loss = sum(W * O) with random
   weights W (= dy).  Every input element of q, q_rope, k, k_rope, v is perturbed.
2. The package's fp64 backward equals the oracle's backward to ~1e-10 on the same inputs
   (bf16 tensors, float32 statistics, bf16 attention_in, as the API requires).
Together: the package computes the derivative of the forward of docs/semantics.md, "Forward".
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest

import aclnn_fag as af
import oracle as O

FD_CASES = {
    "mode0_mask_gqa2": dict(q_lens=[3, 0, 4], kv_lens=[4, 2, 3], n1=4, n2=2, mode=0,
                            mask_kind="2d", density=0.3),
    "mode0_tokens_packed_bn": dict(q_lens=[4, 3], kv_lens=[3, 5], n1=2, n2=1, mode=0, pre=1,
                                   nxt=2, mask_kind="bn", density=0.2),
    "mode1_b1": dict(q_lens=[3, 4], kv_lens=[5, 2], n1=2, n2=2, mode=1, mask_kind="b1",
                     density=0.3),
    "mode3_sq_lt_skv_gqa4": dict(q_lens=[3, 4, 0], kv_lens=[5, 4, 2], n1=4, n2=1, mode=3),
    "mode3_fully_masked": dict(q_lens=[5, 2], kv_lens=[3, 2], n1=2, n2=1, mode=3),
    "mode4_band": dict(q_lens=[5, 4], kv_lens=[6, 4], n1=2, n2=1, mode=4, pre=2, nxt=0),
    "mode7": dict(q_lens=[3, 4, 0, 0], kv_lens=[4, 6, 0, 0], n1=4, n2=2, mode=7, pre=2, nxt=1),
    "mode8_empty_first": dict(q_lens=[0, 4, 3], kv_lens=[2, 5, 3], n1=2, n2=1, mode=8, pre=1,
                              nxt=1),
}


def _mask(rng, cfg, lay):
    if cfg["mode"] in (0, 1, 5):
        return O.random_dense_mask(rng, cfg["mode"], lay, cfg["n1"], cfg.get("mask_kind", "2d"),
                                   cfg.get("density", 0.25), cfg.get("pre", O.INT32_MAX),
                                   cfg.get("nxt", O.INT32_MAX))
    return O.compressed_mask()


def float_problem(name, seed, d=6, dr=3, dv=5):
    """float64 inputs (no dtype restriction in the oracle): D != Dv, odd rope width."""
    cfg = FD_CASES[name]
    rng = np.random.default_rng(seed)
    q_ends, kv_ends = O.cumulative(cfg["q_lens"]), O.cumulative(cfg["kv_lens"])
    lay = O.layout(q_ends, kv_ends)
    t1, t2, n1, n2 = q_ends[-1] + 1, kv_ends[-1] + 1, cfg["n1"], cfg["n2"]   # + a stray row
    x = dict(q=rng.standard_normal((t1, n1, d)), qr=rng.standard_normal((t1, n1, dr)),
             k=rng.standard_normal((t2, n2, d)), kr=rng.standard_normal((t2, n2, dr)),
             v=rng.standard_normal((t2, n2, dv)))
    w = rng.standard_normal((t1, n1, dv))
    args = dict(mask=_mask(rng, cfg, lay), q_ends=q_ends, kv_ends=kv_ends, scale_value=0.37,
                mode=cfg["mode"], pre=cfg.get("pre", O.INT32_MAX), nxt=cfg.get("nxt", O.INT32_MAX))
    return x, w, args


def loss(x, w, args) -> float:
    o, _, _ = O.forward(x["q"], x["qr"], x["k"], x["kr"], x["v"], args["mask"], args["q_ends"],
                        args["kv_ends"], args["scale_value"], args["mode"], args["pre"],
                        args["nxt"])
    return float(np.sum(w * o))


def finite_differences(x, w, args, eps=1e-6):
    grads = {}
    for key in ("q", "qr", "k", "kr", "v"):
        g = np.zeros_like(x[key])
        for idx in np.ndindex(x[key].shape):
            orig = x[key][idx]
            x[key][idx] = orig + eps
            up = loss(x, w, args)
            x[key][idx] = orig - eps
            down = loss(x, w, args)
            x[key][idx] = orig
            g[idx] = (up - down) / (2 * eps)
        grads[key] = g
    return grads


def oracle_grads(x, w, args):
    o, mx, sm = O.forward(x["q"], x["qr"], x["k"], x["kr"], x["v"], args["mask"],
                          args["q_ends"], args["kv_ends"], args["scale_value"], args["mode"],
                          args["pre"], args["nxt"])
    return O.backward(x["q"], x["qr"], x["k"], x["kr"], x["v"], w, o, mx, sm, args["mask"],
                      args["q_ends"], args["kv_ends"], args["scale_value"], args["mode"],
                      args["pre"], args["nxt"])


KEYS = ("q", "qr", "k", "kr", "v")


@pytest.mark.parametrize("name", list(FD_CASES))
def test_oracle_backward_matches_finite_differences(name):
    x, w, args = float_problem(name, seed=zlib.crc32(name.encode()) % 1000)
    fd = finite_differences(x, w, args)
    an = oracle_grads(x, w, args)
    for key, a in zip(KEYS, an):
        scale = np.max(np.abs(fd[key]))
        assert scale > 0, f"{name}: gradient of {key} is identically 0"
        err = np.max(np.abs(a - fd[key]))
        assert err <= 1e-7 * scale + 1e-9, f"{name} d{key}: max|analytic - FD| = {err:.2e}"


def test_finite_differences_detect_a_wrong_gradient():
    """Negative control: the FD check has the power to reject plausible mistakes."""
    x, w, args = float_problem("mode0_mask_gqa2", seed=5)
    fd = finite_differences(x, w, args)
    dq, dqr, dk, dkr, dv = oracle_grads(x, w, args)
    assert np.max(np.abs(dq - fd["q"])) <= 1e-7 * np.max(np.abs(fd["q"]))
    # a backward that forgets the softmax term Dterm = rowsum(dy * O) (attention_in = 0)
    _, mx, sm = O.forward(x["q"], x["qr"], x["k"], x["kr"], x["v"], args["mask"],
                          args["q_ends"], args["kv_ends"], 0.37, 0)
    wrong = O.backward(x["q"], x["qr"], x["k"], x["kr"], x["v"], w, np.zeros_like(w), mx, sm,
                       args["mask"], args["q_ends"], args["kv_ends"], 0.37, 0)
    assert np.max(np.abs(wrong[0] - fd["q"])) > 1e-2 * np.max(np.abs(fd["q"]))
    assert np.max(np.abs(wrong[2] - fd["k"])) > 1e-2 * np.max(np.abs(fd["k"]))
    # dk and dv of a GQA group must sum over the group's query heads: one head is not enough
    assert np.max(np.abs(dk - fd["k"])) <= 1e-7 * np.max(np.abs(fd["k"]))
    n1, n2 = x["q"].shape[1], x["k"].shape[1]
    g = n1 // n2
    w_one = w.copy()
    w_one[:, [h for h in range(n1) if h % g]] = 0      # keep only the first head of each group
    one = oracle_grads(x, w_one, args)[4]
    assert np.max(np.abs(one - dv)) > 1e-3 * np.max(np.abs(dv))


@pytest.mark.parametrize("name", list(FD_CASES))
def test_package_fp64_matches_oracle_backward(name):
    """Second link of the chain: bf16-representable inputs, float32 statistics, bf16 O."""
    cfg = dict(FD_CASES[name])
    case = O.make_case(seed=len(name), d=16, dr=8, extra_q=1, extra_kv=1, **cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = af.flash_attention_unpadding_score_grad_v3(
            case.q, case.qr, case.k, case.kr, case.v, case.dy, **case.bwd_kwargs(),
            precision="fp64", backend="numpy")
    O.assert_grads_close(g, case.oracle_backward(), rtol=1e-10, what=f"{name} fp64",
                         touched_rows=case.touched())
    assert max(np.max(np.abs(x)) for x in g) > 0


def test_package_fp64_is_derivative_with_consistent_statistics():
    """Direct check on a case where the package's inputs are exact: with attention_in and
    statistics produced by the package's own fp64 forward (O rounded to bf16 only through
    the API's dtype), the fp64 backward is within the stated rounding of the exact gradient:
    stats are float32 (relative 6e-8) and O is bf16 (relative 4e-3, which enters via Dterm)."""
    case = O.make_case(seed=3, q_lens=[6, 5], kv_lens=[7, 5], n1=2, n2=1, d=16, dr=8, mode=0)
    exact = O.backward(case.q, case.qr, case.k, case.kr, case.v, case.dy, case.o64, case.max64,
                       case.sum64, case.mask, case.q_ends, case.kv_ends, case.scale, case.mode)
    fwd = af.flash_attention_forward(case.q, case.qr, case.k, case.kr, case.v,
                                     **case.api_common(), precision="fp64")
    g = af.flash_attention_unpadding_score_grad_v3(
        case.q, case.qr, case.k, case.kr, case.v, case.dy,
        **case.bwd_kwargs(softmax_max=fwd.softmax_max.astype(np.float32),
                          softmax_sum=fwd.softmax_sum.astype(np.float32),
                          attention_in=fwd.attention_out.astype(O.BF16)),
        precision="fp64", backend="numpy")
    # dv does not depend on O: only the float32 statistics separate it from the exact one
    assert O.normwise_error(g.dv, exact[4]) < 1e-6
    for a, e in zip(g[:4], exact[:4]):
        assert O.normwise_error(a, e) < 3e-2
