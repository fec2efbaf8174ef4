"""Checked number types for the command line (argparse ``type=``): a bad value is a usage
error (exit status 2, with the option named) instead of a run that fails every case."""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_float", "nonnegative_float", "positive_int", "nonnegative_int", "seed"]


def _checked(kind, ok, what: str, name: str):
    """An argparse type: ``kind`` (int: base 10) parsed from the text, then ``ok`` checked."""
    def parse(text: str):
        try:
            value = kind(text, 10) if kind is int else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = name
    return parse


positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0",
                          "positive_float")
nonnegative_float = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0",
                             "nonnegative_float")
positive_int = _checked(int, lambda v: 1 <= v < 1 << 63, ">= 1", "positive_int")
nonnegative_int = _checked(int, lambda v: 0 <= v < 1 << 63, ">= 0", "nonnegative_int")
seed = _checked(int, lambda v: 0 <= v < 1 << 63, "in [0, 2**63)", "seed")
