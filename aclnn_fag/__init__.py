"""aclnn_fag: CANN's fused attention backward ``aclnnFlashAttentionUnpaddingScoreGradV3`` and
its forward through ctypes on Ascend NPUs, and the same computation as a NumPy reference.

Helpers: masks (compressed_causal_mask, band_mask, causal_mask), seqlens
(lengths_to_cumulative, cumulative_to_lengths, max_lengths), softmax_layout
(device_stats_from_token_major, token_major_from_device_stats), acl (FagPlan, DeviceArray,
call_raw). Documentation: docs/usage.md, docs/validation.md; ``aclnn-fag --help``.
"""

from . import masks, seqlens, softmax_layout
from .blas import blas_info, reference_threads, set_reference_threads
from .api import (BACKENDS, NpuFallbackWarning, flash_attention_forward,
                  flash_attention_unpadding_score_grad_v3, last_backend, resolve_backend)
from .call import FagForward, FagGrads
from .errors import (AclnnError, AclRuntimeError, BackendUnavailableError, FullyMaskedRowWarning,
                     IgnoredArgumentWarning, LibraryNotFoundError, ParamInvalidError,
                     ParamNullptrError, SequenceEndWarning, SoftmaxStatsMismatchWarning,
                     error_class_for)

__version__ = "0.1.0"

__all__ = [
    "flash_attention_unpadding_score_grad_v3", "flash_attention_forward", "resolve_backend",
    "last_backend", "BACKENDS", "FagGrads", "FagForward", "AclnnError", "AclRuntimeError",
    "BackendUnavailableError", "LibraryNotFoundError", "ParamInvalidError", "ParamNullptrError",
    "error_class_for", "NpuFallbackWarning", "FullyMaskedRowWarning", "IgnoredArgumentWarning",
    "SequenceEndWarning", "SoftmaxStatsMismatchWarning",
    "masks", "seqlens", "softmax_layout", "blas_info", "reference_threads",
    "set_reference_threads", "__version__",
]
