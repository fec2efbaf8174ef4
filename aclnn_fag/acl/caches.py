"""Every cache of the acl layer in one registry: the one place that empties them at
``acl.shutdown()`` and forgets them in a forked child (the parent's handles are never
released there).

A cache registers itself with :func:`register` when its module is imported; tests empty
them all through :func:`clear_all`. Caches holding handles that refer to device memory (the
executor cache: its aclTensors point at earlier calls' buffers) register with ``order=0`` and
are emptied before the caches of memory (``order=1``), whatever the import order: executors
and tensors are destroyed before the memory they describe is freed.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["register", "clear_all", "forget_all", "names"]

_registry: List[Tuple[str, Callable[[], object], Callable[[], None], int]] = []


def register(name: str, clear: Callable[[], object], forget: Callable[[], None],
             order: int = 1) -> None:
    """``clear()`` releases what the cache holds (returns a count or None); ``forget()``
    drops it unreleased (after a fork); ``order``: lower is emptied first (0: handles that
    refer to memory, 1: memory). Registering a name again replaces it."""
    _registry[:] = [r for r in _registry if r[0] != name]
    _registry.append((name, clear, forget, order))
    _registry.sort(key=lambda r: r[3])          # stable: registration order within one order


def clear_all(max_order: Optional[int] = None) -> Dict[str, object]:
    """Empty every cache (failures are left to each cache's own warnings), or only those
    registered with an ``order`` up to ``max_order``; name -> count."""
    out = {}
    for name, clear, _, order in list(_registry):
        if max_order is not None and order > max_order:
            continue
        try:
            out[name] = clear()
        except Exception:
            out[name] = None
    return out


def forget_all() -> None:
    """In a forked child: drop every cache's content without releasing it."""
    for _, _, forget, _ in list(_registry):
        forget()


def names() -> List[str]:
    return [r[0] for r in _registry]
