/*
 * The stand-in forward's math: aclnnFlashAttentionVarLenScoreV3 with rope inputs, TND.
 *
 * Written from the op's description (docs/semantics.md, docs/forward.md), not from the NumPy
 * reference: a plain two-pass softmax per (row, head) instead of the reference's tiled online
 * softmax.  The rounding points are the device's:
 *   S   = (fp32(q . k) + fp32(qRope . kRope)) * float32(scale), masked keys -FLT_MAX;
 *   max = max_j S;  sum = sum_j exp(S - max) in fp32 (P not rounded);
 *   out = bf16( sum_j bf16(exp(S - max)) * v_j / sum ), fp32 accumulation, bf16 rounding to
 *         nearest with ties away from zero;
 *   statistics: float32 [T1, N1, 8], memory per batch b a [N1, Sq_b, 8] block starting at
 *   qStart_b * N1 * 8, eight equal copies.
 * Special rows: no kept key -> max -FLT_MAX, sum FLT_MAX, out 0 (the device's invalid line);
 * a batch with Skv_b = 0 -> max = sum = 0, out 0; rows after the last end stay 0.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "fwd_kernel.h"
#include "kernel_math.h"

static int64_t len_of(const int64_t *cum, int64_t b)
{
    return b ? cum[b] - cum[b - 1] : cum[0];
}

uint64_t fwd_kernel_workspace_bytes(const FwdProblem *p)
{
    /* one row of scores and one output accumulator */
    return (uint64_t)(p->max_skv + p->Dv + 1) * sizeof(float);
}

void fwd_kernel_run(const FwdProblem *p, void *scratch)
{
    float *row = scratch;
    float *acc = row + p->max_skv;
    const int64_t G = p->N1 / p->N2;
    stub_clear_view(p->out);
    stub_clear_view(p->smax);
    stub_clear_view(p->ssum);
    int64_t mask_base = 0;
    for (int64_t b = 0; b < p->nb; b++) {
        const int64_t sq = len_of(p->cum_q, b), skv = len_of(p->cum_kv, b);
        const int64_t q0 = b ? p->cum_q[b - 1] : 0, k0 = b ? p->cum_kv[b - 1] : 0;
        const int64_t base = mask_base;
        mask_base += sq * skv;
        if (sq <= 0 || skv <= 0) {
            continue; /* nothing kept: zeros everywhere (already written) */
        }
        for (int64_t h = 0; h < p->N1; h++) {
            const int64_t kh = h / G;
            for (int64_t i = 0; i < sq; i++) {
                const int64_t t = q0 + i;
                float mx = -FLT_MAX;
                int any = 0;
                for (int64_t j = 0; j < skv; j++) {
                    if (!stub_kept(p->mask, p->mask_kind, p->sparse, b == p->band_idx, p->pre, p->next, sq, skv,
                                   p->max_skv, p->N1, base, h, i, j)) {
                        row[j] = -FLT_MAX;
                        continue;
                    }
                    float dot = 0.0f, dot_r = 0.0f;
                    for (int64_t d = 0; d < p->D; d++) {
                        dot += stub_ld_bf16(p->q, stub_at3(p->q, t, h, d)) *
                               stub_ld_bf16(p->k, stub_at3(p->k, k0 + j, kh, d));
                    }
                    for (int64_t d = 0; d < p->Dr; d++) {
                        dot_r += stub_ld_bf16(p->qr, stub_at3(p->qr, t, h, d)) *
                                 stub_ld_bf16(p->kr, stub_at3(p->kr, k0 + j, kh, d));
                    }
                    row[j] = (dot + dot_r) * p->scale;
                    any = 1;
                    if (row[j] > mx) {
                        mx = row[j];
                    }
                }
                float sum;
                if (!any) {
                    mx = -FLT_MAX;
                    sum = FLT_MAX; /* invalid line; the output row stays 0 */
                } else {
                    sum = 0.0f;
                    for (int64_t d = 0; d < p->Dv; d++) {
                        acc[d] = 0.0f;
                    }
                    for (int64_t j = 0; j < skv; j++) {
                        if (row[j] == -FLT_MAX) {
                            continue;
                        }
                        const float e = expf(row[j] - mx);
                        sum += e;
                        const float e16 = stub_bf16_round(e);
                        for (int64_t d = 0; d < p->Dv; d++) {
                            acc[d] += e16 * stub_ld_bf16(p->v, stub_at3(p->v, k0 + j, kh, d));
                        }
                    }
                    for (int64_t d = 0; d < p->Dv; d++) {
                        stub_st_bf16(p->out, stub_at3(p->out, t, h, d), acc[d] / sum);
                    }
                }
                const int64_t flat = (q0 * p->N1 + h * sq + i) * 8;
                for (int c = 0; c < 8; c++) {
                    stub_st_f32(p->smax, stub_at_flat(p->smax, flat + c), mx);
                    stub_st_f32(p->ssum, stub_at_flat(p->ssum, flat + c), sum);
                }
            }
        }
    }
}
