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

static inline int64_t at3(const aclTensor *t, int64_t a, int64_t b, int64_t c)
{
    return t->offset + a * t->strides[0] + b * t->strides[1] + c * t->strides[2];
}

/* element index of the row-major logical position `flat` of a view of any rank */
static int64_t at_flat(const aclTensor *t, int64_t flat)
{
    int64_t idx = t->offset;
    for (int64_t d = t->ndim - 1; d >= 0; d--) {
        idx += (flat % t->dims[d]) * t->strides[d];
        flat /= t->dims[d];
    }
    return idx;
}

static inline float bf16_load(const aclTensor *t, int64_t idx)
{
    uint16_t h;
    memcpy(&h, (const char *)t->data + idx * 2, 2);
    return stub_bf16_value(h);
}

static inline void bf16_store(const aclTensor *t, int64_t idx, float f)
{
    uint16_t h = stub_bf16_bits(f);
    memcpy((char *)t->data + idx * 2, &h, 2);
}

static inline void f32_store(const aclTensor *t, int64_t idx, float f)
{
    memcpy((char *)t->data + idx * 4, &f, 4);
}

static void clear_view(const aclTensor *t)
{
    for (int64_t f = 0; f < t->numel; f++) {
        memset((char *)t->data + at_flat(t, f) * t->itemsize, 0, (size_t)t->itemsize);
    }
}

static int64_t len_of(const int64_t *cum, int64_t b)
{
    return b ? cum[b] - cum[b - 1] : cum[0];
}

/* is key j kept for row i of batch b, head h (docs/sparse_modes.md) */
static int kept(const FwdProblem *p, int64_t b, int64_t sq, int64_t skv, int64_t mask_base, int64_t h,
                int64_t i, int64_t j)
{
    const int band = stub_band_kept(p->sparse, b == p->band_idx, p->pre, p->next, skv - sq, i, j);
    if (band >= 0) {
        return band;
    }
    int64_t pos;
    if (p->mask_kind == FWD_MASK_B1SS) {
        pos = mask_base + i * skv + j;
    } else if (p->mask_kind == FWD_MASK_BNSS) {
        pos = p->N1 * mask_base + (h * sq + i) * skv + j;
    } else {
        pos = i * p->max_skv + j;
    }
    unsigned char m;
    memcpy(&m, (const char *)p->mask->data + at_flat(p->mask, pos), 1);
    return m == 0;
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
    clear_view(p->out);
    clear_view(p->smax);
    clear_view(p->ssum);
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
                    if (!kept(p, b, sq, skv, base, h, i, j)) {
                        row[j] = -FLT_MAX;
                        continue;
                    }
                    float dot = 0.0f, dot_r = 0.0f;
                    for (int64_t d = 0; d < p->D; d++) {
                        dot += bf16_load(p->q, at3(p->q, t, h, d)) * bf16_load(p->k, at3(p->k, k0 + j, kh, d));
                    }
                    for (int64_t d = 0; d < p->Dr; d++) {
                        dot_r += bf16_load(p->qr, at3(p->qr, t, h, d)) *
                                 bf16_load(p->kr, at3(p->kr, k0 + j, kh, d));
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
                            acc[d] += e16 * bf16_load(p->v, at3(p->v, k0 + j, kh, d));
                        }
                    }
                    for (int64_t d = 0; d < p->Dv; d++) {
                        bf16_store(p->out, at3(p->out, t, h, d), acc[d] / sum);
                    }
                }
                const int64_t flat = (q0 * p->N1 + h * sq + i) * 8;
                for (int c = 0; c < 8; c++) {
                    f32_store(p->smax, at_flat(p->smax, flat + c), mx);
                    f32_store(p->ssum, at_flat(p->ssum, flat + c), sum);
                }
            }
        }
    }
}
