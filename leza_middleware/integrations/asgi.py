"""Pure ASGI middleware: ``app.add_middleware(LezaMiddleware, leza=leza)``.

Per request it reuses or makes a request id, echoes it in the response, notes
the status and when the last body byte left, and enqueues one raw record. All
per-request state lives inside ``__call__``; the app's own exceptions pass
through untouched after being recorded as a 500.
"""

from __future__ import annotations

import logging
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from ..context import RequestContext, _current
from ..ids import new_request_id, parse_incoming_request_id
from ..performer import Performer, performer_from_user
from ..request_path import RawAccess

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ..leza import Leza

__all__ = ["LezaMiddleware"]

log = logging.getLogger("leza_middleware")


class LezaMiddleware:
    """Record every HTTP request (and websocket connect) of an ASGI app.

    ``leza`` defaults to a :class:`~leza_middleware.Leza` configured from
    ``LEZA_*`` environment variables, so ``app.add_middleware(LezaMiddleware)``
    alone works.
    """

    def __init__(self, app: ASGIApp, leza: Leza | None = None) -> None:
        if leza is None:
            from ..leza import Leza

            leza = Leza()
        self.app = app
        self.leza = leza
        self._offer = leza.recorder.offer
        self._rid_header = leza.settings.request_id_header.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _request_id(self, scope: Scope) -> str:
        rid_header = self._rid_header
        incoming = traceparent = None
        for name, value in scope["headers"]:
            if name == rid_header:
                incoming = value
            elif name == b"traceparent":
                traceparent = value
        if incoming is not None or traceparent is not None:
            rid = parse_incoming_request_id(incoming, traceparent)
            if rid is not None:
                return rid
        return new_request_id()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = perf_counter()
        ts = time()
        rid = self._request_id(scope)
        rid_pair = (self._rid_header, rid.encode("latin-1"))
        root_path = scope.get("root_path", "")
        status = 0
        end = 0.0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, end
            mtype = message["type"]
            if mtype == "http.response.start":
                status = message["status"]
                # A new list: never mutate the app's (it may be a reused Response's).
                headers = list(message.get("headers") or ())
                if not any(name.lower() == rid_pair[0] for name, _ in headers):
                    headers.append(rid_pair)
                message["headers"] = headers
            elif mtype == "http.response.body" and not message.get("more_body", False):
                end = perf_counter()
            await send(message)

        token = _current.set(RequestContext(rid, scope["method"], scope["path"], scope))
        error: str | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            _current.reset(token)
            try:
                if status == 0 or error is not None:
                    status = status if status and error is None else 500
                self._offer(
                    RawAccess(
                        ts,
                        (end or perf_counter()) - start,
                        scope["method"],
                        scope["path"],
                        scope.get("query_string", b""),
                        scope["headers"],
                        scope.get("client"),
                        scope.get("scheme", "http"),
                        status,
                        rid,
                        _route_template(scope, root_path),
                        self._performer(scope),
                        error,
                    )
                )
            except Exception:  # never let recording hurt the app
                self.leza._count_request_path_error()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One access event per connection, recorded as soon as it is accepted
        # or refused (not when it closes, which may be hours later).
        start = perf_counter()
        ts = time()
        rid = self._request_id(scope)
        root_path = scope.get("root_path", "")
        recorded = False

        def record(status: int, error: str | None = None) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            try:
                self._offer(
                    RawAccess(
                        ts,
                        perf_counter() - start,
                        "WS",
                        scope["path"],
                        scope.get("query_string", b""),
                        scope["headers"],
                        scope.get("client"),
                        scope.get("scheme", "ws"),
                        status,
                        rid,
                        _route_template(scope, root_path),
                        self._performer(scope),
                        error,
                    )
                )
            except Exception:
                self.leza._count_request_path_error()

        async def send_wrapper(message: Message) -> None:
            mtype = message["type"]
            if mtype == "websocket.accept":
                record(101)
            elif mtype == "websocket.close":
                record(403)  # closed before accepting: refused
            elif mtype == "websocket.http.response.start":
                record(message["status"])
            await send(message)

        token = _current.set(RequestContext(rid, "WS", scope["path"], scope))
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            record(500, type(exc).__name__)
            raise
        finally:
            _current.reset(token)
            record(403)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        leza = self.leza

        async def send_wrapper(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # Write what is queued before the server exits; the flush blocks,
                # so run it off the event loop, bounded by the shutdown timeout.
                try:
                    import anyio.to_thread

                    await anyio.to_thread.run_sync(
                        leza.flush, leza.settings.shutdown_timeout, abandon_on_cancel=True
                    )
                except Exception:
                    log.warning("leza: flush at lifespan shutdown failed", exc_info=True)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _performer(self, scope: Scope) -> Performer | None:
        hook = self.leza.performer_hook
        if hook is None:
            # Starlette's AuthenticationMiddleware sets scope["user"]; it is read
            # after the app ran, so authentication inside the app counts too.
            user = scope.get("user")
            return None if user is None else performer_from_user(user)
        from starlette.requests import Request

        return self.leza._call_performer_hook(Request(scope))


def _route_template(scope: Scope, root_path: str) -> str | None:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    # Inside a Mount the route is relative to it; the mount's prefix is what
    # the routing added to root_path.
    inner_root = scope.get("root_path", "")
    if inner_root != root_path and inner_root.startswith(root_path):
        return inner_root[len(root_path) :] + path
    return path
