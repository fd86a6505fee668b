"""Uptime from the stored history of a check, in any process.

A backend may answer faster with two optional methods (SQL does):
``check_states(check, since) -> {"up": n, "down": n, "unknown": n}`` and
``last_check(check) -> CheckEvent | None``. Without them the history is read
page by page through ``Storage.query("check", ...)``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from ..events import CheckEvent
from ..storage.base import QueryFilter, Storage

__all__ = ["WINDOWS", "check_states", "last_result", "uptime"]

log = logging.getLogger("leza_middleware.availability")

#: The uptime windows of ``status()``: label → seconds.
WINDOWS = {"24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}


def _history(storage: Storage, since: int | None) -> Iterator[Any]:
    cursor: tuple[int, str] | None = None
    while True:
        page = storage.query("check", QueryFilter(since=since, limit=5000, cursor=cursor))
        yield from page.events
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def check_states(storage: Storage, check: str, since: int) -> dict[str, int]:
    """How many probes of ``check`` since ``since`` (µs) left it in each state."""
    fast = getattr(storage, "check_states", None)
    if callable(fast):
        counts: dict[str, int] = fast(check, since)
        return counts
    return dict(Counter(e.state for e in _history(storage, since) if e.check == check))


def uptime(storage: Storage, check: str, since: int) -> float | None:
    """Percent of probes since ``since`` with the check UP (unknown ones not counted).

    None when there is no UP or DOWN probe in the window, or storage cannot be read.
    """
    try:
        counts = check_states(storage, check, since)
    except Exception as exc:
        log.debug("leza: uptime of %s not readable: %s", check, exc)
        return None
    up, down = counts.get("up", 0), counts.get("down", 0)
    if up + down == 0:
        return None
    return round(100.0 * up / (up + down), 3)


def last_result(storage: Storage, check: str, since: int | None = None) -> CheckEvent | None:
    """The newest stored probe of ``check`` (at or after ``since`` µs, when given)."""
    try:
        fast = getattr(storage, "last_check", None)
        if callable(fast):
            found: CheckEvent | None = fast(check)
            if found is not None and since is not None and found.ts < since:
                return None
            return found
        return next((e for e in _history(storage, since) if e.check == check), None)
    except Exception as exc:
        log.debug("leza: last result of %s not readable: %s", check, exc)
        return None
