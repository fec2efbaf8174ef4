"""Argument validation: the rules of docs/validation.md and docs/forward.md, each written once
as a row of :mod:`.table`, run in the device's order by one driver for both ops
(:mod:`.driver`). ``arguments``: parameters and Python types (from aclnn_fag/spec.py);
``checks``: shape, dtype and attribute predicates; ``data_rules``: S6, S8, S9."""

from ..constants import LIMITS, MAX_INT_ARRAY_ENTRIES
from .arguments import START_INDEX_DEFAULT, start_indices
from .checks import needs_padding
from .driver import check_data_rules, validate_backward, validate_backward_args, validate_forward
from .table import RULES, rules_for

__all__ = ["validate_backward", "validate_backward_args", "validate_forward",
           "check_data_rules", "start_indices", "START_INDEX_DEFAULT", "needs_padding", "LIMITS",
           "MAX_INT_ARRAY_ENTRIES", "RULES", "rules_for"]
