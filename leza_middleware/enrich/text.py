"""Make untrusted text safe to store: no control characters, bounded size.

(Secrets are the job of ``leza_middleware.redact``.)
"""

from __future__ import annotations

import re

from ..redact import FILTERED

__all__ = [
    "CONTROL_CHARACTERS",
    "FILTERED",
    "UNSAFE",
    "clean",
    "clean_lines",
    "encodable",
]

# C0 controls (CR, LF, TAB, NUL, ESC…), DEL, C1 controls, and the Unicode line
# and paragraph separators: anything that could forge a log line or a terminal
# escape when the value is printed later.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL = CONTROL_CHARACTERS
# Lone surrogates: what surrogateescape makes of invalid UTF-8 bytes (a raw path
# from some servers, a non-conforming WSGI environ). They cannot be encoded as
# UTF-8, so one of them would fail the whole batch's write (SQLite, PostgreSQL,
# JSON Lines): replaced by U+FFFD, as a "replace" decoding would have.
_SURROGATES = re.compile("[\ud800-\udfff]")
#: Anything :func:`clean` changes besides the length: one search tells a value
#: that is already safe (the common case) from one that needs cleaning.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_unsafe = UNSAFE.search
# Raw characters looked at per cap: a 100 KB value is cut before it is scanned
# (removing control characters only ever shortens it).
_SCAN_FACTOR = 4


def encodable(value: str) -> str:
    """``value`` with lone surrogates replaced by U+FFFD, nothing else changed.

    For text stored as given (audit states): it must only become encodable.
    """
    if _SURROGATES.search(value) is None:
        return value
    return _SURROGATES.sub("\ufffd", value)


def clean(value: str, cap: int) -> str:
    """Drop control characters, replace lone surrogates, cap the length.

    One regex search when the value is already safe, whatever its script.
    """
    if len(value) > cap * _SCAN_FACTOR:
        value = value[: cap * _SCAN_FACTOR]
    if _unsafe(value) is not None:
        value = _SURROGATES.sub("\ufffd", _CONTROL.sub("", value))
    if len(value) > cap:
        value = value[:cap]
    return value


# Multi-line text (log messages, tracebacks) keeps its line breaks and tabs;
# everything else :func:`clean` removes goes, lone surrogates become U+FFFD.
_UNSAFE_IN_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _line_safe(match: re.Match[str]) -> str:
    return "\ufffd" if "\ud800" <= match.group() <= "\udfff" else ""


def clean_lines(value: str) -> str:
    """:func:`clean` for multi-line text, without the cap: ``\n``, ``\r`` and tabs stay."""
    if _UNSAFE_IN_LINES.search(value) is None:
        return value
    return _UNSAFE_IN_LINES.sub(_line_safe, value)
