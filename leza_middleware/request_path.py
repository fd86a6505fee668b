"""The request path: the little that must happen inside a request.

Adapters (ASGI, WSGI, Django) capture references to what the framework already
has — method, path, raw query, the header list, the peer address — plus the
status and timings, into one :class:`RawAccess` and hand it to the recorder.
Nothing here parses a User-Agent, looks up an IP, formats text or touches
storage: that is the recorder thread's work (see ``enrich/access.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .events import PRIORITY_ACTIONS
from .performer import Performer

__all__ = ["Headers", "RawAccess"]

# ASGI: a list of (lower-case name, value) byte pairs.
# WSGI: the environ itself (HTTP_* keys, latin-1 decoded str values).
Headers = Sequence[tuple[bytes, bytes]] | Mapping[str, Any]


class RawAccess:
    """One finished request, as captured on the request path (no derived fields)."""

    __slots__ = (
        "action",
        "duration",
        "error",
        "headers",
        "method",
        "path",
        "peer",
        "performer",
        "query",
        "reason",
        "request_id",
        "route",
        "scheme",
        "status",
        "ts",
    )

    @property
    def priority(self) -> bool:
        # Login/logout records may be spilled but never dropped for lack of memory.
        return self.action is not None and self.action in PRIORITY_ACTIONS

    def __init__(
        self,
        ts: float,
        duration: float,
        method: str,
        path: str,
        query: bytes | str,
        headers: Headers,
        peer: Any,
        scheme: str,
        status: int,
        request_id: str,
        route: str | None,
        performer: Performer | None,
        error: str | None = None,
    ) -> None:
        self.ts = ts  # time.time() at request start
        self.duration = duration  # seconds until the last response byte was sent
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.peer = peer  # ASGI (host, port) tuple, a str, or None
        self.scheme = scheme
        self.status = status
        self.request_id = request_id
        self.route = route
        self.performer = performer
        self.error = error  # exception class name when the app raised
        # Set by endpoint permissions / login tracking; derived from status otherwise.
        self.action: str | None = None
        self.reason: str | None = None
