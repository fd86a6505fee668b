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

from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from ..context import current_native
from ..integrations.wsgi import LezaWSGIMiddleware, _native_request, _wsgi_text
from .core import (
    DashRequest,
    DashResponse,
    Mount,
    finish,
    forbidden,
    note_request,
    parse_cookies,
    parse_form,
    parse_query,
)
from .guard import DENIED_REASON, MAX_BODY, Authorize, call_authorize

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..leza import Leza

__all__ = ["DashboardWSGI", "make_wsgi_app"]


def make_wsgi_app(leza: Leza, authorize: Authorize | None = None) -> DashboardWSGI:
    """The dashboard of ``leza`` as a WSGI app (Flask, any WSGI server).

    ``authorize(request) -> bool`` receives a Werkzeug ``Request`` and decides
    every request; without it every request is refused with 403. Raises
    :class:`~leza_middleware.LezaConfigError` when ``authorize`` is given but is
    not callable.
    """
    return DashboardWSGI(leza, authorize)


class DashboardWSGI(Mount):
    def __init__(self, leza: Leza, authorize: Authorize | None = None) -> None:
        super().__init__(leza, authorize)
        self._recorded = LezaWSGIMiddleware(self._serve, leza=leza)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if current_native() is not None:  # inside the host's LezaWSGIMiddleware
            return self._serve(environ, start_response)
        return self._recorded(environ, start_response)

    def _serve(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = _wsgi_text(environ.get("PATH_INFO", "")) or "/"
        api = path.startswith("/api/")
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD"):
            health = self.dashboard.health(path)  # from memory, no authorize
            if health is not None:
                return _send(start_response, health)
        hook = self.authorize
        if hook is None or not call_authorize(hook, _native_request(environ)):
            note_request("denied", DENIED_REASON)
            return _send(start_response, forbidden(api))
        body = b""
        if method == "POST":
            read = _read_body(environ)
            if read is None:
                return _send(start_response, finish(DashResponse(413, [], b""), None, method))
            body = read
        base = _wsgi_text(environ.get("SCRIPT_NAME", "")).rstrip("/")
        form = parse_form(body) if body else {}
        headers = {
            "sec-fetch-site": environ.get("HTTP_SEC_FETCH_SITE", "same-origin"),
        }
        csrf = self.csrf.token(
            parse_cookies(environ.get("HTTP_COOKIE", "")),
            form,
            headers,
            path=base or "/",
            secure=environ.get("wsgi.url_scheme") == "https",
        )
        dreq = DashRequest(
            method=method,
            path=path,
            base=base,
            query=parse_query(_wsgi_text(environ.get("QUERY_STRING", ""))),
            csrf=csrf,
            form=form,
        )
        return _send(start_response, self.dashboard.handle(dreq))


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
