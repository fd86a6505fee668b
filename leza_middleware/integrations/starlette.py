"""Bind Leza sessions to Starlette's signed-cookie sessions.

Starlette's ``SessionMiddleware`` keeps the session in a signed cookie: the
server cannot invalidate it, so after a logout or a revocation a copy of that
cookie still signs its holder in. ``LezaMiddleware`` alone tracks sessions by
its own ``leza_sid`` cookie, which a replay can simply leave out. Add this
middleware *inside* ``SessionMiddleware`` and the Leza session's public id is
written into the framework's session itself (``session["_leza_sid"]``), where
it is signed with the rest and travels with every copy::

    app.add_middleware(LezaSessionBinding, leza=leza)   # inner: added first
    app.add_middleware(SessionMiddleware, secret_key=...)
    app.add_middleware(AuthenticationMiddleware, backend=...)
    app.add_middleware(LezaMiddleware, leza=leza)        # outermost: added last

A request whose bound session is revoked (or logged out) is answered with the
revoked response before the app runs, and its framework session is emptied,
so the browser is signed out rather than refused again and again. While the
blocklist cannot be known (``revocation_unknown``, docs/sessions.md) the
same response goes out but the session is kept.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..performer import Performer, performer_from_user
from ..sessions.registry import REQUEST_KEY, REVOKED_REASON

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ..leza import Leza

__all__ = ["SESSION_BINDING_KEY", "LezaSessionBinding"]

SESSION_BINDING_KEY = "_leza_sid"


class LezaSessionBinding:
    def __init__(self, app: ASGIApp, leza: Leza) -> None:
        self.app = app
        self.leza = leza
        self._logout_routes = frozenset(leza.settings.logout_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = scope.get("session") if scope["type"] == "http" else None
        if session is None:  # not behind SessionMiddleware: nothing to bind to
            await self.app(scope, receive, send)
            return
        state = scope.get(REQUEST_KEY)
        if state is None:
            state = scope[REQUEST_KEY] = {}
        # Tells LezaMiddleware the session lives here, not in its leza_sid cookie.
        state["bound"] = True
        bound = session.get(SESSION_BINDING_KEY)
        sessions = self.leza.sessions
        if bound is not None:
            state["session_id"] = bound
            refused = await sessions.arefusal(bound)
            if refused is not None:
                await self._refuse(scope, send, session, state, bound, refused)
                return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Before SessionMiddleware (outside us) serialises the session.
                self._bind(scope, session, state, bound)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _bind(self, scope: Scope, session: Any, state: dict[str, Any], bound: str | None) -> None:
        method, path = scope.get("method", ""), scope.get("path", "")
        routes = self._logout_routes
        if state.get("end_session") or path in routes or f"{method} {path}" in routes:
            session.pop(SESSION_BINDING_KEY, None)  # the session ended with this request
            return
        performer = state.get("performer") or self._performer(scope)
        if performer is None:
            return
        if bound is None or state.get("new_session") or bound in self.leza.sessions.timed_out:
            # A public id, like any session's: a keyed hash of a fresh random key.
            sid = self.leza.keyring.session_id(os.urandom(18))
            session[SESSION_BINDING_KEY] = sid
            state["session_id"] = sid

    def _performer(self, scope: Scope) -> Performer | None:
        if self.leza.performer_hook is not None:
            from starlette.requests import HTTPConnection

            return self.leza._call_performer_hook(HTTPConnection(scope))
        user = scope.get("user")
        return None if user is None else performer_from_user(user)

    async def _refuse(
        self, scope: Scope, send: Send, session: Any, state: dict[str, Any], bound: str,
        reason: str,
    ) -> None:  # fmt: skip
        if reason is REVOKED_REASON:  # not when unknown: probably a valid session
            session.clear()  # SessionMiddleware then expires the cookie: signed out for good
        state.update(action="denied", reason=reason, session_id=bound)
        status, extra, body = self.leza._revoked_response(scope)
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in extra
            if k.lower() != "content-length"
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
