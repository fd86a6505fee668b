"""The current request, for code running inside it (logging handler, audit API)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["RequestContext", "current_request", "current_request_id"]


class RequestContext:
    """What other parts of the library need to know about the running request."""

    __slots__ = ("method", "path", "request_id", "scope")

    def __init__(self, request_id: str, method: str, path: str, scope: Any) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        # The framework's own request state (ASGI scope, WSGI environ, Django request),
        # so the performer can be resolved lazily when someone asks for it.
        self.scope = scope


_current: ContextVar[RequestContext | None] = ContextVar("leza_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    ctx = _current.get()
    return None if ctx is None else ctx.request_id
