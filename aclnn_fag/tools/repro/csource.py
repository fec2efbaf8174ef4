"""The text of ``repro.c`` and ``build.sh`` for one call (see :mod:`aclnn_fag.tools.repro`).

``repro.c`` follows the op's documented C sample and makes the calls the binding
(``aclnn_fag/acl/``) makes, in its order: aclInit, aclrtSetDevice, a stream, the context's
ACL_OPT_DETERMINISTIC set explicitly, per input one aclrtMalloc + H2D copy, bf16 outputs
zero-filled (docs/faults.md), the aclTensors (C-contiguous, offset 0, 1-D storage, format ND)
and aclIntArrays, phase 1, a workspace only when its size is > 0, phase 2, the handles
destroyed, aclrtSynchronizeStream, the D2H copies. Slots, attributes and the phase-1 argument
order all come from ``aclnn_fag/spec.py``.
"""

from __future__ import annotations

import textwrap
from string import Template

import numpy as np

from ...acl.tensors import acl_dtype
from ...spec import BACKWARD_V3

__all__ = ["c_source", "build_script", "phase1_call"]

OP = BACKWARD_V3


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _double(x) -> str:
    return f"{float(x).hex()} /* {float(x)!r} */"


def _tensor_rows(specs, names) -> str:
    rows = []
    for name, spec in zip(names, specs):
        if spec is None:
            rows.append(f"    {{{_c_string(name)}, 0, ACL_DT_UNDEFINED, 0, {{0}}, 0}},")
            continue
        dims = ", ".join(str(int(d)) for d in spec["shape"]) or "0"
        dtype = f"(aclDataType){acl_dtype(np.dtype(spec['dtype']))} /* {spec['dtype']} */"
        rows.append(f"    {{{_c_string(name)}, 1, {dtype}, {len(spec['shape'])}, {{{dims}}}, "
                    f"{int(spec['itemsize'])}}},")
    return "\n".join(rows)


def _attributes(attrs: dict) -> str:
    """One C constant per attribute of the spec (the layout: the ``layOut`` string)."""
    lines = []
    for p in OP.params:
        if p.role != "attr" or p.name == "input_layout":
            continue
        value = attrs[p.name]
        lines.append(f"static const double {p.name.upper()} = {_double(value)};"
                     if p.c_type == "double" else
                     f"static const int64_t {p.name.upper()} = {int(value)}LL;")
    return "\n".join(lines)


def c_source(*, case: str, version: str, inputs, int_arrays: dict, attrs: dict, outputs,
             deterministic: int, criteria: dict, k: float, floor_rel: float,
             floor_min: float) -> str:
    """The reproducer. ``inputs``/``outputs``: per slot of the spec None or {"shape",
    "dtype", "itemsize"}; ``criteria``: per judged output {"ref_max_abs_err", "rtol",
    "share_limit"}."""
    ia_decl, ia_rows = [], []
    for name in OP.int_arrays:
        vals = int_arrays.get(name)
        if vals is None:
            ia_rows.append(f"    {{{_c_string(name)}, 0, NULL, 0}},")
            continue
        ia_decl.append(f"static const int64_t IA_{name.upper()}[] = "
                       f"{{{', '.join(str(int(v)) for v in vals) or '0'}}};")
        ia_rows.append(f"    {{{_c_string(name)}, 1, IA_{name.upper()}, {len(vals)}}},")
    judge_rows = [f"    {{{_c_string(n)}, {_double(c['ref_max_abs_err'])}, {_double(c['rtol'])}, "
                  f"{_double(c['share_limit'])}}}," for n, c in criteria.items()]
    layout = attrs["input_layout"]

    def c_names(role):
        return ", ".join(p.c_name for p in OP.params if p.role == role)

    return Template(TEMPLATE).substitute(
        case=case, version=version, op=OP.symbol, phase1=OP.phase1, header=OP.header,
        n_in=len(OP.inputs), in_names=c_names("input"), in_rows=_tensor_rows(inputs, OP.inputs),
        n_ia=len(OP.int_arrays), ia_decl="\n".join(ia_decl), ia_rows="\n".join(ia_rows),
        n_out=len(OP.outputs), out_names=c_names("output"),
        out_rows=_tensor_rows(outputs, OP.outputs),
        n_judge=len(judge_rows), judge_rows="\n".join(judge_rows),
        attributes=_attributes(attrs), det=int(deterministic),
        layout_init="NULL" if layout is None else f"strdup({_c_string(layout)})",
        k=_double(k), floor_rel=float(floor_rel).hex(), floor_min=float(floor_min).hex(),
        phase1_call=phase1_call())


def phase1_call(op=OP) -> str:
    """The phase-1 call, its arguments in the order of ``op``'s prototype: tensors from
    g_in/g_out, int arrays, attribute constants, the two out-parameters."""
    args, seen = [], {"input": 0, "int_array": 0, "output": 0}
    slot = {"input": "g_in[{}].tensor", "int_array": "intArrays[{}]", "output": "g_out[{}].tensor"}
    for p in op.params:
        if p.role in seen:
            args.append(slot[p.role].format(seen[p.role]))
            seen[p.role] += 1
        elif p.role == "attr":
            args.append("layOut" if p.name == "input_layout" else p.name.upper())
        else:
            args.append("&workspaceSize" if p.role == "workspace_size" else "&executor")
    body = textwrap.fill(", ".join(args), width=100, initial_indent=" " * 8,
                         subsequent_indent=" " * 8, break_long_words=False)
    return f"{op.phase1}(\n{body})"


def build_script(opapi_preference) -> str:
    return Template(BUILD).substitute(names=" ".join(opapi_preference), phase1=OP.phase1)


BUILD = r'''#!/bin/sh
# Build ./repro against the CANN install at $$ASCEND_HOME_PATH (set by set_env.sh).
# The op-API library is chosen as aclnn_fag chooses it: the first of ${names}
# in $$ASCEND_HOME_PATH/lib64 that exports ${phase1}.
set -eu
cd "$$(dirname "$$0")"
ASCEND_HOME_PATH="$${ASCEND_HOME_PATH:-/usr/local/Ascend/ascend-toolkit/latest}"
INC="$$ASCEND_HOME_PATH/include"
LIB="$$ASCEND_HOME_PATH/lib64"
OPAPI=""
for name in ${names}; do
    if [ -f "$$LIB/$$name" ]; then
        if ! command -v nm >/dev/null 2>&1 ||
                nm -D --defined-only "$$LIB/$$name" 2>/dev/null | grep -q ' ${phase1}$$'; then
            OPAPI="$$name"; break
        fi
    fi
done
if [ -z "$$OPAPI" ]; then
    echo "build.sh: no op-API library (${names}) exporting the V3 op in $$LIB" >&2
    exit 1
fi
OPAPI_LINK="-l$$(echo "$$OPAPI" | sed -e 's/^lib//' -e 's/\.so$$//')"
echo "build.sh: $$INC, $$LIB, op-API library $$OPAPI"
$${CC:-cc} -std=gnu11 -O2 -Wall -o repro repro.c -I"$$INC" -L"$$LIB" -Wl,-rpath,"$$LIB" \
    -Wl,--no-as-needed "$$OPAPI_LINK" -lnnopbase -lascendcl -Wl,--as-needed -ldl -lm
echo "build.sh: built ./repro; run it from this directory: ./repro"
'''


TEMPLATE = r'''/*
 * Reproducer of the failing parity case "${case}", generated by aclnn_fag ${version}.
 *
 * Runs ${op} (both phases) with exactly the arguments the
 * aclnn_fag binding passed, reading inputs/<name>.bin (raw little-endian, C order) and
 * writing outputs/<name>.bin (bf16, shaped like the matching input); then judges each output
 * against golden/<name>.bin (the fp64 golden rounded to float32) with the parity criteria:
 *   1. max|y - g| <= k * ref_max_abs_err + max(1e-6 * max|g|, 1e-30)     (k, ref: below)
 *   2. share(|y - g| / max(|g|, RMS(g)) > rtol) < share_limit
 * Exit status: 0 every output passes, 1 an output fails, 2 an ACL/aclnn call or file I/O failed.
 * Build: ./build.sh (needs $$ASCEND_HOME_PATH). Device: $$ACLNN_FAG_DEVICE (default 0).
 */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "acl/acl.h"
#include "${header}"

/* an ACL/aclnn call failed: print its status code and aclGetRecentErrMsg, exit status 2 */
#define CHECK(cond, what, code)             \
    do {                                    \
        if (!(cond)) {                      \
            print_recent_error(what, code); \
            return 2;                       \
        }                                   \
    } while (0)

#define MAX_DIMS 8

typedef struct {
    const char *name;
    int present;
    aclDataType dtype;
    int ndim;
    int64_t dims[MAX_DIMS];
    size_t itemsize;
    /* filled at run time */
    int64_t numel;
    void *host;
    void *dev;
    aclTensor *tensor;
} TensorArg;

typedef struct {
    const char *name;
    int present;
    const int64_t *values;
    uint64_t size;
} IntArrayArg;

typedef struct {
    const char *name;
    double ref_max_abs_err; /* the NumPy bf16 reference's error against the fp64 golden */
    double rtol;
    double share_limit;
} Criterion;

/* ${in_names} */
static TensorArg g_in[${n_in}] = {
${in_rows}
};

${ia_decl}
static const IntArrayArg g_ia[${n_ia}] = {
${ia_rows}
};

/* ${out_names} */
static TensorArg g_out[${n_out}] = {
${out_rows}
};

static const Criterion g_criteria[${n_judge}] = {
${judge_rows}
};

${attributes}
static const int64_t DETERMINISTIC = ${det}; /* ACL_OPT_DETERMINISTIC, set explicitly as aclnn_fag does */
static const double K = ${k};
static const double FLOOR_REL = ${floor_rel};
static const double FLOOR_MIN = ${floor_min};

static void print_recent_error(const char *what, long long code)
{
    const char *msg = aclGetRecentErrMsg();
    fprintf(stderr, "%s failed: %lld%s%s\n", what, code, msg ? "\n  " : "", msg ? msg : "");
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* <dir>/<sub>/<name>.bin, read whole (exactly bytes long) or written */
static int file_io(const char *dir, const char *sub, const char *name, void *buf, size_t bytes,
                   int write)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s.bin", dir, sub, name);
    FILE *f = fopen(path, write ? "wb" : "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    int ok;
    if (write) {
        ok = !bytes || fwrite(buf, 1, bytes, f) == bytes;
    } else {
        ok = (bytes ? fread(buf, 1, bytes, f) : 0) == bytes;
        ok = fgetc(f) == EOF && ok;
    }
    fclose(f);
    if (!ok) fprintf(stderr, write ? "cannot write %s\n" : "%s: expected exactly the bytes of its shape\n", path);
    return ok ? 0 : -1;
}

static int64_t numel_of(const TensorArg *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->dims[i];
    return n;
}

/* CreateAclTensor of the documented sample: device memory (an empty tensor gets none) with the
 * host data copied in (inputs) or zeros (outputs: a part the op leaves unwritten reads 0). */
static int CreateAclTensor(TensorArg *t, int copy_in)
{
    size_t bytes = (size_t)t->numel * t->itemsize;
    t->dev = NULL;
    if (bytes > 0) {
        aclError ret = aclrtMalloc(&t->dev, bytes, ACL_MEM_MALLOC_HUGE_FIRST);
        CHECK(ret == ACL_SUCCESS, "aclrtMalloc", ret);
        ret = copy_in ? aclrtMemcpy(t->dev, bytes, t->host, bytes, ACL_MEMCPY_HOST_TO_DEVICE)
                      : aclrtMemset(t->dev, bytes, 0, bytes);
        CHECK(ret == ACL_SUCCESS, copy_in ? "aclrtMemcpy H2D" : "aclrtMemset", ret);
    }
    return 0;
}

/* the aclTensor: C-contiguous strides in elements, offset 0, 1-D storage of numel, format ND */
static int MakeTensorHandle(TensorArg *t)
{
    int64_t strides[MAX_DIMS], step = 1;
    int64_t storage[1] = {t->numel};
    for (int i = t->ndim - 1; i >= 0; i--) {
        strides[i] = step;
        step *= t->dims[i] > 1 ? t->dims[i] : 1;
    }
    t->tensor = aclCreateTensor(t->dims, (uint64_t)t->ndim, t->dtype, strides, 0, ACL_FORMAT_ND, storage, 1,
                                t->dev);
    CHECK(t->tensor != NULL, "aclCreateTensor", 0);
    return 0;
}

static double bf16_to_double(uint16_t v)
{
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

static double max2(double a, double b)
{
    return a > b ? a : b;
}

/* criterion 1 and 2 of aclnn_fag.tools.accuracy.judge, against the float32 golden */
static int judge(const char *dir)
{
    int failed = 0;
    printf("%-8s %12s %12s %6s %12s %11s %10s %s\n", "output", "max_abs_err", "bound", "ratio", "share>rtol",
           "limit", "max_rel", "verdict");
    for (int c = 0; c < ${n_judge}; c++) {
        const Criterion *cr = &g_criteria[c];
        const TensorArg *t = NULL;
        for (int i = 0; i < ${n_out}; i++)
            if (g_out[i].present && strcmp(g_out[i].name, cr->name) == 0) t = &g_out[i];
        if (t == NULL) continue;
        int64_t n = t->numel;
        float *g = (float *)xmalloc((size_t)n * sizeof(float));
        if (file_io(dir, "golden", cr->name, g, (size_t)n * sizeof(float), 0) != 0) return 2;
        const uint16_t *y = (const uint16_t *)t->host;
        double peak = 0.0, sq = 0.0;
        for (int64_t i = 0; i < n; i++) {
            peak = max2(peak, fabs((double)g[i]));
            sq += (double)g[i] * (double)g[i];
        }
        double floor_ = max2(n ? sqrt(sq / (double)n) : 0.0, FLOOR_MIN);
        double max_abs = 0.0, max_rel = 0.0;
        int64_t above = 0, nonfinite = 0;
        for (int64_t i = 0; i < n; i++) {
            double yv = bf16_to_double(y[i]);
            if (!isfinite(yv)) {
                nonfinite++;
                yv = INFINITY;
            }
            double err = fabs(yv - (double)g[i]);
            double rel = err / max2(fabs((double)g[i]), floor_);
            max_abs = max2(max_abs, err);
            max_rel = max2(max_rel, rel);
            if (rel > cr->rtol) above++;
        }
        double bound = K * cr->ref_max_abs_err + max2(FLOOR_REL * peak, FLOOR_MIN);
        double share = n ? (double)above / (double)n : 0.0;
        int fa_pass = max_abs <= bound && nonfinite == 0;
        int dt_pass = share < cr->share_limit && nonfinite == 0;
        double ratio = cr->ref_max_abs_err > 0 ? max_abs / cr->ref_max_abs_err : (max_abs == 0 ? 0.0 : INFINITY);
        printf("%-8s %12.4e %12.4e %6.2f %12.4e %11.3e %10.3e %s%s%s\n", cr->name, max_abs, bound, ratio, share,
               cr->share_limit, max_rel, fa_pass && dt_pass ? "PASS" : "FAIL", fa_pass ? "" : " (criterion 1)",
               dt_pass ? "" : " (criterion 2)");
        if (nonfinite) printf("         %lld non-finite elements\n", (long long)nonfinite);
        if (!(fa_pass && dt_pass)) failed = 1;
        free(g);
    }
    return failed;
}

static void print_versions(void)
{
    typedef aclError (*VersionStrFn)(char *, char *);
    typedef aclError (*CannVersionFn)(aclCANNPackageName, aclCANNPackageVersion *);
    typedef aclError (*ApiVersionFn)(int32_t *, int32_t *, int32_t *);
    typedef const char *(*SocFn)(void);
    char buf[ACL_PKG_VERSION_MAX_SIZE] = {0};
    VersionStrFn vs = (VersionStrFn)dlsym(RTLD_DEFAULT, "aclsysGetVersionStr");
    CannVersionFn cv = (CannVersionFn)dlsym(RTLD_DEFAULT, "aclsysGetCANNVersion");
    ApiVersionFn av = (ApiVersionFn)dlsym(RTLD_DEFAULT, "aclrtGetVersion");
    SocFn soc = (SocFn)dlsym(RTLD_DEFAULT, "aclrtGetSocName");
    aclCANNPackageVersion v;
    int32_t ma = 0, mi = 0, pa = 0;
    memset(&v, 0, sizeof v);
    char cann[] = "CANN";
    if (cv != NULL && cv(ACL_PKG_NAME_CANN, &v) == ACL_SUCCESS && v.version[0])
        printf("CANN version: %s (aclsysGetCANNVersion)\n", v.version);
    else if (vs != NULL && vs(cann, buf) == ACL_SUCCESS && buf[0])
        printf("CANN version: %s (aclsysGetVersionStr)\n", buf);
    else if (av != NULL && av(&ma, &mi, &pa) == ACL_SUCCESS)
        printf("CANN version: unknown; ACL API %d.%d.%d (aclrtGetVersion)\n", ma, mi, pa);
    else
        printf("CANN version: unknown\n");
    char packages[2][32] = {"runtime", "ops_transformer"};
    for (int i = 0; i < 2; i++) {
        memset(buf, 0, sizeof buf);
        if (vs != NULL && vs(packages[i], buf) == ACL_SUCCESS && buf[0])
            printf("%s version: %s (aclsysGetVersionStr)\n", packages[i], buf);
        else
            printf("%s version: unknown\n", packages[i]);
    }
    const char *name = soc != NULL ? soc() : NULL;
    printf("SoC: %s\n", name ? name : "unknown");
}

/* aclrtCtxSetSysParamOpt: the runtime library, else libacl_op_compiler (as aclnn_fag resolves it) */
static int set_deterministic(int64_t value)
{
    typedef aclError (*SetOptFn)(aclSysParamOpt, int64_t);
    SetOptFn fn = (SetOptFn)dlsym(RTLD_DEFAULT, "aclrtCtxSetSysParamOpt");
    if (fn == NULL) {
        void *h = dlopen("libacl_op_compiler.so", RTLD_NOW | RTLD_LOCAL);
        if (h != NULL) fn = (SetOptFn)dlsym(h, "aclrtCtxSetSysParamOpt");
    }
    if (fn == NULL) {
        printf("note: aclrtCtxSetSysParamOpt not found; ACL_OPT_DETERMINISTIC left as it is\n");
        return 0;
    }
    aclError ret = fn(ACL_OPT_DETERMINISTIC, value);
    CHECK(ret == ACL_SUCCESS, "aclrtCtxSetSysParamOpt", ret);
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    const char *dev_env = getenv("ACLNN_FAG_DEVICE");
    int32_t deviceId = (dev_env && dev_env[0]) ? (int32_t)atoi(dev_env) : 0;
    int rc;
    printf("${op} reproducer: case ${case}\n");

    /* 1. host data */
    for (int i = 0; i < ${n_in}; i++) {
        TensorArg *t = &g_in[i];
        if (!t->present) continue;
        t->numel = numel_of(t);
        t->host = xmalloc((size_t)t->numel * t->itemsize);
        if (file_io(dir, "inputs", t->name, t->host, (size_t)t->numel * t->itemsize, 0) != 0) return 2;
    }

    /* 2. (fixed) device and stream initialisation */
    aclError ret = aclInit(NULL);
    CHECK(ret == ACL_SUCCESS, "aclInit", ret);
    print_versions();
    ret = aclrtSetDevice(deviceId);
    CHECK(ret == ACL_SUCCESS, "aclrtSetDevice", ret);
    aclrtStream stream = NULL;
    ret = aclrtCreateStream(&stream);
    CHECK(ret == ACL_SUCCESS, "aclrtCreateStream", ret);
    if ((rc = set_deterministic(DETERMINISTIC)) != 0) return rc;

    /* 3. inputs (one buffer each, copied in), zero-filled bf16 outputs, then the handles */
    for (int i = 0; i < ${n_in}; i++)
        if (g_in[i].present && (rc = CreateAclTensor(&g_in[i], 1)) != 0) return rc;
    for (int i = 0; i < ${n_out}; i++) {
        if (!g_out[i].present) continue;
        g_out[i].numel = numel_of(&g_out[i]);
        if ((rc = CreateAclTensor(&g_out[i], 0)) != 0) return rc;
    }
    for (int i = 0; i < ${n_in}; i++)
        if (g_in[i].present && (rc = MakeTensorHandle(&g_in[i])) != 0) return rc;
    aclIntArray *intArrays[${n_ia}] = {NULL};
    for (int i = 0; i < ${n_ia}; i++) {
        if (!g_ia[i].present) continue;
        static const int64_t none[1] = {0};
        intArrays[i] = aclCreateIntArray(g_ia[i].size ? g_ia[i].values : none, g_ia[i].size);
        CHECK(intArrays[i] != NULL, "aclCreateIntArray", 0);
    }
    for (int i = 0; i < ${n_out}; i++)
        if (g_out[i].present && (rc = MakeTensorHandle(&g_out[i])) != 0) return rc;
    char *layOut = ${layout_init};

    /* 4. phase 1 */
    uint64_t workspaceSize = 0;
    aclOpExecutor *executor = NULL;
    ret = ${phase1_call};
    CHECK(ret == ACL_SUCCESS, "${phase1}", ret);
    printf("phase 1: workspace %llu bytes\n", (unsigned long long)workspaceSize);

    /* 5. workspace (only when > 0) and phase 2 */
    void *workspaceAddr = NULL;
    if (workspaceSize > 0) {
        ret = aclrtMalloc(&workspaceAddr, workspaceSize, ACL_MEM_MALLOC_HUGE_FIRST);
        CHECK(ret == ACL_SUCCESS, "aclrtMalloc (workspace)", ret);
    }
    ret = ${op}(workspaceAddr, workspaceSize, executor, stream);
    CHECK(ret == ACL_SUCCESS, "${op}", ret);

    /* 6. handles released right after phase 2 returns (as aclnn_fag does), then synchronise */
    for (int i = 0; i < ${n_in}; i++)
        if (g_in[i].tensor) aclDestroyTensor(g_in[i].tensor);
    for (int i = 0; i < ${n_ia}; i++)
        if (intArrays[i]) aclDestroyIntArray(intArrays[i]);
    for (int i = 0; i < ${n_out}; i++)
        if (g_out[i].tensor) aclDestroyTensor(g_out[i].tensor);
    ret = aclrtSynchronizeStream(stream);
    CHECK(ret == ACL_SUCCESS, "aclrtSynchronizeStream", ret);

    /* 7. outputs back to the host and to outputs/<name>.bin */
    char outdir[4096];
    snprintf(outdir, sizeof outdir, "%s/outputs", dir);
    mkdir(outdir, 0777);
    for (int i = 0; i < ${n_out}; i++) {
        TensorArg *t = &g_out[i];
        if (!t->present) continue;
        size_t bytes = (size_t)t->numel * t->itemsize;
        t->host = xmalloc(bytes);
        if (bytes) {
            ret = aclrtMemcpy(t->host, bytes, t->dev, bytes, ACL_MEMCPY_DEVICE_TO_HOST);
            CHECK(ret == ACL_SUCCESS, "aclrtMemcpy D2H", ret);
        }
        if (file_io(dir, "outputs", t->name, t->host, bytes, 1) != 0) return 2;
    }

    /* 8. release device resources */
    for (int i = 0; i < ${n_in}; i++)
        if (g_in[i].dev) aclrtFree(g_in[i].dev);
    for (int i = 0; i < ${n_out}; i++)
        if (g_out[i].dev) aclrtFree(g_out[i].dev);
    if (workspaceAddr) aclrtFree(workspaceAddr);
    aclrtDestroyStream(stream);
    aclrtResetDevice(deviceId);
    aclFinalize();
    free(layOut);

    /* 9. judge against the golden */
    int failed = judge(dir);
    if (failed == 2) return 2;
    printf("%s\n", failed ? "FAIL: the op's result fails the parity criteria" : "PASS");
    return failed ? 1 : 0;
}
'''
