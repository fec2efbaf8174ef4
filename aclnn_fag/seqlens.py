"""Converters between per-sequence lengths and the cumulative ends the op takes."""

from .semantics.seqlens import cumulative_to_lengths, lengths_to_cumulative

__all__ = ["lengths_to_cumulative", "cumulative_to_lengths"]
