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

from typing import TYPE_CHECKING, Any

from ..core.answers import answer
from ..core.binding import SESSION_BINDING_KEY, bound_id, needs_new_binding, new_session_id, refuse
from ..core.flavour import Flavour
from ..core.routes import Endpoints, request_paths
from ..performer import Performer, performer_from_user
from ..sessions.registry import REQUEST_KEY

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from ..leza import Leza

__all__ = ["SESSION_BINDING_KEY", "LezaSessionBinding"]


class LezaSessionBinding:
    def __init__(self, app: ASGIApp, leza: Leza) -> None:
        self.app = app
        self.leza = leza
        self._logout = Endpoints(leza.settings.logout_routes, None)
        self._flavour = Flavour(True, leza.settings.request_id_header, ())

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
        bound = bound_id(session.get(SESSION_BINDING_KEY))
        if bound is not None:
            state["session_id"] = bound
            reason = await self.leza.sessions.arefusal(bound)
            if reason is not None:
                if refuse(state, bound, reason):
                    session.clear()  # SessionMiddleware then expires the cookie: signed out
                await self._refuse(scope, send)
                return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Before SessionMiddleware (outside us) serialises the session.
                self._bind(scope, session, state, bound)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _bind(self, scope: Scope, session: Any, state: dict[str, Any], bound: str | None) -> None:
        paths = request_paths(scope.get("path", ""), scope.get("root_path", ""))
        if state.get("end_session") or self._logout.is_logout(scope.get("method", ""), paths):
            session.pop(SESSION_BINDING_KEY, None)  # the session ended with this request
            return
        performer = state.get("performer") or self._performer(scope)
        if performer is not None and needs_new_binding(self.leza.sessions, state, bound):
            sid = session[SESSION_BINDING_KEY] = new_session_id(self.leza.keyring)
            state["session_id"] = sid

    def _performer(self, scope: Scope) -> Performer | None:
        if self.leza.hooks.performer_hook is not None:
            from starlette.requests import HTTPConnection

            return self.leza.hooks.performer(HTTPConnection(scope))
        user = scope.get("user")
        return None if user is None else performer_from_user(user)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        from starlette.requests import HTTPConnection

        # The request id header comes from LezaMiddleware, outside.
        status, headers, body = answer(
            self._flavour, *self.leza.hooks.revoked(HTTPConnection(scope)), None
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
