"""Numbers and dtypes the whole package shares, each defined here once.

* ``BF16``: the op's data dtype (``ml_dtypes.bfloat16`` as a NumPy dtype).
* ``INT32_MAX``: the default of ``pre_tokens``/``next_tokens`` and the range of device ids.
* ``INT64_MIN``/``INT64_MAX``: the range of an aclIntArray entry and of an int64 attribute.
* ``LIMITS``: the op's documented limits (heads, head dim, tokens, sequences) that the
  validator enforces (docs/validation.md, S5).
* ``MAX_INT_ARRAY_ENTRIES``: int arrays longer than this are refused before they are copied.
* ``FLT_MAX``: the largest float32, the device's "minus infinity" stand-in for masked scores.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

__all__ = ["BF16", "INT32_MAX", "INT64_MIN", "INT64_MAX", "LIMITS", "MAX_INT_ARRAY_ENTRIES",
           "FLT_MAX"]

BF16 = np.dtype(ml_dtypes.bfloat16)
INT32_MAX = (1 << 31) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
LIMITS = {"max_heads": 256, "max_head_dim": 768, "max_tokens": 1 << 20, "max_batch": 2048}
MAX_INT_ARRAY_ENTRIES = 1 << 20
FLT_MAX = float(np.finfo(np.float32).max)
