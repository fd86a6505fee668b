"""The dashboard as a WSGI app, e.g. under a Flask app with Werkzeug's dispatcher::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    flask_app.wsgi_app = DispatcherMiddleware(
        flask_app.wsgi_app, {"/leza": make_wsgi_app(leza, authorize=is_admin)}
    )

Links are built under the mount (``SCRIPT_NAME``). ``authorize`` receives a
Werkzeug ``Request`` (the environ itself when Werkzeug is not installed).
Every view is recorded as an access event: by the host's
``LezaWSGIMiddleware`` when the dashboard runs inside it, else by one the
dashboard wraps itself in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from ..context import current_native
from ..integrations.wsgi import LezaWSGIMiddleware
from ..integrations.wsgi_exchange import native_request, wsgi_text
from .core import note_request
from .guard import DENIED_REASON, MAX_BODY, Authorize, admin_identity, call_authorize
from .mount import ORIGIN_HEADERS, Incoming, Mount
from .responses import DashResponse, error_response, finish, forbidden, internal_error

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..leza import Leza

__all__ = ["DashboardWSGI", "make_wsgi_app"]

log = logging.getLogger("leza_middleware")
_ENVIRON_KEYS = tuple(("HTTP_" + h.upper().replace("-", "_"), h) for h in ORIGIN_HEADERS)


def make_wsgi_app(
    leza: Leza,
    authorize: Authorize | None = None,
    *,
    trusted_origins: Iterable[str] | None = None,
) -> DashboardWSGI:
    """The dashboard of ``leza`` as a WSGI app (Flask, any WSGI server).

    ``authorize(request)`` receives a Werkzeug ``Request`` and decides every
    request: a true value lets it in (a string also names the admin, see
    docs/dashboard.md); without it every request is refused with 403.
    ``trusted_origins``: origins besides the dashboard's own that may send its
    forms. Raises :class:`~leza_middleware.LezaConfigError` when ``authorize``
    is given but is not callable, or an origin is not one.
    """
    return DashboardWSGI(leza, authorize, trusted_origins=trusted_origins)


class DashboardWSGI(Mount):
    def __init__(
        self,
        leza: Leza,
        authorize: Authorize | None = None,
        *,
        trusted_origins: Iterable[str] | None = None,
    ) -> None:
        super().__init__(leza, authorize, trusted_origins=trusted_origins)
        self._recorded = LezaWSGIMiddleware(self._serve, leza=leza)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if current_native() is not None:  # inside the host's LezaWSGIMiddleware
            return self._serve(environ, start_response)
        return self._recorded(environ, start_response)

    def _serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            response = self._answer(environ)
        except Exception:
            log.exception(
                "leza dashboard: unexpected error answering %s", environ.get("REQUEST_METHOD")
            )
            response = internal_error("/api/" in str(environ.get("PATH_INFO", "")))
        return _send(start_response, response)

    def _answer(self, environ: WSGIEnvironment) -> DashResponse:
        path = wsgi_text(environ.get("PATH_INFO", "")) or "/"
        api = path.startswith("/api/")
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD"):
            health = self.dashboard.health(path)  # from memory, no authorize
            if health is not None:
                return health
        hook = self.authorize
        request = native_request(environ)
        allowed = None if hook is None else call_authorize(hook, request)
        if allowed is None:
            note_request("denied", DENIED_REASON)
            return forbidden(api)
        body = b""
        if method not in ("GET", "HEAD"):
            read = _read_body(environ)
            if read is None:
                too_big = error_response(413, "Too large", "The form is too large.", api)
                return finish(too_big, None, method)
            body = read
        return self.respond(
            Incoming(
                method=method,
                path=path,
                base=wsgi_text(environ.get("SCRIPT_NAME", "")).rstrip("/"),
                query=_raw(environ.get("QUERY_STRING", "")),
                body=body,
                cookie=environ.get("HTTP_COOKIE", ""),
                headers={h: environ[k] for k, h in _ENVIRON_KEYS if k in environ},
                scheme=environ.get("wsgi.url_scheme", "http"),
                identity=admin_identity(allowed, request),
            )
        )


def _raw(text: str) -> bytes:
    """PEP 3333's latin-1 string back to the bytes the client sent."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # a server that handed over real text
        return text.encode("utf-8", "surrogatepass")


def _read_body(environ: WSGIEnvironment) -> bytes | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length > MAX_BODY or length < 0:
        return None
    return environ["wsgi.input"].read(length) if length else b""


def _send(start_response: StartResponse, response: DashResponse) -> list[bytes]:
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "Unknown"
    headers = [*response.headers, ("Content-Length", str(len(response.body)))]
    start_response(f"{response.status} {phrase}", headers)
    return [response.body]
