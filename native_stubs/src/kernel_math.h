/*
 * The math both stand-in kernels share (the backward in opapi_stub.c, the forward in
 * fwd_kernel.c), written once: bfloat16 rounding to nearest with ties away from zero (the
 * device's CAST_ROUND; NaN stays a quiet NaN) and the kept set of each sparse mode
 * (docs/sparse_modes.md). Header-only (static inline).
 */
#ifndef ACLNN_FAG_STUB_KERNEL_MATH_H
#define ACLNN_FAG_STUB_KERNEL_MATH_H

#include <stdint.h>
#include <string.h>

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

#endif
