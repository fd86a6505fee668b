"""The dashboard as a pure ASGI app: ``app.mount("/leza", make_asgi_app(leza, authorize=...))``.

Links are built under the mount (``root_path``), so the app works at any
prefix, behind ``uvicorn --root-path`` too. Storage reads run in a worker
thread (they block), ``authorize`` on the event loop when it is a coroutine
function, else in that thread with the rest.

Every view is recorded as an access event: under the host app's
``LezaMiddleware`` that middleware records it (once); mounted without one,
the dashboard runs its requests through a ``LezaMiddleware`` of its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio.to_thread

from ..context import current_native
from ..integrations.asgi import LezaMiddleware
from .core import note_request
from .guard import (
    DENIED_REASON,
    MAX_BODY,
    Authorize,
    admin_identity,
    call_authorize,
    is_async,
    run_authorize,
)
from .mount import ORIGIN_HEADERS, Incoming, Mount
from .responses import DashResponse, error_response, finish, forbidden, internal_error

if TYPE_CHECKING:
    from collections.abc import Iterable

    from starlette.types import Message, Receive, Scope, Send

    from ..leza import Leza

__all__ = ["DashboardASGI", "make_asgi_app"]

log = logging.getLogger("leza_middleware")


def make_asgi_app(
    leza: Leza,
    authorize: Authorize | None = None,
    *,
    trusted_origins: Iterable[str] | None = None,
) -> DashboardASGI:
    """The dashboard of ``leza`` as an ASGI app, for Starlette / FastAPI ``mount``.

    ``authorize(request)`` (or an ``async def``) receives a Starlette
    ``Request`` and decides every request: a true value lets it in (a string
    also names the admin, see docs/dashboard.md); without it every request is
    refused with 403. ``trusted_origins``: origins besides the dashboard's own
    (``https://admin.example.com``) that may send its forms, for a proxy that
    rewrites ``Host``. Raises :class:`~leza_middleware.LezaConfigError` when
    ``authorize`` is given but is not callable, or an origin is not one.
    """
    return DashboardASGI(leza, authorize, trusted_origins=trusted_origins)


class DashboardASGI(Mount):
    def __init__(
        self,
        leza: Leza,
        authorize: Authorize | None = None,
        *,
        trusted_origins: Iterable[str] | None = None,
    ) -> None:
        super().__init__(leza, authorize, trusted_origins=trusted_origins)
        # Used when no Leza middleware records the request already (see __call__).
        self._recorded = LezaMiddleware(self._serve, leza=leza)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and current_native() is not None:
            await self._serve(scope, receive, send)  # the host's middleware records it
        else:
            await self._recorded(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # served standalone (``leza dashboard``)
            await _lifespan(receive, send)
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._serve_http(scope, receive, tracked)
        except Exception:
            log.exception("leza dashboard: unexpected error answering %s", scope.get("method"))
            if not started:  # else the client already has a status: nothing more to send
                await _send(send, internal_error("/api/" in str(scope.get("path", ""))))

    async def _serve_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request

        root = scope.get("root_path", "")
        path = scope["path"]
        if root and path.startswith(root):  # Starlette's Mount keeps the full path
            path = path[len(root) :]
        api = path.startswith("/api/")
        method = scope["method"]
        if method in ("GET", "HEAD"):
            health = self.dashboard.health(path)  # from memory, no authorize
            if health is not None:
                await _send(send, health)
                return
        # No body for authorize: it decides on who asks (headers, session, user),
        # and nothing is read from a client before it is allowed in.
        request = Request(scope)
        hook = self.authorize
        if hook is None:
            allowed = None
        elif is_async(hook):
            allowed = await run_authorize(hook, request)
        else:  # may query a database: off the event loop
            allowed = await anyio.to_thread.run_sync(call_authorize, hook, request)
        if allowed is None:
            note_request("denied", DENIED_REASON)
            await _send(send, forbidden(api))
            return
        identity = admin_identity(allowed, request)
        body = b""
        if method not in ("GET", "HEAD"):
            read = await _read_body(receive)
            if read is None:
                too_big = error_response(413, "Too large", "The form is too large.", api)
                await _send(send, finish(too_big, None, method))
                return
            body = read
        headers: dict[str, str] = {}
        cookies = []
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name == "cookie":
                cookies.append(raw_value.decode("latin-1"))
            elif name in ORIGIN_HEADERS:
                headers[name] = raw_value.decode("latin-1")
        incoming = Incoming(
            method=method,
            path=path or "/",
            base=root.rstrip("/"),
            query=scope.get("query_string", b""),
            body=body,
            cookie="; ".join(cookies),
            headers=headers,
            scheme=scope.get("scheme", "http"),
            identity=identity,
        )
        await _send(send, await anyio.to_thread.run_sync(self.respond, incoming))


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when it is larger than a form can be."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, response: DashResponse) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
