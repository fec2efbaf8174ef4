"""aclnn_fag.torch on NPU tensors (``fake_npu_torch.NpuTensor``: a torch.Tensor subclass over
stub device memory, used by the package only through the tensor protocol): the forward and
the backward run through the package's NPU ops in place, on torch_npu's current stream
(``torch.npu.current_stream``, faked), with the statistics kept on the device between them
and no host copy; the gradients equal the CPU path's."""

from __future__ import annotations

import gc
import zlib
from ctypes import byref, c_void_p

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import aclnn_fag as af  # noqa: E402
import aclnn_fag.acl as acl  # noqa: E402
import aclnn_fag.torch as aft  # noqa: E402
from aclnn_fag.torch import varlen_attention  # noqa: E402
from fake_npu_torch import NpuTensor, TorchNpu  # noqa: E402
from stub_kit import StubControls  # noqa: E402

# mode, q_lens, kv_lens, n2, g, pre, nxt, explicit mask
CASES = {
    "mode0-band-mask": (0, [9, 0, 13], [11, 4, 13], 2, 1, 5, 3, True),
    "mode1-gqa2-default-zero-mask": (1, [8, 12], [10, 12], 1, 2, None, None, False),
    "mode2-gqa2-default-mask": (2, [10, 7], [10, 7], 2, 2, None, None, False),
    "mode3-gqa4-default-mask": (3, [6, 11], [9, 11], 1, 4, None, None, False),
    "mode4-band": (4, [12, 9], [12, 9], 1, 2, 4, 2, False),
}
GRADS = ("dq", "dq_rope", "dk", "dk_rope", "dv")
BF16_TOL = 2.0 ** -7     # relative to the largest element: a few bf16 ulps


@pytest.fixture
def stub(stub_env):
    return StubControls(stub_env)


@pytest.fixture
def npu_stream(monkeypatch):
    """A stub aclrtStream installed as torch_npu's current stream (``torch.npu``)."""
    b = acl.runtime.api()
    acl.runtime.ensure_device(0)
    h = c_void_p()
    assert b.aclrtCreateStream(byref(h)) == 0
    fake = TorchNpu(h.value)
    monkeypatch.setattr(torch, "npu", fake, raising=False)
    yield fake
    aft._MASK_CACHE.clear()
    acl.runtime.release_stream_workspace(h.value)
    assert b.aclrtDestroyStream(h.value) == 0


def problem(name):
    mode, ql, kl, n2, g, pre, nxt, explicit = CASES[name]
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) % 1000)
    n1, d, dr, dv = n2 * g, 32, 16, 32
    t1, t2 = sum(ql), sum(kl)
    shapes = [(t1, n1, d), (t1, n1, dr), (t2, n2, d), (t2, n2, dr), (t2, n2, dv)]
    leaves = [torch.randn(*s, generator=gen).to(torch.bfloat16) for s in shapes]
    mask = None
    if explicit:
        mask = (torch.rand(max(ql), max(kl), generator=gen) < 0.25).to(torch.uint8)
        mask[:, 0] = 0
    dy = torch.randn(t1, n1, dv, generator=gen).to(torch.bfloat16)
    kw = dict(actual_seq_qlen=np.cumsum(ql).tolist(), actual_seq_kvlen=np.cumsum(kl).tolist(),
              scale_value=1 / (d + dr) ** 0.5, sparse_mode=mode,
              pre_tokens=2147483647 if pre is None else pre,
              next_tokens=2147483647 if nxt is None else nxt)
    return leaves, mask, dy, kw


def cpu_step(leaves, mask, dy, kw, backend):
    xs = [x.clone().requires_grad_() for x in leaves]
    out = varlen_attention(*xs, atten_mask=mask, backend=backend, **kw)
    out.backward(dy)
    return out.detach(), [x.grad for x in xs]


def npu_step(leaves, mask, dy, kw):
    xs = [x.requires_grad_() for x in leaves]
    out = varlen_attention(*xs, atten_mask=mask, **kw)
    out.backward(dy)
    return out, [x.grad for x in xs]


def moved():
    s = acl.stats()
    return {k: s[k] for k in ("h2d", "d2h", "malloc")}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.view(torch.int16), b.view(torch.int16))


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30))


@pytest.mark.parametrize("name", sorted(set(CASES) - {"mode2-gqa2-default-mask"}))  # mode 2: below
def test_npu_training_step_on_the_current_stream(name, stub, npu_stream):
    leaves, mask, dy, kw = problem(name)
    out_cpu, grads_cpu = cpu_step(leaves, mask, dy, kw, "npu")     # the same stub ops, host
    out_ref, grads_ref = cpu_step(leaves, mask, dy, kw, "numpy")   # the NumPy reference
    handle = npu_stream.stream.npu_stream

    def on_npu():
        return ([NpuTensor.from_cpu(x) for x in leaves],
                None if mask is None else NpuTensor.from_cpu(mask), NpuTensor.from_cpu(dy))
    npu_step(*on_npu(), kw)     # warm-up: default mask made once, the stream's workspace grown
    xs, m, g = on_npu()
    xs = [x.requires_grad_() for x in xs]
    NpuTensor.host_ops.clear()
    counts0, moved0 = stub.stream_counts(handle), moved()
    out = varlen_attention(*xs, atten_mask=m, **kw)
    counts1, moved1 = stub.stream_counts(handle), moved()
    out.backward(g)
    counts2, moved2 = stub.stream_counts(handle), moved()
    # the forward: one launch on the caller's stream, no synchronisation, no copy; its
    # three outputs come from new_empty (no other allocation: the mask was kept)
    assert counts1 == {"launches": counts0["launches"] + 1, "syncs": counts0["syncs"]}
    assert (moved1["h2d"], moved1["d2h"]) == (moved0["h2d"], moved0["d2h"])
    assert moved1["malloc"] - moved0["malloc"] == 3
    # the backward likewise, reading the statistics the forward left on the device
    assert counts2 == {"launches": counts1["launches"] + 1, "syncs": counts1["syncs"]}
    assert (moved2["h2d"], moved2["d2h"]) == (moved1["h2d"], moved1["d2h"])
    assert moved2["malloc"] - moved1["malloc"] == 5
    assert NpuTensor.host_ops == []              # no torch op emulated on the host either
    assert len(npu_stream.asked) >= 2 and all(d.type == "npu" for d in npu_stream.asked)
    assert isinstance(out, NpuTensor) and out.device.type == "npu"
    assert same_bits(out.cpu_copy(), out_cpu)
    for nm, x, want, ref in zip(GRADS, xs, grads_cpu, grads_ref):
        assert isinstance(x.grad, NpuTensor) and x.grad.dtype == torch.bfloat16, nm
        got = x.grad.cpu_copy()
        assert same_bits(got, want), nm
        assert float(ref.abs().max()) > 0, nm
        assert rel(got, ref) <= BF16_TOL, f"{nm}: {rel(got, ref):.3g}"
    assert rel(out.cpu_copy(), out_ref) <= BF16_TOL


def test_without_torch_npu_the_package_stream_is_used(stub, monkeypatch):
    """No ``torch.npu`` (torch_npu absent): both ops run on the package's own stream and
    synchronise it; the gradients are the same."""
    monkeypatch.delattr(torch, "npu", raising=False)
    leaves, mask, dy, kw = problem("mode3-gqa4-default-mask")
    _, grads_cpu = cpu_step(leaves, mask, dy, kw, "npu")
    xs = [NpuTensor.from_cpu(x).requires_grad_() for x in leaves]
    own = acl.runtime.stream(0)
    before = stub.stream_counts(own)
    out = varlen_attention(*xs, **kw)
    out.backward(NpuTensor.from_cpu(dy))
    after = stub.stream_counts(own)
    assert after == {"launches": before["launches"] + 2, "syncs": before["syncs"] + 2}
    for nm, x, want in zip(GRADS, xs, grads_cpu):
        assert same_bits(x.grad.cpu_copy(), want), nm
    aft._MASK_CACHE.clear()


def test_loss_through_torch_ops_trains_on_npu_tensors(stub, npu_stream):
    """A loss of torch ops on the output (emulated as torch_npu would run them) and
    loss.backward(): the gradients match the same step on CPU tensors."""
    leaves, mask, dy, kw = problem("mode2-gqa2-default-mask")
    w = torch.randn(dy.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xs_cpu = [x.clone().requires_grad_() for x in leaves]
    (varlen_attention(*xs_cpu, backend="npu", **kw).double() * w).sum().backward()
    xs = [NpuTensor.from_cpu(x).requires_grad_() for x in leaves]
    loss = (varlen_attention(*xs, **kw).double() * w).sum()
    loss.backward()
    for nm, x, c in zip(GRADS, xs, xs_cpu):
        assert same_bits(x.grad.cpu_copy(), c.grad), nm


def test_nothing_leaks(stub, npu_stream):
    gc.collect()
    before = stub.counters()
    leaves, mask, dy, kw = problem("mode0-band-mask")
    xs = [NpuTensor.from_cpu(x).requires_grad_() for x in leaves]
    out = varlen_attention(*xs, atten_mask=NpuTensor.from_cpu(mask), **kw)
    out.backward(NpuTensor.from_cpu(dy))
    assert stub.counters()["device_bytes"] > before["device_bytes"]
    del out, xs
    acl.runtime.release_stream_workspace(npu_stream.stream.npu_stream)
    gc.collect()
    after = stub.counters()
    assert after == before, f"native objects leaked: before {before}, after {after}"


def test_gradient_penalty_on_npu_tensors_raises_naming_the_function(stub, npu_stream):
    """Second-order use refused on NPU tensors too, with the CPU path's message (not the
    generic once_differentiable one)."""
    leaves, mask, dy, kw = problem("mode3-gqa4-default-mask")
    xs = [NpuTensor.from_cpu(x).requires_grad_() for x in leaves]
    loss = (varlen_attention(*xs, **kw).double() ** 2).sum()
    (gk,) = torch.autograd.grad(loss, xs[2], create_graph=True)
    assert gk.grad_fn is not None
    with pytest.raises(RuntimeError) as info:
        (gk.double() ** 2).sum().backward()
    assert str(info.value) == aft.DOUBLE_BACKWARD_ERROR
    (g1,) = torch.autograd.grad((varlen_attention(*xs, **kw).double() ** 2).sum(), xs[2])
    assert same_bits(g1.cpu_copy(), gk.detach().cpu_copy())   # first order unchanged
