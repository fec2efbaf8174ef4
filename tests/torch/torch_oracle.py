"""Plain torch varlen attention with rope parts (float64, written from the op's definition,
independent of aclnn_fag): the kept set of each sparse mode, GQA, fully masked rows -> 0."""

from __future__ import annotations

import math

import torch

INT32_MAX = 2147483647


def kept(mode, sq, skv, pre, nxt, mask2d):
    i = torch.arange(sq)[:, None]
    j = torch.arange(skv)[None, :]
    d = j - i
    if mode == 0:
        k = (d >= -pre) & (d <= nxt) & (mask2d[:sq, :skv] == 0)
    elif mode == 1:
        k = mask2d[:sq, :skv] == 0
    elif mode == 2:
        k = d <= 0
    elif mode == 3:
        k = d <= skv - sq
    elif mode == 4:
        k = (d >= skv - sq - pre) & (d <= skv - sq + nxt)
    else:
        raise ValueError(mode)
    return k


def attention(q, qr, k, kr, v, q_ends, kv_ends, scale, mode, pre=INT32_MAX, nxt=INT32_MAX,
              mask2d=None):
    """Output [T1, N1, Dv] (same dtype as the inputs), differentiable by torch autograd."""
    n1, n2 = q.shape[1], k.shape[1]
    g = n1 // n2
    outs = []
    qs = ks = 0
    for qe, ke in zip(q_ends, kv_ends):
        sq, skv = qe - qs, ke - ks
        if sq == 0:
            qs, ks = qe, ke
            continue
        if skv == 0:
            outs.append(q.new_zeros((sq, n1, v.shape[2])))
            qs, ks = qe, ke
            continue
        keep = kept(mode, sq, skv, pre, nxt, mask2d)
        kh = k[ks:ke].repeat_interleave(g, dim=1)
        krh = kr[ks:ke].repeat_interleave(g, dim=1)
        vh = v[ks:ke].repeat_interleave(g, dim=1)
        s = (torch.einsum("ihd,jhd->hij", q[qs:qe], kh)
             + torch.einsum("ihd,jhd->hij", qr[qs:qe], krh)) * scale
        s = s.masked_fill(~keep[None], -math.inf)
        row_any = keep.any(dim=1)
        s = torch.where(row_any[None, :, None], s, torch.zeros_like(s))
        p = torch.softmax(s, dim=-1) * row_any[None, :, None]
        outs.append(torch.einsum("hij,jhd->ihd", p, vh))
        qs, ks = qe, ke
    out = torch.cat(outs, dim=0)
    if out.shape[0] < q.shape[0]:
        out = torch.cat([out, q.new_zeros((q.shape[0] - out.shape[0], n1, v.shape[2]))])
    return out
