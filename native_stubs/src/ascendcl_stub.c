/*
 * libascendcl.so stand-in: the ACL runtime calls used by the aclnn_fag
 * binding, plus the shared state of all three stub libraries.
 *
 * "Device memory" is host memory handed out by aclrtMalloc and tracked in a
 * registry, so that the other calls can check that pointers really are
 * device pointers.  Every failure sets the thread-local recent error
 * message returned (once) by aclGetRecentErrMsg.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stub_abi.h"


/* ------------------------------------------------------------------------ */
/* global lock and state                                                     */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

#define LOCK() pthread_mutex_lock(&g_lock)
#define UNLOCK() pthread_mutex_unlock(&g_lock)

#define STUB_MAX_DEVICES 64
#define STUB_N_SYS_OPTS 3 /* DETERMINISTIC, ENABLE_DEBUG_KERNEL, STRONG_CONSISTENCY */

typedef struct DeviceCtx {
    int64_t refcount;   /* aclrtSetDevice minus aclrtResetDevice calls */
    uint64_t generation; /* bumped when the default context is destroyed */
    int opt_set[STUB_N_SYS_OPTS];
    int64_t opt_val[STUB_N_SYS_OPTS];
} DeviceCtx;

static int g_initialized;
static DeviceCtx g_dev[STUB_MAX_DEVICES];
static int64_t g_proc_opt[STUB_N_SYS_OPTS];

/* per-thread current device (-1: none) and the context generation it saw */
static __thread int32_t tls_device = -1;
static __thread uint64_t tls_generation;

/* ------------------------------------------------------------------------ */
/* recent error message (thread-local)                                      */
/* ------------------------------------------------------------------------ */

static __thread char tls_msg[2048];
static __thread int tls_has_msg;
static __thread char tls_ret[2048];

__attribute__((format(printf, 1, 2))) static void stub_set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_msg, sizeof tls_msg, fmt, ap);
    va_end(ap);
    tls_has_msg = 1;
}

STUB_API const char *aclGetRecentErrMsg(void)
{
    if (!tls_has_msg) {
        return NULL;
    }
    memcpy(tls_ret, tls_msg, sizeof tls_ret);
    tls_has_msg = 0;
    return tls_ret;
}

/* ------------------------------------------------------------------------ */
/* failure injection                                                         */
/* ------------------------------------------------------------------------ */

#define STUB_MAX_INJECT 64

typedef struct Injection {
    int active;
    char name[128];
    int64_t remaining; /* successful calls still to let through */
    int32_t code;
} Injection;

static Injection g_inject[STUB_MAX_INJECT];

STUB_API void aclStubInjectFailure(const char *function_name, int64_t after_n_calls, int32_t error_code)
{
    if (function_name == NULL || function_name[0] == '\0' || error_code == 0 ||
        strlen(function_name) >= sizeof g_inject[0].name) {
        return;
    }
    LOCK();
    Injection *slot = NULL;
    for (int i = 0; i < STUB_MAX_INJECT; i++) {
        if (g_inject[i].active && strcmp(g_inject[i].name, function_name) == 0) {
            slot = &g_inject[i];
            break;
        }
    }
    for (int i = 0; slot == NULL && i < STUB_MAX_INJECT; i++) {
        if (!g_inject[i].active) {
            slot = &g_inject[i];
        }
    }
    if (slot != NULL) {
        slot->active = 1;
        snprintf(slot->name, sizeof slot->name, "%s", function_name);
        slot->remaining = after_n_calls < 0 ? 0 : after_n_calls;
        slot->code = error_code;
    }
    UNLOCK();
}

STUB_API void aclStubClearFailures(void)
{
    LOCK();
    memset(g_inject, 0, sizeof g_inject);
    UNLOCK();
}

/* ------------------------------------------------------------------------ */
/* call delay (widens the windows of interrupt tests) and bad releases      */
/* ------------------------------------------------------------------------ */

static int64_t g_delay_us;      /* guarded by g_lock */
static int64_t g_bad_releases;  /* guarded by g_lock */

STUB_API void aclStubSetCallDelay(int64_t microseconds)
{
    LOCK();
    g_delay_us = microseconds < 0 ? 0 : microseconds;
    UNLOCK();
}

STUB_API int64_t aclStubGetBadReleases(void)
{
    LOCK();
    int64_t n = g_bad_releases;
    UNLOCK();
    return n;
}

static void stub_note_bad_release(const char *fn, const void *h)
{
    (void)fn;
    (void)h;
    LOCK();
    g_bad_releases++;
    UNLOCK();
}

static void stub_delay(void)
{
    LOCK();
    int64_t us = g_delay_us;
    UNLOCK();
    if (us > 0) {
        struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000L};
        nanosleep(&ts, NULL); /* a signal cuts it short: fine */
    }
}

static int32_t stub_inject_check(const char *fn)
{
    int32_t code = 0;
    stub_delay();
    LOCK();
    for (int i = 0; i < STUB_MAX_INJECT; i++) {
        if (g_inject[i].active && g_inject[i].remaining == 0 && strcmp(g_inject[i].name, fn) == 0) {
            code = g_inject[i].code;
            g_inject[i].active = 0;
            break;
        }
    }
    UNLOCK();
    if (code != 0) {
        stub_set_error("%s: injected failure %d (aclStubInjectFailure)", fn, (int)code);
    }
    return code;
}

static void stub_inject_success(const char *fn)
{
    LOCK();
    for (int i = 0; i < STUB_MAX_INJECT; i++) {
        if (g_inject[i].active && g_inject[i].remaining > 0 && strcmp(g_inject[i].name, fn) == 0) {
            g_inject[i].remaining--;
            break;
        }
    }
    UNLOCK();
}

#define INJECT_POINT()                                  \
    do {                                                \
        int32_t inj_code_ = stub_inject_check(__func__); \
        if (inj_code_ != 0) {                           \
            return inj_code_;                           \
        }                                               \
    } while (0)

#define RETURN_OK()                     \
    do {                                \
        stub_inject_success(__func__);  \
        return ACL_SUCCESS;             \
    } while (0)

/* ------------------------------------------------------------------------ */
/* handle registry (tensors, int arrays, executors, streams)                */
/* ------------------------------------------------------------------------ */

typedef struct HandleSet {
    const void **items;
    size_t n;
    size_t cap;
} HandleSet;

static HandleSet g_handles[STUB_H_KINDS];

static int stub_handle_add(int kind, const void *h)
{
    if (kind < 0 || kind >= STUB_H_KINDS || h == NULL) {
        return -1;
    }
    int rc = 0;
    LOCK();
    HandleSet *s = &g_handles[kind];
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 64;
        const void **p = realloc((void *)s->items, ncap * sizeof *p);
        if (p == NULL) {
            rc = -1;
        } else {
            s->items = p;
            s->cap = ncap;
        }
    }
    if (rc == 0) {
        s->items[s->n++] = h;
    }
    UNLOCK();
    return rc;
}

/* position of handle h in its set, or -1 (call with the lock held; kind already checked) */
static long handle_find_locked(int kind, const void *h)
{
    const HandleSet *s = &g_handles[kind];
    for (size_t i = s->n; i-- > 0;) {
        if (s->items[i] == h) {
            return (long)i;
        }
    }
    return -1;
}

static int stub_handle_remove(int kind, const void *h)
{
    if (kind < 0 || kind >= STUB_H_KINDS || h == NULL) {
        return 0;
    }
    LOCK();
    HandleSet *s = &g_handles[kind];
    long i = handle_find_locked(kind, h);
    if (i >= 0) {
        s->items[i] = s->items[s->n - 1];
        s->n--;
    }
    UNLOCK();
    return i >= 0;
}

static int stub_handle_live(int kind, const void *h)
{
    if (kind < 0 || kind >= STUB_H_KINDS || h == NULL) {
        return 0;
    }
    LOCK();
    long i = handle_find_locked(kind, h);
    UNLOCK();
    return i >= 0;
}

/* ------------------------------------------------------------------------ */
/* device memory registry                                                    */
/* ------------------------------------------------------------------------ */

typedef struct Alloc {
    uintptr_t base;
    uint64_t size;
    int32_t device;
} Alloc;

static Alloc *g_allocs;
static size_t g_nallocs;
static size_t g_cap_allocs;
static int64_t g_live_bytes;

/* index of the allocation containing address p, or -1 (call with lock held) */
static long alloc_index_locked(uintptr_t p)
{
    for (size_t i = 0; i < g_nallocs; i++) {
        if (p >= g_allocs[i].base && p - g_allocs[i].base < g_allocs[i].size) {
            return (long)i;
        }
    }
    return -1;
}

static int stub_device_range(const void *ptr, uint64_t n)
{
    if (ptr == NULL) {
        return 0;
    }
    uintptr_t p = (uintptr_t)ptr;
    int ok = 0;
    LOCK();
    long i = alloc_index_locked(p);
    if (i >= 0) {
        uint64_t room = g_allocs[i].size - (uint64_t)(p - g_allocs[i].base);
        ok = n <= room;
    }
    UNLOCK();
    return ok;
}

/* 1 when p lies inside any device allocation */
static int touches_device(const void *ptr)
{
    if (ptr == NULL) {
        return 0;
    }
    LOCK();
    long i = alloc_index_locked((uintptr_t)ptr);
    UNLOCK();
    return i >= 0;
}

/* ------------------------------------------------------------------------ */
/* devices and contexts                                                      */
/* ------------------------------------------------------------------------ */

static int32_t device_count(void)
{
    const char *s = getenv("ACL_STUB_DEVICE_COUNT");
    if (s == NULL || s[0] == '\0') {
        return 1;
    }
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0) {
        return 1;
    }
    if (v > STUB_MAX_DEVICES) {
        v = STUB_MAX_DEVICES;
    }
    return (int32_t)v;
}

static int32_t stub_current_device(void)
{
    int32_t dev = tls_device;
    if (dev < 0) {
        return -1;
    }
    LOCK();
    int valid = g_dev[dev].refcount > 0 && g_dev[dev].generation == tls_generation;
    UNLOCK();
    if (!valid) {
        tls_device = -1;
        return -1;
    }
    return dev;
}

#define REQUIRE_DEVICE(fn)                                                                          \
    do {                                                                                            \
        if (stub_current_device() < 0) {                                                            \
            stub_set_error("%s: no current context on this thread; call aclrtSetDevice first "     \
                           "(ACL_ERROR_RT_CONTEXT_NULL)",                                          \
                           fn);                                                                     \
            return ACL_ERROR_RT_CONTEXT_NULL;                                                      \
        }                                                                                           \
    } while (0)

STUB_API aclError aclInit(const char *configPath)
{
    (void)configPath;
    INJECT_POINT();
    LOCK();
    int already = g_initialized;
    g_initialized = 1;
    UNLOCK();
    if (already) {
        stub_set_error("aclInit: ACL is already initialized in this process (repeat aclInit)");
        return ACL_ERROR_REPEAT_INITIALIZE;
    }
    RETURN_OK();
}

STUB_API aclError aclFinalize(void)
{
    INJECT_POINT();
    LOCK();
    int was = g_initialized;
    g_initialized = 0;
    UNLOCK();
    if (!was) {
        stub_set_error("aclFinalize: ACL is not initialized (repeat aclFinalize)");
        return ACL_ERROR_REPEAT_FINALIZE;
    }
    RETURN_OK();
}

STUB_API aclError aclrtGetDeviceCount(uint32_t *count)
{
    INJECT_POINT();
    if (count == NULL) {
        stub_set_error("aclrtGetDeviceCount: count is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    *count = (uint32_t)device_count();
    RETURN_OK();
}

STUB_API aclError aclrtSetDevice(int32_t deviceId)
{
    INJECT_POINT();
    int32_t n = device_count();
    if (deviceId < 0 || deviceId >= n) {
        stub_set_error("aclrtSetDevice: deviceId %d is invalid, device count is %d", (int)deviceId, (int)n);
        return ACL_ERROR_RT_INVALID_DEVICEID;
    }
    LOCK();
    g_dev[deviceId].refcount++;
    tls_device = deviceId;
    tls_generation = g_dev[deviceId].generation;
    UNLOCK();
    RETURN_OK();
}

STUB_API aclError aclrtResetDevice(int32_t deviceId)
{
    INJECT_POINT();
    int32_t n = device_count();
    if (deviceId < 0 || deviceId >= n) {
        stub_set_error("aclrtResetDevice: deviceId %d is invalid, device count is %d", (int)deviceId, (int)n);
        return ACL_ERROR_RT_INVALID_DEVICEID;
    }
    LOCK();
    DeviceCtx *d = &g_dev[deviceId];
    if (d->refcount > 0) {
        d->refcount--;
        if (d->refcount == 0) {
            /* the default context goes away with its options */
            d->generation++;
            memset(d->opt_set, 0, sizeof d->opt_set);
            memset(d->opt_val, 0, sizeof d->opt_val);
        }
    }
    if (tls_device == deviceId) {
        tls_device = -1;
    }
    UNLOCK();
    RETURN_OK();
}

STUB_API const char *aclrtGetSocName(void)
{
    if (stub_inject_check(__func__) != 0) {
        return NULL;
    }
    if (device_count() <= 0) {
        stub_set_error("aclrtGetSocName: no device present");
        return NULL;
    }
    stub_inject_success(__func__);
    return "Ascend910B_stub";
}

STUB_API aclError aclrtGetCurrentContext(aclrtContext *context)
{
    INJECT_POINT();
    if (context == NULL) {
        stub_set_error("aclrtGetCurrentContext: context is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    int32_t dev = stub_current_device();
    if (dev < 0) {
        stub_set_error("aclrtGetCurrentContext: no current context on this thread; call aclrtSetDevice first");
        return ACL_ERROR_RT_CONTEXT_NULL;
    }
    *context = (aclrtContext)&g_dev[dev];
    RETURN_OK();
}

static int valid_opt(int32_t opt)
{
    return opt >= 0 && opt < STUB_N_SYS_OPTS;
}

STUB_API aclError aclrtCtxSetSysParamOpt(int32_t opt, int64_t value)
{
    INJECT_POINT();
    if (!valid_opt(opt)) {
        stub_set_error("aclrtCtxSetSysParamOpt: opt %d is not a valid aclSysParamOpt", (int)opt);
        return ACL_ERROR_RT_PARAM_INVALID;
    }
    REQUIRE_DEVICE("aclrtCtxSetSysParamOpt");
    int32_t dev = tls_device;
    LOCK();
    g_dev[dev].opt_set[opt] = 1;
    g_dev[dev].opt_val[opt] = value;
    if (stub_release() >= 900) {
        g_proc_opt[opt] = value; /* 9.0 on: the context setter writes the process-wide value */
    }
    UNLOCK();
    RETURN_OK();
}

static int32_t stub_ctx_get_opt_quiet(int32_t opt, int64_t *value);

/* The option as the op reads it: from 9.0 on the process-wide value (the op reads
 * aclrtGetSysParamOpt; always set, default 0), before that the current context's. */
static int32_t stub_op_get_opt_quiet(int32_t opt, int64_t *value)
{
    if (stub_release() < 900) {
        return stub_ctx_get_opt_quiet(opt, value);
    }
    if (!valid_opt(opt) || value == NULL) {
        return ACL_ERROR_RT_PARAM_INVALID;
    }
    LOCK();
    *value = g_proc_opt[opt];
    UNLOCK();
    return ACL_SUCCESS;
}

static int32_t stub_ctx_get_opt_quiet(int32_t opt, int64_t *value)
{
    if (!valid_opt(opt) || value == NULL) {
        return ACL_ERROR_RT_PARAM_INVALID;
    }
    int32_t dev = stub_current_device();
    if (dev < 0) {
        return ACL_ERROR_RT_CONTEXT_NULL;
    }
    int32_t rc = ACL_SUCCESS;
    LOCK();
    if (g_dev[dev].opt_set[opt]) {
        *value = g_dev[dev].opt_val[opt];
    } else {
        rc = ACL_ERROR_RT_SYSPARAMOPT_NOT_SET;
    }
    UNLOCK();
    return rc;
}

STUB_API aclError aclrtCtxGetSysParamOpt(int32_t opt, int64_t *value)
{
    INJECT_POINT();
    if (value == NULL) {
        stub_set_error("aclrtCtxGetSysParamOpt: value is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    int32_t rc = stub_ctx_get_opt_quiet(opt, value);
    switch (rc) {
    case ACL_SUCCESS:
        RETURN_OK();
    case ACL_ERROR_RT_CONTEXT_NULL:
        stub_set_error("aclrtCtxGetSysParamOpt: no current context on this thread; call aclrtSetDevice first");
        break;
    case ACL_ERROR_RT_SYSPARAMOPT_NOT_SET:
        stub_set_error("aclrtCtxGetSysParamOpt: option %d was never set on the current context "
                       "(context options have no default; call aclrtCtxSetSysParamOpt)",
                       (int)opt);
        break;
    default:
        stub_set_error("aclrtCtxGetSysParamOpt: opt %d is not a valid aclSysParamOpt", (int)opt);
        break;
    }
    return rc;
}

STUB_API aclError aclrtSetSysParamOpt(int32_t opt, int64_t value)
{
    INJECT_POINT();
    if (!valid_opt(opt)) {
        stub_set_error("aclrtSetSysParamOpt: opt %d is not a valid aclSysParamOpt", (int)opt);
        return ACL_ERROR_RT_PARAM_INVALID;
    }
    LOCK();
    g_proc_opt[opt] = value;
    UNLOCK();
    RETURN_OK();
}

STUB_API aclError aclrtGetSysParamOpt(int32_t opt, int64_t *value)
{
    INJECT_POINT();
    if (value == NULL) {
        stub_set_error("aclrtGetSysParamOpt: value is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    if (!valid_opt(opt)) {
        stub_set_error("aclrtGetSysParamOpt: opt %d is not a valid aclSysParamOpt", (int)opt);
        return ACL_ERROR_RT_PARAM_INVALID;
    }
    LOCK();
    *value = g_proc_opt[opt]; /* process-wide options default to 0 */
    UNLOCK();
    RETURN_OK();
}

/* ------------------------------------------------------------------------ */
/* streams                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct StubStream {
    uint64_t magic;
    int32_t device;
    int64_t launches; /* op launches recorded on this stream (aclStubRecordLaunch) */
    int64_t syncs;    /* aclrtSynchronizeStream calls on this stream */
} StubStream;

static int64_t g_null_stream_launches = 0;
static int64_t g_null_stream_syncs = 0;

#define STUB_MAGIC_STREAM 0x53545245414d3031ULL

STUB_API aclError aclrtCreateStream(aclrtStream *stream)
{
    INJECT_POINT();
    if (stream == NULL) {
        stub_set_error("aclrtCreateStream: stream is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    REQUIRE_DEVICE("aclrtCreateStream");
    StubStream *s = calloc(1, sizeof *s);
    if (s == NULL) {
        stub_set_error("aclrtCreateStream: out of host memory");
        return ACL_ERROR_BAD_ALLOC;
    }
    s->magic = STUB_MAGIC_STREAM;
    s->device = tls_device;
    if (stub_handle_add(STUB_H_STREAM, s) != 0) {
        free(s);
        stub_set_error("aclrtCreateStream: out of host memory");
        return ACL_ERROR_BAD_ALLOC;
    }
    *stream = s;
    RETURN_OK();
}

STUB_API aclError aclrtDestroyStream(aclrtStream stream)
{
    INJECT_POINT();
    if (stream == NULL) {
        stub_set_error("aclrtDestroyStream: stream is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    REQUIRE_DEVICE("aclrtDestroyStream");
    if (!stub_handle_remove(STUB_H_STREAM, stream)) {
        stub_note_bad_release("aclrtDestroyStream", stream);
        stub_set_error("aclrtDestroyStream: %p is not a live stream (already destroyed?)", stream);
        return ACL_ERROR_RT_PARAM_INVALID;
    }
    free(stream);
    RETURN_OK();
}

STUB_API aclError aclrtSynchronizeStream(aclrtStream stream)
{
    INJECT_POINT();
    REQUIRE_DEVICE("aclrtSynchronizeStream");
    if (stream != NULL && !stub_handle_live(STUB_H_STREAM, stream)) {
        stub_set_error("aclrtSynchronizeStream: %p is not a live stream", stream);
        return ACL_ERROR_RT_PARAM_INVALID;
    }
    LOCK();
    if (stream != NULL) {
        ((StubStream *)stream)->syncs++;
    } else {
        g_null_stream_syncs++;
    }
    UNLOCK();
    /* every stub operation completes synchronously */
    RETURN_OK();
}

/* stub-only: an op's phase 2 records the stream it was launched on */
STUB_API void aclStubRecordLaunch(aclrtStream stream)
{
    const int live = stream != NULL && stub_handle_live(STUB_H_STREAM, stream); /* takes the lock */
    LOCK();
    if (stream == NULL) {
        g_null_stream_launches++;
    } else if (live) {
        ((StubStream *)stream)->launches++;
    }
    UNLOCK();
}

/* stub-only: launches and synchronisations seen on a stream (NULL = the default stream);
 * returns 0, or -1 when the stream is not live */
STUB_API int32_t aclStubStreamCounts(aclrtStream stream, int64_t *launches, int64_t *syncs)
{
    int32_t rc = 0;
    const int live = stream != NULL && stub_handle_live(STUB_H_STREAM, stream); /* takes the lock */
    LOCK();
    if (stream == NULL) {
        *launches = g_null_stream_launches;
        *syncs = g_null_stream_syncs;
    } else if (live) {
        *launches = ((StubStream *)stream)->launches;
        *syncs = ((StubStream *)stream)->syncs;
    } else {
        rc = -1;
    }
    UNLOCK();
    return rc;
}

/* ------------------------------------------------------------------------ */
/* memory                                                                    */
/* ------------------------------------------------------------------------ */

#define STUB_DEVICE_ALIGN 64

static int malloc_fill_byte(void)
{
    const char *s = getenv("ACL_STUB_MALLOC_FILL");
    if (s == NULL || s[0] == '\0') {
        return 0xFF; /* bf16/fp32 NaN pattern: catches reads of never-written memory */
    }
    char *end = NULL;
    long v = strtol(s, &end, 0);
    if (end == s || *end != '\0' || v < -1 || v > 255) {
        return 0xFF;
    }
    return (int)v; /* -1: leave the memory as malloc returned it */
}

/* Device capacity: like a real NPU's HBM, the stub's "device" is finite, so an absurd
 * request fails cleanly with 207001 instead of taking the host down (the memory is host
 * memory and is filled on allocation).  ACL_STUB_DEVICE_MEMORY = total bytes (suffixes
 * k/m/g allowed); default 4 GiB. */
#define STUB_DEFAULT_DEVICE_MEMORY ((uint64_t)4 << 30)

static uint64_t device_capacity(void)
{
    const char *s = getenv("ACL_STUB_DEVICE_MEMORY");
    if (s == NULL || s[0] == '\0') {
        return STUB_DEFAULT_DEVICE_MEMORY;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (end == s || errno != 0) {
        return STUB_DEFAULT_DEVICE_MEMORY;
    }
    uint64_t mult = 1;
    if (*end == 'k' || *end == 'K') {
        mult = (uint64_t)1 << 10;
        end++;
    } else if (*end == 'm' || *end == 'M') {
        mult = (uint64_t)1 << 20;
        end++;
    } else if (*end == 'g' || *end == 'G') {
        mult = (uint64_t)1 << 30;
        end++;
    }
    uint64_t bytes;
    if (*end != '\0' || __builtin_mul_overflow((uint64_t)v, mult, &bytes)) {
        return STUB_DEFAULT_DEVICE_MEMORY;
    }
    return bytes;
}

STUB_API aclError aclrtMalloc(void **devPtr, size_t size, int32_t policy)
{
    (void)policy;
    INJECT_POINT();
    if (devPtr == NULL) {
        stub_set_error("aclrtMalloc: devPtr is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    REQUIRE_DEVICE("aclrtMalloc");
    if (size == 0) {
        stub_set_error("aclrtMalloc: size must be > 0");
        return ACL_ERROR_INVALID_PARAM;
    }
    /* reserve the bytes against the capacity first (64-bit, overflow-free) */
    const uint64_t cap = device_capacity();
    int over = 0;
    uint64_t live_now = 0;
    LOCK();
    live_now = (uint64_t)g_live_bytes;
    if ((uint64_t)size > cap || live_now > cap - (uint64_t)size) {
        over = 1;
    } else {
        g_live_bytes += (int64_t)size;
    }
    UNLOCK();
    if (over) {
        stub_set_error("aclrtMalloc: cannot allocate %zu bytes: out of device memory (%llu of %llu bytes in use; "
                       "the stub's capacity is set by ACL_STUB_DEVICE_MEMORY)",
                       size, (unsigned long long)live_now, (unsigned long long)cap);
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    }
    void *p = NULL;
    if (posix_memalign(&p, STUB_DEVICE_ALIGN, size) != 0 || p == NULL) {
        LOCK();
        g_live_bytes -= (int64_t)size;
        UNLOCK();
        stub_set_error("aclrtMalloc: cannot allocate %zu bytes", size);
        return ACL_ERROR_RT_MEMORY_ALLOCATION;
    }
    int fill = malloc_fill_byte();
    if (fill >= 0) {
        memset(p, fill, size);
    }
    int rc = 0;
    LOCK();
    if (g_nallocs == g_cap_allocs) {
        size_t ncap = g_cap_allocs ? g_cap_allocs * 2 : 64;
        Alloc *na = realloc(g_allocs, ncap * sizeof *na);
        if (na == NULL) {
            rc = -1;
        } else {
            g_allocs = na;
            g_cap_allocs = ncap;
        }
    }
    if (rc == 0) {
        g_allocs[g_nallocs].base = (uintptr_t)p;
        g_allocs[g_nallocs].size = size;
        g_allocs[g_nallocs].device = tls_device;
        g_nallocs++;
    } else {
        g_live_bytes -= (int64_t)size;
    }
    UNLOCK();
    if (rc != 0) {
        free(p);
        stub_set_error("aclrtMalloc: out of host memory for the allocation registry");
        return ACL_ERROR_BAD_ALLOC;
    }
    *devPtr = p;
    RETURN_OK();
}

STUB_API aclError aclrtFree(void *devPtr)
{
    INJECT_POINT();
    if (devPtr == NULL) {
        stub_set_error("aclrtFree: devPtr is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    REQUIRE_DEVICE("aclrtFree");
    int found = 0;
    LOCK();
    for (size_t i = 0; i < g_nallocs; i++) {
        if (g_allocs[i].base == (uintptr_t)devPtr) {
            g_live_bytes -= (int64_t)g_allocs[i].size;
            g_allocs[i] = g_allocs[g_nallocs - 1];
            g_nallocs--;
            found = 1;
            break;
        }
    }
    UNLOCK();
    if (!found) {
        stub_note_bad_release("aclrtFree", devPtr);
        stub_set_error("aclrtFree: %p is not the start of a live device allocation "
                       "(host pointer, interior pointer or double free)",
                       devPtr);
        return ACL_ERROR_RT_PARAM_INVALID;
    }
    free(devPtr);
    RETURN_OK();
}

static const char *kind_name(int32_t kind)
{
    switch (kind) {
    case STUB_MEMCPY_HOST_TO_HOST: return "HOST_TO_HOST";
    case STUB_MEMCPY_HOST_TO_DEVICE: return "HOST_TO_DEVICE";
    case STUB_MEMCPY_DEVICE_TO_HOST: return "DEVICE_TO_HOST";
    case STUB_MEMCPY_DEVICE_TO_DEVICE: return "DEVICE_TO_DEVICE";
    case STUB_MEMCPY_DEFAULT: return "DEFAULT";
    default: return "unsupported";
    }
}

/* side check: want_device 1 = whole range in one device allocation,
 * 0 = host memory (not inside any device allocation) */
/* The range checks of aclrtMemcpy / aclrtMemset, one helper each:
 * count <= the destination's capacity, and [p, p + count) on the side the call expects
 * (inside one device allocation, or host memory outside every allocation).
 * Each sets the error message and returns 0 when the check fails. */
static int count_fits(const char *fn, const char *count_name, size_t count, const char *cap_name, size_t cap)
{
    if (count > cap) {
        stub_set_error("%s: %s %zu > %s %zu", fn, count_name, count, cap_name, cap);
        return 0;
    }
    return 1;
}

static int side_ok(const char *fn, const char *what, const void *p, size_t count, int want_device)
{
    if (want_device ? stub_device_range(p, count) : !touches_device(p)) {
        return 1;
    }
    stub_set_error("%s: %s %p %s", fn, what, p,
                   want_device ? "with count bytes is not inside one device allocation (aclrtMalloc)"
                               : "must be host memory but lies inside a device allocation");
    return 0;
}

STUB_API aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, int32_t kind)
{
    INJECT_POINT();
    REQUIRE_DEVICE("aclrtMemcpy");
    if (kind < STUB_MEMCPY_HOST_TO_HOST || kind > STUB_MEMCPY_DEFAULT) {
        stub_set_error("aclrtMemcpy: kind %d is not supported by the stub", (int)kind);
        return ACL_ERROR_INVALID_PARAM;
    }
    if (!count_fits("aclrtMemcpy", "count", count, "destMax", destMax)) {
        return ACL_ERROR_INVALID_PARAM;
    }
    if (count == 0) {
        RETURN_OK();
    }
    if (dst == NULL || src == NULL) {
        stub_set_error("aclrtMemcpy: %s is NULL", dst == NULL ? "dst" : "src");
        return ACL_ERROR_INVALID_PARAM;
    }
    int dst_dev, src_dev;
    switch (kind) {
    case STUB_MEMCPY_HOST_TO_HOST: dst_dev = 0; src_dev = 0; break;
    case STUB_MEMCPY_HOST_TO_DEVICE: dst_dev = 1; src_dev = 0; break;
    case STUB_MEMCPY_DEVICE_TO_HOST: dst_dev = 0; src_dev = 1; break;
    case STUB_MEMCPY_DEVICE_TO_DEVICE: dst_dev = 1; src_dev = 1; break;
    default: /* DEFAULT: infer from the pointers */
        dst_dev = touches_device(dst);
        src_dev = touches_device(src);
        break;
    }
    char fn[48];
    snprintf(fn, sizeof fn, "aclrtMemcpy(%s)", kind_name(kind));
    if (!side_ok(fn, "dst", dst, count, dst_dev) || !side_ok(fn, "src", src, count, src_dev)) {
        return ACL_ERROR_INVALID_PARAM;
    }
    memmove(dst, src, count);
    RETURN_OK();
}

STUB_API aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count)
{
    INJECT_POINT();
    REQUIRE_DEVICE("aclrtMemset");
    if (!count_fits("aclrtMemset", "count", count, "maxCount", maxCount)) {
        return ACL_ERROR_INVALID_PARAM;
    }
    if (devPtr == NULL) {
        stub_set_error("aclrtMemset: devPtr is NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    if (!side_ok("aclrtMemset", "devPtr", devPtr, count, 1)) {
        return ACL_ERROR_INVALID_PARAM;
    }
    memset(devPtr, (unsigned char)value, count);
    RETURN_OK();
}

/* ------------------------------------------------------------------------ */
/* stub-only exports                                                         */
/* ------------------------------------------------------------------------ */

STUB_API void aclStubGetCounters(int64_t *live_tensors, int64_t *live_int_arrays, int64_t *live_executors,
                                 int64_t *live_device_bytes, int64_t *live_streams)
{
    LOCK();
    if (live_tensors) {
        *live_tensors = (int64_t)g_handles[STUB_H_TENSOR].n;
    }
    if (live_int_arrays) {
        *live_int_arrays = (int64_t)g_handles[STUB_H_INT_ARRAY].n;
    }
    if (live_executors) {
        *live_executors = (int64_t)g_handles[STUB_H_EXECUTOR].n;
    }
    if (live_device_bytes) {
        *live_device_bytes = g_live_bytes;
    }
    if (live_streams) {
        *live_streams = (int64_t)g_handles[STUB_H_STREAM].n;
    }
    UNLOCK();
}

static const StubApi g_api = {
    STUB_API_VERSION,
    stub_set_error,
    stub_current_device,
    stub_inject_check,
    stub_inject_success,
    stub_device_range,
    stub_handle_add,
    stub_handle_remove,
    stub_handle_live,
    stub_op_get_opt_quiet,
    stub_note_bad_release,
};

STUB_API const StubApi *aclStubInternalApi(void)
{
    return &g_api;
}
