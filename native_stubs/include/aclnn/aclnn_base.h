/* Stand-in for CANN's aclnn/aclnn_base.h. */
#ifndef OP_API_ACLNN_BASE_H_
#define OP_API_ACLNN_BASE_H_

#include "aclnn/acl_meta.h"

#define ACLNN_API __attribute__((visibility("default")))

#endif
