"""A storage backend that ships every event as a JSON line, written from docs/storage.md.

Each event goes out as one line of JSON (``event.to_dict()``) to a text stream:
stdout by default, where a log shipper (Vector, Fluent Bit, Promtail, a
container runtime's log driver) picks it up; or give ``ship`` any callable that
takes a list of lines, e.g. one that POSTs them to the shipper's HTTP input.

To serve the admin view it also keeps the newest ``keep`` events of each kind
in memory and answers ``query`` from them. It implements only ``write`` and
``query`` (the contract every backend has) and declares no capability beyond
``count``: ``leza verify``, ``leza purge``, ``leza forget`` and retention say
in one sentence that it cannot do them.

    from jsonlines_backend import JSONLinesStorage
    leza = Leza(storage=JSONLinesStorage())

Run it: ``python examples/jsonlines_backend.py`` serves a Starlette app with
the dashboard under /leza on http://127.0.0.1:8000 (needs uvicorn).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TextIO

from leza_middleware.events import Event, SessionEvent, SessionRecord
from leza_middleware.storage import Capability, Page, QueryFilter, Storage
from leza_middleware.storage.base import fold_session, select_sessions
from leza_middleware.storage.memory import select_page

__all__ = ["JSONLinesStorage"]

KINDS = ("access", "session", "audit", "log", "advisory", "check")


class JSONLinesStorage(Storage):
    """Ships events as JSON lines; keeps the newest ``keep`` per kind to read back.

    Idempotent by event id for the events it still keeps: a replayed batch is
    neither shipped nor kept twice (an id older than the ring may be shipped
    again; a log pipeline deduplicates on ``_id`` if it must).
    """

    # count() is cheap over what is kept in memory; nothing else is declared.
    capabilities = frozenset({Capability.COUNT})

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        ship: Callable[[list[str]], None] | None = None,
        keep: int = 10_000,
        name: str = "stdout",
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self._stream = sys.stdout if stream is None else stream
        self._ship = ship or self._to_stream
        self._keep = keep
        self._name = name
        self._lock = threading.Lock()
        # kind -> {event id: event}, oldest first: a bounded ring per kind.
        self._events: dict[str, OrderedDict[str, Event]] = {k: OrderedDict() for k in KINDS}
        # Session changes fold into one record per session (newest sessions kept).
        self._sessions: OrderedDict[str, SessionRecord] = OrderedDict()

    def describe(self) -> str:
        return f"JSONLinesStorage({self._name})"

    def _to_stream(self, lines: list[str]) -> None:
        self._stream.write("".join(line + "\n" for line in lines))
        self._stream.flush()

    def write(self, events: Sequence[Event]) -> None:
        with self._lock:
            fresh = [e for e in events if e.id not in self._events.get(e.kind, {})]
            # Shipped first: if shipping raises, nothing is kept, and the recorder
            # retries the whole batch (then spills it), so nothing is lost.
            if fresh:
                self._ship([json.dumps(e.to_dict(), ensure_ascii=False) for e in fresh])
            for e in fresh:
                ring = self._events.setdefault(e.kind, OrderedDict())
                if e.id in ring:  # twice in this batch
                    continue
                ring[e.id] = e
                if len(ring) > self._keep:
                    ring.popitem(last=False)
                if isinstance(e, SessionEvent):
                    record = fold_session(self._sessions, e)
                    self._sessions.move_to_end(record.id)
                    if len(self._sessions) > self._keep:
                        self._sessions.popitem(last=False)

    def query(self, kind: str, flt: QueryFilter) -> Page:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        with self._lock:
            if kind == "session":
                return select_sessions(list(self._sessions.values()), flt)
            return select_page(list(self._events[kind].values()), flt)

    def count(self, kind: str, flt: QueryFilter, cap: int | None = None) -> int | None:
        limit = 2**62 if cap is None else cap + 1
        return len(self.query(kind, replace(flt, cursor=None, limit=limit)).events)


def _demo() -> None:  # pragma: no cover - run by hand
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from leza_middleware import Leza, LezaMiddleware
    from leza_middleware.dashboard import make_asgi_app

    leza = Leza(storage=JSONLinesStorage(), geoip_db=False)

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    app.mount("/leza", make_asgi_app(leza, authorize=lambda request: True))
    app.add_middleware(LezaMiddleware, leza=leza)
    uvicorn.run(app, host="127.0.0.1", port=8000)


if __name__ == "__main__":
    _demo()
