"""Converters between the device's softmax-statistics layout and token-major [T, N] arrays."""

from .semantics.softmax_layout import (COPIES, device_stats_from_token_major,
                                       token_major_from_device_stats)

__all__ = ["COPIES", "device_stats_from_token_major", "token_major_from_device_stats"]
