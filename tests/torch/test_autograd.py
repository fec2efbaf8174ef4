"""aclnn_fag.torch.varlen_attention against torch autograd of a plain torch implementation
(tests/torch/torch_oracle.py, float64): outputs and the five gradients, several sparse modes
and GQA, on both backends of the backward."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aclnn_fag.torch import varlen_attention  # noqa: E402
from torch_oracle import attention  # noqa: E402

# mode, q_lens, kv_lens, n2, g, pre, nxt, mask density
CASES = {
    "mode0-mask": (0, [9, 0, 13], [11, 4, 13], 2, 1, 5, 3, 0.25),
    "mode1-gqa2": (1, [8, 12], [10, 12], 1, 2, None, None, 0.3),
    "mode2-gqa2": (2, [10, 7], [10, 7], 2, 2, None, None, 0),
    "mode3-gqa4": (3, [6, 11], [9, 11], 1, 4, None, None, 0),
    "mode4-band": (4, [12, 9], [12, 9], 1, 2, 4, 2, 0),
}
TOL = 3e-2       # bf16 device precision vs float64, relative to the largest element


def cum(lens):
    return list(np.cumsum(lens).tolist())


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30))


@pytest.mark.parametrize("backend", ["numpy", "npu"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_torch_autograd(name, backend):
    mode, ql, kl, n2, g, pre, nxt, density = CASES[name]
    pre = 2147483647 if pre is None else pre
    nxt = 2147483647 if nxt is None else nxt
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) % 1000)
    n1, d, dr, dv = n2 * g, 32, 16, 32
    t1, t2 = sum(ql), sum(kl)

    def rnd(*s):
        return torch.randn(*s, generator=gen).to(torch.bfloat16).requires_grad_()
    q, qr, k, kr, v = rnd(t1, n1, d), rnd(t1, n1, dr), rnd(t2, n2, d), rnd(t2, n2, dr), rnd(t2, n2, dv)
    mask = None
    if mode in (0, 1):
        mask = (torch.rand(max(ql), max(kl), generator=gen) < density).to(torch.uint8)
        mask[:, 0] = 0
    scale = 1 / (d + dr) ** 0.5
    w = torch.randn(t1, n1, dv, generator=gen, dtype=torch.float64)

    out = varlen_attention(q, qr, k, kr, v, actual_seq_qlen=cum(ql), actual_seq_kvlen=cum(kl),
                           scale_value=scale, sparse_mode=mode, atten_mask=mask,
                           pre_tokens=pre, next_tokens=nxt, backend=backend)
    (out.double() * w).sum().backward()

    leaves = [x.detach().double().requires_grad_() for x in (q, qr, k, kr, v)]
    m2 = mask if mask is not None else torch.zeros(max(ql), max(kl), dtype=torch.uint8)
    ref = attention(*leaves, cum(ql), cum(kl), scale, mode, pre, nxt, m2)
    (ref * w).sum().backward()

    assert out.dtype == torch.bfloat16 and out.shape == (t1, n1, dv)
    assert rel(out, ref) <= TOL, f"output: {rel(out, ref):.3g}"
    for nm, x, r in zip(("dq", "dq_rope", "dk", "dk_rope", "dv"), (q, qr, k, kr, v), leaves):
        assert x.grad is not None and x.grad.dtype == torch.bfloat16, nm
        assert float(r.grad.abs().max()) > 0, nm
        assert rel(x.grad, r.grad) <= TOL, f"{nm}: {rel(x.grad, r.grad):.3g}"


def test_model_step_trains():
    """A model's attention swapped for varlen_attention: one SGD step lowers the loss."""
    gen = torch.Generator().manual_seed(3)
    t, n, d, dr = 24, 2, 32, 16
    x = torch.randn(t, 64, generator=gen)
    wq = torch.nn.Linear(64, n * (d + dr), bias=False).to(torch.bfloat16)
    wk = torch.nn.Linear(64, n * (d + dr), bias=False).to(torch.bfloat16)
    wv = torch.nn.Linear(64, n * d, bias=False).to(torch.bfloat16)
    params = list(wq.parameters()) + list(wk.parameters()) + list(wv.parameters())
    target = torch.randn(t, n, d, generator=gen)

    def loss_fn():
        xb = x.to(torch.bfloat16)
        qq = wq(xb).view(t, n, d + dr)
        kk = wk(xb).view(t, n, d + dr)
        out = varlen_attention(qq[..., :d], qq[..., d:], kk[..., :d], kk[..., d:],
                               wv(xb).view(t, n, d), actual_seq_qlen=[10, 24],
                               scale_value=1 / (d + dr) ** 0.5, sparse_mode=3, backend="numpy")
        return ((out.float() - target) ** 2).mean()
    before = loss_fn()
    before.backward()
    with torch.no_grad():
        for p in params:
            p -= 5.0 * p.grad
    assert float(loss_fn()) < float(before)
