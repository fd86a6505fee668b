"""Webhook notifier: a JSON POST, optionally signed with HMAC-SHA256.

Signature scheme (the same as GitHub's ``X-Hub-Signature-256``)::

    X-Leza-Signature: sha256=<hex HMAC-SHA256 of the exact request body bytes, keyed by secret>

A receiver recomputes the HMAC over the raw body it received (before any JSON
parsing) and compares with ``hmac.compare_digest``. Every attempt of one
delivery (retries included) carries the same body, signature and
``X-Leza-Delivery`` id, so a receiver can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from ..__about__ import __version__
from ..errors import LezaConfigError
from .base import Notification, NotificationError, Notifier

__all__ = ["SIGNATURE_HEADER", "WebhookNotifier", "sign"]

log = logging.getLogger("leza_middleware.notify")

SIGNATURE_HEADER = "X-Leza-Signature"
DELIVERY_HEADER = "X-Leza-Delivery"
EVENT_HEADER = "X-Leza-Event"

# 408 Request Timeout, 425 Too Early, 429 Too Many Requests and every 5xx are
# worth another try; any other 4xx means the request itself is wrong.
_RETRY_STATUSES = frozenset({408, 425, 429})
_MAX_RETRY_AFTER = 30.0  # seconds: a Retry-After longer than this is capped
_RESERVED_HEADERS = frozenset(
    h.lower() for h in (SIGNATURE_HEADER, DELIVERY_HEADER, "Content-Type", "Content-Length", "Host")
)


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Leza-Signature`` value for ``body``: ``"sha256=" + hex HMAC-SHA256``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a body-less GET, possibly to another
    # host: a webhook that redirects is a misconfiguration, reported as such.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookNotifier(Notifier):
    """POST each notification as JSON to ``url``.

    :param url: ``http://`` or ``https://`` URL of the receiver.
    :param secret: when set, each request carries ``X-Leza-Signature:
        sha256=<hex HMAC-SHA256 of the body>`` keyed by this secret.
    :param timeout: seconds for each attempt (connect and response).
    :param retries: further attempts after the first on a connection error, a
        timeout, HTTP 5xx, 408, 425 or 429. Other 4xx and 3xx fail at once.
    :param backoff: seconds before the first retry, doubled for each next one;
        a ``Retry-After`` header (in seconds, capped at 30) is honoured when longer.
    :param headers: extra request headers (e.g. ``Authorization``); they cannot
        replace the signature, delivery id or content type.
    :param name: label in ``stats()`` and logs; defaults to ``webhook <scheme://host>``.
        The URL's path and query are never shown (they often hold a token).
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.url = _check_url(url)
        if secret is not None:
            if not isinstance(secret, (str, bytes)):
                raise LezaConfigError(
                    f"webhook secret must be str or bytes, got {type(secret).__name__}"
                )
            if not secret:
                raise LezaConfigError(
                    "webhook secret must not be empty (pass None for no signature)"
                )
        self._secret = secret
        self.timeout = _positive("timeout", timeout)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise LezaConfigError(f"webhook retries must be an int >= 0, got {retries!r}")
        self.retries = retries
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff < 0:
            raise LezaConfigError(f"webhook backoff must be a number >= 0, got {backoff!r}")
        self.backoff = float(backoff)
        self.headers = _check_headers(headers or {})
        parts = urlsplit(self.url)
        self.name = name or f"webhook {parts.scheme}://{parts.netloc}"
        self._opener = urllib.request.build_opener(_NoRedirect())

    @property
    def signed(self) -> bool:
        """True when requests carry ``X-Leza-Signature``."""
        return self._secret is not None

    def __repr__(self) -> str:
        return f"<WebhookNotifier {self.name!r} signed={self.signed}>"

    def body(self, notification: Notification) -> bytes:
        """The exact bytes POSTed (and signed) for ``notification``."""
        return json.dumps(
            notification.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str
        ).encode("utf-8")

    def send(self, notification: Notification) -> None:
        body = self.body(notification)
        headers = {
            "User-Agent": f"leza-middleware/{__version__}",
            **self.headers,
            "Content-Type": "application/json; charset=utf-8",
            DELIVERY_HEADER: uuid.uuid4().hex,
            EVENT_HEADER: notification.event,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        attempts = self.retries + 1
        for attempt in range(attempts):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            retry_after: float | None = None
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    response.read(65536)  # let the server finish; the body is ignored
                return
            except urllib.error.HTTPError as exc:
                status = exc.code
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                exc.close()
                problem = f"HTTP {status}"
                if not (status >= 500 or status in _RETRY_STATUSES):
                    raise NotificationError(f"{self.name}: {problem} (not retried)") from None
            except (urllib.error.URLError, HTTPException, OSError) as exc:
                problem = _describe(exc)
            if attempt + 1 < attempts:
                delay = self.backoff * (2**attempt)
                if retry_after is not None:
                    delay = max(delay, retry_after)
                log.debug("leza: %s: %s, retrying in %.2fs", self.name, problem, delay)
                time.sleep(delay)
        raise NotificationError(
            f"{self.name}: {problem} after {attempts} attempt{'s' if attempts > 1 else ''}"
        )


def _describe(exc: BaseException) -> str:
    """A short reason without the URL (urllib puts none in these, but be sure)."""
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, BaseException):
        text = str(reason) or type(reason).__name__
        return f"{type(reason).__name__}: {text}"
    return f"{type(exc).__name__}: {reason}"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, _MAX_RETRY_AFTER)


def _positive(what: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise LezaConfigError(f"webhook {what} must be a number > 0, got {value!r}")
    return float(value)


def _check_url(url: str) -> str:
    if not isinstance(url, str):
        raise LezaConfigError(f"webhook url must be a string, got {type(url).__name__}")
    if not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise LezaConfigError(
            "webhook url must be a non-empty http:// or https:// URL without spaces or "
            "control characters"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{parts.scheme}://" if parts.scheme else "none"
        raise LezaConfigError(f"webhook url must start with http:// or https:// (scheme: {shown})")
    if not parts.hostname:
        raise LezaConfigError(f"webhook url has no host: {scheme}://{parts.netloc}")
    if parts.username is not None or parts.password is not None:
        raise LezaConfigError(
            "webhook url must not contain user:password@ (pass headers={'Authorization': ...})"
        )
    try:
        port = parts.port
    except ValueError:
        raise LezaConfigError(
            f"webhook url has an invalid port: {scheme}://{parts.netloc}"
        ) from None
    if port == 0:
        raise LezaConfigError(f"webhook url has an invalid port: {scheme}://{parts.netloc}")
    return url


def _check_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise LezaConfigError("webhook headers must map str to str")
        if not key or any(c in key for c in ":\r\n \t") or any(c in value for c in "\r\n\0"):
            raise LezaConfigError(f"webhook header {key!r} has a forbidden character")
        if key.lower() in _RESERVED_HEADERS:
            raise LezaConfigError(f"webhook header {key!r} is set by the notifier")
        out[key] = value
    return out
