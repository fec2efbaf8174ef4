/*
 * Argument trace of the stand-in op (libopapi.so, src/trace_stub.c).
 *
 * With ACL_STUB_TRACE=<file> set, every call of the backward op's two phases appends one JSON
 * line to <file> describing exactly what it received: each tensor's dtype, format, view dims,
 * strides, offset, storage dims and an FNV-1a hash of its storage bytes; each int array's
 * values; every attribute (doubles as exact hex floats); NULL-ness of the out-parameters; the
 * context's deterministic option. Tests use it to prove that two callers (the Python binding
 * and a generated C reproducer) passed the same arguments. Unset: no effect.
 */
#ifndef ACL_STUB_TRACE_H
#define ACL_STUB_TRACE_H

#include <stdint.h>

#include "stub_internal.h"

void stub_trace_fag_phase1(const aclTensor *const inputs[14], const aclIntArray *const int_arrays[5],
                           double scaleValue, double keepProb, int64_t preTokens, int64_t nextTokens,
                           int64_t headNum, const char *inputLayout, int64_t innerPrecise,
                           int64_t sparseMode, int64_t pseType, const aclTensor *const outputs[6],
                           const void *workspaceSize, const void *executor);
void stub_trace_fag_phase2(const void *workspace, uint64_t workspaceSize, const void *executor,
                           const void *stream);

#endif
