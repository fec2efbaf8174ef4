"""Shrink a failing parity case while it still fails: fewer batches, shorter sequences,
fewer heads (greedy, each accepted step restarts the pass; bounded number of runs).

A shrunk case keeps its seed, so its inputs are drawn again for the smaller shapes: the
reproducer is a *smaller failing case*, not a slice of the original tensors. Candidates the
validator rejects (or that error) count as "does not fail" and are dropped.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Tuple

from ..cases import CaseSpec

__all__ = ["shrink", "candidates", "DEFAULT_BUDGET"]

DEFAULT_BUDGET = 40


def _describe(old: CaseSpec, new: CaseSpec) -> str:
    parts = []
    for field in ("lengths_q", "lengths_kv", "heads", "kv_heads"):
        a, b = getattr(old, field), getattr(new, field)
        if a != b:
            parts.append(f"{field} {list(a) if isinstance(a, tuple) else a} -> "
                         f"{list(b) if isinstance(b, tuple) else b}")
    return ", ".join(parts)


def candidates(spec: CaseSpec):
    """Smaller variants of ``spec``, most aggressive first."""
    q, kv = list(spec.lengths_q), list(spec.kv_lengths)
    explicit_kv = spec.lengths_kv is not None
    # fewer batches: keep one batch (each in turn), then drop one at a time
    if len(q) > 1:
        for i in range(len(q)):
            yield replace(spec, lengths_q=(q[i],), lengths_kv=(kv[i],) if explicit_kv else None)
        for i in range(len(q)):
            nq, nkv = q[:i] + q[i + 1:], kv[:i] + kv[i + 1:]
            yield replace(spec, lengths_q=tuple(nq), lengths_kv=tuple(nkv) if explicit_kv else None)
    # shorter sequences: halve every batch, then one batch at a time
    def halve(x):
        return (x + 1) // 2 if x > 1 else x
    if any(x > 1 for x in q + kv):
        yield replace(spec, lengths_q=tuple(halve(x) for x in q),
                      lengths_kv=tuple(halve(x) for x in kv) if explicit_kv else None)
        for i in range(len(q)):
            if q[i] > 1 or kv[i] > 1:
                nq, nkv = list(q), list(kv)
                nq[i], nkv[i] = halve(q[i]), halve(kv[i])
                yield replace(spec, lengths_q=tuple(nq), lengths_kv=tuple(nkv) if explicit_kv else None)
    # fewer heads (N1 % N2 == 0 kept)
    n1, n2 = spec.heads, spec.n2
    tried = set()
    for a, b in ((n1 // 2, n2 // 2), (n1 // 2, n2), (n2, n2), (1, 1)):
        if a >= 1 and b >= 1 and a % b == 0 and (a, b) != (n1, n2) and (a, b) not in tried:
            tried.add((a, b))
            yield replace(spec, heads=a, kv_heads=None if (spec.kv_heads is None and a == b) else b)


def shrink(spec: CaseSpec, still_fails: Callable[[CaseSpec], bool],
           budget: int = DEFAULT_BUDGET) -> Tuple[CaseSpec, List[str], int]:
    """(smallest failing spec found, the steps taken, runs used). ``still_fails`` runs a case."""
    steps: List[str] = []
    runs = 0
    current = spec
    progress = True
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
                current = cand
                progress = True
                break
    return current, steps, runs
