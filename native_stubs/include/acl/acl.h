/*
 * Stand-in for CANN's acl/acl.h (include tree of native_stubs/, shaped like
 * $ASCEND_HOME_PATH/include): only what a program calling the fused-attention
 * backward op needs. Declarations follow CANN's prototypes; compile against
 * the real headers on a machine with CANN.
 */
#ifndef INC_EXTERNAL_ACL_ACL_H_
#define INC_EXTERNAL_ACL_ACL_H_

#include "acl_base.h"
#include "acl_rt.h"

#endif
