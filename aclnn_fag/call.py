"""The validated arguments of one call (built by ``rules``, read by the backends) and the
results' named tuples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from .seqlens import SeqInfo
from .constants import INT32_MAX

__all__ = ["FagCall", "FwdCall", "FagGrads", "FagForward", "INT32_MAX", "device_int_array"]


class FagGrads(NamedTuple):
    """The five gradients, in this order: ``(dq, dq_rope, dk, dk_rope, dv)``, each shaped like
    its input (torch_npu's grad returns (dq, dk, dv, ...): use the names when porting)."""

    dq: np.ndarray
    dq_rope: np.ndarray
    dk: np.ndarray
    dk_rope: np.ndarray
    dv: np.ndarray


class FagForward(NamedTuple):
    """Forward results, in this order: ``(attention_out, softmax_max, softmax_sum)``; the
    statistics [T1, N1, 8] in the device's layout -- pass them to the backward unchanged."""

    attention_out: np.ndarray
    softmax_max: np.ndarray
    softmax_sum: np.ndarray


@dataclass(frozen=True)
class FwdCall:
    """Validated forward arguments (also the common part of FagCall)."""

    query: np.ndarray          # [T1, N1, D]   bf16
    query_rope: np.ndarray     # [T1, N1, Dr]  bf16
    key: np.ndarray            # [T2, N2, D]   bf16
    key_rope: np.ndarray       # [T2, N2, Dr]  bf16
    value: np.ndarray          # [T2, N2, Dv]  bf16
    atten_mask: np.ndarray     # bool/uint8, 2-D or 4-D, nonzero = masked
    actual_seq_qlen: tuple     # cumulative ends, as given (ints)
    actual_seq_kvlen: tuple
    scale_value: float         # the double attribute as given
    pre_tokens: int            # as given
    next_tokens: int
    head_num: int
    sparse_mode: int
    inner_precise: int
    seqs: SeqInfo              # derived from the cumulative ends
    pre_eff: int               # tokens after the op's normalisation (docs/sparse_modes.md)
    next_eff: int
    band_index: int            # bandIdx for modes 7/8 (else -1)
    empty_result: bool = False  # the op succeeds with zero outputs without computing
    keep_prob: float = 1.0
    input_layout: str = "TND"
    pse_type: int = 1
    q_start_idx: Optional[tuple] = None   # never None after validation: (0,) by default
    kv_start_idx: Optional[tuple] = None
    deterministic: bool = False
    # the cumulative ends the device is given: as given, or with the end-of-data padding the
    # binding appends on a release that checks it (seqlens.with_device_padding); () = as given
    device_seq_qlen: tuple = ()
    device_seq_kvlen: tuple = ()

    @property
    def scale32(self) -> np.float32:
        """The scale as the device uses it: float32(scaleValue)."""
        return np.float32(self.scale_value)

    @property
    def group(self) -> int:
        """G = N1 / N2: query heads per KV head (query head h uses KV head h // G)."""
        return self.query.shape[1] // self.key.shape[1]


@dataclass(frozen=True)
class FagCall(FwdCall):
    """Validated backward arguments (see docs/validation.md)."""

    dy: Optional[np.ndarray] = None            # [T1, N1, Dv] bf16
    softmax_max: Optional[np.ndarray] = None   # [T1, N1, 8] float32, device layout
    softmax_sum: Optional[np.ndarray] = None
    attention_in: Optional[np.ndarray] = None  # [T1, N1, Dv] bf16 (forward output)


def device_int_array(call, name: str):
    """The value of int array ``name`` the device is given: for the cumulative ends, the
    device ends (``device_seq_qlen``: with the end-of-data padding the binding appends)."""
    device = getattr(call, name.replace("actual_", "device_"), None)
    return device if device else getattr(call, name, None)
