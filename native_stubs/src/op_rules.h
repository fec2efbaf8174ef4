/*
 * Helpers the two stub ops (the backward in opapi_stub.c, the forward in
 * opapi_fwd_stub.c) share: shape strings, sequence-length arithmetic exact for any
 * int64 input, the canonical compressed mask, the tokens rule (docs/validation.md,
 * rule 28 for the backward, F14 for the forward; the two ops check it the same way), and
 * phase 2's checks before a launch.
 * Header-only (static inline); each op's file keeps its own validation messages.
 */
#ifndef ACLNN_FAG_STUB_OP_RULES_H
#define ACLNN_FAG_STUB_OP_RULES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

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

/* ---- phase 2, shared by both ops ------------------------------------------------- */

/* The checks phase 2 makes before launching, in the device's order: a current context,
 * a live executor made by this op's phase 1 (`payload_free` identifies it; running a
 * consumed one is counted as a bad release), the executor consumed (removed from the
 * live set) when it is not repeatable -- *consume says so, and stub_phase2_leave() then
 * frees it whatever the outcome --, injected failure, a live stream, the workspace.
 * Returns ACLNN_SUCCESS with the launch recorded on the stream, or the status. */
static inline aclnnStatus stub_phase2_enter(const StubApi *a, const char *fn1, const char *fn2,
                                            aclOpExecutor *executor, void (*payload_free)(void *),
                                            void *workspace, uint64_t workspaceSize, void *stream,
                                            int *consume)
{
    *consume = 0;
    if (a->current_device() < 0) {
        a->set_error("%s: no current context on this thread; call aclrtSetDevice first", fn2);
        return ACL_ERROR_RT_CONTEXT_NULL;
    }
    if (executor == NULL) {
        a->set_error("%s: executor is NULL", fn2);
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    if (!a->handle_live(STUB_H_EXECUTOR, executor) || executor->payload_free != payload_free) {
        a->note_bad_release(fn2, executor); /* running a consumed executor frees it twice */
        a->set_error("%s: executor %p is not live (already run, destroyed, or not made by %s)", fn2,
                     (void *)executor, fn1);
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    /* opbase: a workspace size > 0 with a NULL workspace deletes the executor, even a
     * repeatable one (DeleteExecutorForError), and fails */
    if (workspaceSize > 0 && workspace == NULL) {
        if (a->handle_remove(STUB_H_EXECUTOR, executor)) {
            *consume = 1;
        }
        a->set_error("%s: workspaceSize %llu with a NULL workspace (the executor is deleted)", fn2,
                     (unsigned long long)workspaceSize);
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    /* a non-repeatable executor is consumed by this call, whatever its outcome */
    if (!executor->repeatable) {
        if (!a->handle_remove(STUB_H_EXECUTOR, executor)) {
            a->note_bad_release(fn2, executor);
            a->set_error("%s: executor %p is not live", fn2, (void *)executor);
            return ACLNN_ERR_PARAM_NULLPTR;
        }
        *consume = 1;
    }
    aclnnStatus rc = a->inject_check(fn2);
    if (rc != 0) {
        return rc;
    }
    if (stream != NULL && !a->handle_live(STUB_H_STREAM, stream)) {
        a->set_error("%s: stream %p is not a live aclrtStream", fn2, stream);
        return ACLNN_ERR_PARAM_INVALID;
    }
    if (executor->workspace_size > 0) {
        if (workspaceSize < executor->workspace_size) {
            a->set_error("%s: workspaceSize %llu is smaller than the %llu bytes returned by phase 1", fn2,
                         (unsigned long long)workspaceSize, (unsigned long long)executor->workspace_size);
            return ACLNN_ERR_PARAM_INVALID;
        }
        if (workspace == NULL || ((uintptr_t)workspace % 32) != 0 ||
            !a->device_range(workspace, executor->workspace_size)) {
            a->set_error("%s: workspace %p must be 32-byte aligned device memory holding %llu bytes", fn2,
                         workspace, (unsigned long long)executor->workspace_size);
            return ACLNN_ERR_PARAM_INVALID;
        }
    }
    aclStubRecordLaunch(stream);
    return ACLNN_SUCCESS;
}

/* The end of phase 2: a consumed executor is freed, a success is recorded; returns rc. */
static inline aclnnStatus stub_phase2_leave(const StubApi *a, const char *fn2, aclOpExecutor *executor,
                                            int consume, aclnnStatus rc)
{
    if (consume) {
        stub_exec_free(executor);
    }
    if (rc == ACLNN_SUCCESS) {
        a->inject_success(fn2);
    }
    return rc;
}

/* One tensor phase 2 uses: its parameter name and its slot among the executor's inputs
 * (out == 0) or outputs (out == 1); slot -1: not used this time. */
typedef struct StubUsed {
    const char *name;
    int slot;
    int out;
} StubUsed;

/* Every tensor phase 2 uses must still be live (161001) and lie in live device memory
 * (361001). */
static inline aclnnStatus stub_check_used(const StubApi *a, const char *fn2, const aclOpExecutor *e,
                                          const StubUsed *used, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (used[i].slot < 0) {
            continue;
        }
        const aclTensor *h = used[i].out ? e->out_handle[used[i].slot] : e->in_handle[used[i].slot];
        if (!a->handle_live(STUB_H_TENSOR, h)) {
            a->set_error("%s: %s (aclTensor %p) was destroyed before phase 2; the executor still uses it "
                         "(destroy tensors only after phase 2 returns, or after aclDestroyAclOpExecutor "
                         "for a repeatable executor)",
                         fn2, used[i].name, (const void *)h);
            return ACLNN_ERR_PARAM_NULLPTR;
        }
        const aclTensor *t = used[i].out ? &e->out[used[i].slot] : &e->in[used[i].slot];
        if (t->numel == 0) {
            continue;
        }
        uint64_t bytes = (uint64_t)(t->max_index + 1) * (uint64_t)t->itemsize;
        if (!a->device_range(t->data, bytes)) {
            a->set_error("%s: %s memory %p (+%llu bytes) is no longer inside a live device allocation "
                         "(freed before phase 2?)",
                         fn2, used[i].name, t->data, (unsigned long long)bytes);
            return ACLNN_ERR_RUNTIME_ERROR;
        }
    }
    return ACLNN_SUCCESS;
}

#endif
