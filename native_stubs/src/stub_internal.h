/*
 * Internal declarations shared by the three stand-in libraries
 * (libascendcl.so, libnnopbase.so, libopapi.so).
 *
 * Nothing in this header is part of the CANN ABI.  The libraries are built
 * with -fvisibility=hidden; only the functions marked STUB_API are exported.
 * The shared state (device memory registry, live-handle registry, counters,
 * failure injection, thread-local error message, per-thread current device)
 * lives in libascendcl.so.  The other two libraries reach it through one
 * exported stub-only entry point, aclStubInternalApi(), which returns a table
 * of function pointers.
 */
#ifndef ACL_STUB_INTERNAL_H
#define ACL_STUB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define STUB_API __attribute__((visibility("default")))

/* ---- status codes (docs/abi.md §3) ---------------------------------- */
#define ACL_SUCCESS 0
#define ACL_ERROR_INVALID_PARAM 100000
#define ACL_ERROR_UNINITIALIZE 100001
#define ACL_ERROR_REPEAT_INITIALIZE 100002
#define ACL_ERROR_REPEAT_FINALIZE 100037
#define ACL_ERROR_RT_PARAM_INVALID 107000
#define ACL_ERROR_RT_INVALID_DEVICEID 107001
#define ACL_ERROR_RT_CONTEXT_NULL 107002
#define ACL_ERROR_RT_SYSPARAMOPT_NOT_SET 107021
#define ACL_ERROR_BAD_ALLOC 200000
#define ACL_ERROR_RT_MEMORY_ALLOCATION 207001

#define ACLNN_SUCCESS 0
#define ACLNN_ERR_PARAM_NULLPTR 161001
#define ACLNN_ERR_PARAM_INVALID 161002
#define ACLNN_ERR_RUNTIME_ERROR 361001
#define ACLNN_ERR_INNER_NULLPTR 561103

/* ---- enums -------------------------------------------------------------- */
enum {
    STUB_DT_FLOAT = 0,
    STUB_DT_FLOAT16 = 1,
    STUB_DT_INT32 = 3,
    STUB_DT_UINT8 = 4,
    STUB_DT_INT64 = 9,
    STUB_DT_DOUBLE = 11,
    STUB_DT_BOOL = 12,
    STUB_DT_BF16 = 27
};

enum {
    STUB_MEMCPY_HOST_TO_HOST = 0,
    STUB_MEMCPY_HOST_TO_DEVICE = 1,
    STUB_MEMCPY_DEVICE_TO_HOST = 2,
    STUB_MEMCPY_DEVICE_TO_DEVICE = 3,
    STUB_MEMCPY_DEFAULT = 4
};

/* kinds of live handles tracked by the registry */
enum {
    STUB_H_TENSOR = 0,
    STUB_H_INT_ARRAY = 1,
    STUB_H_EXECUTOR = 2,
    STUB_H_STREAM = 3,
    STUB_H_KINDS = 4
};

#define STUB_MAX_DIMS 8
#define STUB_EXEC_MAX_IO 16

#define STUB_MAGIC_TENSOR 0x54454e534f523031ULL   /* "TENSOR01" */
#define STUB_MAGIC_INTARR 0x494e544152523031ULL   /* "INTARR01" */
#define STUB_MAGIC_EXEC 0x4558454355543031ULL     /* "EXECUT01" */

/* ---- object layouts (opaque to users) ---------------------------------- */
typedef struct aclTensor {
    uint64_t magic;
    int32_t dtype;
    int32_t format;
    int64_t ndim;
    int64_t dims[STUB_MAX_DIMS];
    int64_t strides[STUB_MAX_DIMS]; /* in elements, always filled */
    int64_t offset;                 /* in elements */
    int64_t storage_ndim;
    int64_t storage_dims[STUB_MAX_DIMS];
    int64_t numel;                  /* product of dims */
    int64_t max_index;              /* offset + sum (dim-1)*stride; -1 when numel == 0 */
    int64_t itemsize;
    void *data;                     /* storage base (not advanced by offset) */
} aclTensor;

typedef struct aclIntArray {
    uint64_t magic;
    uint64_t size;
    int64_t *values; /* owned copy */
} aclIntArray;

typedef struct aclOpExecutor {
    uint64_t magic;
    int repeatable;
    /* Snapshot copies of the non-NULL tensor arguments taken at phase 1:
     * in[] = non-NULL inputs in parameter order, out[] = non-NULL outputs in
     * parameter order.  aclSetInputTensorAddr/aclSetOutputTensorAddr index
     * these arrays; aclSetTensorAddr indexes inputs then outputs. */
    size_t n_in;
    size_t n_out;
    aclTensor in[STUB_EXEC_MAX_IO];
    aclTensor out[STUB_EXEC_MAX_IO];
    /* The caller's handles behind each snapshot.  Like the real executor,
     * phase 2 needs them alive (it checks through the registry, never by
     * dereferencing); the math itself uses the snapshots. */
    aclTensor *in_handle[STUB_EXEC_MAX_IO];
    aclTensor *out_handle[STUB_EXEC_MAX_IO];
    uint64_t workspace_size;
    void *payload;                       /* op-specific, owned */
    void (*payload_free)(void *payload); /* frees payload; may be NULL */
} aclOpExecutor;

/* Record the non-NULL tensors ts[0..n) of one phase-1 call, in parameter order, as the
 * executor's inputs (out == 0) or outputs (out != 0): handle and snapshot. slot[i], when
 * not NULL, receives the tensor's index among them, or -1 for a NULL tensor. */
static inline void stub_exec_record(aclOpExecutor *e, int out, const aclTensor *const *ts, int *const *slot, size_t n)
{
    size_t *count = out ? &e->n_out : &e->n_in;
    aclTensor *snap = out ? e->out : e->in;
    aclTensor **handle = out ? e->out_handle : e->in_handle;
    for (size_t i = 0; i < n; i++) {
        if (slot[i] != NULL) {
            *slot[i] = ts[i] != NULL ? (int)*count : -1;
        }
        if (ts[i] != NULL) {
            handle[*count] = (aclTensor *)ts[i];
            snap[(*count)++] = *ts[i];
        }
    }
}

/* ---- internal API table exported by libascendcl.so ---------------------- */
typedef struct StubApi {
    int version;
    /* thread-local "recent error message" (printf-style) */
    void (*set_error)(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
    /* current device of the calling thread, -1 when aclrtSetDevice was not called */
    int32_t (*current_device)(void);
    /* failure injection: check() returns the injected code (and consumes the
     * injection) or 0; success() records one successful call. */
    int32_t (*inject_check)(const char *fn);
    void (*inject_success)(const char *fn);
    /* 1 when [p, p+n) lies inside one live device allocation (n may be 0:
     * then p must be inside an allocation). */
    int (*device_range)(const void *p, uint64_t n);
    /* handle registry */
    int (*handle_add)(int kind, const void *h);    /* 0 on success */
    int (*handle_remove)(int kind, const void *h); /* 1 if it was live */
    int (*handle_live)(int kind, const void *h);   /* 1 if live */
    /* an option as the op reads it (the current context's before CANN 9.0, the
     * process-wide value from 9.0 on: stub_release()) without touching the error
     * message: returns 0 and sets *v, or an aclError */
    int32_t (*ctx_get_opt_quiet)(int32_t opt, int64_t *v);
    /* version 2: count a release (destroy, free, executor run) of a handle that is not
     * live: a double destroy / double free / use after consumption on real CANN */
    void (*note_bad_release)(const char *fn, const void *h);
} StubApi;

#define STUB_API_VERSION 2

/* frees an executor that has already been removed from the registry */
static inline void stub_exec_free(aclOpExecutor *e)
{
    if (e == NULL) {
        return;
    }
    if (e->payload_free != NULL) {
        e->payload_free(e->payload);
    }
    e->magic = 0;
    free(e);
}

STUB_API const StubApi *aclStubInternalApi(void);

/* stub-only exports of libascendcl.so used by the op library */
STUB_API void aclStubRecordLaunch(void *stream);

#endif
