"""The request path: the little that must happen inside a request.

An adapter (ASGI, WSGI, Django) copies the handful of values it already has —
method, path, raw query, four header values, the peer, the status, timings,
the request id — into one plain tuple, a *raw access record*, and hands it to
the recorder. Parsing the User-Agent, looking up the IP, redacting and
formatting all happen later on the recorder thread (``enrich/access.py``).

Why a tuple: it is the cheapest object to build, and copying these values out
lets the framework's request objects (scope, header list, environ) be freed
at the end of the request instead of waiting in the queue, which measurably
keeps the app's memory hot under load. Header values may be ``bytes``
(ASGI, latin-1) or ``str`` (WSGI); the enricher accepts both.
"""

from __future__ import annotations

from typing import Any

from .events import PRIORITY_ACTIONS

__all__ = ["RAW_FIELDS", "is_priority", "raw_access"]

#: Field order of a raw access record.
RAW_FIELDS = (
    "ts",  # time.time() at request start
    "duration",  # seconds until the last response byte was sent
    "status",
    "request_id",  # bytes (ASGI, as echoed in the header) or str
    "method",  # "WS" for a websocket
    "path",  # as received, before any routing rewrote it
    "query",  # raw query string (bytes or str)
    "peer",  # socket peer address (str) or None
    "scheme",
    "route",  # route template, when the framework exposes one
    "user_agent",  # header values: bytes, str or None
    "x_forwarded_for",
    "forwarded",
    "host",
    "performer",  # Performer or None
    "error",  # exception class name when the app raised, else None
    "action",  # set by login/logout tracking or permissions; None: derive from status
    "reason",  # likewise; None: derive from status
)
ACTION = RAW_FIELDS.index("action")


def raw_access(**fields: Any) -> tuple[Any, ...]:
    """Build a raw access record by name (tests, adapters off the hot path)."""
    unknown = set(fields) - set(RAW_FIELDS)
    if unknown:
        raise TypeError(f"unknown raw access fields: {sorted(unknown)}")
    defaults: dict[str, Any] = {
        "duration": 0.0, "status": 200, "method": "GET", "path": "/", "query": b"",
        "peer": None, "scheme": "http", "route": None, "user_agent": None,
        "x_forwarded_for": None, "forwarded": None, "host": None, "performer": None,
        "error": None, "action": None, "reason": None,
    }  # fmt: skip
    defaults.update(fields)
    return tuple(defaults[name] for name in RAW_FIELDS)


def is_priority(raw: tuple[Any, ...]) -> bool:
    """Login/logout records may be spilled but never dropped for lack of memory."""
    return raw[ACTION] in PRIORITY_ACTIONS
