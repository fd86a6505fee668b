"""The one bounded-memo rule every enricher uses."""

from __future__ import annotations

from typing import Any

__all__ = ["bounded_put"]


def bounded_put(cache: dict[Any, Any], key: Any, value: Any, maxsize: int) -> None:
    """Insert, evicting the oldest insertions first when full.

    Dicts keep insertion order, so the oldest entry is the first one; hits need
    no bookkeeping and stay a single dict lookup (no LRU reordering). Tolerates
    another thread evicting at the same time (then there is nothing to do).
    """
    while len(cache) >= maxsize:
        try:
            del cache[next(iter(cache))]
        except (StopIteration, KeyError, RuntimeError):  # pragma: no cover - races
            break
    cache[key] = value
