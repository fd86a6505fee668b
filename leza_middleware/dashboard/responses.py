"""What every mount sends back: a neutral response, always with the security headers.

Every answer of the admin view — a page, JSON, a redirect, a 400 naming the
bad field, a 403, the 500 of an unexpected error — goes out through
:func:`finish`, which adds the same security headers, so no path (error
paths included) serves a page that can be framed, sniffed or cached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .html import Markup
from .pages import CSP, MESSAGE_CSP, message_page

if TYPE_CHECKING:
    from .csrf import CsrfToken
    from .inputs import BadInput

__all__ = [
    "FORBIDDEN_TEXT",
    "INTERNAL_TEXT",
    "SECURITY_HEADERS",
    "DashResponse",
    "bad_input",
    "error_response",
    "finish",
    "forbidden",
    "html_response",
    "internal_error",
    "json_response",
    "redirect",
]

#: Escapes that keep JSON inert if a browser ever sniffs it as HTML.
_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                 0x2028: "\\u2028", 0x2029: "\\u2029"}  # fmt: skip
#: On every response of the admin view (the page's CSP comes with its body).
SECURITY_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "same-origin"),
)
_JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
FORBIDDEN_TEXT = "You are not allowed to see this page."
INTERNAL_TEXT = "Something went wrong in the Leza dashboard. It was logged on the server."


@dataclass
class DashResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def json_response(data: Any, status: int = 200) -> DashResponse:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return DashResponse(
        status,
        [("Content-Type", "application/json"), ("Content-Security-Policy", _JSON_CSP)],
        text.translate(_JSON_ESCAPES).encode("utf-8"),
    )


def html_response(body: Markup, status: int = 200, csp: str = CSP) -> DashResponse:
    return DashResponse(
        status,
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", csp)],
        body.encode("utf-8"),
    )


def redirect(location: str) -> DashResponse:
    return DashResponse(
        303,
        [("Location", location), ("Content-Type", "text/plain"),
         ("Content-Security-Policy", _JSON_CSP)],
        b"",
    )  # fmt: skip


def error_response(
    status: int, title: str, message: str, api: bool, field: str | None = None
) -> DashResponse:
    """A short page, or ``{"error": message, "detail": message[, "field": field]}``
    (``detail``: the name of earlier versions, kept)."""
    if api:
        body = {"error": message, "detail": message}
        if field is not None:
            body["field"] = field
        return json_response(body, status)
    return html_response(message_page(title, message), status, MESSAGE_CSP)


def bad_input(exc: BadInput, api: bool) -> DashResponse:
    """400 for an input the view cannot use; the message starts with the field's name."""
    return error_response(400, f"Bad request: {exc.field}", str(exc), api, exc.field)


def finish(response: DashResponse, csrf: CsrfToken | None, method: str) -> DashResponse:
    """Security headers on every response; the CSRF cookie when it is new."""
    response.headers.extend(SECURITY_HEADERS)
    if csrf is not None and csrf.set_cookie is not None:
        response.headers.append(("Set-Cookie", csrf.set_cookie))
    if method == "HEAD":
        response.body = b""
    return response


def forbidden(api: bool) -> DashResponse:
    """403 for a viewer ``authorize`` refused: says nothing about the data."""
    return finish(error_response(403, "Forbidden", FORBIDDEN_TEXT, api), None, "GET")


def internal_error(api: bool) -> DashResponse:
    """500 for an unexpected error: no traceback, no exception text (it is logged)."""
    return finish(error_response(500, "Server error", INTERNAL_TEXT, api), None, "GET")
