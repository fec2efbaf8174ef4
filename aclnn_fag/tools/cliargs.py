"""Checked number types for the command line (argparse ``type=``): a bad value is a usage
error (exit status 2, with the option named) instead of a run that fails every case."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_float", "nonnegative_float", "positive_int", "nonnegative_int", "seed"]


def _number(text: str, kind, ok, what: str):
    try:
        value = kind(text, 10) if kind is int else kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0 (rejects nan, inf, 0 and negatives)."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def positive_int(text: str) -> int:
    """An int >= 1."""
    return _number(text, int, lambda v: 1 <= v < 1 << 63, ">= 1")


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    return _number(text, int, lambda v: 0 <= v < 1 << 63, ">= 0")


def seed(text: str) -> int:
    """A random seed: an int in [0, 2**63)."""
    return _number(text, int, lambda v: 0 <= v < 1 << 63, "in [0, 2**63)")
