"""The text of ``repro.c`` and ``build.sh`` for one call (see :mod:`aclnn_fag.tools.repro`).

``repro.c`` follows the op's documented C sample (Init, CreateAclTensor, the two phases,
synchronise, copy back, release) and makes exactly the calls the binding
(``aclnn_fag/acl/``) makes, in its order: aclInit(NULL), aclrtSetDevice, a stream, the
context's ACL_OPT_DETERMINISTIC set explicitly, one aclrtMalloc + H2D copy per input, bf16
output buffers zero-filled with aclrtMemset (docs/faults.md), aclCreateTensor for every non-NULL input (slot order, C-contiguous strides
in elements, offset 0, 1-D storageDims = element count, format ND), aclCreateIntArray for
every non-NULL int array, the output tensors, phase 1 (its arguments in the
order of ``aclnn_fag/spec.py``), a workspace only when its size is > 0, phase 2, the tensors/int arrays destroyed, aclrtSynchronizeStream, D2H copies.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from ...spec import BACKWARD_V3, OpVersion

__all__ = ["c_source", "build_script", "phase1_call", "ACL_DTYPE_NAMES"]

ACL_DTYPE_NAMES = {"float32": "ACL_FLOAT", "float16": "ACL_FLOAT16", "int8": "ACL_INT8",
                   "int32": "ACL_INT32", "uint8": "ACL_UINT8", "int64": "ACL_INT64",
                   "float64": "ACL_DOUBLE", "bool": "ACL_BOOL", "bfloat16": "ACL_BF16"}


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_rows(specs: List[Optional[dict]], names) -> str:
    rows = []
    for name, spec in zip(names, specs):
        if spec is None:
            rows.append(f'    {{{_c_string(name)}, 0, ACL_DT_UNDEFINED, 0, {{0}}, 0}},')
            continue
        dims = ", ".join(str(int(d)) for d in spec["shape"]) or "0"
        rows.append(f'    {{{_c_string(name)}, 1, {ACL_DTYPE_NAMES[spec["dtype"]]}, {len(spec["shape"])}, '
                    f'{{{dims}}}, {int(spec["itemsize"])}}},')
    return "\n".join(rows)


def c_source(*, case: str, version: str, inputs: List[Optional[dict]], input_names,
             int_arrays: Dict[str, Optional[list]], int_array_names, attrs: dict,
             outputs: List[Optional[dict]], output_names, deterministic: int,
             criteria: Dict[str, dict], k: float, floor_rel: float, floor_min: float) -> str:
    """The reproducer. ``inputs``/``outputs``: per slot None or {"shape", "dtype", "itemsize"};
    ``criteria``: per judged output {"ref_max_abs_err", "rtol", "share_limit"}."""
    ia_decl, ia_rows = [], []
    for name in int_array_names:
        vals = int_arrays.get(name)
        if vals is None:
            ia_rows.append(f'    {{{_c_string(name)}, 0, NULL, 0}},')
            continue
        body = ", ".join(str(int(v)) for v in vals) or "0"
        ia_decl.append(f"static const int64_t IA_{name.upper()}[] = {{{body}}};")
        ia_rows.append(f'    {{{_c_string(name)}, 1, IA_{name.upper()}, {len(vals)}}},')
    judge_rows = []
    for name in output_names:
        c = criteria.get(name)
        if c is None:
            continue
        judge_rows.append(f'    {{{_c_string(name)}, {float(c["ref_max_abs_err"]).hex()} /* {c["ref_max_abs_err"]:.6e} */, '
                          f'{float(c["rtol"]).hex()} /* {c["rtol"]:g} */, '
                          f'{float(c["share_limit"]).hex()} /* {c["share_limit"]:g} */}},')
    layout = attrs["input_layout"]
    return TEMPLATE % dict(
        case=case, version=version,
        n_in=len(input_names), in_rows=_tensor_rows(inputs, input_names),
        n_ia=len(int_array_names), ia_decl="\n".join(ia_decl), ia_rows="\n".join(ia_rows),
        n_out=len(output_names), out_rows=_tensor_rows(outputs, output_names),
        n_judge=len(judge_rows), judge_rows="\n".join(judge_rows),
        scale=float(attrs["scale_value"]).hex(), scale_dec=repr(float(attrs["scale_value"])),
        keep=float(attrs["keep_prob"]).hex(), keep_dec=repr(float(attrs["keep_prob"])),
        pre=int(attrs["pre_tokens"]), next=int(attrs["next_tokens"]), head_num=int(attrs["head_num"]),
        layout_init="NULL" if layout is None else f"strdup({_c_string(layout)})",
        inner=int(attrs["inner_precise"]), sparse=int(attrs["sparse_mode"]),
        pse_type=int(attrs["pse_type"]), det=int(deterministic),
        k=float(k).hex(), k_dec=repr(float(k)), floor_rel=float(floor_rel).hex(),
        floor_min=float(floor_min).hex(), op=BACKWARD_V3.symbol, phase1_call=phase1_call())


def phase1_call(op: OpVersion = BACKWARD_V3) -> str:
    """The reproducer's phase-1 call, its arguments in the order of ``op``'s prototype
    (aclnn_fag/spec.py): tensors from g_in/g_out, int arrays, attribute macros, out-params."""
    args, seen = [], {"input": 0, "int_array": 0, "output": 0}
    for p in op.params:
        if p.role in seen:
            i = seen[p.role]
            seen[p.role] += 1
            args.append({"input": f"g_in[{i}].tensor", "int_array": f"intArrays[{i}]",
                         "output": f"g_out[{i}].tensor"}[p.role])
        elif p.role == "attr":
            args.append("layOut" if p.name == "input_layout" else p.name.upper())
        else:
            args.append("&workspaceSize" if p.role == "workspace_size" else "&executor")
    lines, line = [], "        "
    for a in args:
        piece = a + ", "
        if len(line) + len(piece) > 100:
            lines.append(line.rstrip())
            line = "        "
        line += piece
    lines.append(line.rstrip().rstrip(","))
    return op.phase1 + "(\n" + "\n".join(lines) + ")"


def build_script(opapi_preference) -> str:
    names = " ".join(opapi_preference)
    return BUILD % dict(names=names, phase1=BACKWARD_V3.phase1)


BUILD = r'''#!/bin/sh
# Build ./repro against the CANN install at $ASCEND_HOME_PATH (set by set_env.sh).
# The op-API library is chosen as aclnn_fag chooses it: the first of %(names)s
# in $ASCEND_HOME_PATH/lib64 that exports %(phase1)s.
set -eu
cd "$(dirname "$0")"
ASCEND_HOME_PATH="${ASCEND_HOME_PATH:-/usr/local/Ascend/ascend-toolkit/latest}"
INC="$ASCEND_HOME_PATH/include"
LIB="$ASCEND_HOME_PATH/lib64"
OPAPI=""
for name in %(names)s; do
    if [ -f "$LIB/$name" ]; then
        if command -v nm >/dev/null 2>&1; then
            if nm -D --defined-only "$LIB/$name" 2>/dev/null | grep -q ' %(phase1)s$'; then
                OPAPI="$name"; break
            fi
        else
            OPAPI="$name"; break
        fi
    fi
done
if [ -z "$OPAPI" ]; then
    echo "build.sh: no op-API library (%(names)s) exporting the V3 op in $LIB" >&2
    exit 1
fi
OPAPI_LINK="-l$(echo "$OPAPI" | sed -e 's/^lib//' -e 's/\.so$//')"
echo "build.sh: $INC, $LIB, op-API library $OPAPI"
${CC:-cc} -std=gnu11 -O2 -Wall -o repro repro.c -I"$INC" -L"$LIB" -Wl,-rpath,"$LIB" \
    -Wl,--no-as-needed "$OPAPI_LINK" -lnnopbase -lascendcl -Wl,--as-needed -ldl -lm
echo "build.sh: built ./repro; run it from this directory: ./repro"
'''


TEMPLATE = r'''/*
 * Reproducer of the failing parity case "%(case)s", generated by aclnn_fag %(version)s.
 *
 * Runs %(op)s (both phases) with exactly the arguments the
 * aclnn_fag binding passed, reading inputs/<name>.bin (raw little-endian, C order) and
 * writing outputs/<name>.bin (bf16, shaped like the matching input); then judges each output
 * against golden/<name>.bin (the fp64 golden rounded to float32) with the parity criteria:
 *   1. max|y - g| <= k * ref_max_abs_err + max(1e-6 * max|g|, 1e-30)     (k, ref: below)
 *   2. share(|y - g| / max(|g|, RMS(g)) > rtol) < share_limit
 * Exit status: 0 every output passes, 1 an output fails, 2 an ACL/aclnn call or file I/O failed.
 * Build: ./build.sh (needs $ASCEND_HOME_PATH). Device: $ACLNN_FAG_DEVICE (default 0).
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
#include "aclnnop/aclnn_flash_attention_score_grad.h"

#define CHECK_RET(cond, return_expr) \
    do {                             \
        if (!(cond)) {               \
            return_expr;             \
        }                            \
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

/* parameter order of phase 1: query, queryRope, keyIn, keyInRope, value, dy, pseShift, dropMask,
 * paddingMask, attenMask, softmaxMax, softmaxSum, softmaxIn, attentionIn */
static TensorArg g_in[%(n_in)d] = {
%(in_rows)s
};

%(ia_decl)s
static const IntArrayArg g_ia[%(n_ia)d] = {
%(ia_rows)s
};

/* dqOut, dqRopeOut, dkOut, dkRopeOut, dvOut, dpseOut */
static TensorArg g_out[%(n_out)d] = {
%(out_rows)s
};

static const Criterion g_criteria[%(n_judge)d] = {
%(judge_rows)s
};

static const double SCALE_VALUE = %(scale)s; /* %(scale_dec)s */
static const double KEEP_PROB = %(keep)s;   /* %(keep_dec)s */
static const int64_t PRE_TOKENS = %(pre)dLL;
static const int64_t NEXT_TOKENS = %(next)dLL;
static const int64_t HEAD_NUM = %(head_num)dLL;
static const int64_t INNER_PRECISE = %(inner)dLL;
static const int64_t SPARSE_MODE = %(sparse)dLL;
static const int64_t PSE_TYPE = %(pse_type)dLL;
static const int64_t DETERMINISTIC = %(det)d; /* ACL_OPT_DETERMINISTIC, set explicitly as aclnn_fag does */
static const double K = %(k)s; /* %(k_dec)s */
static const double FLOOR_REL = %(floor_rel)s;
static const double FLOOR_MIN = %(floor_min)s;

static void print_recent_error(const char *what, long long code)
{
    const char *msg = aclGetRecentErrMsg();
    fprintf(stderr, "%%s failed: %%lld%%s%%s\n", what, code, msg ? "\n  " : "", msg ? msg : "");
}

static int read_file(const char *dir, const char *name, void *buf, size_t bytes)
{
    char path[4096];
    snprintf(path, sizeof path, "%%s/%%s.bin", dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %%s: %%s\n", path, strerror(errno));
        return -1;
    }
    size_t got = bytes ? fread(buf, 1, bytes, f) : 0;
    int extra = fgetc(f);
    fclose(f);
    if (got != bytes || extra != EOF) {
        fprintf(stderr, "%%s: expected exactly %%zu bytes\n", path, bytes);
        return -1;
    }
    return 0;
}

static int write_file(const char *dir, const char *name, const void *buf, size_t bytes)
{
    char path[4096];
    snprintf(path, sizeof path, "%%s/%%s.bin", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || (bytes && fwrite(buf, 1, bytes, f) != bytes)) {
        fprintf(stderr, "cannot write %%s\n", path);
        if (f) fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

static void contiguous_strides(const TensorArg *t, int64_t *strides)
{
    int64_t step = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        strides[i] = step;
        step *= t->dims[i] > 1 ? t->dims[i] : 1;
    }
}

static int64_t numel_of(const TensorArg *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->dims[i];
    return n;
}

/* CreateAclTensor of the documented sample: device memory (an empty tensor gets none), the
 * host data copied in (inputs) or zero-filled (outputs), C-contiguous strides, 1-D storage of
 * numel elements. */
static int CreateAclTensor(TensorArg *t, int copy_in)
{
    size_t bytes = (size_t)t->numel * t->itemsize;
    t->dev = NULL;
    if (bytes > 0) {
        aclError ret = aclrtMalloc(&t->dev, bytes, ACL_MEM_MALLOC_HUGE_FIRST);
        CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtMalloc", ret); return 2);
        if (copy_in) {
            ret = aclrtMemcpy(t->dev, bytes, t->host, bytes, ACL_MEMCPY_HOST_TO_DEVICE);
            CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtMemcpy H2D", ret); return 2);
        } else {
            /* outputs start as zeros: a part the op leaves unwritten reads 0, not stale memory */
            ret = aclrtMemset(t->dev, bytes, 0, bytes);
            CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtMemset", ret); return 2);
        }
    }
    return 0;
}

static int MakeTensorHandle(TensorArg *t)
{
    int64_t strides[MAX_DIMS];
    int64_t storage[1] = {t->numel};
    contiguous_strides(t, strides);
    t->tensor = aclCreateTensor(t->dims, (uint64_t)t->ndim, t->dtype, strides, 0, ACL_FORMAT_ND, storage, 1,
                                t->dev);
    CHECK_RET(t->tensor != NULL, print_recent_error("aclCreateTensor", 0); return 2);
    return 0;
}

static double bf16_to_double(uint16_t v)
{
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

static const TensorArg *output_named(const char *name)
{
    for (int i = 0; i < %(n_out)d; i++)
        if (g_out[i].present && strcmp(g_out[i].name, name) == 0) return &g_out[i];
    return NULL;
}

/* criterion 1 and 2 of aclnn_fag.tools.accuracy.judge, against the float32 golden */
static int judge(const char *dir)
{
    int failed = 0;
    printf("%%-8s %%12s %%12s %%6s %%12s %%11s %%10s %%s\n", "output", "max_abs_err", "bound", "ratio", "share>rtol",
           "limit", "max_rel", "verdict");
    for (int c = 0; c < %(n_judge)d; c++) {
        const Criterion *cr = &g_criteria[c];
        const TensorArg *t = output_named(cr->name);
        if (t == NULL) continue;
        int64_t n = t->numel;
        float *g = (float *)malloc(n ? (size_t)n * sizeof(float) : 1);
        CHECK_RET(g != NULL, fprintf(stderr, "out of memory\n"); return 2);
        char gname[256];
        snprintf(gname, sizeof gname, "golden/%%s", cr->name);
        if (read_file(dir, gname, g, (size_t)n * sizeof(float)) != 0) {
            free(g);
            return 2;
        }
        const uint16_t *y = (const uint16_t *)t->host;
        double peak = 0.0, sq = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double v = fabs((double)g[i]);
            if (v > peak) peak = v;
            sq += (double)g[i] * (double)g[i];
        }
        double rms = n ? sqrt(sq / (double)n) : 0.0;
        double floor_ = rms > FLOOR_MIN ? rms : FLOOR_MIN;
        double max_abs = 0.0, max_rel = 0.0;
        int64_t above = 0, nonfinite = 0;
        for (int64_t i = 0; i < n; i++) {
            double yv = bf16_to_double(y[i]);
            if (!isfinite(yv)) {
                nonfinite++;
                yv = INFINITY;
            }
            double err = fabs(yv - (double)g[i]);
            double den = fabs((double)g[i]) > floor_ ? fabs((double)g[i]) : floor_;
            double rel = err / den;
            if (err > max_abs) max_abs = err;
            if (rel > max_rel) max_rel = rel;
            if (rel > cr->rtol) above++;
        }
        double floor_abs = FLOOR_REL * peak > FLOOR_MIN ? FLOOR_REL * peak : FLOOR_MIN;
        double bound = K * cr->ref_max_abs_err + floor_abs;
        double share = n ? (double)above / (double)n : 0.0;
        int fa_pass = max_abs <= bound && nonfinite == 0;
        int dt_pass = share < cr->share_limit && nonfinite == 0;
        double ratio = cr->ref_max_abs_err > 0 ? max_abs / cr->ref_max_abs_err : (max_abs == 0 ? 0.0 : INFINITY);
        printf("%%-8s %%12.4e %%12.4e %%6.2f %%12.4e %%11.3e %%10.3e %%s%%s%%s\n", cr->name, max_abs, bound, ratio, share,
               cr->share_limit, max_rel, fa_pass && dt_pass ? "PASS" : "FAIL", fa_pass ? "" : " (criterion 1)",
               dt_pass ? "" : " (criterion 2)");
        if (nonfinite) printf("         %%lld non-finite elements\n", (long long)nonfinite);
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
    memset(&v, 0, sizeof v);
    char cann[] = "CANN";
    if (cv != NULL && cv(ACL_PKG_NAME_CANN, &v) == ACL_SUCCESS && v.version[0]) {
        printf("CANN version: %%s (aclsysGetCANNVersion)\n", v.version);
    } else if (vs != NULL && vs(cann, buf) == ACL_SUCCESS && buf[0]) {
        printf("CANN version: %%s (aclsysGetVersionStr)\n", buf);
    } else {
        int32_t ma = 0, mi = 0, pa = 0;
        if (av != NULL && av(&ma, &mi, &pa) == ACL_SUCCESS)
            printf("CANN version: unknown; ACL API %%d.%%d.%%d (aclrtGetVersion)\n", ma, mi, pa);
        else
            printf("CANN version: unknown\n");
    }
    static const char *const packages[] = {"runtime", "ops_transformer"};
    for (int i = 0; i < 2; i++) {
        char pkg[32];
        snprintf(pkg, sizeof pkg, "%%s", packages[i]);
        memset(buf, 0, sizeof buf);
        if (vs != NULL && vs(pkg, buf) == ACL_SUCCESS && buf[0])
            printf("%%s version: %%s (aclsysGetVersionStr)\n", pkg, buf);
        else
            printf("%%s version: unknown\n", pkg);
    }
    const char *name = soc != NULL ? soc() : NULL;
    printf("SoC: %%s\n", name ? name : "unknown");
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
    CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtCtxSetSysParamOpt", ret); return 2);
    return 0;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    const char *dev_env = getenv("ACLNN_FAG_DEVICE");
    int32_t deviceId = (dev_env && dev_env[0]) ? (int32_t)atoi(dev_env) : 0;
    int rc;
    printf("%(op)s reproducer: case %(case)s\n");

    /* 1. host data */
    for (int i = 0; i < %(n_in)d; i++) {
        TensorArg *t = &g_in[i];
        if (!t->present) continue;
        t->numel = numel_of(t);
        t->host = malloc(t->numel ? (size_t)t->numel * t->itemsize : 1);
        CHECK_RET(t->host != NULL, fprintf(stderr, "out of memory\n"); return 2);
        char name[256];
        snprintf(name, sizeof name, "inputs/%%s", t->name);
        if (read_file(dir, name, t->host, (size_t)t->numel * t->itemsize) != 0) return 2;
    }

    /* 2. (fixed) device and stream initialisation */
    aclError ret = aclInit(NULL);
    CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclInit", ret); return 2);
    print_versions();
    ret = aclrtSetDevice(deviceId);
    CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtSetDevice", ret); return 2);
    aclrtStream stream = NULL;
    ret = aclrtCreateStream(&stream);
    CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtCreateStream", ret); return 2);
    if ((rc = set_deterministic(DETERMINISTIC)) != 0) return rc;

    /* 3. inputs (one buffer each, copied in), bf16 outputs, then the handles */
    for (int i = 0; i < %(n_in)d; i++)
        if (g_in[i].present && (rc = CreateAclTensor(&g_in[i], 1)) != 0) return rc;
    for (int i = 0; i < %(n_out)d; i++) {
        TensorArg *t = &g_out[i];
        if (!t->present) continue;
        t->numel = numel_of(t);
        if ((rc = CreateAclTensor(t, 0)) != 0) return rc;
        if (t->dev != NULL) {   /* zeros, as the binding: the op may leave parts unwritten */
            size_t bytes = (size_t)t->numel * t->itemsize;
            ret = aclrtMemset(t->dev, bytes, 0, bytes);
            CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtMemset", ret); return 2);
        }
    }
    for (int i = 0; i < %(n_in)d; i++)
        if (g_in[i].present && (rc = MakeTensorHandle(&g_in[i])) != 0) return rc;
    aclIntArray *intArrays[%(n_ia)d] = {NULL};
    for (int i = 0; i < %(n_ia)d; i++) {
        if (!g_ia[i].present) continue;
        static const int64_t none[1] = {0};
        intArrays[i] = aclCreateIntArray(g_ia[i].size ? g_ia[i].values : none, g_ia[i].size);
        CHECK_RET(intArrays[i] != NULL, print_recent_error("aclCreateIntArray", 0); return 2);
    }
    for (int i = 0; i < %(n_out)d; i++)
        if (g_out[i].present && (rc = MakeTensorHandle(&g_out[i])) != 0) return rc;
    char *layOut = %(layout_init)s;

    /* 4. phase 1 */
    uint64_t workspaceSize = 0;
    aclOpExecutor *executor = NULL;
    ret = %(phase1_call)s;
    CHECK_RET(ret == ACL_SUCCESS,
              print_recent_error("%(op)sGetWorkspaceSize", ret); return 2);
    printf("phase 1: workspace %%llu bytes\n", (unsigned long long)workspaceSize);

    /* 5. workspace (only when > 0) and phase 2 */
    void *workspaceAddr = NULL;
    if (workspaceSize > 0) {
        ret = aclrtMalloc(&workspaceAddr, workspaceSize, ACL_MEM_MALLOC_HUGE_FIRST);
        CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtMalloc (workspace)", ret); return 2);
    }
    ret = %(op)s(workspaceAddr, workspaceSize, executor, stream);
    CHECK_RET(ret == ACL_SUCCESS, print_recent_error("%(op)s", ret); return 2);

    /* 6. handles released right after phase 2 returns (as aclnn_fag does), then synchronise */
    for (int i = 0; i < %(n_in)d; i++)
        if (g_in[i].tensor) aclDestroyTensor(g_in[i].tensor);
    for (int i = 0; i < %(n_ia)d; i++)
        if (intArrays[i]) aclDestroyIntArray(intArrays[i]);
    for (int i = 0; i < %(n_out)d; i++)
        if (g_out[i].tensor) aclDestroyTensor(g_out[i].tensor);
    ret = aclrtSynchronizeStream(stream);
    CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtSynchronizeStream", ret); return 2);

    /* 7. outputs back to the host and to outputs/<name>.bin */
    char outdir[4096];
    snprintf(outdir, sizeof outdir, "%%s/outputs", dir);
    mkdir(outdir, 0777);
    for (int i = 0; i < %(n_out)d; i++) {
        TensorArg *t = &g_out[i];
        if (!t->present) continue;
        size_t bytes = (size_t)t->numel * t->itemsize;
        t->host = malloc(bytes ? bytes : 1);
        CHECK_RET(t->host != NULL, fprintf(stderr, "out of memory\n"); return 2);
        if (bytes) {
            ret = aclrtMemcpy(t->host, bytes, t->dev, bytes, ACL_MEMCPY_DEVICE_TO_HOST);
            CHECK_RET(ret == ACL_SUCCESS, print_recent_error("aclrtMemcpy D2H", ret); return 2);
        }
        char name[256];
        snprintf(name, sizeof name, "outputs/%%s", t->name);
        if (write_file(dir, name, t->host, bytes) != 0) return 2;
    }

    /* 8. release device resources */
    for (int i = 0; i < %(n_in)d; i++)
        if (g_in[i].dev) aclrtFree(g_in[i].dev);
    for (int i = 0; i < %(n_out)d; i++)
        if (g_out[i].dev) aclrtFree(g_out[i].dev);
    if (workspaceAddr) aclrtFree(workspaceAddr);
    aclrtDestroyStream(stream);
    aclrtResetDevice(deviceId);
    aclFinalize();
    free(layOut);

    /* 9. judge against the golden */
    int failed = judge(dir);
    if (failed == 2) return 2;
    printf("%%s\n", failed ? "FAIL: the op's result fails the parity criteria" : "PASS");
    return failed ? 1 : 0;
}
'''
