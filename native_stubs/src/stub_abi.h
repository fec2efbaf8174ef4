/*
 * Prototypes of every function the stand-in libraries export, written from
 * docs/abi.md section 2.  Enum parameters are passed as int
 * (int32_t on every supported platform), as C enums are.
 */
#ifndef ACL_STUB_ABI_H
#define ACL_STUB_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "stub_internal.h"

typedef int aclError;
typedef int32_t aclnnStatus;
typedef void *aclrtStream;
typedef void *aclrtContext;

/* ---- libascendcl.so: runtime (docs/abi.md §2a) ---- */
STUB_API aclError aclInit(const char *configPath);
STUB_API aclError aclFinalize(void);
STUB_API aclError aclrtSetDevice(int32_t deviceId);
STUB_API aclError aclrtResetDevice(int32_t deviceId);
STUB_API aclError aclrtGetDeviceCount(uint32_t *count);
STUB_API aclError aclrtCreateStream(aclrtStream *stream);
STUB_API aclError aclrtDestroyStream(aclrtStream stream);
STUB_API aclError aclrtSynchronizeStream(aclrtStream stream);
STUB_API aclError aclrtMalloc(void **devPtr, size_t size, int32_t policy);
STUB_API aclError aclrtFree(void *devPtr);
STUB_API aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, int32_t kind);
STUB_API aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count);
STUB_API const char *aclrtGetSocName(void);
STUB_API const char *aclGetRecentErrMsg(void);
STUB_API aclError aclrtCtxSetSysParamOpt(int32_t opt, int64_t value);
STUB_API aclError aclrtCtxGetSysParamOpt(int32_t opt, int64_t *value);
STUB_API aclError aclrtSetSysParamOpt(int32_t opt, int64_t value);
STUB_API aclError aclrtGetSysParamOpt(int32_t opt, int64_t *value);
STUB_API aclError aclrtGetCurrentContext(aclrtContext *context);

/* ---- libascendcl.so: version queries (optional in CANN; src/version_stub.c) ---- */
STUB_API aclError aclsysGetVersionStr(char *pkgName, char *versionStr);
STUB_API aclError aclsysGetVersionNum(char *pkgName, int32_t *versionNum);
STUB_API int stub_release(void); /* stand-in only: the emulated release, 850 / 900 / 910 */
STUB_API aclError aclsysGetCANNVersion(int32_t name, void *version); /* aclCANNPackageVersion * */
STUB_API aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion);

/* ---- libascendcl.so: stub-only ---- */
STUB_API void aclStubInjectFailure(const char *function_name, int64_t after_n_calls, int32_t error_code);
STUB_API void aclStubClearFailures(void);
STUB_API void aclStubGetCounters(int64_t *live_tensors, int64_t *live_int_arrays, int64_t *live_executors,
                                 int64_t *live_device_bytes, int64_t *live_streams);
STUB_API void aclStubSetCallDelay(int64_t microseconds);
STUB_API int64_t aclStubGetBadReleases(void);

/* ---- libnnopbase.so (docs/abi.md §2b) ---- */
STUB_API aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum, int32_t dataType,
                                    const int64_t *stride, int64_t offset, int32_t format,
                                    const int64_t *storageDims, uint64_t storageDimsNum, void *tensorData);
STUB_API aclnnStatus aclDestroyTensor(const aclTensor *tensor);
STUB_API aclIntArray *aclCreateIntArray(const int64_t *value, uint64_t size);
STUB_API aclnnStatus aclDestroyIntArray(const aclIntArray *array);
STUB_API aclnnStatus aclSetAclOpExecutorRepeatable(aclOpExecutor *executor);
STUB_API aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor *executor);
STUB_API aclnnStatus aclSetInputTensorAddr(aclOpExecutor *executor, const size_t index, aclTensor *tensor,
                                           void *addr);
STUB_API aclnnStatus aclSetOutputTensorAddr(aclOpExecutor *executor, const size_t index, aclTensor *tensor,
                                            void *addr);
STUB_API aclnnStatus aclSetTensorAddr(aclOpExecutor *executor, const size_t index, aclTensor *tensor,
                                      void *addr);
STUB_API aclnnStatus aclnnInit(const char *configPath);
STUB_API aclnnStatus aclnnFinalize(void);

/* ---- libopapi.so (docs/abi.md §2c) ---- */
STUB_API aclnnStatus aclnnFlashAttentionUnpaddingScoreGradV3GetWorkspaceSize(
    const aclTensor *query, const aclTensor *queryRope, const aclTensor *keyIn, const aclTensor *keyInRope,
    const aclTensor *value, const aclTensor *dy, const aclTensor *pseShiftOptional, const aclTensor *dropMaskOptional,
    const aclTensor *paddingMaskOptional, const aclTensor *attenMaskOptional, const aclTensor *softmaxMaxOptional,
    const aclTensor *softmaxSumOptional, const aclTensor *softmaxInOptional, const aclTensor *attentionInOptional,
    const aclIntArray *prefixOptional, const aclIntArray *actualSeqQLenOptional,
    const aclIntArray *actualSeqKvLenOptional, const aclIntArray *qStartIdxOptional,
    const aclIntArray *kvStartIdxOptional, double scaleValue, double keepProb, int64_t preTokens, int64_t nextTokens,
    int64_t headNum, char *inputLayout, int64_t innerPrecise, int64_t sparseMode, int64_t pseType,
    const aclTensor *dqOut, const aclTensor *dqRopeOut, const aclTensor *dkOut, const aclTensor *dkRopeOut,
    const aclTensor *dvOut, const aclTensor *dpseOut, uint64_t *workspaceSize, aclOpExecutor **executor);
STUB_API aclnnStatus aclnnFlashAttentionUnpaddingScoreGradV3(void *workspace, uint64_t workspaceSize,
                                                             aclOpExecutor *executor, const aclrtStream stream);

#endif
