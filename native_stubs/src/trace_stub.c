/* Argument trace of the stand-in op: see trace_stub.h. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace_stub.h"

static pthread_mutex_t g_trace_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const INPUT_NAMES[14] = {"query", "query_rope", "key", "key_rope", "value", "dy",
                                            "pse_shift", "drop_mask", "padding_mask", "atten_mask",
                                            "softmax_max", "softmax_sum", "softmax_in", "attention_in"};
static const char *const INT_ARRAY_NAMES[5] = {"prefix", "actual_seq_qlen", "actual_seq_kvlen", "q_start_idx",
                                               "kv_start_idx"};
static const char *const OUTPUT_NAMES[6] = {"dq", "dq_rope", "dk", "dk_rope", "dv", "dpse"};

static FILE *trace_open(void)
{
    const char *path = getenv("ACL_STUB_TRACE");
    if (path == NULL || path[0] == '\0') {
        return NULL;
    }
    return fopen(path, "a");
}

static uint64_t fnv1a(const unsigned char *p, uint64_t n)
{
    uint64_t h = 14695981039346656037ULL; /* FNV-1a 64-bit offset basis */
    for (uint64_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void put_i64_list(FILE *f, const int64_t *v, int64_t n)
{
    fputc('[', f);
    for (int64_t i = 0; i < n; i++) {
        fprintf(f, "%s%lld", i ? "," : "", (long long)v[i]);
    }
    fputc(']', f);
}

static void put_tensor(FILE *f, const StubApi *a, const char *name, const aclTensor *t)
{
    fprintf(f, "\"%s\":", name);
    if (t == NULL) {
        fputs("null", f);
        return;
    }
    if (!a->handle_live(STUB_H_TENSOR, t)) {
        fputs("\"not a live tensor\"", f);
        return;
    }
    fprintf(f, "{\"dtype\":%d,\"format\":%d,\"dims\":", (int)t->dtype, (int)t->format);
    put_i64_list(f, t->dims, t->ndim);
    fputs(",\"strides\":", f);
    put_i64_list(f, t->strides, t->ndim);
    fprintf(f, ",\"offset\":%lld,\"storage\":", (long long)t->offset);
    put_i64_list(f, t->storage_dims, t->storage_ndim);
    int64_t elems = 1;
    for (int64_t i = 0; i < t->storage_ndim; i++) {
        elems *= t->storage_dims[i];
    }
    uint64_t bytes = (uint64_t)elems * (uint64_t)t->itemsize;
    if (t->data == NULL) {
        fputs(",\"data\":null}", f);
    } else if (elems >= 0 && a->device_range(t->data, bytes)) {
        fprintf(f, ",\"data\":\"%016llx\"}", (unsigned long long)fnv1a((const unsigned char *)t->data, bytes));
    } else {
        fputs(",\"data\":\"outside device memory\"}", f);
    }
}

void stub_trace_fag_phase1(const aclTensor *const inputs[14], const aclIntArray *const int_arrays[5],
                           double scaleValue, double keepProb, int64_t preTokens, int64_t nextTokens,
                           int64_t headNum, const char *inputLayout, int64_t innerPrecise,
                           int64_t sparseMode, int64_t pseType, const aclTensor *const outputs[6],
                           const void *workspaceSize, const void *executor)
{
    const StubApi *a = aclStubInternalApi();
    pthread_mutex_lock(&g_trace_lock);
    FILE *f = trace_open();
    if (f == NULL) {
        pthread_mutex_unlock(&g_trace_lock);
        return;
    }
    fputs("{\"call\":\"phase1\",\"inputs\":{", f);
    for (int i = 0; i < 14; i++) {
        if (i) fputc(',', f);
        put_tensor(f, a, INPUT_NAMES[i], inputs[i]);
    }
    fputs("},\"int_arrays\":{", f);
    for (int i = 0; i < 5; i++) {
        const aclIntArray *ia = int_arrays[i];
        fprintf(f, "%s\"%s\":", i ? "," : "", INT_ARRAY_NAMES[i]);
        if (ia == NULL) {
            fputs("null", f);
        } else if (!a->handle_live(STUB_H_INT_ARRAY, ia)) {
            fputs("\"not a live int array\"", f);
        } else {
            put_i64_list(f, ia->values, (int64_t)ia->size);
        }
    }
    fprintf(f, "},\"scale_value\":\"%a\",\"keep_prob\":\"%a\",\"pre_tokens\":%lld,\"next_tokens\":%lld,"
               "\"head_num\":%lld,\"input_layout\":",
            scaleValue, keepProb, (long long)preTokens, (long long)nextTokens, (long long)headNum);
    if (inputLayout == NULL) {
        fputs("null", f);
    } else {
        fputc('"', f);
        for (const char *c = inputLayout; *c && c - inputLayout < 64; c++) {
            if (*c >= 0x20 && *c < 0x7f && *c != '"' && *c != '\\') fputc(*c, f);
            else fprintf(f, "\\u%04x", (unsigned)(unsigned char)*c);
        }
        fputc('"', f);
    }
    fprintf(f, ",\"inner_precise\":%lld,\"sparse_mode\":%lld,\"pse_type\":%lld,\"outputs\":{",
            (long long)innerPrecise, (long long)sparseMode, (long long)pseType);
    for (int i = 0; i < 6; i++) {
        if (i) fputc(',', f);
        put_tensor(f, a, OUTPUT_NAMES[i], outputs[i]);
    }
    int64_t det = -1;
    if (a->ctx_get_opt_quiet(0, &det) != 0) {
        det = -1;
    }
    fprintf(f, "},\"workspace_size_out\":%s,\"executor_out\":%s,\"deterministic\":%lld}\n",
            workspaceSize ? "true" : "false", executor ? "true" : "false", (long long)det);
    fclose(f);
    pthread_mutex_unlock(&g_trace_lock);
}

void stub_trace_fag_phase2(const void *workspace, uint64_t workspaceSize, const void *executor,
                           const void *stream)
{
    pthread_mutex_lock(&g_trace_lock);
    FILE *f = trace_open();
    if (f != NULL) {
        fprintf(f, "{\"call\":\"phase2\",\"workspace\":%s,\"workspace_size\":%llu,\"executor\":%s,\"stream\":%s}\n",
                workspace ? "true" : "false", (unsigned long long)workspaceSize, executor ? "true" : "false",
                stream ? "true" : "false");
        fclose(f);
    }
    pthread_mutex_unlock(&g_trace_lock);
}
