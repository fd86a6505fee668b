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

import re
from typing import Any

from .events import PRIORITY_ACTIONS

__all__ = [
    "RAW_FIELDS",
    "environ_header_keys",
    "is_priority",
    "normalise_route",
    "pick_environ_headers",
    "pick_headers",
    "raw_access",
]

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
    "route",  # route template (normalise_route()), when the framework exposes one
    "user_agent",  # header values: bytes, str or None
    "x_forwarded_for",
    "forwarded",
    "host",
    "performer",  # Performer or None
    "error",  # exception class name when the app raised, else None
    "action",  # set by login/logout tracking or permissions; None: derive from status
    "reason",  # likewise; None: derive from status
    "machine_id",  # the verified machine identifier (sessions/cookies.py), or None
    "session_id",  # the session's public id (a keyed hash, never the raw key), or None
    # Only with record_headers configured: (name, value, name, value, ...) of the
    # allowed headers present (pick_headers / pick_environ_headers), else None.
    "headers",
)
ACTION = RAW_FIELDS.index("action")


_PLACEHOLDER = re.compile(r"\{([^{}:]+):[^{}]*\}|<(?:[^<>:]+:)?([^<>]+)>")
_route_cache: dict[str, str] = {}


def normalise_route(template: str) -> str:
    """One spelling of a route template for every framework.

    ``/items/{item_id:int}`` (Starlette), ``/items/<int:item_id>`` (Flask) and
    ``items/<int:item_id>`` (Django) are all stored as ``/items/{item_id}``, so
    the same endpoint reads the same in the log whatever serves it. Memoised:
    an app has few routes.
    """
    out = _route_cache.get(template)
    if out is None:
        if template.startswith("^") or "(?P<" in template:
            out = template  # a regular expression (Django re_path): keep as written
        else:
            out = _PLACEHOLDER.sub(lambda m: "{" + (m.group(1) or m.group(2)) + "}", template)
            if not out.startswith("/"):
                out = "/" + out
        if len(_route_cache) < 4096:
            _route_cache[template] = out
    return out


def raw_access(**fields: Any) -> tuple[Any, ...]:
    """Build a raw access record by name (tests, adapters off the hot path)."""
    unknown = set(fields) - set(RAW_FIELDS)
    if unknown:
        raise TypeError(f"unknown raw access fields: {sorted(unknown)}")
    defaults: dict[str, Any] = {
        "duration": 0.0, "status": 200, "method": "GET", "path": "/", "query": b"",
        "peer": None, "scheme": "http", "route": None, "user_agent": None,
        "x_forwarded_for": None, "forwarded": None, "host": None, "performer": None,
        "error": None, "action": None, "reason": None, "machine_id": None, "session_id": None,
        "headers": None,
    }  # fmt: skip
    defaults.update(fields)
    return tuple(defaults[name] for name in RAW_FIELDS)


def is_priority(raw: tuple[Any, ...]) -> bool:
    """Login/logout records may be spilled but never dropped for lack of memory."""
    return raw[ACTION] in PRIORITY_ACTIONS


# Header capture for ``record_headers`` (privacy/headers.py): adapters call these only
# when the allow-list is not empty, so an app without it pays one truth test.


def pick_headers(headers: Any, names: tuple[bytes, ...]) -> tuple[Any, ...] | None:
    """The allowed headers of an ASGI request: a dict of its headers, or the
    list of (name, value) pairs when a name repeats (every line is kept)."""
    out: list[Any] = []
    if type(headers) is dict:
        get = headers.get
        for name in names:
            value = get(name)
            if value is not None:
                out += (name.decode("latin-1"), value)
    else:
        wanted = frozenset(names)
        for name, value in headers:
            if name in wanted:
                out += (name.decode("latin-1"), value)
    return tuple(out) if out else None


def environ_header_keys(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(name, environ key) of each allowed header: ``HTTP_X_TENANT``, and the two
    CGI exceptions ``CONTENT_TYPE`` / ``CONTENT_LENGTH`` (WSGI environ, Django META)."""
    out = []
    for name in names:
        key = name.upper().replace("-", "_")
        out.append((name, key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key))
    return tuple(out)


def pick_environ_headers(environ: Any, keys: tuple[tuple[str, str], ...]) -> tuple[Any, ...] | None:
    """The allowed headers of a WSGI environ or a Django ``request.META``."""
    out: list[Any] = []
    get = environ.get
    for name, key in keys:
        value = get(key)
        if value is not None:
            out += (name, value)
    return tuple(out) if out else None
