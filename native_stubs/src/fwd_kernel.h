/*
 * The stand-in forward's math (fwd_kernel.c), shared with its two-phase entry points
 * (opapi_fwd_stub.c).  Not part of any ABI.
 */
#ifndef ACL_STUB_FWD_KERNEL_H
#define ACL_STUB_FWD_KERNEL_H

#include <stdint.h>

#include "stub_internal.h"

#include "kernel_math.h"

/* everything the kernel needs, recorded at phase 1 (tensors are the executor's snapshots) */
typedef struct FwdProblem {
    const aclTensor *q, *qr, *k, *kr, *v, *mask; /* inputs */
    const aclTensor *smax, *ssum, *out;          /* outputs */
    int64_t T1, N1, D, Dr, T2, N2, Dv;
    int64_t nb;                                  /* sequences (B, trailing empty ones removed) */
    const int64_t *cum_q, *cum_kv;               /* cumulative ends, nb entries at least */
    int64_t max_sq, max_skv;
    int64_t sparse, pre, next, band_idx;         /* tokens already normalised */
    int mask_kind;                               /* STUB_MASK_* */
    float scale;                                 /* float32(scaleValue) */
} FwdProblem;

/* bytes of scratch (the "workspace") fwd_kernel_run needs */
uint64_t fwd_kernel_workspace_bytes(const FwdProblem *p);

/* Computes attentionOut and the statistics into the output views; scratch holds
 * fwd_kernel_workspace_bytes(p) bytes.  Always succeeds. */
void fwd_kernel_run(const FwdProblem *p, void *scratch);

#endif
