/*
 * libascendcl.so stand-in, version queries (acl/acl_rt.h; all three are
 * optional symbols in CANN, see docs/parity.md "Versions"):
 *
 *   aclError aclsysGetVersionStr(char *pkgName, char *versionStr);
 *   aclError aclsysGetCANNVersion(aclCANNPackageName name, aclCANNPackageVersion *version);
 *   aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion);
 *
 * Every string the stand-in returns says "stub", so that a report made on
 * the stubs can never be mistaken for one made on a real CANN install.
 * Failure injection works as for every other exported function.
 */
#include <stdio.h>
#include <string.h>

#include "stub_abi.h"

#define STUB_CANN_VERSION "8.5.0.stub"
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

static int32_t injected(const char *fn)
{
    return aclStubInternalApi()->inject_check(fn);
}

static aclError ok(const char *fn)
{
    aclStubInternalApi()->inject_success(fn);
    return ACL_SUCCESS;
}

STUB_API aclError aclsysGetVersionStr(char *pkgName, char *versionStr)
{
    int32_t code = injected(__func__);
    if (code != 0) {
        return code;
    }
    if (pkgName == NULL || versionStr == NULL) {
        aclStubInternalApi()->set_error("aclsysGetVersionStr: pkgName and versionStr must not be NULL");
        return ACL_ERROR_INVALID_PARAM;
    }
    /* the packages a toolkit install knows; anything else is not installed */
    if (strcmp(pkgName, "CANN") != 0 && strcmp(pkgName, "runtime") != 0 && strcmp(pkgName, "opp") != 0 &&
        strcmp(pkgName, "toolkit") != 0) {
        aclStubInternalApi()->set_error("aclsysGetVersionStr: package '%.64s' is not installed", pkgName);
        return ACL_ERROR_INVALID_PARAM;
    }
    snprintf(versionStr, STUB_PKG_VERSION_MAX, "%s", STUB_CANN_VERSION);
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
    snprintf(v->version, sizeof v->version, "%s", STUB_CANN_VERSION);
    snprintf(v->major, sizeof v->major, "8");
    snprintf(v->minor, sizeof v->minor, "5");
    snprintf(v->release, sizeof v->release, "0");
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
