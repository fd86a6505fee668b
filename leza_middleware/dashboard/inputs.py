"""Every input of the admin view, parsed strictly, in one place for the three mounts.

The ASGI, WSGI and Django mounts hand over the bytes the client sent (query
string, form body); this module splits and percent-decodes them and reads
each value as UTF-8 *strictly*. A value the view uses is then checked by what
it is: a whole number is ASCII digits within its range, a time an ISO 8601
date or date-time within years 1 to 9999, a cursor what :func:`~leza_middleware.
query.parse_cursor` accepts, a text filter at most a few hundred characters
without control characters or lone surrogates. A parameter given twice, or
whose bytes are not UTF-8, is refused rather than guessed at.

Anything else raises :class:`BadInput`, which the view answers with 400 naming
the field. Parameters the view does not use are ignored, whatever they hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote_to_bytes

from ..query import MAX_CURSOR, MAX_US, MIN_US, parse_cursor, to_us

__all__ = [
    "EMPTY",
    "MAX_TEXT",
    "BadInput",
    "Params",
    "clean_text",
    "cursor",
    "entity_part",
    "event_id",
    "iso_time",
    "performer_id",
    "request_id",
    "session_id",
    "whole_number",
]

#: The longest text filter (action, performer): ids and names, not documents.
MAX_TEXT = 200
#: C0 (tab included), DEL, C1 and lone surrogates: never passed on to storage.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_ISO = re.compile(
    _DATE
    + r"(?:[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?)?"
)
_DIGITS = re.compile(r"[0-9]{1,18}")
_SESSION_ID = re.compile(r"[A-Za-z0-9_\-]{8,128}")
#: What the request path stores as a request id (ids.parse_incoming_request_id).
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
#: A record's ``_id`` (time-sortable event ids, and ids written by other tools).
_EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
#: The longest performer id, entity type or entity id a path may name (they are
#: stored cut to 512 characters).
MAX_NAME = 512


class BadInput(ValueError):
    """An input the view cannot use: answered with 400, naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _show(value: str) -> str:
    """A value quoted in an error message: short, and only what is printable."""
    return repr(_CONTROL.sub("\ufffd", value[:40]) + ("…" if len(value) > 40 else ""))


class Params:
    """The name/value pairs of a query string or form body, decoded strictly.

    Building one never fails: what cannot be decoded is kept as such and only
    refused (:class:`BadInput`) when the view asks for that name.
    """

    __slots__ = ("_values",)

    def __init__(self, pairs: Iterable[tuple[str, str | None]] = ()) -> None:
        values: dict[str, list[str | None]] = {}
        for name, value in pairs:
            values.setdefault(name, []).append(value)
        self._values = values

    @classmethod
    def parse(cls, raw: bytes) -> Params:
        """``a=1&b=x%20y`` as sent (``+`` is a space; ``&`` separates, ``;`` does not)."""
        pairs: list[tuple[str, str | None]] = []
        for part in raw.split(b"&"):
            if not part:
                continue
            name, _, value = part.partition(b"=")
            # A name that is not UTF-8 cannot be one the view knows; keep it inert.
            key = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8", "replace")
            try:
                text: str | None = unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError:
                text = None
            pairs.append((key, text))
        return cls(pairs)

    @classmethod
    def of(cls, mapping: Mapping[str, str]) -> Params:
        """Already decoded values (tests, callers of :meth:`Filters.parse`)."""
        return cls(mapping.items())

    def get(self, name: str, default: str = "") -> str:
        """The one value of ``name``; ``default`` when it is absent."""
        values = self._values.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise BadInput(name, f"{name}: given {len(values)} times; give it once")
        value = values[0]
        if value is None:
            raise BadInput(name, f"{name}: not UTF-8 text")
        return value

    def names(self) -> frozenset[str]:
        return frozenset(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __bool__(self) -> bool:
        return bool(self._values)


EMPTY = Params()


def clean_text(field: str, value: str, max_length: int = MAX_TEXT) -> str:
    """A text filter: surrounding spaces dropped, bounded, no control characters."""
    value = value.strip()
    if len(value) > max_length:
        raise BadInput(field, f"{field}: at most {max_length} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise BadInput(field, f"{field}: control characters are not allowed")
    return value


def whole_number(field: str, value: str, low: int, high: int) -> int:
    """ASCII digits (``'²'`` and ``'٣'`` are digits to ``str.isdigit``, not here) in range."""
    text = value.strip()
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise BadInput(field, f"{field} must be a whole number from {low} to {high}")
    return int(text)


def iso_time(field: str, value: str, *, end: bool = False) -> int:
    """µs since the epoch of ``2025-07-06`` or ``2025-07-06T15:49:24[.123456][Z|±hh:mm]``.

    The forms the dashboard documents only: no week dates, no basic format,
    no non-ASCII digits; the result lies within years 1 to 9999 UTC.
    """
    text = value.strip()
    try:
        if not _ISO.fullmatch(text):
            raise ValueError(text)
        us = to_us(text, end=end)  # raises past years 1 to 9999 (an offset can push it)
        if us is None or not MIN_US <= us <= MAX_US:
            raise ValueError(text)
        return us
    except ValueError:
        raise BadInput(
            field,
            f"{field}: not an ISO 8601 date or date-time (e.g. 2025-07-06 or "
            f"2025-07-06T15:49:24Z) within years 1 to 9999: {_show(text)}",
        ) from None


def cursor(field: str, value: str) -> str:
    """A page's cursor as ``next_cursor`` gave it (``""``: the first page)."""
    text = value.strip()
    try:
        parse_cursor(text)
    except ValueError:
        raise BadInput(
            field,
            f"{field}: not a cursor returned by this dashboard (at most {MAX_CURSOR} characters)",
        ) from None
    return text


def session_id(field: str, value: str) -> str:
    """A session's public ``_id`` (a keyed hash: ASCII letters, digits, ``_``, ``-``)."""
    if not _SESSION_ID.fullmatch(value):
        raise BadInput(field, f"{field}: not a session id")
    return value


# --------------------------------------------------------------------------- path parameters
# The traceability views' ids, from the URL path: a value that is not one is
# answered with 404 (no such page), not 400.


def request_id(field: str, value: str) -> str:
    """A request id as stored: ASCII letters, digits and ``._:-``, at most 128."""
    if not _REQUEST_ID.fullmatch(value):
        raise BadInput(field, f"{field}: not a request id")
    return value


def event_id(field: str, value: str) -> str:
    """A record's ``_id``: ASCII letters, digits and ``._:-``, at most 128."""
    if not _EVENT_ID.fullmatch(value):
        raise BadInput(field, f"{field}: not a record id")
    return value


def _name(field: str, value: str, what: str) -> str:
    if not value or len(value) > MAX_NAME or _CONTROL.search(value):
        raise BadInput(field, f"{field}: not {what} (1 to {MAX_NAME} characters, no control "
                       "characters)")  # fmt: skip
    return value


def performer_id(field: str, value: str) -> str:
    """A performer id: any text of 1 to 512 characters without control characters
    or lone surrogates (kept exactly: spaces are part of an id)."""
    return _name(field, value, "a performer id")


def entity_part(field: str, value: str) -> str:
    """An entity type or id, as :func:`performer_id`."""
    return _name(field, value, "an entity type or id")
