"""Helpers for your own tests: see exactly what the middleware records.

    from leza_middleware.testing import capture_events

    def test_login_is_audited(client):
        with capture_events() as events:
            client.post("/login", data={...})
        assert events[0]["action"] == "login"

Events are captured after enrichment (the same dicts ``leza.query.access()``
returns), from every ``Leza`` in the process; leaving the block flushes the
recorders so nothing recorded inside it is missed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .events import Event
from .recorder import add_listener, live_recorders, remove_listener

__all__ = ["CapturedEvents", "capture_events"]


class CapturedEvents(list[dict[str, Any]]):
    """A list of event dicts, plus ``of_kind()`` and ``actions()`` conveniences."""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self if e.get("kind") == kind]

    def actions(self) -> list[str]:
        return [e["action"] for e in self if "action" in e]


@contextmanager
def capture_events(flush_timeout: float = 5.0) -> Iterator[CapturedEvents]:
    captured = CapturedEvents()
    lock = threading.Lock()

    def listener(events: Sequence[Event]) -> None:
        dicts = [e.to_dict() for e in events]
        with lock:
            captured.extend(dicts)

    add_listener(listener)
    try:
        yield captured
    finally:
        for recorder in live_recorders():
            recorder.flush(flush_timeout)
        remove_listener(listener)
        with lock:
            captured.sort(key=lambda e: (e.get("timestamp", ""), e.get("_id", "")))
