/*
 * Helpers the two stub ops (the backward in opapi_stub.c, the forward in
 * opapi_fwd_stub.c) share: shape strings, sequence-length arithmetic exact for any
 * int64 input, the canonical compressed mask, and the tokens rule (docs/validation.md,
 * rule 28 for the backward, F14 for the forward; the two ops check it the same way).
 * Header-only (static inline): each op's file keeps its own messages and status codes.
 */
#ifndef ACLNN_FAG_STUB_OP_RULES_H
#define ACLNN_FAG_STUB_OP_RULES_H

#include <stdint.h>
#include <stdio.h>

#include "stub_abi.h"

__extension__ typedef __int128 stub_i128;

#define STUB_I32MAX ((int64_t)2147483647)

/* "[d0,d1,...]" into buf (truncated to n bytes) */
static inline const char *stub_shape_str(const aclTensor *t, char *buf, size_t n)
{
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int64_t i = 0; i < t->ndim && used < n; i++) {
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? "," : "", (long long)t->dims[i]);
    }
    if (used < n) {
        snprintf(buf + used, n - used, "]");
    }
    return buf;
}

static inline int stub_is_shape3(const aclTensor *t, int64_t d0, int64_t d1, int64_t d2)
{
    return t->ndim == 3 && t->dims[0] == d0 && t->dims[1] == d1 && t->dims[2] == d2;
}

/* batch b's length from cumulative ends (the first entry is the first length), exact for
 * any int64 values (used before the ends are known to be non-decreasing) */
static inline stub_i128 stub_seg_len_x(const int64_t *cum, int64_t b)
{
    return b == 0 ? (stub_i128)cum[0] : (stub_i128)cum[b] - (stub_i128)cum[b - 1];
}

/* GetSumIntArrayMaxValue of the op API: kv[0], or the largest consecutive difference if
 * larger -- exact */
static inline stub_i128 stub_kv_max_segment(const aclIntArray *kv)
{
    stub_i128 best = kv->values[0];
    for (uint64_t i = 1; i < kv->size; i++) {
        stub_i128 d = (stub_i128)kv->values[i] - (stub_i128)kv->values[i - 1];
        if (d > best) {
            best = d;
        }
    }
    return best;
}

/* getSeqLenQSum of the op API: the last positive cumulative query end (values[0] if none) */
static inline int64_t stub_last_positive_end(const aclIntArray *q)
{
    int64_t v = 0;
    for (uint64_t i = q->size; i-- > 0;) {
        v = q->values[i];
        if (v > 0) {
            break;
        }
    }
    return v;
}

/* S6: the first 2048x2048 slice of a 1-byte mask holds 1 strictly above the diagonal and
 * 0 elsewhere */
static inline int stub_mask_is_canonical(const aclTensor *m)
{
    const int64_t sr = m->strides[m->ndim - 2], sc = m->strides[m->ndim - 1];
    const unsigned char *base = (const unsigned char *)m->data + m->offset * m->itemsize;
    for (int64_t r = 0; r < 2048; r++) {
        for (int64_t c = 0; c < 2048; c++) {
            int masked = base[(r * sr + c * sc) * m->itemsize] != 0;
            if (masked != (c > r)) {
                return 0;
            }
        }
    }
    return 1;
}

/* The tokens rule: preTokens/nextTokens normalised for the sparse mode (clamped to
 * INT32_MAX; modes 2/3: (INT32_MAX, 0); mode 1: both INT32_MAX), the band batch of modes
 * 7 (last non-empty query batch) and 8 (first non-empty), and the first batch whose band
 * is empty (-1 when none; checked for modes 0, 4, and 7/8 at their band batch only).
 * Comparisons are exact. */
typedef struct StubTokens {
    int64_t pre, next, band_idx, bad_batch;
} StubTokens;

static inline StubTokens stub_tokens_rule(int64_t sparse, int64_t pre_tokens, int64_t next_tokens,
                                          const int64_t *cq, const int64_t *ckv, int64_t nb)
{
    StubTokens t;
    t.pre = pre_tokens > STUB_I32MAX ? STUB_I32MAX : pre_tokens;
    t.next = next_tokens > STUB_I32MAX ? STUB_I32MAX : next_tokens;
    if (sparse == 2 || sparse == 3) {
        t.pre = STUB_I32MAX;
        t.next = 0;
    } else if (sparse == 1) {
        t.pre = STUB_I32MAX;
        t.next = STUB_I32MAX;
    }
    t.band_idx = 0;
    t.bad_batch = -1;
    if (sparse == 7) {
        for (int64_t b = nb - 1; b >= 0; b--) {
            if (stub_seg_len_x(cq, b) != 0) {
                t.band_idx = b;
                break;
            }
        }
    } else if (sparse == 8) {
        for (int64_t b = 0; b < nb; b++) {
            if (stub_seg_len_x(cq, b) != 0) {
                t.band_idx = b;
                break;
            }
        }
    }
    if (sparse == 0 || sparse == 4 || sparse == 7 || sparse == 8) {
        int64_t b0 = 0, b1 = nb;
        if (sparse == 7 || sparse == 8) {
            b0 = t.band_idx;
            b1 = t.band_idx + 1;
        }
        const stub_i128 pre = t.pre, next = t.next;
        for (int64_t b = b0; b < b1; b++) {
            stub_i128 sq = stub_seg_len_x(cq, b), skv = stub_seg_len_x(ckv, b);
            int bad;
            if (sparse == 0) {
                bad = -pre > skv || -next > sq || pre + next <= 0;
            } else {
                bad = -pre > sq || -next > skv || pre + next <= 0;
            }
            if (bad) {
                t.bad_batch = b;
                break;
            }
        }
    }
    return t;
}

#endif
