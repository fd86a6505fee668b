"""Pure ASGI middleware: ``app.add_middleware(LezaMiddleware, leza=leza)``.

Per request it reuses or makes a request id, echoes it in the response, notes
the status and when the last body byte left, and enqueues one raw record that
references the scope. All per-request state lives inside ``__call__``; the
app's own exceptions pass through untouched after being recorded as a 500.
Every µs here is paid by every request, so the code favours local variables
and dict lookups over helpers and objects.
"""

from __future__ import annotations

import json
import logging
from time import perf_counter, time
from typing import TYPE_CHECKING, Any

from ..context import _current
from ..ids import new_request_id_bytes, parse_incoming_request_id
from ..performer import Performer, performer_from_user
from ..request_path import normalise_route, pick_headers
from ..sessions.registry import LOGOUT_REASON, REQUEST_KEY, REVOKED_REASON

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ..leza import Leza
    from ..permissions import Decision

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
        settings = leza.settings
        self._offer = leza.recorder.offer
        self._rid_header = settings.request_id_header.encode("latin-1")
        self._performer_hook = leza.performer_hook
        self._cookies = leza.cookies
        self._sessions = leza.sessions
        self._machine_ids = bool(settings.machine_cookie)
        self._track_sessions = settings.sessions
        self._logout_routes = frozenset(settings.logout_routes)
        # None without rules: one identity test per request instead of a __bool__ call.
        self._permissions = leza.permissions if leza.permissions.rules else None
        # record_headers (privacy.py): empty unless configured, one test per request.
        self._record_headers = tuple(n.encode("latin-1") for n in settings.record_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        # Every line below runs for every request: locals and dict lookups only.
        start = perf_counter()
        ts = time()
        try:
            headers, rid = self._headers_and_request_id(scope)
            cookie = headers.get(b"cookie") if type(headers) is dict else _cookie_header(headers)
            mid, sid, _ = self._cookies.read(cookie) if cookie else (None, None, False)
            # A browser (it keeps cookies, or asks for a page) gets a machine id;
            # API clients and load generators are not handed a new one per call.
            browser = cookie is not None or _accepts_html(headers)
        except Exception:  # malformed scope: serve the app, record nothing
            self.leza._count_request_path_error()
            if self._permissions is None or (
                self._permissions.required(scope["method"], scope["path"]) is None
            ):
                await self.app(scope, receive, send)
                return
            # ... but never a protected endpoint undecided (no headers: no cookies).
            headers, rid, mid, sid, browser = {}, new_request_id_bytes(), None, None, False
        if sid is not None:
            refused = await self._sessions.arefusal(sid)
            if refused is not None:
                # A revoked session's cookie is cleared; an unknown one is kept.
                await self._answer(
                    scope, send, headers, rid, ts, start, mid, sid,
                    self.leza._revoked_response(scope), None, refused, refused is REVOKED_REASON,
                )  # fmt: skip
                return
            scope[REQUEST_KEY] = {"session_id": sid}  # for the session API in the app
        path = scope["path"]
        granted: str | None = None  # the reason of an allowed permission check
        if self._permissions is not None:
            needed = self._permissions.required(scope["method"], path)
            if needed is not None:
                who = self._performer(scope)
                decision = self._decide(needed, who, scope, headers, rid, ts, start, mid, sid)
                if not decision.allowed:
                    body = json.dumps({"detail": decision.reason}).encode()
                    response = (decision.status, [("content-type", "application/json")], body)
                    await self._answer(
                        scope, send, headers, rid, ts, start, mid, sid,
                        response, who, decision.reason, False,
                    )  # fmt: skip
                    return
                granted = decision.reason
        rid_pair = (self._rid_header, rid)
        root_path = scope.get("root_path", "")
        logout = bool(self._logout_routes) and self._is_logout(scope["method"], path)
        status = 0
        end = 0.0
        performer: Performer | None = None
        resolved = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, end, rid, mid, sid, performer, resolved
            mtype = message["type"]
            if mtype == "http.response.start":
                status = message["status"]
                # A new list: never mutate the app's (it may be a reused Response's).
                out = list(message.get("headers") or ())
                name = rid_pair[0]
                for key, value in out:
                    if key == name:  # ASGI header names are lower-case
                        # The app set its own: store what the client sees, if it
                        # is a well-formed id (else ours, not arbitrary text).
                        if parse_incoming_request_id(value, None) is not None:
                            rid = value
                        break
                else:
                    out.append(rid_pair)
                # The performer is known now (authentication ran inside the app):
                # a signed-in user without a session cookie starts a session.
                if self._performer_hook is None:
                    user = scope.get("user")
                    performer = None if user is None else performer_from_user(user)
                else:
                    performer = self._hook_performer(scope)
                resolved = True
                if mid is None and browser and self._machine_ids:
                    mid, set_mid = self._cookies.new_machine(scope.get("scheme") == "https")
                    out.append((b"set-cookie", set_mid))
                if self._track_sessions and (
                    performer is not None or logout or REQUEST_KEY in scope
                ):
                    sid = self._session_cookie(scope, out, sid, performer, logout)
                message["headers"] = out
            elif mtype == "http.response.body" and not message.get("more_body", False):
                end = perf_counter()
            await send(message)

        token = _current.set((rid, scope))
        error: str | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            _current.reset(token)
            try:
                if not status:
                    status = 500  # the app failed before responding: the server sends 500
                if not resolved:
                    performer = self._performer(scope)
                action = reason = None
                state = scope.get(REQUEST_KEY)
                if state is not None and "action" in state:
                    action, reason = state["action"], state.get("reason")
                    performer = state.get("performer") or performer
                elif logout:
                    action, reason = "logout", LOGOUT_REASON
                elif granted is not None and status < 400:
                    reason = granted
                self._enqueue(
                    scope,
                    headers,
                    rid,
                    scope["method"],
                    path,
                    root_path,
                    ts,
                    (end or perf_counter()) - start,
                    status,
                    error,
                    performer,
                    action,
                    reason,
                    mid,
                    sid,
                )
            except Exception:  # never let recording hurt the app
                self.leza._count_request_path_error()

    def _session_cookie(
        self,
        scope: Scope,
        out: list[tuple[bytes, bytes]],
        sid: str | None,
        performer: Performer | None,
        logout: bool,
    ) -> str | None:
        """Issue, rotate or clear the session cookie; return the request's session id."""
        state = scope.get(REQUEST_KEY)
        if state is not None and state.get("bound"):
            # The framework's own session carries it (integrations/starlette.py).
            bound: str | None = state.get("session_id")
            return bound
        if logout or (state is not None and state.get("end_session")):
            if sid is not None:
                out.append((b"set-cookie", self._cookies.clear_session()))
            return sid  # the event carries it: the tracker ends that session
        if state is not None and state.get("performer") is not None:
            performer = state["performer"]
        new = state is not None and state.get("new_session")
        if performer is not None and (sid is None or new or sid in self._sessions.timed_out):
            sid, cookie = self._cookies.new_session(scope.get("scheme") == "https")
            out.append((b"set-cookie", cookie))
            if state is not None:
                state["session_id"] = sid
        return sid

    def _decide(
        self,
        needed: str,
        who: Performer | None,
        scope: Scope,
        headers: Any,
        rid: bytes,
        ts: float,
        start: float,
        mid: str | None,
        sid: str | None,
        method: str | None = None,
    ) -> Decision:
        """The permission decision for a protected endpoint. When deciding fails
        (a ``has_permission`` hook raised) the app is not called: the request is
        recorded as a 500 and the exception goes to the server."""
        assert self._permissions is not None
        try:
            return self._permissions.decide(needed, who, scope)
        except BaseException as exc:
            self._enqueue(
                scope, headers, rid, method or scope["method"], scope["path"],
                scope.get("root_path", ""), ts, perf_counter() - start, 500,
                type(exc).__name__, who, None, None, mid, sid,
            )  # fmt: skip
            raise

    def _is_logout(self, method: str, path: str) -> bool:
        routes = self._logout_routes
        return path in routes or f"{method} {path}" in routes

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        headers: Any,
        rid: bytes,
        ts: float,
        start: float,
        mid: str | None,
        sid: str | None,
        response: tuple[int, list[tuple[str, str]], bytes],
        performer: Performer | None,
        reason: str,
        end_session_cookie: bool,
    ) -> None:
        """Answer a request without the app (a revoked session, a missing permission)."""
        status, extra, body = response
        try:
            out = [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in extra
                if k.lower() != "content-length"  # ours below matches the body
            ]
            out += [(self._rid_header, rid), (b"content-length", str(len(body)).encode())]
            if end_session_cookie:  # so the browser can sign in afresh
                out.append((b"set-cookie", self._cookies.clear_session()))
            await send({"type": "http.response.start", "status": status, "headers": out})
            await send({"type": "http.response.body", "body": body})
        finally:
            self._enqueue(
                scope, headers, rid, scope["method"], scope["path"], scope.get("root_path", ""),
                ts, perf_counter() - start, status, None, performer, "denied", reason, mid, sid,
            )  # fmt: skip

    def _enqueue(
        self,
        scope: Scope,
        headers: Any,
        rid: bytes,
        method: str,
        path: str,
        root_path: str,
        ts: float,
        duration: float,
        status: int,
        error: str | None,
        performer: Performer | None,
        action: str | None = None,
        reason: str | None = None,
        machine_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        """Queue the raw access record of a finished request (see
        request_path.RAW_FIELDS). Never raises: recording must not hurt the app."""
        try:
            if type(headers) is dict:
                get = headers.get
                ua, xff, fwd, host = (
                    get(b"user-agent"),
                    get(b"x-forwarded-for"),
                    get(b"forwarded"),
                    get(b"host"),
                )
            else:
                ua, xff, fwd, host = _pick_repeated(headers)
            client = scope.get("client")
            names = self._record_headers
            self._offer(
                (
                    ts,
                    duration,
                    status,
                    rid,
                    method,
                    path,
                    scope.get("query_string", b""),
                    client[0] if client else None,
                    scope.get("scheme", "http"),
                    _route_template(scope, root_path),
                    ua,
                    xff,
                    fwd,
                    host,
                    performer,
                    error,
                    action,
                    reason,
                    machine_id,
                    session_id,
                    pick_headers(headers, names) if names else None,
                )
            )
        except Exception:
            self.leza._count_request_path_error()

    def _performer(self, scope: Scope) -> Performer | None:
        if self._performer_hook is None:
            # Starlette's AuthenticationMiddleware sets scope["user"]; read after
            # authentication ran inside the app, so it counts.
            user = scope.get("user")
            return None if user is None else performer_from_user(user)
        return self._hook_performer(scope)

    def _headers_and_request_id(self, scope: Scope) -> tuple[Any, bytes]:
        """A header view for the record, and the request id."""
        raw = scope["headers"]
        headers: Any = dict(raw)
        if len(headers) != len(raw):
            headers = list(raw)  # repeated names (X-Forwarded-For twice): keep them all
            incoming = traceparent = None
            for name, value in headers:
                if name == self._rid_header:
                    incoming = value
                elif name == b"traceparent":
                    traceparent = value
        else:
            incoming = headers.get(self._rid_header)
            traceparent = headers.get(b"traceparent")
        if incoming is not None or traceparent is not None:
            rid = parse_incoming_request_id(incoming, traceparent)
            if rid is not None:
                return headers, rid
        return headers, new_request_id_bytes()

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One access event per connection, recorded as soon as it is accepted
        # or refused (not when it closes, which may be hours later).
        start = perf_counter()
        ts = time()
        path = scope["path"]
        # A handshake is a GET: "GET /live" and any-method rules protect the socket too.
        needed = None if self._permissions is None else self._permissions.required("GET", path)
        try:
            headers, rid = self._headers_and_request_id(scope)
        except Exception:
            self.leza._count_request_path_error()
            if needed is None:
                await self.app(scope, receive, send)
                return
            headers, rid = {}, new_request_id_bytes()  # still decided, below
        root_path = scope.get("root_path", "")
        granted: str | None = None  # the reason of an allowed permission check
        if needed is not None:
            who = self._performer(scope)
            decision = self._decide(needed, who, scope, headers, rid, ts, start, None, None, "WS")
            if not decision.allowed:
                # Closing before accepting is the handshake's refusal: the client
                # gets an HTTP 403 whatever the reason (401 needs an extension).
                message = await receive()
                if message["type"] == "websocket.connect":
                    await send({"type": "websocket.close", "code": 1008})
                self._enqueue(
                    scope, headers, rid, "WS", path, root_path, ts,
                    perf_counter() - start, 403, None, who, "denied", decision.reason,
                )  # fmt: skip
                return
            granted = decision.reason
        recorded = False

        def record(status: int, error: str | None = None) -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            try:
                performer = self._performer(scope)
            except Exception:  # a hook that raised: recorded anonymous
                performer = None
            self._enqueue(
                scope, headers, rid, "WS", path, root_path, ts, perf_counter() - start,
                status, error, performer, None, granted if status < 400 else None,
            )  # fmt: skip

        async def send_wrapper(message: Message) -> None:
            mtype = message["type"]
            if mtype == "websocket.accept":
                record(101)
            elif mtype == "websocket.close":
                record(403)  # closed before accepting: refused
            elif mtype == "websocket.http.response.start":
                record(message["status"])
            await send(message)

        token = _current.set((rid, scope))
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            record(500, type(exc).__name__)
            raise
        finally:
            _current.reset(token)
            record(403)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._sessions.prefetch()  # the first request then usually finds the blocklist loaded
        received: list[str] = []
        answered = False

        async def receive_wrapper() -> Message:
            message = await receive()
            received.append(message["type"])
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal answered
            answered = True
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self._flush_for_shutdown()
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            if answered:
                raise
            # The app does not speak the lifespan protocol (plain ASGI apps often
            # raise on a scope type they don't know). Speak it for the app, so the
            # queue is still written when the server shuts down: uvicorn re-raises
            # SIGTERM after its shutdown, and atexit hooks never run.
            log.debug("leza: the app has no lifespan support; answering it", exc_info=True)
            await self._own_lifespan(receive, send, startup_seen="lifespan.startup" in received)

    async def _own_lifespan(self, receive: Receive, send: Send, startup_seen: bool) -> None:
        if startup_seen:
            await send({"type": "lifespan.startup.complete"})
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._flush_for_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _flush_for_shutdown(self) -> None:
        # Write what is queued before the server exits; the flush blocks, so run
        # it off the event loop, bounded by the shutdown timeout.
        leza = self.leza
        try:
            import anyio.to_thread

            await anyio.to_thread.run_sync(
                leza.flush, leza.settings.shutdown_timeout, abandon_on_cancel=True
            )
        except Exception:
            log.warning("leza: flush at lifespan shutdown failed", exc_info=True)

    def _hook_performer(self, scope: Scope) -> Performer | None:
        from starlette.requests import HTTPConnection

        return self.leza._call_performer_hook(HTTPConnection(scope))


def _accepts_html(headers: Any) -> bool:
    if type(headers) is dict:
        accept = headers.get(b"accept")
        return accept is not None and b"text/html" in accept
    return any(k == b"accept" and b"text/html" in v for k, v in headers)


def _cookie_header(headers: Any) -> bytes | None:
    if type(headers) is dict:
        return headers.get(b"cookie")
    # Repeated Cookie lines (HTTP/2 may split them) mean one "; "-joined header.
    values = [v for k, v in headers if k == b"cookie"]
    return b"; ".join(values) if values else None


def _pick_repeated(headers: list[tuple[bytes, bytes]]) -> tuple[Any, Any, Any, Any]:
    """User-Agent, X-Forwarded-For, Forwarded, Host from a header list with repeats.

    Repeated lines of a list-valued header mean the same as one comma-joined
    line (RFC 9110), so a proxy chain split over two lines is walked whole.
    """
    ua = host = None
    xff: list[bytes] = []
    fwd: list[bytes] = []
    for name, value in headers:
        if name == b"user-agent":
            ua = value
        elif name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"forwarded":
            fwd.append(value)
        elif name == b"host":
            host = value
    return ua, b",".join(xff) if xff else None, b",".join(fwd) if fwd else None, host


def _route_template(scope: Scope, root_path: str) -> str | None:
    """The matched route's template, which Starlette and FastAPI leave in the scope.

    Normalised like every adapter's (see ``request_path.normalise_route``):
    ``/items/{item_id:int}`` is stored as ``/items/{item_id}``.
    """
    path = getattr(scope.get("route"), "path", None)
    if path is None:
        return None
    # Inside a Mount the route's path is relative to it; the mount's prefix is
    # what routing added to root_path.
    inner: str = scope.get("root_path", root_path)
    if inner != root_path and inner.startswith(root_path):
        path = inner[len(root_path) :] + path
    return normalise_route(path)
