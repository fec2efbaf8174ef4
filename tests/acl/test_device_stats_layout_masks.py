"""S9 (statistics in the token-major layout instead of the device's) on device-resident
inputs in the sparse modes that read an explicit mask (0 and 1): the bounded sample reads the
mask's kept keys of the sampled rows and rejects token-major statistics itself, before phase 1."""

from __future__ import annotations

import numpy as np
import pytest

import aclnn_fag as af
import aclnn_fag.acl as acl
from aclnn_fag import softmax_layout
from acl_cases import assert_grads_close, make_problem
from test_device_tensors import counting, on_device
from aclnn_fag.rules.data_rules import DEVICE_SAMPLE_BYTES


def _token_major(p):
    """The statistics another kernel would give: token-major [T, N], broadcast to 8 copies."""
    out = []
    for name in ("softmax_max", "softmax_sum"):
        stats = getattr(p.fwd, name)
        tm = softmax_layout.token_major_from_device_stats(stats, p.q_ends)
        out.append(np.ascontiguousarray(np.broadcast_to(tm[..., None], stats.shape)))
    return out


@pytest.mark.parametrize("mode,pre,nxt", [(0, 6, 3), (0, 2147483647, 2147483647), (1, 0, 0)])
def test_token_major_statistics_rejected_by_the_sample_in_modes_0_and_1(mode, pre, nxt, no_leaks):
    p = make_problem(seed=40 + mode, n2=1, g=4, mode=mode, pre=pre, nxt=nxt,
                     q_lens=(40, 24), kv_lens=(36, 24), density=0.35)
    assert p.mask.ndim == 2 and p.mask.any()                 # an explicit mask with masked keys
    wrong_max, wrong_sum = _token_major(p)
    assert not np.array_equal(wrong_max, p.fwd.softmax_max)  # N1 = 4: the layouts differ
    pos, kw = on_device(p, acl.DeviceArray.from_numpy, softmax_max=wrong_max, softmax_sum=wrong_sum)
    with pytest.raises(af.ParamInvalidError, match="token-major") as e:
        af.flash_attention_unpadding_score_grad_v3(*pos, **kw)
    assert e.value.code == 161002 and e.value.param == "softmax_max"
    assert "GetWorkspaceSize" not in str(e.value)            # the sample caught it, not phase 1
    # the device-layout statistics of the same inputs pass, reading a bounded sample only
    ref = p.grads("numpy")
    pos, kw = on_device(p, acl.DeviceArray.from_numpy)
    got, moved = counting(lambda: af.flash_attention_unpadding_score_grad_v3(*pos, **kw))
    assert moved["h2d"] == 0 and moved["d2h_bytes"] <= DEVICE_SAMPLE_BYTES
    assert_grads_close([x.numpy() for x in got], ref)
