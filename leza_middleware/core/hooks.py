"""The app's request-time callables, each guarded, and the count of what went wrong.

The request path calls two pieces of the app's code: the ``performer=`` hook
(who is asking) and ``revoked_response`` (the answer to a refused session).
Either may raise or return something unusable; the request must still be
answered and recorded, so every failure becomes a counted fallback here, in
one place, instead of in each adapter.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from ..performer import Performer, coerce_performer

__all__ = ["DEFAULT_REVOKED", "Answer", "Faults", "Hooks"]

log = logging.getLogger("leza_middleware")

#: What a refusal sends: status, headers (native spelling), body.
Answer = tuple[int, list[tuple[Any, Any]], bytes]
RevokedResponse = Callable[[Any], tuple[int, list[tuple[str, str]], bytes]]

#: The revoked-session answer without a ``revoked_response`` (or when it fails).
DEFAULT_REVOKED: tuple[int, list[tuple[str, str]], bytes] = (
    401,
    [("content-type", "application/json"), ("www-authenticate", 'Session realm="app"')],
    b'{"detail":"Session revoked: sign in again"}',
)

# A header name is an RFC 9110 token; a value is latin-1 text without CR, LF or
# NUL (what every server can send and no server splits into a second header).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class Faults:
    """Counters of the request path's own failures (``leza.stats()``).

    Each kind is logged once, with its traceback, at its first occurrence:
    a broken hook would otherwise log a line per request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_path_errors = 0
        self.performer_hook_errors = 0

    def request_path_error(self) -> None:
        """A request that could not be (fully) recorded; call from an ``except``."""
        self._count("request_path_errors", "could not record a request")

    def performer_hook_error(self) -> None:
        self._count("performer_hook_errors", "the performer hook raised")

    def _count(self, counter: str, what: str) -> None:
        with self._lock:
            n = getattr(self, counter) + 1
            setattr(self, counter, n)
        if n == 1:
            log.warning("leza: %s (counted in stats())", what, exc_info=True)


class Hooks:
    """The ``performer=`` hook and ``revoked_response``, guarded."""

    __slots__ = ("faults", "performer_hook", "revoked_response")

    def __init__(
        self,
        performer: Callable[[Any], Any] | None,
        revoked_response: RevokedResponse | None,
        faults: Faults,
    ) -> None:
        #: The app's performer hook (None: the framework's user is the performer).
        self.performer_hook = performer
        self.revoked_response = revoked_response
        self.faults = faults

    def performer(self, request: Any) -> Performer | None:
        """The hook's answer for ``request`` (the framework's native request);
        None without a hook, for an anonymous request, or when the hook raised."""
        hook = self.performer_hook
        if hook is None:
            return None
        try:
            return coerce_performer(hook(request))
        except Exception:
            self.faults.performer_hook_error()
            return None

    def revoked(self, request: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        """What a refused session gets: ``revoked_response(request)`` when it
        returns something a server can send, else the default JSON 401.

        Checked here so that no adapter can fail on it: a status outside
        100-599, a header name that is not a token, a value with a line break
        or beyond latin-1, or a body that is not bytes would otherwise make the
        server answer 500 (or split the header).
        """
        handler = self.revoked_response
        if handler is None:
            return DEFAULT_REVOKED
        try:
            status, headers, body = handler(request)
            answer = (int(status), _checked_headers(headers), bytes(body))
            if not 100 <= answer[0] <= 599:
                raise ValueError(f"status {answer[0]} is not an HTTP status")
            return answer
        except Exception:
            log.warning("leza: revoked_response failed; sending the default 401", exc_info=True)
            return DEFAULT_REVOKED


def _checked_headers(headers: Any) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        if type(name) is not str or not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name!r} is not a token")
        if type(value) is not str or _BAD_VALUE.search(value):
            raise ValueError(f"header {name} has a value no server can send")
        value.encode("latin-1")  # UnicodeEncodeError: beyond latin-1
        out.append((name, value))
    return out
