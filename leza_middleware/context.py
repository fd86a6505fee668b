"""The current request, for code running inside it (logging handler, audit API).

The context variable holds a plain ``(request_id, native)`` tuple — the
cheapest thing to build per request (the id as the adapter has it: ASGI keeps
bytes, ready for the response header); ``native`` is the framework's own request
state (ASGI scope, WSGI environ, Django request), from which the performer can
be resolved lazily when someone asks for it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["REQUEST", "current_native", "current_request_id"]

#: The running request: adapters ``set`` it when a request starts and ``reset``
#: it when it ends (a C call each; no wrapper function on the request path).
REQUEST: ContextVar[tuple[bytes | str, Any] | None] = ContextVar("leza_request", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    ctx = REQUEST.get()
    if ctx is None:
        return None
    rid = ctx[0]
    return rid.decode("latin-1") if isinstance(rid, bytes) else rid


def current_native() -> Any:
    """The framework's request object of the running request, or None."""
    ctx = REQUEST.get()
    return None if ctx is None else ctx[1]
