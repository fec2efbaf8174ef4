"""Numbers and dtypes the whole package shares, each defined here once."""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = ["BF16", "INT32_MAX", "INT64_MIN", "INT64_MAX", "LIMITS", "MAX_INT_ARRAY_ENTRIES",
           "FLT_MAX"]

BF16 = np.dtype(ml_dtypes.bfloat16)     # the op's data dtype
INT32_MAX = (1 << 31) - 1               # pre/next_tokens' default, the range of device ids
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1   # an aclIntArray entry, an int64 attribute
# the op's documented limits the validator enforces (docs/validation.md, S5)
LIMITS = {"max_heads": 256, "max_head_dim": 768, "max_tokens": 1 << 20, "max_batch": 2048}
MAX_INT_ARRAY_ENTRIES = 1 << 20         # longer int arrays are refused before they are copied
FLT_MAX = float(np.finfo(np.float32).max)   # the device's "minus infinity" for masked scores
