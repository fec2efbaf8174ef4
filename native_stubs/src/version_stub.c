/*
 * libascendcl.so stand-in, version queries (acl/acl_rt.h; all four are
 * optional symbols in CANN, see docs/releases.md):
 *
 *   aclError aclsysGetVersionStr(char *pkgName, char *versionStr);
 *   aclError aclsysGetVersionNum(char *pkgName, int32_t *versionNum);
 *   aclError aclsysGetCANNVersion(aclCANNPackageName name, aclCANNPackageVersion *version);
 *   aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion);
 *
 * The release the stand-in emulates is $ACL_STUB_CANN_VERSION (8.5.0, 9.0.0 or 9.1.0;
 * default and anything else: 9.1.0, the newest); stub_release() gives it to the other stub
 * files, whose rules follow it. Every string the stand-in returns says "stub" ("9.1.0.stub"),
 * so that a report made on the stubs can never be mistaken for one made on a real CANN
 * install. aclsysGetVersionNum answers major * 1000000 + minor * 10000 + patch * 100 (the
 * real encoding is CANN's own: only its order matters). Failure injection works as for every
 * other exported function.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stub_abi.h"

#define STUB_PKG_VERSION_MAX 128 /* ACL_PKG_VERSION_MAX_SIZE */
#define STUB_PKG_PART_MAX 64     /* ACL_PKG_VERSION_PARTS_MAX_SIZE */

/* typedef struct aclCANNPackageVersion { char version[128]; char majorVersion[64];
 *   char minorVersion[64]; char releaseVersion[64]; char patchVersion[64];
 *   char reserved[128]; } aclCANNPackageVersion; */
typedef struct StubPackageVersion {
    char version[STUB_PKG_VERSION_MAX];
    char major[STUB_PKG_PART_MAX];
    char minor[STUB_PKG_PART_MAX];
    char release[STUB_PKG_PART_MAX];
    char patch[STUB_PKG_PART_MAX];
    char reserved[STUB_PKG_VERSION_MAX];
} StubPackageVersion;

/* the emulated release: 850, 900 or 910 (major * 100 + minor * 10 + patch) */
STUB_API int stub_release(void)
{
    const char *v = getenv("ACL_STUB_CANN_VERSION");
    if (v != NULL && strcmp(v, "8.5.0") == 0) {
        return 850;
    }
    if (v != NULL && strcmp(v, "9.0.0") == 0) {
        return 900;
    }
    return 910;
}

static void release_text(char *out, size_t size)
{
    int r = stub_release();
    snprintf(out, size, "%d.%d.%d.stub", r / 100, r / 10 % 10, r % 10);
}

static int known_package(const char *pkg)
{
    static const char *const names[] = {"CANN", "runtime", "ops_transformer", "opp", "toolkit"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(pkg, names[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

static int32_t injected(const char *fn)
{
    return aclStubInternalApi()->inject_check(fn);
}

static aclError ok(const char *fn)
{
    aclStubInternalApi()->inject_success(fn);
    return ACL_SUCCESS;
}

/* What both package queries check first: failure injection, NULL arguments, and a package
 * a toolkit install knows (anything else is not installed). 0 or the aclError. */
static int32_t package_query(const char *fn, const char *pkg, const void *out, const char *out_name)
{
    int32_t code = injected(fn);
    if (code != 0) {
        return code;
    }
    if (pkg == NULL || out == NULL) {
        aclStubInternalApi()->set_error("%s: pkgName and %s must not be NULL", fn, out_name);
        return ACL_ERROR_INVALID_PARAM;
    }
    if (!known_package(pkg)) {
        aclStubInternalApi()->set_error("%s: package '%.64s' is not installed", fn, pkg);
        return ACL_ERROR_INVALID_PARAM;
    }
    return 0;
}

STUB_API aclError aclsysGetVersionStr(char *pkgName, char *versionStr)
{
    int32_t code = package_query(__func__, pkgName, versionStr, "versionStr");
    if (code != 0) {
        return code;
    }
    release_text(versionStr, STUB_PKG_VERSION_MAX);
    return ok(__func__);
}

STUB_API aclError aclsysGetVersionNum(char *pkgName, int32_t *versionNum)
{
    int32_t code = package_query(__func__, pkgName, versionNum, "versionNum");
    if (code != 0) {
        return code;
    }
    int r = stub_release();
    *versionNum = (int32_t)(r / 100 * 1000000 + r / 10 % 10 * 10000 + r % 10 * 100);
    return ok(__func__);
}

STUB_API aclError aclsysGetCANNVersion(int32_t name, void *version)
{
    int32_t code = injected(__func__);
    if (code != 0) {
        return code;
    }
    if (version == NULL || name < 0 || name > 1) { /* ACL_PKG_NAME_CANN = 0, ACL_PKG_NAME_RUNTIME = 1 */
        aclStubInternalApi()->set_error("aclsysGetCANNVersion: bad package name %d or NULL version", (int)name);
        return ACL_ERROR_INVALID_PARAM;
    }
    StubPackageVersion *v = (StubPackageVersion *)version;
    memset(v, 0, sizeof *v);
    int r = stub_release();
    release_text(v->version, sizeof v->version);
    snprintf(v->major, sizeof v->major, "%d", r / 100);
    snprintf(v->minor, sizeof v->minor, "%d", r / 10 % 10);
    snprintf(v->release, sizeof v->release, "%d", r % 10);
    snprintf(v->patch, sizeof v->patch, "stub");
    return ok(__func__);
}

STUB_API aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion)
{
    int32_t code = injected(__func__);
    if (code != 0) {
        return code;
    }
    if (majorVersion == NULL || minorVersion == NULL || patchVersion == NULL) {
        aclStubInternalApi()->set_error("aclrtGetVersion: NULL argument");
        return ACL_ERROR_INVALID_PARAM;
    }
    *majorVersion = 1;
    *minorVersion = 0;
    *patchVersion = 0;
    return ok(__func__);
}
