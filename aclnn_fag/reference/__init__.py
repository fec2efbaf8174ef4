"""NumPy reference of the op: tiled forward and backward with the device's semantics.

``attention_forward(call, precision)`` and ``attention_backward(call, precision)`` take
validated calls (``aclnn_fag.rules``); the public entry points are in ``aclnn_fag.api``.
Each thread keeps its tiles' scratch buffers between calls (at most 64 MiB;
``release_scratch()`` frees them).
"""

from ..errors import FullyMaskedRowWarning
from .backward import attention_backward
from .blocks import BlockSizes, default_block_sizes
from .common import PRECISIONS, release_scratch
from .forward import attention_forward
from .rounding import round_bf16_away_inplace

__all__ = ["attention_backward", "attention_forward", "BlockSizes", "default_block_sizes",
           "PRECISIONS", "FullyMaskedRowWarning", "round_bf16_away_inplace", "release_scratch"]
