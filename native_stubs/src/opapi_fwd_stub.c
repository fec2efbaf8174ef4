/*
 * libopapi.so stand-in, the forward: aclnnFlashAttentionVarLenScoreV3 (two-phase, 29
 * parameters of phase 1).
 *
 * Phase 1 checks the arguments in the order of the real op (its op API
 * aclnn_flash_attention_score.cpp, then its TND tiling) with the same status codes, then the
 * package's own stricter checks, exactly as aclnn_fag/rules (the forward's rows of its table) does
 * (rules F1-F14, SF1, S3-S7; docs/forward.md, "Validation"), and records the call in an
 * executor.  Phase 2 computes the forward with the C kernel of fwd_kernel.c.  Like the
 * backward (opapi_stub.c): failure injection on both phases, executors counted in the
 * live-handle registry, repeatable executors and the address setters work the same way.
 *
 * Checks marked "[stub addition]" are not made by the real op (which would crash or read
 * out of bounds instead).
 */
#define _POSIX_C_SOURCE 200809L

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fwd_kernel.h"
#include "op_rules.h"
#include "rule_table.h"
#include "stub_abi.h"

#define FWD1 "aclnnFlashAttentionVarLenScoreV3GetWorkspaceSize"
#define FWD2 "aclnnFlashAttentionVarLenScoreV3"
#define I32MAX STUB_I32MAX

typedef stub_i128 w128;


STUB_API aclnnStatus aclnnFlashAttentionVarLenScoreV3GetWorkspaceSize(
    const aclTensor *query, const aclTensor *queryRope, const aclTensor *key, const aclTensor *keyRope,
    const aclTensor *value, const aclTensor *realShiftOptional, const aclTensor *dropMaskOptional,
    const aclTensor *paddingMaskOptional, const aclTensor *attenMaskOptional, const aclIntArray *prefixOptional,
    const aclIntArray *actualSeqQLenOptional, const aclIntArray *actualSeqKvLenOptional,
    const aclIntArray *qStartIdxOptional, const aclIntArray *kvStartIdxOptional, double scaleValue,
    double keepProb, int64_t preTokens, int64_t nextTokens, int64_t headNum, char *inputLayout,
    int64_t innerPrecise, int64_t sparseMode, int64_t pseType, const aclTensor *softmaxMaxOut,
    const aclTensor *softmaxSumOut, const aclTensor *softmaxOutOut, const aclTensor *attentionOutOut,
    uint64_t *workspaceSize, aclOpExecutor **executor);
STUB_API aclnnStatus aclnnFlashAttentionVarLenScoreV3(void *workspace, uint64_t workspaceSize,
                                                      aclOpExecutor *executor, const aclrtStream stream);

static const StubApi *sapi(void)
{
    return aclStubInternalApi();
}

#define REJECT(code, ...)                 \
    do {                                  \
        sapi()->set_error(__VA_ARGS__);   \
        return (code);                    \
    } while (0)
/* REJECT_RULE(FWD_<id>, args...): reject with the rule's status code and message
 * (rule_table.h, generated from aclnn_fag/rules/table.py) */
#define REJECT_RULE(...) REJECT(__VA_ARGS__)

/* the recorded call */
typedef struct FwdPlan {
    int compute;                 /* 0: every output empty, nothing to do */
    /* slots in executor->in[] / out[] */
    int s_q, s_qr, s_k, s_kr, s_v, s_mask, o_smax, o_ssum, o_out;
    FwdProblem prob;             /* tensor pointers are filled at phase 2 from the snapshots */
    int64_t *cum_q, *cum_kv;
} FwdPlan;

static void fwd_plan_free(void *p)
{
    FwdPlan *plan = p;
    if (plan != NULL) {
        free(plan->cum_q);
        free(plan->cum_kv);
        free(plan);
    }
}

typedef struct FwdArgs {
    const aclTensor *q, *qr, *k, *kr, *v, *pse, *drop, *pad, *mask;
    const aclIntArray *prefix, *seqq, *seqkv, *qstart, *kvstart;
    double scale, keep;
    int64_t pre, next, head_num;
    const char *layout;
    int64_t inner, sparse, pse_type;
    const aclTensor *smax, *ssum, *sout, *out;
    uint64_t *ws;
    aclOpExecutor **exec;
} FwdArgs;

/* F5's pad decision for TND (AnalysisInput + IsNeedPad) */
static int forward_needs_pad(const FwdArgs *x, int64_t D, int64_t Dv)
{
    int64_t align = (D < 196 || D == 448) ? 16 : 128;
    int need = D % align != 0 || Dv % align != 0;
    if (D != Dv && (D == 88 || D == 64 || D == 80)) { /* the source's HEAD_DIM_128 is 88 */
        need = 1;
    }
    if (D < 96 && x->seqq != NULL && x->seqkv != NULL && x->seqq->size == x->seqkv->size && x->seqq->size > 0) {
        w128 kv_max = stub_kv_max_segment(x->seqkv);
        int64_t q_sum = stub_last_positive_end(x->seqq);
        if (kv_max != 0 && q_sum != 0 && kv_max <= 1024 && q_sum < 160 * 1024) {
            need = 0;
        }
    }
    return need;
}

static aclnnStatus check_forward(const FwdArgs *x, FwdPlan *plan)
{
    const StubApi *a = sapi();
    char b1[128], b2[128];

    /* F1: required pointers (CheckFaParam order) */
    {
        const struct {
            const char *name;
            const void *p;
        } req[] = {{"query", x->q},         {"key", x->k},         {"value", x->v},
                   {"inputLayout", x->layout}, {"executor", x->exec}, {"workspaceSize", x->ws},
                   {"softmaxMaxOut", x->smax}, {"softmaxSumOut", x->ssum}, {"attentionOutOut", x->out}};
        for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
            if (req[i].p == NULL) {
                REJECT_RULE(FWD_F1, req[i].name);
            }
        }
    }
    /* [stub addition] every non-NULL handle must be live */
    {
        const struct {
            const char *name;
            const aclTensor *t;
        } ts[] = {{"query", x->q},          {"queryRope", x->qr},        {"key", x->k},
                  {"keyRope", x->kr},        {"value", x->v},             {"realShiftOptional", x->pse},
                  {"dropMaskOptional", x->drop}, {"paddingMaskOptional", x->pad}, {"attenMaskOptional", x->mask},
                  {"softmaxMaxOut", x->smax}, {"softmaxSumOut", x->ssum}, {"softmaxOutOut", x->sout},
                  {"attentionOutOut", x->out}};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
            if (ts[i].t != NULL && !a->handle_live(STUB_H_TENSOR, ts[i].t)) {
                REJECT(ACLNN_ERR_PARAM_NULLPTR, FWD1 ": %s (%p) is not a live aclTensor [stub addition]", ts[i].name,
                       (const void *)ts[i].t);
            }
        }
        const struct {
            const char *name;
            const aclIntArray *p;
        } arrs[] = {{"prefixOptional", x->prefix}, {"actualSeqQLenOptional", x->seqq},
                    {"actualSeqKvLenOptional", x->seqkv}, {"qStartIdxOptional", x->qstart},
                    {"kvStartIdxOptional", x->kvstart}};
        for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
            if (arrs[i].p != NULL && !a->handle_live(STUB_H_INT_ARRAY, arrs[i].p)) {
                REJECT(ACLNN_ERR_PARAM_NULLPTR, FWD1 ": %s (%p) is not a live aclIntArray [stub addition]",
                       arrs[i].name, (const void *)arrs[i].p);
            }
        }
    }
    /* F2: every output empty -> success, nothing computed */
    if (x->smax->numel == 0 && x->ssum->numel == 0 && x->out->numel == 0) {
        plan->compute = 0;
        return ACLNN_SUCCESS;
    }
    /* F3 */
    if (strcmp(x->layout, "TND") != 0) {
        REJECT_RULE(FWD_F3, x->layout);
    }
    /* F4: InputDtypeCheck */
    if (x->q->dtype != x->k->dtype || x->k->dtype != x->v->dtype) {
        REJECT_RULE(FWD_F4);
    }
    if ((x->pse_type == 2 || x->pse_type == 3) && x->pse == NULL) {
        REJECT_RULE(FWD_F4_pse, (long long)x->pse_type);
    }
    if (x->pse != NULL && x->pse_type != 2 && x->pse_type != 3 && x->pse->dtype != x->q->dtype) {
        REJECT_RULE(FWD_F4_pse_dtype);
    }
    /* F5: AnalysisInput */
    if (x->head_num <= 0) {
        REJECT_RULE(FWD_F5_heads, (long long)x->head_num);
    }
    if (x->q->ndim != 3) {
        REJECT_RULE(FWD_F5_rank, stub_shape_str(x->q, b1, sizeof b1));
    }
    if (x->k->ndim < 3 || x->v->ndim < 3) {
        REJECT_RULE(FWD_F5_kv_rank, x->k->ndim < 3 ? "key" : "value");
    }
    const int64_t D = x->q->dims[2], Dk = x->k->dims[2], Dv = x->v->dims[2];
    if (D != Dk) {
        REJECT_RULE(FWD_F5_d, (long long)D, (long long)Dk);
    }
    if (D < Dv) {
        REJECT_RULE(FWD_F5_dv, (long long)Dv, (long long)D);
    }
    if (D > STUB_LIMIT_HEAD_DIM) {
        REJECT_RULE(FWD_F5_max_d, (long long)D);
    }
    const int need_pad = x->k->dims[1] != 0 && D != 0 && forward_needs_pad(x, D, Dv);
    /* F6: isSupportMultiInput, every failure returned as 161001 */
    if ((x->qr == NULL) != (x->kr == NULL)) {
        REJECT_RULE(FWD_F6_rope);
    }
    if (x->qr == NULL) {
        REJECT_RULE(FWD_F6_rope_both);
    }
    if (x->qr->ndim < 3 || x->kr->ndim < 3) {
        REJECT_RULE(FWD_F6_rope_rank, x->qr->ndim < 3 ? "queryRope" : "keyRope");
    }
    if (x->qr->dims[2] > D || x->kr->dims[2] > D) {
        REJECT_RULE(FWD_F6_dr, (long long)D);
    }
    if (x->q->dtype != STUB_DT_BF16 || x->k->dtype != STUB_DT_BF16 || x->v->dtype != STUB_DT_BF16 ||
        x->qr->dtype != STUB_DT_BF16 || x->kr->dtype != STUB_DT_BF16) {
        REJECT_RULE(FWD_F6_bf16);
    }
    if (x->sparse == 6) {
        REJECT_RULE(FWD_F6_sparse6);
    }
    if (x->mask == NULL || x->mask->ndim == 0) {
        REJECT_RULE(FWD_F6_mask, x->mask == NULL ? "NULL" : "0-dim");
    }
    if (x->pse != NULL) {
        REJECT_RULE(FWD_F6_pse);
    }
    if (x->drop != NULL) {
        REJECT_RULE(FWD_F6_drop);
    }
    if (x->keep < 1) {
        REJECT_RULE(FWD_F6_keep, x->keep);
    }
    if (need_pad) {
        REJECT_RULE(FWD_F6_pad, (long long)D, (long long)Dv);
    }
    /* F7: tiling attributes */
    if ((float)x->keep <= 0.0f || (float)x->keep > 1.0f) {
        REJECT_RULE(FWD_F7_keep, x->keep);
    }
    if (x->pse_type < 0 || x->pse_type >= 4) {
        REJECT_RULE(FWD_F7_pse, (long long)x->pse_type);
    }
    /* F8 */
    if (x->k->ndim != 3) {
        REJECT_RULE(FWD_F8, stub_shape_str(x->k, b1, sizeof b1));
    }
    /* F9 */
    if (x->seqq == NULL || x->seqkv == NULL) {
        REJECT_RULE(FWD_R23_q, x->seqq == NULL ? "actualSeqQLenOptional" : "actualSeqKvLenOptional");
    }
    if (x->seqq->size == 0 || x->seqq->size != x->seqkv->size) {
        REJECT_RULE(FWD_R23_empty, (unsigned long long)x->seqq->size, (unsigned long long)x->seqkv->size);
    }
    const int64_t T1 = x->q->dims[0], N1 = x->q->dims[1], T2 = x->k->dims[0], N2 = x->k->dims[1];
    /* F10: T below the sum of the (negative-clamped) lengths */
    {
        const aclIntArray *arr[2] = {x->seqq, x->seqkv};
        const int64_t tot[2] = {T1, T2};
        for (int s = 0; s < 2; s++) {
            w128 sum = arr[s]->values[0];
            for (uint64_t i = 1; i < arr[s]->size; i++) {
                w128 d = (w128)arr[s]->values[i] - (w128)arr[s]->values[i - 1];
                sum += d > 0 ? d : 0;
            }
            if ((w128)tot[s] < sum) {
                REJECT_RULE(FWD_F10, s ? "T2" : "T1", (long long)tot[s]);
            }
        }
    }
    /* F11 */
    if (x->head_num != N1) {
        REJECT_RULE(FWD_F11_heads, (long long)x->head_num, (long long)N1);
    }
    if (N2 == 0 || N1 / N2 == 0) {
        REJECT_RULE(FWD_F11_n2, (long long)N2, (long long)N1);
    }
    if (D == 0) {
        REJECT_RULE(FWD_F11_d);
    }
    if (N1 % N2 != 0) {
        REJECT_RULE(FWD_F11_mod, (long long)N1, (long long)N2);
    }
    /* [stub addition] outputs: FLOAT [T1,N1,8] statistics, BF16 [T1,N1,Dv] attentionOut (ViewCopy) */
    if (x->smax->dtype != STUB_DT_FLOAT || x->ssum->dtype != STUB_DT_FLOAT || !stub_is_shape3(x->smax, T1, N1, 8) ||
        !stub_is_shape3(x->ssum, T1, N1, 8)) {
        REJECT(ACLNN_ERR_PARAM_NULLPTR, FWD1 ": softmaxMaxOut/softmaxSumOut must be FLOAT [T1,N1,8] = [%lld,%lld,8], "
                                        "got %s / %s [stub addition: output check]",
               (long long)T1, (long long)N1, stub_shape_str(x->smax, b1, sizeof b1), stub_shape_str(x->ssum, b2, sizeof b2));
    }
    if (x->out->dtype != STUB_DT_BF16 || !stub_is_shape3(x->out, T1, N1, Dv)) {
        REJECT(ACLNN_ERR_PARAM_NULLPTR, FWD1 ": attentionOutOut must be BF16 [T1,N1,Dv] = [%lld,%lld,%lld], got %s "
                                        "[stub addition: output check]",
               (long long)T1, (long long)N1, (long long)Dv, stub_shape_str(x->out, b1, sizeof b1));
    }
    /* F12: pse type, then the mask */
    if (x->pse_type != 1) {
        REJECT_RULE(FWD_F12, (long long)x->pse_type);
    }
    const int64_t nb_raw = (int64_t)x->seqq->size;
    const int64_t *cq = x->seqq->values, *ckv = x->seqkv->values;
    int64_t nb = nb_raw;
    while (nb > 1 && stub_seg_len_x(cq, nb - 1) == 0 && stub_seg_len_x(ckv, nb - 1) == 0) {
        nb--;
    }
    w128 max_sq = stub_seg_len_x(cq, 0), max_skv = stub_seg_len_x(ckv, 0);
    for (int64_t b = 1; b < nb_raw; b++) {
        max_sq = stub_seg_len_x(cq, b) > max_sq ? stub_seg_len_x(cq, b) : max_sq;
        max_skv = stub_seg_len_x(ckv, b) > max_skv ? stub_seg_len_x(ckv, b) : max_skv;
    }
    const aclTensor *m = x->mask;
    if (m->dtype != STUB_DT_BOOL && m->dtype != STUB_DT_UINT8) {
        REJECT_RULE(FWD_R27_dtype);
    }
    if (m->ndim != 2 && m->ndim != 4) {
        REJECT_RULE(FWD_R27_rank, stub_shape_str(m, b1, sizeof b1));
    }
    int mask_kind = STUB_MASK_2D;
    if (m->ndim == 4) {
        if (m->dims[0] == 1 && m->dims[1] == 1) {
            mask_kind = STUB_MASK_2D;
        } else if (m->dims[0] == nb && m->dims[1] == 1) {
            mask_kind = STUB_MASK_B1SS;
        } else if (m->dims[0] == nb && m->dims[1] == N1) {
            mask_kind = STUB_MASK_BNSS;
        } else {
            REJECT_RULE(FWD_R27_lead, stub_shape_str(m, b1, sizeof b1), (long long)nb);
        }
    }
    const int compressed = x->sparse == 2 || x->sparse == 3 || x->sparse == 4 || x->sparse == 7 || x->sparse == 8;
    {
        w128 want_r = compressed ? 2048 : max_sq, want_c = compressed ? 2048 : max_skv;
        if ((w128)m->dims[m->ndim - 2] != want_r || (w128)m->dims[m->ndim - 1] != want_c) {
            REJECT_RULE(FWD_R27_compressed, stub_shape_str(m, b1, sizeof b1), (long long)x->sparse,
                        compressed ? "[2048,2048]" : "[maxSq,maxSkv]");
        }
    }
    /* F13 */
    if (x->sparse < 0 || x->sparse > 8) {
        REJECT_RULE(FWD_F13, (long long)x->sparse);
    }
    /* F14: tokens, normalised first */
    const StubTokens tokens = stub_tokens_rule(x->sparse, x->pre, x->next, cq, ckv, nb);
    const int64_t pre = tokens.pre, next = tokens.next, band_idx = tokens.band_idx;
    if (tokens.bad_batch >= 0) {
        REJECT_RULE(FWD_R28_mode0, (long long)x->pre, (long long)x->next, (long long)x->sparse,
                    (long long)tokens.bad_batch);
    }
    /* ---- [stub additions] SF1, S3-S7: the Python validator's own checks, same order ---- */
    if (x->v->ndim != 3 || x->v->dims[0] != T2 || x->v->dims[1] != N2) {
        REJECT_RULE(FWD_SF1, stub_shape_str(x->v, b1, sizeof b1));
    }
    if (N1 > STUB_LIMIT_HEADS || D > STUB_LIMIT_HEAD_DIM || T1 > STUB_LIMIT_TOKENS || T2 > STUB_LIMIT_TOKENS ||
        nb_raw > STUB_LIMIT_BATCH) {
        REJECT_RULE(FWD_S3_heads);
    }
    {
        const aclIntArray *arr[2] = {x->seqq, x->seqkv};
        const int64_t tot[2] = {T1, T2};
        for (int s = 0; s < 2; s++) {
            const int64_t *v = arr[s]->values;
            for (uint64_t i = 0; i < arr[s]->size; i++) {
                if (v[i] < 0 || (i > 0 && v[i] < v[i - 1])) {
                    REJECT_RULE(FWD_S4, s ? "actualSeqKvLenOptional" : "actualSeqQLenOptional");
                }
            }
            if (v[arr[s]->size - 1] > tot[s]) {
                REJECT_RULE(FWD_S4_2);
            }
        }
    }
    const int64_t Dr = x->qr->dims[2];
    if (!stub_is_shape3(x->qr, T1, N1, Dr)) {
        REJECT_RULE(FWD_S5_q, stub_shape_str(x->qr, b1, sizeof b1));
    }
    if (!stub_is_shape3(x->kr, T2, N2, Dr)) {
        REJECT_RULE(FWD_S5_k, stub_shape_str(x->kr, b1, sizeof b1));
    }
    if (Dr % 8 != 0) {
        REJECT_RULE(FWD_S5_dr, (long long)Dr);
    }
    if (compressed && !stub_mask_is_canonical(m)) {
        REJECT_RULE(FWD_S6, (long long)x->sparse);
    }
    if (x->sparse == 4 || x->sparse == 7 || x->sparse == 8) {
        for (int64_t b = 0; b < nb; b++) {
            if ((w128)pre + stub_seg_len_x(cq, b) - stub_seg_len_x(ckv, b) >= I32MAX) {
                REJECT_RULE(FWD_S7, (long long)b);
            }
        }
    }

    /* ---- record ---- */
    plan->compute = 1;
    FwdProblem *p = &plan->prob;
    p->T1 = T1;
    p->N1 = N1;
    p->D = D;
    p->Dr = Dr;
    p->T2 = T2;
    p->N2 = N2;
    p->Dv = Dv;
    p->nb = nb;
    p->max_sq = (int64_t)max_sq;
    p->max_skv = (int64_t)max_skv;
    p->sparse = x->sparse;
    p->pre = pre;
    p->next = next;
    p->band_idx = band_idx;
    p->mask_kind = mask_kind;
    p->scale = (float)x->scale;
    plan->cum_q = malloc((size_t)nb_raw * sizeof(int64_t));
    plan->cum_kv = malloc((size_t)nb_raw * sizeof(int64_t));
    if (plan->cum_q == NULL || plan->cum_kv == NULL) {
        REJECT(ACLNN_ERR_INNER_NULLPTR, FWD1 ": out of host memory");
    }
    memcpy(plan->cum_q, cq, (size_t)nb_raw * sizeof(int64_t));
    memcpy(plan->cum_kv, ckv, (size_t)nb_raw * sizeof(int64_t));
    p->cum_q = plan->cum_q;
    p->cum_kv = plan->cum_kv;
    return ACLNN_SUCCESS;
}

/* a failed phase 1's executor handed out anyway: registered (so a leak shows in the
 * counters), nothing to compute; on host-memory failure nothing is handed out */
static void hand_out_failed(FwdPlan *plan, aclOpExecutor **executor)
{
    aclOpExecutor *e = calloc(1, sizeof *e);
    if (e == NULL) {
        fwd_plan_free(plan);
        return;
    }
    plan->compute = 0;
    e->magic = STUB_MAGIC_EXEC;
    e->payload = plan;
    e->payload_free = fwd_plan_free;
    if (sapi()->handle_add(STUB_H_EXECUTOR, e) != 0) {
        stub_exec_free(e);
        return;
    }
    *executor = e;
}

STUB_API aclnnStatus aclnnFlashAttentionVarLenScoreV3GetWorkspaceSize(
    const aclTensor *query, const aclTensor *queryRope, const aclTensor *key, const aclTensor *keyRope,
    const aclTensor *value, const aclTensor *realShiftOptional, const aclTensor *dropMaskOptional,
    const aclTensor *paddingMaskOptional, const aclTensor *attenMaskOptional, const aclIntArray *prefixOptional,
    const aclIntArray *actualSeqQLenOptional, const aclIntArray *actualSeqKvLenOptional,
    const aclIntArray *qStartIdxOptional, const aclIntArray *kvStartIdxOptional, double scaleValue,
    double keepProb, int64_t preTokens, int64_t nextTokens, int64_t headNum, char *inputLayout,
    int64_t innerPrecise, int64_t sparseMode, int64_t pseType, const aclTensor *softmaxMaxOut,
    const aclTensor *softmaxSumOut, const aclTensor *softmaxOutOut, const aclTensor *attentionOutOut,
    uint64_t *workspaceSize, aclOpExecutor **executor)
{
    const StubApi *a = sapi();
    int32_t inj = a->inject_check(FWD1);
    if (inj != 0) {
        return inj;
    }
    if (a->current_device() < 0) {
        a->set_error(FWD1 ": no current context on this thread; call aclrtSetDevice first");
        return ACL_ERROR_RT_CONTEXT_NULL;
    }
    const FwdArgs x = {query, queryRope, key, keyRope, value, realShiftOptional, dropMaskOptional,
                       paddingMaskOptional, attenMaskOptional, prefixOptional, actualSeqQLenOptional,
                       actualSeqKvLenOptional, qStartIdxOptional, kvStartIdxOptional, scaleValue, keepProb,
                       preTokens, nextTokens, headNum, inputLayout, innerPrecise, sparseMode, pseType,
                       softmaxMaxOut, softmaxSumOut, softmaxOutOut, attentionOutOut, workspaceSize, executor};
    FwdPlan *plan = calloc(1, sizeof *plan);
    if (plan == NULL) {
        a->set_error(FWD1 ": out of host memory");
        return ACLNN_ERR_INNER_NULLPTR;
    }
    aclnnStatus rc = check_forward(&x, plan);
    if (rc != ACLNN_SUCCESS) {
        /* CANN's forward hands its executor out before two of its error returns (layout
         * not TND: 161002; a null internal output: 161001); the caller must destroy it.
         * Emulated for the layout check (docs/releases.md). */
        if (rc == ACLNN_ERR_PARAM_INVALID && inputLayout != NULL && strcmp(inputLayout, "TND") != 0 &&
            executor != NULL) {
            hand_out_failed(plan, executor);
        } else {
            fwd_plan_free(plan);
        }
        return rc;
    }
    aclOpExecutor *e = calloc(1, sizeof *e);
    if (e == NULL) {
        fwd_plan_free(plan);
        a->set_error(FWD1 ": out of host memory");
        return ACLNN_ERR_INNER_NULLPTR;
    }
    e->magic = STUB_MAGIC_EXEC;
    e->payload = plan;
    e->payload_free = fwd_plan_free;
    /* snapshots of the non-NULL tensors, inputs and outputs each in parameter order */
    const aclTensor *ins[] = {query, queryRope, key, keyRope, value, realShiftOptional, dropMaskOptional,
                              paddingMaskOptional, attenMaskOptional};
    int *in_slot[] = {&plan->s_q, &plan->s_qr, &plan->s_k, &plan->s_kr, &plan->s_v, NULL, NULL, NULL, &plan->s_mask};
    const aclTensor *outs[] = {softmaxMaxOut, softmaxSumOut, softmaxOutOut, attentionOutOut};
    int *out_slot[] = {&plan->o_smax, &plan->o_ssum, NULL, &plan->o_out};
    stub_exec_record(e, 0, ins, in_slot, sizeof ins / sizeof ins[0]);
    stub_exec_record(e, 1, outs, out_slot, sizeof outs / sizeof outs[0]);
    e->workspace_size = plan->compute ? fwd_kernel_workspace_bytes(&plan->prob) : 0;
    if (a->handle_add(STUB_H_EXECUTOR, e) != 0) {
        stub_exec_free(e);
        a->set_error(FWD1 ": out of host memory");
        return ACLNN_ERR_INNER_NULLPTR;
    }
    *workspaceSize = e->workspace_size;
    *executor = e;
    a->inject_success(FWD1);
    return ACLNN_SUCCESS;
}

/* every recorded tensor phase 2 uses must still be live (161001) and lie in live device
 * memory (361001) */
static aclnnStatus fwd_check_buffers(const aclOpExecutor *e, const FwdPlan *p)
{
    const StubUsed used[] = {
        {"query", p->s_q, 0},           {"queryRope", p->s_qr, 0},       {"key", p->s_k, 0},
        {"keyRope", p->s_kr, 0},        {"value", p->s_v, 0},            {"attenMaskOptional", p->s_mask, 0},
        {"softmaxMaxOut", p->o_smax, 1}, {"softmaxSumOut", p->o_ssum, 1}, {"attentionOutOut", p->o_out, 1}};
    return stub_check_used(sapi(), FWD2, e, used, sizeof used / sizeof used[0]);
}

STUB_API aclnnStatus aclnnFlashAttentionVarLenScoreV3(void *workspace, uint64_t workspaceSize,
                                                      aclOpExecutor *executor, const aclrtStream stream)
{
    const StubApi *a = sapi();
    int consume;
    aclnnStatus rc = stub_phase2_enter(a, FWD1, FWD2, executor, fwd_plan_free, workspace, workspaceSize, stream,
                                       &consume);
    if (rc != ACLNN_SUCCESS) {
        return stub_phase2_leave(a, FWD2, executor, consume, rc);
    }
    FwdPlan *p = executor->payload;
    if (!p->compute) {
        return stub_phase2_leave(a, FWD2, executor, consume, rc);
    }
    rc = fwd_check_buffers(executor, p);
    if (rc == ACLNN_SUCCESS) {
        p->prob.q = &executor->in[p->s_q];
        p->prob.qr = &executor->in[p->s_qr];
        p->prob.k = &executor->in[p->s_k];
        p->prob.kr = &executor->in[p->s_kr];
        p->prob.v = &executor->in[p->s_v];
        p->prob.mask = &executor->in[p->s_mask];
        p->prob.smax = &executor->out[p->o_smax];
        p->prob.ssum = &executor->out[p->o_ssum];
        p->prob.out = &executor->out[p->o_out];
        fwd_kernel_run(&p->prob, workspace);
    }
    return stub_phase2_leave(a, FWD2, executor, consume, rc);
}
