"""WSGI middleware: ``flask_app.wsgi_app = LezaWSGIMiddleware(flask_app.wsgi_app, leza=leza)``.

Translates a WSGI request for the request core (``core/request.py``): the
environ is the core's header mapping (CGI flavour); the path is ``SCRIPT_NAME
+ PATH_INFO``, the path the client asked for (PEP 3333's latin-1 read back as
the UTF-8 the client sent), as ASGI servers put the mount prefix into
``scope["path"]``. Refusals go out through ``start_response``; the rest of the
exchange — the request id header and cookies on the app's ``start_response``,
the body, the record when it ends — is PEP 3333's (``wsgi_exchange.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..context import REQUEST
from ..core import Request, RequestCore
from ..core.answers import status_line
from .wsgi_exchange import (
    PERFORMER_KEY,
    REQUEST_STATE_KEY,
    ROUTE_KEY,
    Exchange,
    coerce,
    mount,
    native_request,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from ..core.hooks import Answer
    from ..leza import Leza

# PERFORMER_KEY and ROUTE_KEY: the environ keys a WSGI layer may set (wsgi_exchange.py).
__all__ = ["PERFORMER_KEY", "ROUTE_KEY", "LezaWSGIMiddleware", "mount"]

SignOutHeaders = Callable[["WSGIEnvironment"], list[tuple[str, str]]]


class LezaWSGIMiddleware:
    """Record every request of a WSGI app.

    ``leza`` defaults to a :class:`~leza_middleware.Leza` configured from
    ``LEZA_*`` environment variables, so ``LezaWSGIMiddleware(app)`` alone works.
    """

    #: Extra headers for the answer to a revoked session's request, given the
    #: environ (set by framework integrations; Flask clears its own cookies).
    refusal_headers: SignOutHeaders | None = None

    def __init__(self, app: WSGIApplication, leza: Leza | None = None) -> None:
        if leza is None:
            from ..leza import Leza

            leza = Leza()
        self.app = app
        self.leza = leza
        self._in_app = False
        self.core = self._build()

    @property
    def permissions_in_app(self) -> bool:
        """A framework integration inside the app decides endpoint permissions
        (``leza.init_app`` for Flask), so this middleware takes no decision."""
        return self._in_app

    @permissions_in_app.setter
    def permissions_in_app(self, value: bool) -> None:
        self._in_app = value
        self.core = self._build()

    def _build(self) -> RequestCore:
        return RequestCore.for_leza(self.leza, asgi=False, decide_at_begin=not self._in_app)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        core = self.core
        req = Exchange()
        get = environ.get
        try:
            path, prefix = mount(environ)
        except Exception:  # against PEP 3333: served unrecorded, unless it had to be decided
            if core.endpoints.permissions is not None:
                raise
            core.faults.request_path_error()
            return self.app(environ, start_response)
        if not core.begin(
            req, environ, environ, get("REQUEST_METHOD", "GET"), path, prefix,
            get("QUERY_STRING", ""), get("REMOTE_ADDR") or None, get("wsgi.url_scheme", "http"),
        ):  # fmt: skip
            return self.app(environ, start_response)
        if req.sid is not None and core.refused(req):
            more = self.refusal_headers
            sign_out = None if more is None else lambda: more(environ)
            answer = core.revoked_answer(req, native_request(environ), sign_out)
            return self._answer(req, start_response, answer)
        if req.needed is not None:
            request = native_request(environ)
            try:
                if PERFORMER_KEY in environ:  # set by a WSGI layer outside this one
                    who = coerce(environ[PERFORMER_KEY])
                else:
                    who = core.hooks.performer(request)
                refusal = core.decide(req, who, request)
            except BaseException:  # the app is not called; the server answers 500
                core.finish(req)
                raise
            if refusal is not None:
                return self._answer(req, start_response, refusal)
        req.start_wsgi(core, start_response)
        environ[REQUEST_STATE_KEY] = req
        token = REQUEST.set(req.ctx)
        try:
            result = self.app(environ, req.start_response)
        except BaseException as exc:
            req.fail(exc)
            raise
        finally:
            REQUEST.reset(token)
        return req.wrap(result)

    def _answer(self, req: Request, start_response: StartResponse, answer: Answer) -> list[bytes]:
        """Send a refusal without the app (a refused session, a missing permission)."""
        status, headers, body = answer
        try:
            start_response(status_line(status), headers)
        finally:
            self.core.finish(req)
        return [body]
