"""torch CPU tensors in -> torch CPU tensors out, zero-copy both ways, on both backends."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import aclnn_fag as af  # noqa: E402
import aclnn_fag.api as api  # noqa: E402
from acl_cases import assert_grads_close, make_problem  # noqa: E402


def tt(a):
    """A torch CPU tensor with a numpy array's values (bf16 through int16 bits)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def bits(t):
    """The numpy view of a torch tensor's memory (bf16 as int16)."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def torch_args(p, mask_dtype=torch.uint8):
    d = p.q.shape[2]
    qqr = tt(np.concatenate([p.q, p.qr], axis=-1))         # q, q_rope: views of one tensor
    pos = [qqr[..., :d], qqr[..., d:], tt(p.k), tt(p.kr), tt(p.v), tt(p.dy)]
    kw = p.kwargs()
    kw["atten_mask"] = tt(kw["atten_mask"]).to(mask_dtype)
    for n in ("softmax_max", "softmax_sum", "attention_in"):
        kw[n] = tt(kw[n])
    return qqr, pos, kw


@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.bool])
def test_numpy_backend_zero_copy_both_ways(monkeypatch, mask_dtype):
    p = make_problem(seed=50, n2=1, g=2, mode=0, density=0.2)
    ref = p.grads("numpy")
    qqr, pos, kw = torch_args(p, mask_dtype)
    seen = {}
    real = api.attention_backward

    def spy(call, precision, **kw):
        seen["call"] = call
        seen["out"] = real(call, precision, **kw)
        return seen["out"]
    monkeypatch.setattr(api, "attention_backward", spy)
    got = af.flash_attention_unpadding_score_grad_v3(*pos, backend="numpy", **kw)
    call = seen["call"]
    # inputs: the op saw views of the caller's memory (no copy), strides included
    assert np.shares_memory(call.query.view(np.int16), bits(qqr))
    assert np.shares_memory(call.query_rope.view(np.int16), bits(qqr))
    assert call.query.strides == (qqr.stride(0) * 2, qqr.stride(1) * 2, 2)
    assert np.shares_memory(call.atten_mask, bits(kw["atten_mask"]))
    # outputs: torch tensors over the results' memory (no copy)
    assert all(isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 for x in got)
    for t, a in zip(got, seen["out"]):
        assert np.shares_memory(bits(t), a.view(np.int16))
    for t, r in zip(got, ref):
        np.testing.assert_array_equal(bits(t), r.view(np.int16))


def test_npu_backend_takes_and_returns_torch_cpu_tensors():
    p = make_problem(seed=51, n2=2, g=1, mode=3, q_lens=(7, 9), kv_lens=(7, 9))
    _, pos, kw = torch_args(p)
    got = af.flash_attention_unpadding_score_grad_v3(*pos, backend="npu", **kw)
    assert af.last_backend() == "npu"
    assert all(isinstance(x, torch.Tensor) for x in got)
    assert_grads_close([bits(x).view(p.q.dtype) for x in got], p.grads("numpy"))


def test_forward_takes_and_returns_torch_cpu_tensors():
    p = make_problem(seed=52, mode=2, q_lens=(6, 5), kv_lens=(6, 5))
    _, pos, kw = torch_args(p)
    fwd = af.flash_attention_forward(*pos[:5], atten_mask=kw["atten_mask"],
                                     actual_seq_qlen=p.q_ends, actual_seq_kvlen=p.kv_ends,
                                     scale_value=p.scale, sparse_mode=p.mode, backend="numpy")
    assert isinstance(fwd.attention_out, torch.Tensor)
    assert fwd.softmax_max.dtype == torch.float32
    np.testing.assert_array_equal(bits(fwd.attention_out), p.fwd.attention_out.view(np.int16))
    np.testing.assert_array_equal(fwd.softmax_sum.numpy(), p.fwd.softmax_sum)


def test_torch_and_numpy_mixed_is_rejected():
    p = make_problem(seed=53)
    _, pos, kw = torch_args(p)
    kw["softmax_sum"] = p.fwd.softmax_sum
    with pytest.raises(TypeError, match="'softmax_sum' is a numpy.ndarray but 'query' is a torch "
                                        "CPU tensor"):
        af.flash_attention_unpadding_score_grad_v3(*pos, backend="numpy", **kw)


def test_unsupported_torch_dtype_is_named():
    p = make_problem(seed=54)
    _, pos, kw = torch_args(p)
    kw["softmax_max"] = kw["softmax_max"].to(torch.complex64)
    with pytest.raises(TypeError, match="'softmax_max' has dtype torch.complex64"):
        af.flash_attention_unpadding_score_grad_v3(*pos, backend="numpy", **kw)
