/*
 * libnnopbase.so stand-in: aclTensor / aclIntArray objects and the generic
 * aclOpExecutor calls.  Links libascendcl.so, which holds the shared state.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stub_abi.h"


static const StubApi *api(void)
{
    return aclStubInternalApi();
}

#define INJECT_POINT()                                       \
    do {                                                     \
        int32_t inj_code_ = api()->inject_check(__func__);   \
        if (inj_code_ != 0) {                                \
            return inj_code_;                                \
        }                                                    \
    } while (0)

#define RETURN_OK()                          \
    do {                                     \
        api()->inject_success(__func__);     \
        return ACLNN_SUCCESS;                \
    } while (0)

static int64_t dtype_size(int32_t dt)
{
    switch (dt) {
    case STUB_DT_FLOAT: return 4;
    case STUB_DT_FLOAT16: return 2;
    case STUB_DT_INT32: return 4;
    case STUB_DT_UINT8: return 1;
    case STUB_DT_INT64: return 8;
    case STUB_DT_DOUBLE: return 8;
    case STUB_DT_BOOL: return 1;
    case STUB_DT_BF16: return 2;
    default: return 0;
    }
}

/* ------------------------------------------------------------------------ */
/* aclTensor                                                                 */
/* ------------------------------------------------------------------------ */

#define FAIL_NULL(...)                      \
    do {                                    \
        api()->set_error(__VA_ARGS__);      \
        return NULL;                        \
    } while (0)

STUB_API aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum, int32_t dataType,
                                    const int64_t *stride, int64_t offset, int32_t format,
                                    const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData)
{
    const StubApi *a = api();
    if (a->inject_check(__func__) != 0) {
        return NULL;
    }
    if (viewDimsNum > STUB_MAX_DIMS) {
        FAIL_NULL("aclCreateTensor: viewDimsNum %llu exceeds %d", (unsigned long long)viewDimsNum, STUB_MAX_DIMS);
    }
    if (storageDimsNum > STUB_MAX_DIMS) {
        FAIL_NULL("aclCreateTensor: storageDimsNum %llu exceeds %d", (unsigned long long)storageDimsNum,
                  STUB_MAX_DIMS);
    }
    if (viewDimsNum > 0 && viewDims == NULL) {
        FAIL_NULL("aclCreateTensor: viewDims is NULL but viewDimsNum is %llu", (unsigned long long)viewDimsNum);
    }
    if (storageDimsNum > 0 && storageDims == NULL) {
        FAIL_NULL("aclCreateTensor: storageDims is NULL but storageDimsNum is %llu",
                  (unsigned long long)storageDimsNum);
    }
    int64_t isz = dtype_size(dataType);
    if (isz == 0) {
        FAIL_NULL("aclCreateTensor: dataType %d is not supported by the stub "
                  "(FLOAT, FLOAT16, INT32, UINT8, INT64, DOUBLE, BOOL, BF16)",
                  (int)dataType);
    }
    if (offset < 0) {
        FAIL_NULL("aclCreateTensor: offset %lld is negative", (long long)offset);
    }

    aclTensor t;
    memset(&t, 0, sizeof t);
    t.magic = STUB_MAGIC_TENSOR;
    t.dtype = dataType;
    t.format = format;
    t.ndim = (int64_t)viewDimsNum;
    t.offset = offset;
    t.itemsize = isz;
    t.storage_ndim = (int64_t)storageDimsNum;
    t.data = tensorData;

    int64_t numel = 1;
    for (uint64_t i = 0; i < viewDimsNum; i++) {
        if (viewDims[i] < 0) {
            FAIL_NULL("aclCreateTensor: viewDims[%llu] = %lld is negative", (unsigned long long)i,
                      (long long)viewDims[i]);
        }
        t.dims[i] = viewDims[i];
        if (__builtin_mul_overflow(numel, viewDims[i], &numel)) {
            FAIL_NULL("aclCreateTensor: element count overflows int64");
        }
    }
    t.numel = numel;
    /* strides: given, or contiguous row-major */
    if (stride != NULL) {
        for (uint64_t i = 0; i < viewDimsNum; i++) {
            if (stride[i] < 0) {
                FAIL_NULL("aclCreateTensor: stride[%llu] = %lld is negative (not supported by the stub)",
                          (unsigned long long)i, (long long)stride[i]);
            }
            t.strides[i] = stride[i];
        }
    } else {
        int64_t s = 1;
        for (uint64_t i = viewDimsNum; i-- > 0;) {
            t.strides[i] = s;
            int64_t d = viewDims[i] > 0 ? viewDims[i] : 1;
            if (__builtin_mul_overflow(s, d, &s)) {
                FAIL_NULL("aclCreateTensor: contiguous stride overflows int64");
            }
        }
    }
    int64_t storage_numel = 1;
    for (uint64_t i = 0; i < storageDimsNum; i++) {
        if (storageDims[i] < 0) {
            FAIL_NULL("aclCreateTensor: storageDims[%llu] = %lld is negative", (unsigned long long)i,
                      (long long)storageDims[i]);
        }
        t.storage_dims[i] = storageDims[i];
        if (__builtin_mul_overflow(storage_numel, storageDims[i], &storage_numel)) {
            FAIL_NULL("aclCreateTensor: storage element count overflows int64");
        }
    }

    if (numel > 0) {
        int64_t maxi = offset;
        for (uint64_t i = 0; i < viewDimsNum; i++) {
            int64_t step;
            if (__builtin_mul_overflow(t.dims[i] - 1, t.strides[i], &step) ||
                __builtin_add_overflow(maxi, step, &maxi)) {
                FAIL_NULL("aclCreateTensor: view extent overflows int64");
            }
        }
        t.max_index = maxi;
        if (maxi >= storage_numel) {
            FAIL_NULL("aclCreateTensor: the view reaches element %lld (offset %lld + sum((dim-1)*stride)) but "
                      "storageDims hold only %lld elements",
                      (long long)maxi, (long long)offset, (long long)storage_numel);
        }
        if (tensorData == NULL) {
            FAIL_NULL("aclCreateTensor: tensorData is NULL for a tensor with %lld elements", (long long)numel);
        }
    } else {
        t.max_index = -1;
    }

    if (tensorData != NULL) {
        if (((uintptr_t)tensorData % 32) != 0) {
            FAIL_NULL("aclCreateTensor: tensorData %p is not 32-byte aligned", tensorData);
        }
        uint64_t bytes = 0;
        if (numel > 0) {
            int64_t b;
            if (__builtin_mul_overflow(t.max_index + 1, isz, &b)) {
                FAIL_NULL("aclCreateTensor: view byte extent overflows int64");
            }
            bytes = (uint64_t)b;
        }
        if (!a->device_range(tensorData, bytes)) {
            if (!a->device_range(tensorData, 0)) {
                FAIL_NULL("aclCreateTensor: tensorData %p is not device memory (not inside any aclrtMalloc "
                          "allocation)",
                          tensorData);
            }
            FAIL_NULL("aclCreateTensor: the view reaches byte %llu past tensorData %p, beyond the end of its "
                      "device allocation",
                      (unsigned long long)bytes, tensorData);
        }
    }

    aclTensor *h = malloc(sizeof *h);
    if (h == NULL) {
        FAIL_NULL("aclCreateTensor: out of host memory");
    }
    *h = t;
    if (a->handle_add(STUB_H_TENSOR, h) != 0) {
        free(h);
        FAIL_NULL("aclCreateTensor: out of host memory");
    }
    a->inject_success(__func__);
    return h;
}

STUB_API aclnnStatus aclDestroyTensor(const aclTensor *tensor)
{
    INJECT_POINT();
    if (tensor == NULL) {
        RETURN_OK();
    }
    if (!api()->handle_remove(STUB_H_TENSOR, tensor)) {
        api()->note_bad_release(__func__, tensor);
        api()->set_error("aclDestroyTensor: %p is not a live aclTensor (double destroy?)", (const void *)tensor);
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    aclTensor *t = (aclTensor *)tensor;
    t->magic = 0;
    free(t);
    RETURN_OK();
}

/* ------------------------------------------------------------------------ */
/* aclIntArray                                                               */
/* ------------------------------------------------------------------------ */

STUB_API aclIntArray *aclCreateIntArray(const int64_t *value, uint64_t size)
{
    const StubApi *a = api();
    if (a->inject_check(__func__) != 0) {
        return NULL;
    }
    if (size > 0 && value == NULL) {
        FAIL_NULL("aclCreateIntArray: value is NULL but size is %llu", (unsigned long long)size);
    }
    if (size > ((uint64_t)1 << 32)) {
        FAIL_NULL("aclCreateIntArray: size %llu is too large", (unsigned long long)size);
    }
    aclIntArray *arr = calloc(1, sizeof *arr);
    if (arr == NULL) {
        FAIL_NULL("aclCreateIntArray: out of host memory");
    }
    arr->magic = STUB_MAGIC_INTARR;
    arr->size = size;
    if (size > 0) {
        arr->values = malloc(size * sizeof(int64_t));
        if (arr->values == NULL) {
            free(arr);
            FAIL_NULL("aclCreateIntArray: out of host memory");
        }
        memcpy(arr->values, value, size * sizeof(int64_t));
    }
    if (a->handle_add(STUB_H_INT_ARRAY, arr) != 0) {
        free(arr->values);
        free(arr);
        FAIL_NULL("aclCreateIntArray: out of host memory");
    }
    a->inject_success(__func__);
    return arr;
}

STUB_API aclnnStatus aclDestroyIntArray(const aclIntArray *array)
{
    INJECT_POINT();
    if (array == NULL) {
        RETURN_OK();
    }
    if (!api()->handle_remove(STUB_H_INT_ARRAY, array)) {
        api()->note_bad_release(__func__, array);
        api()->set_error("aclDestroyIntArray: %p is not a live aclIntArray (double destroy?)", (const void *)array);
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    aclIntArray *arr = (aclIntArray *)array;
    arr->magic = 0;
    free(arr->values);
    free(arr);
    RETURN_OK();
}

/* ------------------------------------------------------------------------ */
/* aclOpExecutor                                                             */
/* ------------------------------------------------------------------------ */

/* common executor-argument check: NULL -> 561103 (documented), not live -> 161001 */
static aclnnStatus check_executor(const char *fn, const aclOpExecutor *e)
{
    if (e == NULL) {
        api()->set_error("%s: executor is NULL", fn);
        return ACLNN_ERR_INNER_NULLPTR;
    }
    if (!api()->handle_live(STUB_H_EXECUTOR, e)) {
        api()->set_error("%s: executor %p is not live (already run, destroyed, or never created)", fn,
                         (const void *)e);
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    return ACLNN_SUCCESS;
}

STUB_API aclnnStatus aclSetAclOpExecutorRepeatable(aclOpExecutor *executor)
{
    INJECT_POINT();
    aclnnStatus rc = check_executor(__func__, executor);
    if (rc != ACLNN_SUCCESS) {
        return rc;
    }
    executor->repeatable = 1;
    RETURN_OK();
}

STUB_API aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor *executor)
{
    INJECT_POINT();
    if (executor == NULL) {
        api()->set_error("aclDestroyAclOpExecutor: executor is NULL");
        return ACLNN_ERR_INNER_NULLPTR;
    }
    if (!api()->handle_remove(STUB_H_EXECUTOR, executor)) {
        api()->note_bad_release(__func__, executor);
        api()->set_error("aclDestroyAclOpExecutor: executor %p is not live (already run, destroyed, or never "
                         "created)",
                         (void *)executor);
        return ACLNN_ERR_PARAM_NULLPTR;
    }
    stub_exec_free(executor);
    RETURN_OK();
}

/* which: 0 = inputs, 1 = outputs, 2 = inputs then outputs */
static aclnnStatus set_addr(const char *fn, int which, aclOpExecutor *e, size_t index, aclTensor *tensor,
                            void *addr)
{
    aclnnStatus rc = check_executor(fn, e);
    if (rc != ACLNN_SUCCESS) {
        return rc;
    }
    if (tensor == NULL) {
        api()->set_error("%s: tensor is NULL", fn);
        return ACLNN_ERR_INNER_NULLPTR;
    }
    aclTensor *slot = NULL;
    aclTensor *recorded = NULL;
    size_t limit = 0;
    if (which == 0) {
        limit = e->n_in;
        if (index < e->n_in) {
            slot = &e->in[index];
            recorded = e->in_handle[index];
        }
    } else if (which == 1) {
        limit = e->n_out;
        if (index < e->n_out) {
            slot = &e->out[index];
            recorded = e->out_handle[index];
        }
    } else {
        limit = e->n_in + e->n_out;
        if (index < e->n_in) {
            slot = &e->in[index];
            recorded = e->in_handle[index];
        } else if (index < e->n_in + e->n_out) {
            slot = &e->out[index - e->n_in];
            recorded = e->out_handle[index - e->n_in];
        }
    }
    if (slot == NULL) {
        api()->set_error("%s: index %zu out of range [0, %zu) (indices count the non-NULL tensors of "
                         "phase 1 in parameter order)",
                         fn, index, limit);
        return ACLNN_ERR_PARAM_INVALID;
    }
    /* stub addition: the new address must hold the recorded view */
    if (slot->numel > 0) {
        uint64_t bytes = (uint64_t)(slot->max_index + 1) * (uint64_t)slot->itemsize;
        if (addr == NULL || ((uintptr_t)addr % 32) != 0 || !api()->device_range(addr, bytes)) {
            api()->set_error("%s: addr %p must be 32-byte aligned device memory holding %llu bytes for the "
                             "recorded view of tensor %zu",
                             fn, addr, (unsigned long long)bytes, index);
            return ACLNN_ERR_PARAM_INVALID;
        }
    }
    /* the snapshot used by phase 2, the recorded handle and the handle passed
     * in (normally the same object) all get the new address */
    slot->data = addr;
    if (recorded != NULL && api()->handle_live(STUB_H_TENSOR, recorded)) {
        recorded->data = addr;
    }
    if (tensor != recorded && api()->handle_live(STUB_H_TENSOR, tensor)) {
        tensor->data = addr;
    }
    return ACLNN_SUCCESS;
}

STUB_API aclnnStatus aclSetInputTensorAddr(aclOpExecutor *executor, const size_t index, aclTensor *tensor,
                                           void *addr)
{
    INJECT_POINT();
    aclnnStatus rc = set_addr(__func__, 0, executor, index, tensor, addr);
    if (rc != ACLNN_SUCCESS) {
        return rc;
    }
    RETURN_OK();
}

STUB_API aclnnStatus aclSetOutputTensorAddr(aclOpExecutor *executor, const size_t index, aclTensor *tensor,
                                            void *addr)
{
    INJECT_POINT();
    aclnnStatus rc = set_addr(__func__, 1, executor, index, tensor, addr);
    if (rc != ACLNN_SUCCESS) {
        return rc;
    }
    RETURN_OK();
}

STUB_API aclnnStatus aclSetTensorAddr(aclOpExecutor *executor, const size_t index, aclTensor *tensor, void *addr)
{
    INJECT_POINT();
    aclnnStatus rc = set_addr(__func__, 2, executor, index, tensor, addr);
    if (rc != ACLNN_SUCCESS) {
        return rc;
    }
    RETURN_OK();
}

/* ------------------------------------------------------------------------ */
/* aclnnInit / aclnnFinalize                                                 */
/* ------------------------------------------------------------------------ */

STUB_API aclnnStatus aclnnInit(const char *configPath)
{
    (void)configPath;
    INJECT_POINT();
    RETURN_OK();
}

STUB_API aclnnStatus aclnnFinalize(void)
{
    INJECT_POINT();
    RETURN_OK();
}
