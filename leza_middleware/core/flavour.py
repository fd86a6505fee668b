"""The two ways servers hand over a request's headers, and take a response's back.

* **ASGI**: a dict of lower-case ``bytes`` names to ``bytes`` values (the
  adapter's view of ``scope["headers"]``); response headers are ``(bytes,
  bytes)`` pairs, names lower-case.
* **CGI**: the WSGI ``environ`` or Django's ``request.META``: ``HTTP_<NAME>``
  keys, values the latin-1 text of the bytes received (PEP 3333); response
  headers are ``(str, str)`` pairs, names in their usual spelling
  (``X-Request-ID``).

The request core reads headers through one mapping ``get`` with the keys
below, and writes values in the flavour's own type, so every step is written
once and no header is copied or converted on the way in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ids import (
    REQUEST_IDS_BYTES,
    REQUEST_IDS_STR,
    new_request_id,
    new_request_id_bytes,
    parse_incoming_request_id,
)
from ..request_path import environ_header_keys, pick_environ_headers, pick_headers

__all__ = ["Flavour", "header_case", "merge_repeated"]


def header_case(name: str) -> str:
    """``x-request-id`` -> ``X-Request-ID``; ``x-correlation-id`` -> ``X-Correlation-ID``.

    How such headers are usually spelled (``ID`` in capitals); names are
    case-insensitive, so this only matters to what a person reads.
    """
    return "-".join("ID" if part == "id" else part.capitalize() for part in name.split("-"))


class Flavour:
    """Header keys and value conversions of one server family (ASGI or CGI)."""

    __slots__ = (
        "accept",
        "asgi",
        "cookie",
        "forwarded",
        "host",
        "html",
        "new_request_id",
        "pick",
        "record_keys",
        "request_id",
        "request_id_out",
        "request_ids",
        "set_cookie",
        "traceparent",
        "user_agent",
        "x_forwarded_for",
    )

    def __init__(self, asgi: bool, request_id_header: str, record_headers: tuple[str, ...]) -> None:
        self.asgi = asgi
        key: Callable[[str], Any] = _asgi_key if asgi else _cgi_key
        self.request_id = key(request_id_header)
        self.traceparent = key("traceparent")
        self.cookie = key("cookie")
        self.accept = key("accept")
        self.user_agent = key("user-agent")
        self.x_forwarded_for = key("x-forwarded-for")
        self.forwarded = key("forwarded")
        self.host = key("host")
        self.html: Any = b"text/html" if asgi else "text/html"
        self.new_request_id: Callable[[], Any] = new_request_id_bytes if asgi else new_request_id
        #: ``next(request_ids[0])``: :attr:`new_request_id` without its Python frame.
        self.request_ids: list[Any] = REQUEST_IDS_BYTES if asgi else REQUEST_IDS_STR
        # The request-id response header's name, and Set-Cookie's, as the flavour writes them.
        self.request_id_out: Any = (
            request_id_header.encode("latin-1") if asgi else header_case(request_id_header)
        )
        self.set_cookie: Any = b"set-cookie" if asgi else "Set-Cookie"
        # record_headers (privacy/headers.py): what to pick from the mapping, or nothing.
        self.record_keys: Any = (
            tuple(n.encode("latin-1") for n in record_headers)
            if asgi
            else environ_header_keys(record_headers)
        )
        self.pick: Callable[[Any, Any], tuple[Any, ...] | None] = (
            pick_headers if asgi else pick_environ_headers
        )

    def parse_request_id(self, incoming: Any, traceparent: Any) -> Any:
        """A valid incoming id (the header's, else the W3C trace id) or None."""
        if self.asgi:
            return parse_incoming_request_id(incoming, traceparent)
        # CGI values are the latin-1 text of the bytes received; anything beyond
        # latin-1 (a server against PEP 3333) becomes "?" and fails the check.
        rid = parse_incoming_request_id(
            None if incoming is None else incoming.encode("latin-1", "replace"),
            None if traceparent is None else traceparent.encode("latin-1", "replace"),
        )
        # The accepted forms are ASCII only: one decoding for every adapter.
        return None if rid is None else rid.decode("ascii")

    def text(self, value: bytes) -> Any:
        """A header value we made (ASCII bytes) in the flavour's type."""
        return value if self.asgi else value.decode("latin-1")


def _asgi_key(name: str) -> bytes:
    return name.lower().encode("latin-1")


def _cgi_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


# Header lines that may repeat and mean one value together (RFC 9110: a list
# is comma-joined; RFC 6265: Cookie lines are "; "-joined). Other repeated
# names keep their last line, as dict() keeps it.
_JOINED = {b"x-forwarded-for": b",", b"forwarded": b",", b"cookie": b"; ", b"accept": b", "}


def merge_repeated(
    raw: list[tuple[bytes, bytes]], recorded: tuple[bytes, ...] = ()
) -> dict[bytes, bytes]:
    """An ASGI header list whose names repeat, as one dict.

    The adapter's fast path is ``dict(scope["headers"])``; when that loses
    lines (a proxy chain split over two ``X-Forwarded-For`` lines, HTTP/2's
    split ``Cookie``), the lists are joined so they are walked whole, and so
    are the headers ``record_headers`` keeps (stored comma-joined).
    """
    out: dict[bytes, bytes] = {}
    for name, value in raw:
        seen = out.get(name)
        if seen is None:
            out[name] = value
            continue
        sep = _JOINED.get(name)
        if sep is None and name in recorded:
            sep = b", "
        out[name] = value if sep is None else seen + sep + value
    return out
