"""What a refused request is answered with, before the app runs.

Two refusals: a session that is revoked (or whose state cannot be known), and
an endpoint permission the performer lacks. The answer is a plain ``(status,
headers, body)`` with the headers in the adapter's flavour (``core/flavour.py``):
ASGI and WSGI send it as it is; Django and Flask build their own response
object from it, so it passes through their middleware like any other.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from .flavour import Flavour
from .hooks import Answer

__all__ = ["answer", "detail_body", "permission_answer", "status_line"]

_JSON = [("content-type", "application/json")]


def detail_body(reason: str) -> bytes:
    """``{"detail": reason}``, the body of a permission refusal."""
    return json.dumps({"detail": reason}).encode()


def answer(
    flavour: Flavour,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    request_id: Any,
    extra: list[tuple[Any, Any]] | tuple[()] = (),
) -> Answer:
    """The refusal as sent: the given headers in the flavour's spelling, then
    the request id, ``extra`` (Set-Cookie lines, already in the flavour's
    type) and a ``Content-Length`` that matches the body (one the headers
    brought is dropped: it may not)."""
    out: list[tuple[Any, Any]]
    if flavour.asgi:
        out = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in headers
            if k.lower() != "content-length"
        ]
    else:
        out = [(k, v) for k, v in headers if k.lower() != "content-length"]
    if request_id is not None:  # None: a layer outside adds it
        out.append((flavour.request_id_out, request_id))
    out += extra
    length = str(len(body))
    out.append((b"content-length", length.encode()) if flavour.asgi else ("Content-Length", length))
    return status, out, body


def permission_answer(flavour: Flavour, status: int, reason: str, request_id: Any) -> Answer:
    """A missing permission: the decision's status (401 or 403), ``{"detail": reason}``."""
    cgi = [("Content-Type", "application/json")]
    return answer(flavour, status, _JSON if flavour.asgi else cgi, detail_body(reason), request_id)


def status_line(status: int) -> str:
    """``418`` -> ``418 I'm a Teapot`` (WSGI's ``start_response`` wants the phrase)."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"
