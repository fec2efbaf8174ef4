"""What a trainer relies on in aclnn_fag.torch (issue 22): once-differentiable autograd that
refuses second-order use, torch.compile without graph breaks, float64 gradcheck through
precision="fp64", the softmax statistics for context-parallel merging, torch-shaped errors
and sequence ends given as lists, numpy arrays or CPU tensors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import aclnn_fag as af  # noqa: E402
from aclnn_fag.softmax_layout import token_major_from_device_stats  # noqa: E402
from aclnn_fag.torch import (DOUBLE_BACKWARD_ERROR, STATS_GRADIENT_ERROR,  # noqa: E402
                             varlen_attention)
from torch_oracle import attention  # noqa: E402

D, DR, DV = 16, 8, 16


def inputs(t1, t2, n1, n2, dtype=torch.bfloat16, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((t1, n1, D), (t1, n1, DR), (t2, n2, D), (t2, n2, DR), (t2, n2, DV))
    xs = [torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    return [x.requires_grad_() for x in xs] if grad else xs


# --------------------------------------------------------------------------- 1. autograd
def test_gradient_penalty_raises_naming_the_function():
    """A gradient penalty (create_graph=True, then a backward through the gradient) must not
    run silently with wrong gradients: it raises, naming varlen_attention."""
    xs = inputs(12, 12, 2, 1)
    out = varlen_attention(*xs, actual_seq_qlen=[5, 12], scale_value=0.25, sparse_mode=3,
                           backend="numpy")
    loss = out.float().pow(2).sum()
    (gq,) = torch.autograd.grad(loss, xs[0], create_graph=True)
    assert gq.grad_fn is not None          # part of a graph: the error comes on its backward
    penalty = gq.float().pow(2).sum()
    with pytest.raises(RuntimeError) as info:
        penalty.backward()
    assert "aclnn_fag.torch.varlen_attention" in str(info.value)
    assert "once differentiable" in str(info.value)
    assert str(info.value) == DOUBLE_BACKWARD_ERROR


def test_first_order_with_create_graph_still_correct():
    """create_graph=True alone (no second backward) gives the ordinary gradient."""
    xs = inputs(12, 12, 2, 1)
    kw = dict(actual_seq_qlen=[5, 12], scale_value=0.25, sparse_mode=3, backend="numpy")
    g1 = torch.autograd.grad(varlen_attention(*xs, **kw).float().sum(), xs[2],
                             create_graph=True)[0]
    g2 = torch.autograd.grad(varlen_attention(*xs, **kw).float().sum(), xs[2])[0]
    assert torch.equal(g1, g2)


# --------------------------------------------------------------------------- 2. compile
class Layer(torch.nn.Module):
    """A small MLA-style attention layer: projections, varlen_attention, output projection."""

    def __init__(self, width=32, heads=2):
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.heads = heads
        self.wq = torch.nn.Parameter(torch.randn(width, heads * (D + DR), generator=gen) * 0.2)
        self.wk = torch.nn.Parameter(torch.randn(width, heads * (D + DR), generator=gen) * 0.2)
        self.wv = torch.nn.Parameter(torch.randn(width, heads * DV, generator=gen) * 0.2)
        self.wo = torch.nn.Parameter(torch.randn(heads * DV, width, generator=gen) * 0.2)

    def forward(self, x, ends):
        t, h = x.shape[0], self.heads
        q = (x @ self.wq).view(t, h, D + DR).to(torch.bfloat16)
        k = (x @ self.wk).view(t, h, D + DR).to(torch.bfloat16)
        v = (x @ self.wv).view(t, h, DV).to(torch.bfloat16)
        out = varlen_attention(q[..., :D], q[..., D:], k[..., :D], k[..., D:], v,
                               actual_seq_qlen=ends, scale_value=(D + DR) ** -0.5,
                               sparse_mode=3, backend="numpy")
        return out.float().reshape(t, -1) @ self.wo


@pytest.mark.parametrize("fullgraph", [False, True])
def test_torch_compile_matches_eager_without_graph_breaks(fullgraph):
    import torch._dynamo as dynamo
    dynamo.reset()
    dynamo.utils.counters.clear()
    layer = Layer()
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(1))
    ends = [7, 7, 20]

    def step(fn):
        layer.zero_grad()
        y = fn(x, ends)
        y.pow(2).mean().backward()
        return y.detach(), [p.grad.clone() for p in layer.parameters()]
    y_eager, g_eager = step(layer)
    compiled = torch.compile(layer, fullgraph=fullgraph, backend="aot_eager")
    y_comp, g_comp = step(compiled)
    assert not dynamo.utils.counters["graph_break"], dict(dynamo.utils.counters["graph_break"])
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert torch.equal(y_eager, y_comp)
    for a, b in zip(g_eager, g_comp):
        assert torch.equal(a, b)
    dynamo.reset()


def test_compiled_path_refuses_statistics_gradients_and_second_order_use():
    """Under torch.compile the custom ops run (eager mode skips the dispatcher): a gradient
    of the statistics raises the same error, and a gradient penalty raises instead of running
    silently (AOTAutograd's own refusal of double backward comes first)."""
    import torch._dynamo as dynamo
    dynamo.reset()

    def f(*xs):
        return varlen_attention(*xs, actual_seq_qlen=[5, 12], scale_value=0.25, sparse_mode=3,
                                backend="numpy", return_stats=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    xs = inputs(12, 12, 2, 1)
    out, smax, _ = compiled(*xs)
    with pytest.raises(RuntimeError) as info:
        (out.float().sum() + smax.sum()).backward()
    assert str(info.value) == STATS_GRADIENT_ERROR
    out = compiled(*xs)[0]
    (gq,) = torch.autograd.grad(out.float().pow(2).sum(), xs[0], create_graph=True)
    assert torch.equal(gq, torch.autograd.grad(f(*xs)[0].float().pow(2).sum(), xs[0])[0])
    with pytest.raises(RuntimeError, match="double backward|once differentiable"):
        gq.float().pow(2).sum().backward()
    dynamo.reset()


def test_fake_implementations_give_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    xs = inputs(9, 9, 4, 2, grad=False)
    for precision, out_dtype, stat_dtype in (("device", torch.bfloat16, torch.float32),
                                             ("fp32", torch.float32, torch.float32),
                                             ("fp64", torch.float64, torch.float64)):
        real = torch.ops.aclnn_fag.varlen_fwd(*xs, None, [4, 9], [4, 9], 0.3, 3,
                                              2147483647, 2147483647, "numpy", precision, None)
        with FakeTensorMode() as mode:
            fake = torch.ops.aclnn_fag.varlen_fwd(*[mode.from_tensor(x) for x in xs], None,
                                                  [4, 9], [4, 9], 0.3, 3, 2147483647,
                                                  2147483647, "numpy", precision, None)
        for r, f, dt in zip(real, fake, (out_dtype, stat_dtype, stat_dtype)):
            assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())
            assert r.dtype == dt


# --------------------------------------------------------------------------- 3. precision
@pytest.mark.parametrize("case", [
    # q ends, kv ends, N1, N2, mode: GQA with a causal mask; a varlen batch with an empty
    # sequence and a full (mode 0) mask
    ([4, 9], [4, 9], 4, 2, 3),
    ([3, 3, 7], [4, 4, 9], 2, 2, 0),
])
def test_gradcheck_float64(case):
    qe, ke, n1, n2, mode = case
    xs = inputs(qe[-1], ke[-1], n1, n2, dtype=torch.float64)

    def fn(*x):
        return varlen_attention(*x, actual_seq_qlen=qe, actual_seq_kvlen=ke, scale_value=0.3,
                                sparse_mode=mode, precision="fp64")
    assert torch.autograd.gradcheck(fn, tuple(xs), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_golden_precision_matches_float64_torch_autograd(precision):
    """fp32/fp64 on float tensors against torch autograd of the plain float64 attention
    (tests/torch/torch_oracle.py), GQA and an empty sequence included."""
    dtype = torch.float32 if precision == "fp32" else torch.float64
    qe, ke = [5, 5, 11], [6, 6, 13]
    xs = inputs(11, 13, 4, 2, dtype=dtype)
    scale = 0.3
    out = varlen_attention(*xs, actual_seq_qlen=qe, actual_seq_kvlen=ke, scale_value=scale,
                           sparse_mode=0, precision=precision)
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (out.double() * w).sum().backward()
    leaves = [x.detach().double().requires_grad_() for x in xs]
    ref = attention(*leaves, qe, ke, float(np.float32(scale)), 0,
                    mask2d=torch.zeros(6, 7, dtype=torch.uint8))
    (ref * w).sum().backward()
    tol = 1e-12 if precision == "fp64" else 1e-5
    assert out.dtype == dtype
    assert float((out.detach().double() - ref.detach()).abs().max()) <= tol
    for x, r in zip(xs, leaves):
        assert x.grad.dtype == dtype
        assert float((x.grad.double() - r.grad).abs().max()) <= tol * max(1, float(r.grad.abs().max()))


def test_golden_precision_refuses_mixed_dtypes_and_the_npu_backend():
    xs = inputs(9, 9, 2, 2, dtype=torch.float64)
    xs[2] = xs[2].detach().float()
    with pytest.raises(TypeError, match=r"parameter 'key' has dtype torch.float32.*"
                                        r"key.to\(torch.float64\)"):
        varlen_attention(*xs, actual_seq_qlen=[9], scale_value=0.3, precision="fp64")
    with pytest.raises(ValueError, match="precision"):
        varlen_attention(*inputs(9, 9, 2, 2, dtype=torch.float64), actual_seq_qlen=[9],
                         scale_value=0.3, precision="fp64", backend="npu")
    with pytest.raises(ValueError, match="parameter 'precision'"):
        varlen_attention(*inputs(9, 9, 2, 2), actual_seq_qlen=[9], scale_value=0.3,
                         precision="float64")


# --------------------------------------------------------------------------- 4. statistics
def lse_of(stats_max, stats_sum, ends):
    m = token_major_from_device_stats(stats_max.detach().numpy(), ends)
    s = token_major_from_device_stats(stats_sum.detach().numpy(), ends)
    return torch.from_numpy(m + np.log(s))


@pytest.mark.parametrize("precision,tol", [("fp64", 1e-12), ("device", 2e-2)])
def test_two_key_halves_merged_through_the_statistics_equal_the_whole(precision, tol):
    """Context parallelism: attention over each half of every sequence's keys, merged with
    the statistics (converted to token-major), equals attention over all keys."""
    lens_q, lens_kv = [5, 0, 7], [6, 4, 10]
    qe = list(np.cumsum(lens_q))
    halves = [[n // 2 for n in lens_kv], [n - n // 2 for n in lens_kv]]
    dtype = torch.float64 if precision == "fp64" else torch.bfloat16
    q, qr, k, kr, v = inputs(sum(lens_q), sum(lens_kv), 4, 2, dtype=dtype, grad=False)
    kw = dict(actual_seq_qlen=qe, scale_value=0.3, sparse_mode=0, precision=precision,
              return_stats=True)
    whole = varlen_attention(q, qr, k, kr, v, actual_seq_kvlen=list(np.cumsum(lens_kv)), **kw)
    starts = np.concatenate([[0], np.cumsum(lens_kv)[:-1]])
    parts = []
    for h, lens in enumerate(halves):
        idx = np.concatenate([np.arange(s + (0 if h == 0 else halves[0][b]),
                                        s + (halves[0][b] if h == 0 else lens_kv[b]))
                              for b, s in enumerate(starts)]).astype(np.int64)
        idx = torch.from_numpy(idx)
        parts.append(varlen_attention(q, qr, k[idx], kr[idx], v[idx],
                                      actual_seq_kvlen=list(np.cumsum(lens)), **kw))
    (o1, m1, s1), (o2, m2, s2) = parts
    l1, l2 = lse_of(m1, s1, qe), lse_of(m2, s2, qe)
    lse = torch.logaddexp(l1, l2)
    merged = (torch.exp(l1 - lse)[..., None] * o1.double()
              + torch.exp(l2 - lse)[..., None] * o2.double())
    assert float((merged - whole[0].double()).abs().max()) <= tol
    assert float((lse - lse_of(whole[1], whole[2], qe)).abs().max()) <= tol
    # device layout: per batch [N1, Sq_b, 8]; N1 = 4, so token-major differs
    assert whole[1].shape == (sum(lens_q), 4, 8)


def test_statistics_are_not_differentiable():
    xs = inputs(9, 9, 2, 2)
    kw = dict(actual_seq_qlen=[9], scale_value=0.3, return_stats=True, backend="numpy")
    out, smax, ssum = varlen_attention(*xs, **kw)
    out.float().sum().backward()            # statistics unused: fine
    assert xs[0].grad is not None
    out, smax, ssum = varlen_attention(*xs, **kw)
    with pytest.raises(RuntimeError) as info:
        (out.float().sum() + smax.sum()).backward()
    assert str(info.value) == STATS_GRADIENT_ERROR


# --------------------------------------------------------------------------- 5. torch terms
def test_dtype_errors_speak_torch():
    xs = inputs(9, 9, 2, 2, dtype=torch.float32, grad=False)
    mask = torch.from_numpy(af.masks.compressed_causal_mask().copy())
    kw = dict(atten_mask=mask, actual_seq_qlen=[9], actual_seq_kvlen=[9], scale_value=0.3,
              sparse_mode=3, backend="numpy")
    with pytest.raises(af.AclnnError) as info:
        af.flash_attention_forward(*xs, **kw)
    text = str(info.value)
    assert "query.to(torch.bfloat16)" in text and "got torch.float32" in text
    assert "ml_dtypes" not in text and "astype" not in text
    with pytest.raises(af.AclnnError) as info:
        varlen_attention(*xs, actual_seq_qlen=[9], scale_value=0.3, sparse_mode=3)
    assert "query.to(torch.bfloat16)" in str(info.value)
    # numpy callers keep the numpy advice
    with pytest.raises(af.AclnnError, match=r"astype\(ml_dtypes.bfloat16\)"):
        af.flash_attention_forward(*(x.numpy() for x in xs), **dict(kw, atten_mask=mask.numpy()))


@pytest.mark.parametrize("kind", ["list", "numpy", "torch"])
def test_sequence_ends_of_every_kind(kind):
    """Cumulative ends as a list, a numpy array or a CPU tensor: the same results from the
    forward, the backward, varlen_attention and the converters."""
    convert = {"list": list, "numpy": lambda e: np.asarray(e, np.int64),
               "torch": lambda e: torch.tensor(e)}[kind]
    qe, ke = [4, 4, 9], [5, 5, 9]
    xs = inputs(9, 9, 2, 2, grad=False)
    mask = torch.zeros(5, 5, dtype=torch.uint8)
    kw = dict(atten_mask=mask, scale_value=0.3, backend="numpy")
    ref = af.flash_attention_forward(*xs, actual_seq_qlen=qe, actual_seq_kvlen=ke, **kw)
    fwd = af.flash_attention_forward(*xs, actual_seq_qlen=convert(qe),
                                     actual_seq_kvlen=convert(ke), **kw)
    assert all(torch.equal(a, b) for a, b in zip(ref, fwd))
    grads = af.flash_attention_unpadding_score_grad_v3(
        *xs, fwd.attention_out, softmax_max=fwd.softmax_max, softmax_sum=fwd.softmax_sum,
        attention_in=fwd.attention_out, actual_seq_qlen=convert(qe),
        actual_seq_kvlen=convert(ke), **kw)
    assert grads.dq.shape == xs[0].shape
    out = varlen_attention(*xs, actual_seq_qlen=convert(qe), actual_seq_kvlen=convert(ke),
                           atten_mask=mask, scale_value=0.3, backend="numpy")
    assert torch.equal(out, ref.attention_out)
    assert list(af.seqlens.cumulative_to_lengths(convert(qe))) == [4, 0, 5]
    assert token_major_from_device_stats(fwd.softmax_max.numpy(), convert(qe)).shape == (9, 2)


def test_bad_sequence_ends_are_named():
    xs = inputs(9, 9, 2, 2, grad=False)
    kw = dict(atten_mask=torch.zeros(9, 9, dtype=torch.uint8), scale_value=0.3,
              backend="numpy")
    with pytest.raises(TypeError, match=r"parameter 'actual_seq_qlen'.*dtype float32"):
        af.flash_attention_forward(*xs, actual_seq_qlen=torch.tensor([9.0]),
                                   actual_seq_kvlen=[9], **kw)
    with pytest.raises(TypeError, match=r"parameter 'actual_seq_kvlen'.*2-D"):
        varlen_attention(*xs, actual_seq_qlen=[9], actual_seq_kvlen=torch.tensor([[9]]),
                         scale_value=0.3)
    with pytest.raises(TypeError, match=r"parameter 'actual_seq_qlen'.*entry 0 is float"):
        varlen_attention(*xs, actual_seq_qlen=[9.0], scale_value=0.3)
