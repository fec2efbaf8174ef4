"""Shrink a failing parity case while it still fails (greedy, bounded): fewer batches, shorter
sequences, fewer heads; the seed is kept, candidates that error count as "does not fail"."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Tuple

from ..cases import CaseSpec

__all__ = ["shrink", "candidates", "DEFAULT_BUDGET"]

DEFAULT_BUDGET = 40


def _describe(old: CaseSpec, new: CaseSpec) -> str:
    def show(v):
        return list(v) if isinstance(v, tuple) else v
    return ", ".join(f"{f} {show(getattr(old, f))} -> {show(getattr(new, f))}"
                     for f in ("lengths_q", "lengths_kv", "heads", "kv_heads")
                     if getattr(old, f) != getattr(new, f))


def candidates(spec: CaseSpec):
    """Smaller variants of ``spec``, most aggressive first."""
    q, kv = list(spec.lengths_q), list(spec.kv_lengths)

    def lengths(nq, nkv):
        return replace(spec, lengths_q=tuple(nq),
                       lengths_kv=tuple(nkv) if spec.lengths_kv is not None else None)

    def halve(x):
        return (x + 1) // 2 if x > 1 else x

    if len(q) > 1:      # fewer batches: keep one batch (each in turn), then drop one at a time
        for i in range(len(q)):
            yield lengths([q[i]], [kv[i]])
        for i in range(len(q)):
            yield lengths(q[:i] + q[i + 1:], kv[:i] + kv[i + 1:])
    if any(x > 1 for x in q + kv):       # shorter: halve every batch, then one at a time
        yield lengths([halve(x) for x in q], [halve(x) for x in kv])
        for i in range(len(q)):
            if q[i] > 1 or kv[i] > 1:
                yield lengths(q[:i] + [halve(q[i])] + q[i + 1:], kv[:i] + [halve(kv[i])] + kv[i + 1:])
    n1, n2 = spec.heads, spec.n2         # fewer heads (N1 % N2 == 0 kept)
    tried = set()
    for a, b in ((n1 // 2, n2 // 2), (n1 // 2, n2), (n2, n2), (1, 1)):
        if a >= 1 and b >= 1 and a % b == 0 and (a, b) != (n1, n2) and (a, b) not in tried:
            tried.add((a, b))
            yield replace(spec, heads=a, kv_heads=None if (spec.kv_heads is None and a == b) else b)


def shrink(spec: CaseSpec, still_fails: Callable[[CaseSpec], bool],
           budget: int = DEFAULT_BUDGET) -> Tuple[CaseSpec, List[str], int]:
    """(smallest failing spec found, the steps taken, runs used). ``still_fails`` runs a case."""
    steps: List[str] = []
    runs, current, progress = 0, spec, True
    while progress and runs < budget:
        progress = False
        for cand in candidates(current):
            if runs >= budget:
                break
            if cand == current:
                continue
            runs += 1
            if still_fails(cand):
                steps.append(_describe(current, cand))
                current, progress = cand, True
                break
    return current, steps, runs
