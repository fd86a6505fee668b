"""Pure ASGI middleware: ``app.add_middleware(LezaMiddleware, leza=leza)``.

Translates an ASGI connection for the request core (``core/request.py``): the
scope's method, path, root path, query, peer, scheme and a dict of its headers
in; the core's refusals, request id header and cookies out, as ASGI messages.
It notes the response status and when the last body byte left. The app's own
exceptions pass through untouched after being recorded as a 500. Lifespan
shutdown flushes the queue (``lifespan.py``); a websocket is recorded when it
is accepted or refused.

Every µs here is paid by every request: one :class:`~..core.Request` per
request and locals; the ``send`` the app is given is a bound method of it that
returns the server's own awaitable (no closure, no coroutine per message).
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextvars import Token
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..context import REQUEST
from ..core import Request, RequestCore
from ..core.flavour import merge_repeated
from ..performer import Performer, performer_from_user
from .lifespan import lifespan

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ..core.hooks import Answer
    from ..leza import Leza

__all__ = ["LezaMiddleware"]


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
        self.core = RequestCore.for_leza(leza, asgi=True)
        #: The request-id response header (bytes, lower-case) and the app's
        #: performer hook (None: Starlette's ``scope["user"]``), read per response.
        self.rid_header = self.core.flavour.request_id_out
        self._recorded = self.core.flavour.record_keys
        self.performer_hook = leza.hooks.performer_hook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self._other(scope, receive, send)
            return
        http = kind == "http"
        core = self.core
        req = _Exchange()
        root = scope.get("root_path", "")
        headers: Any
        try:
            raw = scope["headers"]
            headers = dict(raw)
            if len(headers) != len(raw):  # repeated names (X-Forwarded-For twice)
                headers = merge_repeated(raw, self._recorded)
            client = scope.get("client")
            peer = client[0] if client else None
        except Exception:  # a broken layer in front: the core counts it
            headers = peer = None
        if not core.begin(
            req, scope, headers, scope["method"] if http else "WS", scope["path"], root,
            scope.get("query_string", b""), peer, scope.get("scheme", "http"),
        ):  # fmt: skip
            await self.app(scope, receive, send)
            return
        refused = req.sid is not None and await core.arefused(req)
        refusal = None
        if refused and http:
            refusal = core.revoked_answer(req, _connection(scope))
        elif not refused and req.needed is not None:
            refusal = self._decide(req, scope)
            refused = refusal is not None
        if refused:
            if http:
                await self._answer(send, req, refusal)  # type: ignore[arg-type]
            else:
                await self._close(receive, send, req)
            return
        if not http:
            await self._websocket(req, scope, receive, send, root)
            return
        req.send = send
        req.adapter = self
        req.ctx = ctx = (req.rid, scope)
        req.token = REQUEST.set(ctx)
        try:
            await self.app(scope, receive, req.on_send)
        except BaseException as exc:
            req.error = type(exc).__name__
            raise
        finally:
            REQUEST.reset(req.token)
            self._finish(req, scope, root)

    def _decide(self, req: Request, scope: Scope) -> Answer | None:
        """A protected endpoint, decided before the app: ``has_permission`` gets
        the HTTPConnection the performer hook gets. A failed decision is
        recorded as a 500 and goes to the server; the app is not called."""
        try:
            return self.core.decide(req, self.performer_of(scope), _connection(scope))
        except BaseException:
            self.core.finish(req)
            raise

    def _finish(self, req: Request, scope: Scope, root: str) -> None:
        core = self.core
        try:
            if not req.settled:  # the app failed before its response started
                req.performer = self.performer_of(scope)
        except Exception:  # a user object that cannot be read: recorded anonymous
            core.faults.request_path_error()
        try:
            route = None if scope.get("route") is None else _route_template(scope, root)
            core.offer(core.record(req, route))
        except Exception:  # never let recording hurt the app
            core.faults.request_path_error()

    async def _answer(self, send: Send, req: Request, answer: Answer) -> None:
        """Send a refusal without the app (a refused session, a missing permission)."""
        status, headers, body = answer
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.core.finish(req)

    def performer_of(self, scope: Scope) -> Performer | None:
        """Who makes the request of ``scope``: the performer hook's answer, or the
        user authentication left in the scope."""
        if self.performer_hook is None:
            # Starlette's AuthenticationMiddleware sets scope["user"]; read after
            # authentication ran inside the app, so it counts.
            user = scope.get("user")
            return None if user is None else performer_from_user(user)
        return self.core.hooks.performer(_connection(scope))

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            leza = self.leza
            leza.sessions.prefetch()  # the first request then finds the blocklist loaded
            await lifespan(
                self.app, scope, receive, send, lambda: leza.flush(leza.settings.shutdown_timeout)
            )
        else:
            await self.app(scope, receive, send)

    async def _close(self, receive: Receive, send: Send, req: Request) -> None:
        """Refuse a websocket handshake: closing before accepting is the handshake's
        refusal, the client gets an HTTP 403 whatever the reason (401 needs an
        extension)."""
        try:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1008})
        finally:
            req.status = 403
            self.core.finish(req)

    async def _websocket(
        self, req: Request, scope: Scope, receive: Receive, send: Send, root: str
    ) -> None:
        """One access event per connection, recorded as soon as it is accepted or
        refused (not when it closes, which may be hours later)."""

        def record(status: int, error: str | None = None) -> None:
            if not req.status:  # once
                req.status = status
                req.error = error
                self._finish(req, scope, root)

        async def send_wrapper(message: Message) -> None:
            mtype = message["type"]
            if mtype == "websocket.accept":
                record(101)
            elif mtype == "websocket.close":
                record(403)  # closed before accepting: refused
            elif mtype == "websocket.http.response.start":
                record(message["status"])
            await send(message)

        token = REQUEST.set((req.rid, scope))
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            record(500, type(exc).__name__)
            raise
        finally:
            REQUEST.reset(token)
            record(403)


class _Exchange(Request):
    """A request's state, and (``on_send``) the ``send`` the app is given: one
    object per request, no closure."""

    __slots__ = ("adapter", "ctx", "send", "token")

    adapter: LezaMiddleware
    send: Send
    ctx: tuple[bytes, Scope]  # the value of context.REQUEST while the app runs
    token: Token[Any]  # to reset it

    def on_send(self, message: Message) -> Awaitable[None]:
        # Not a coroutine: the server's send's own awaitable is handed back, so a
        # send costs no coroutine object and no extra frame of its own.
        mtype = message["type"]
        if mtype == "http.response.start":
            self.status = message["status"]
            adapter = self.adapter
            rid_name = adapter.rid_header
            # A new list: never mutate the app's (it may be a reused Response's).
            out = list(message.get("headers") or ())
            for key, value in out:
                if key == rid_name:  # ASGI header names are lower-case
                    adapter.core.adopt_request_id(self, value)
                    break
            else:
                out.append((rid_name, self.rid))
            # The performer is known now (authentication ran inside the app).
            cookies = adapter.core.settle(self, adapter.performer_of(self.holder))
            if cookies:
                out += cookies
            message["headers"] = out
        elif mtype == "http.response.body" and not message.get("more_body", False):
            self.end = perf_counter()
            return self._send_last(message)
        return self.send(message)

    async def _send_last(self, message: Message) -> None:
        """The last body message, handed to the server with this request no longer
        current (``context.REQUEST`` as it was before the request), then current
        again for whatever the app does after it (background tasks).

        Servers arm their keep-alive timer while sending it (uvicorn:
        ``loop.call_later``), and a timer keeps a copy of the context until it
        fires or is purged, seconds later — cancelled or not. Copied with the
        request current, each copy kept the whole scope (headers, route, state)
        alive past the request: under load that filled the young generation
        (~90 collections per 10,000 requests, against ~2 without) and promoted
        those scopes towards full collections.
        """
        try:
            REQUEST.reset(self.token)
        except (ValueError, RuntimeError):  # sent from another task (streaming): as is
            await self.send(message)
            return
        try:
            await self.send(message)
        finally:
            self.token = REQUEST.set(self.ctx)


def _connection(scope: Scope) -> Any:
    """What the app's hooks receive under ASGI: a Starlette ``HTTPConnection``
    (a read-only mapping over the scope, so ``request["path"]`` works too)."""
    from starlette.requests import HTTPConnection

    return HTTPConnection(scope)


def _route_template(scope: Scope, root: str) -> str | None:
    """The matched route's template, which Starlette and FastAPI leave in the scope.

    Inside a Mount the route's path is relative to it; the mount's prefix is
    what routing added to the scope's ``root_path`` (``root``: before the app)."""
    path = getattr(scope.get("route"), "path", None)
    if path is None:
        return None
    inner: str = scope.get("root_path", root)
    if inner != root and inner.startswith(root):
        path = inner[len(root) :] + path
    return path  # type: ignore[no-any-return]
