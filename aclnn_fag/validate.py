"""Deprecated alias of :mod:`aclnn_fag.rules` (the validators moved there)."""

import warnings

from .errors import IgnoredArgumentWarning, SequenceEndWarning, SoftmaxStatsMismatchWarning
from .rules import (LIMITS, MAX_INT_ARRAY_ENTRIES, START_INDEX_DEFAULT, needs_padding,
                    start_indices, validate_backward, validate_forward)

__all__ = ["validate_backward", "validate_forward", "IgnoredArgumentWarning",
           "SequenceEndWarning", "SoftmaxStatsMismatchWarning", "LIMITS", "MAX_INT_ARRAY_ENTRIES",
           "start_indices", "START_INDEX_DEFAULT", "needs_padding"]

warnings.warn("aclnn_fag.validate is deprecated: import from aclnn_fag.rules",
              DeprecationWarning, stacklevel=2)
