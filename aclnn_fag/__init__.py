"""aclnn_fag: aclnnFlashAttentionUnpaddingScoreGradV3 on Ascend NPUs through ctypes, and the
same computation as a NumPy reference.

Public calls: ``flash_attention_unpadding_score_grad_v3`` (the backward op) and
``flash_attention_forward`` (NumPy forward producing valid softmax statistics).
"""

from . import masks, seqlens, softmax_layout
from .api import (BACKENDS, flash_attention_forward, flash_attention_unpadding_score_grad_v3,
                  last_backend, resolve_backend)
from .call import FagForward, FagGrads
from .errors import (AclnnError, AclRuntimeError, BackendUnavailableError, LibraryNotFoundError,
                     ParamInvalidError, ParamNullptrError, error_class_for)
from .reference.common import FullyMaskedRowWarning
from .validate import IgnoredArgumentWarning, SequenceEndWarning, SoftmaxStatsMismatchWarning

__version__ = "0.1.0"

__all__ = [
    "flash_attention_unpadding_score_grad_v3", "flash_attention_forward", "resolve_backend",
    "last_backend", "BACKENDS", "FagGrads", "FagForward", "AclnnError", "AclRuntimeError",
    "BackendUnavailableError", "LibraryNotFoundError", "ParamInvalidError", "ParamNullptrError",
    "error_class_for", "FullyMaskedRowWarning", "IgnoredArgumentWarning", "SequenceEndWarning",
    "SoftmaxStatsMismatchWarning",
    "masks", "seqlens", "softmax_layout", "__version__",
]
