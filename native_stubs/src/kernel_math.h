/*
 * What both stand-in kernels share (the backward in opapi_stub.c, the forward in
 * fwd_kernel.c), written once: element access through a tensor's view, bfloat16 rounding to
 * nearest with ties away from zero (the device's CAST_ROUND; NaN stays a quiet NaN) and the
 * kept set of each sparse mode with the mask's addressing (docs/sparse_modes.md).
 * Header-only (static inline).
 */
#ifndef ACLNN_FAG_STUB_KERNEL_MATH_H
#define ACLNN_FAG_STUB_KERNEL_MATH_H

#include <stdint.h>
#include <string.h>

#include "stub_internal.h"

/* the attention mask's layouts: [maxSq, maxSkv] (2-D or [1,1,..]), packed [B,1,..], [B,N1,..] */
enum { STUB_MASK_2D = 0, STUB_MASK_B1SS = 1, STUB_MASK_BNSS = 2 };

static inline int64_t stub_at3(const aclTensor *t, int64_t i0, int64_t i1, int64_t i2)
{
    return t->offset + i0 * t->strides[0] + i1 * t->strides[1] + i2 * t->strides[2];
}

/* element index of the flat (row-major logical) position of a view of any rank */
static inline int64_t stub_at_flat(const aclTensor *t, int64_t flat)
{
    int64_t idx = t->offset;
    for (int64_t d = t->ndim; d-- > 0;) {
        idx += (flat % t->dims[d]) * t->strides[d];
        flat /= t->dims[d];
    }
    return idx;
}

/* write zeros to every element of a view */
static inline void stub_clear_view(const aclTensor *t)
{
    for (int64_t f = 0; f < t->numel; f++) {
        memset((char *)t->data + stub_at_flat(t, f) * t->itemsize, 0, (size_t)t->itemsize);
    }
}

static inline float stub_ld_f32(const aclTensor *t, int64_t idx)
{
    float f;
    memcpy(&f, (const char *)t->data + idx * 4, sizeof f);
    return f;
}

static inline void stub_st_f32(const aclTensor *t, int64_t idx, float f)
{
    memcpy((char *)t->data + idx * 4, &f, sizeof f);
}

static inline float stub_bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float -> bf16 bits: add half an ulp to the magnitude and truncate (ties away from zero) */
static inline uint16_t stub_bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        return (uint16_t)((u >> 16) | 0x0040u);
    }
    uint32_t sign = u & 0x80000000u;
    uint32_t mag = (u & 0x7FFFFFFFu) + 0x8000u;
    return (uint16_t)((sign | mag) >> 16);
}

static inline float stub_bf16_round(float f)
{
    return stub_bf16_value(stub_bf16_bits(f));
}

static inline float stub_ld_bf16(const aclTensor *t, int64_t idx)
{
    uint16_t h;
    memcpy(&h, (const char *)t->data + idx * 2, sizeof h);
    return stub_bf16_value(h);
}

static inline void stub_st_bf16(const aclTensor *t, int64_t idx, float v)
{
    uint16_t h = stub_bf16_bits(v);
    memcpy((char *)t->data + idx * 2, &h, sizeof h);
}

/* Whether key j is kept for row i of a batch with lengths Sq, Skv (delta = Skv - Sq), tokens
 * already normalised, `band_batch` true for the band batch of modes 7/8: 1 kept, 0 not,
 * -1 when the explicit mask decides (modes 0/1/5, inside the token band). */
static inline int stub_band_kept(int64_t sparse, int band_batch, int64_t pre, int64_t next,
                                 int64_t delta, int64_t i, int64_t j)
{
    const int64_t rel = j - i;
    const int band = rel >= delta - pre && rel <= delta + next;
    switch (sparse) {
    case 0:
    case 5:
        return rel < -pre || rel > next ? 0 : -1;
    case 1:
        return -1;
    case 2:
        return j <= i;
    case 3:
        return rel <= delta;
    case 4:
        return band;
    case 7:
        return band_batch ? band : rel <= delta;
    case 8:
        return band_batch ? band : j <= i;
    default:
        return 0;
    }
}

/* Whether key j is kept for row i of head h in a batch (lengths Sq, Skv; its mask block at
 * mask_base, the sum of the earlier batches' Sq * Skv): the band, then the mask where it
 * decides (0 = kept), read with the kernel's addressing of the mask's layout `kind`. */
static inline int stub_kept(const aclTensor *mask, int kind, int64_t sparse, int band_batch, int64_t pre,
                            int64_t next, int64_t sq, int64_t skv, int64_t max_skv, int64_t n1,
                            int64_t mask_base, int64_t h, int64_t i, int64_t j)
{
    const int band = stub_band_kept(sparse, band_batch, pre, next, skv - sq, i, j);
    if (band >= 0) {
        return band;
    }
    int64_t pos = i * max_skv + j;
    if (kind == STUB_MASK_B1SS) {
        pos = mask_base + i * skv + j;
    } else if (kind == STUB_MASK_BNSS) {
        pos = n1 * mask_base + (h * sq + i) * skv + j;
    }
    unsigned char m;
    memcpy(&m, (const char *)mask->data + stub_at_flat(mask, pos), 1);
    return m == 0;
}

#endif
