"""Checked number types for the command line (argparse ``type=``): a bad value is a usage
error (exit status 2, with the option named) instead of a run that fails every case."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_float", "nonnegative_float", "positive_int", "nonnegative_int", "seed"]


def positive_float(text: str) -> float:
    """A finite float > 0 (rejects nan, inf, 0 and negatives)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _int_in(text: str, low: int, high: int, what: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not low <= value < high:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1."""
    return _int_in(text, 1, 1 << 63, ">= 1")


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    return _int_in(text, 0, 1 << 63, ">= 0")


def seed(text: str) -> int:
    """A random seed: an int in [0, 2**63)."""
    return _int_in(text, 0, 1 << 63, "in [0, 2**63)")
