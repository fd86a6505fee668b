"""One request's state, from :meth:`RequestCore.begin` to :meth:`RequestCore.finish`.

One object with ``__slots__`` per request (the cheapest mutable state to make
and to read: no per-request dict, no closure cells); adapters subclass it to
keep their own per-request state in the same object (ASGI's ``send``, WSGI's
body iterator).
"""

from __future__ import annotations

from typing import Any

from ..performer import Performer

__all__ = ["Request"]


class Request:
    """What the request core knows of one request (see the module docstring)."""

    __slots__ = (
        "action", "cookie_sid", "end", "error", "granted", "headers", "holder", "logout",
        "method", "mid", "needed", "path", "peer", "performer", "query", "reason", "rid",
        "scheme", "settled", "sid", "start", "status", "ts",
    )  # fmt: skip

    start: float  # perf_counter() at begin
    ts: float  # time() at begin
    end: float  # perf_counter() when the last body byte left (0.0: at finish)
    status: int  # 0 until known
    error: str | None  # the class name of what the app raised, if it did
    holder: Any  # where the session API's per-request dict lives (scope, environ, request)
    headers: Any  # the header mapping (flavour.py), read at finish for the record
    method: str  # "WS" for a websocket handshake
    path: str  # as the client asked for it
    query: Any  # raw query string, in the flavour's type
    peer: str | None
    scheme: str
    rid: Any  # the request id, in the flavour's type
    mid: str | None  # the verified machine id (or the one issued now)
    cookie_sid: str | None  # the session the request's cookie names
    sid: str | None  # the request's session (once settled: the one it ends up in)
    logout: bool  # a logout_routes entry
    needed: str | None  # the permission the endpoint needs, or None
    granted: str | None  # the reason of the endpoint permission that allowed it
    action: str | None  # set by a refusal ("denied"); else derived at finish
    reason: str | None
    performer: Performer | None
    settled: bool  # the response's cookies (and so its session) were decided
