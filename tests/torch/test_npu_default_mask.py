"""The default mask aclnn_fag.torch makes for NPU tensors (issue 23, item 6): made once per
device (and shape, for the all-zero mask of modes 0/1) with ``q.new_empty`` and filled by a
copy that is not stream-ordered, so the current stream is synchronised exactly once, when
the mask is first made -- never on the calls that reuse it."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import aclnn_fag.acl as acl  # noqa: E402
from aclnn_fag.torch import varlen_attention  # noqa: E402
from fake_npu_torch import NpuTensor  # noqa: E402
from test_npu_autograd import npu_stream, stub  # noqa: E402,F401  (fixtures)


def _inputs(q_lens, seed):
    gen = torch.Generator().manual_seed(seed)
    t, n, d, dr = sum(q_lens), 2, 32, 16
    shapes = [(t, n, d), (t, n, dr), (t, n, d), (t, n, dr), (t, n, d)]
    return [NpuTensor.from_cpu(torch.randn(*s, generator=gen).to(torch.bfloat16))
            for s in shapes]


@pytest.mark.parametrize("mode, lens", [(3, (6, 9)), (1, (5, 7))])
def test_the_default_mask_syncs_the_current_stream_once(mode, lens, stub, npu_stream):
    handle = npu_stream.stream.npu_stream
    ends = np.cumsum(lens).tolist()
    kw = dict(actual_seq_qlen=ends, actual_seq_kvlen=ends, scale_value=0.125, sparse_mode=mode,
              check_data=False)
    seed = zlib.crc32(repr((mode, lens)).encode()) % 1000
    counts = [stub.stream_counts(handle)]
    outs = []
    for _ in range(3):
        outs.append(varlen_attention(*_inputs(lens, seed), **kw))
        counts.append(stub.stream_counts(handle))
    launches = [b["launches"] - a["launches"] for a, b in zip(counts, counts[1:])]
    syncs = [b["syncs"] - a["syncs"] for a, b in zip(counts, counts[1:])]
    assert launches == [1, 1, 1]                 # the forward, enqueued on the current stream
    assert syncs == [1, 0, 0]                    # the mask's first making only
    acl.runtime.synchronize_stream(handle, 0)
    first = outs[0].cpu_copy()
    for o in outs[1:]:
        assert torch.equal(o.cpu_copy().view(torch.int16), first.view(torch.int16))
