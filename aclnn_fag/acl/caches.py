"""Every cache of the acl layer in one registry: emptied at ``acl.shutdown()`` and in the
tests (:func:`clear_all`), forgotten in a forked child (:func:`forget_all`)."""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

__all__ = ["register", "clear_all", "forget_all", "names"]

_registry: List[Tuple[str, Callable[[], object], Callable[[], None]]] = []


def register(name: str, clear: Callable[[], object], forget: Callable[[], None]) -> None:
    """``clear()`` releases what the cache holds (returns a count or None); ``forget()``
    drops it unreleased (after a fork). Registering a name again replaces it."""
    _registry[:] = [r for r in _registry if r[0] != name]
    _registry.append((name, clear, forget))


def clear_all() -> Dict[str, object]:
    """Empty every cache (failures are left to each cache's own warnings); name -> count."""
    out = {}
    for name, clear, _ in list(_registry):
        try:
            out[name] = clear()
        except Exception:
            out[name] = None
    return out


def forget_all() -> None:
    """In a forked child: drop every cache's content without releasing it."""
    for _, _, forget in list(_registry):
        forget()


def names() -> List[str]:
    return [r[0] for r in _registry]
