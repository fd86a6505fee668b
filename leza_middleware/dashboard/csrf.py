"""CSRF protection of the dashboard's one write (revoke) for the ASGI and WSGI mounts.

A signed double-submit token: the browser holds a random value in an
HttpOnly, ``SameSite=Strict`` cookie and each form carries an HMAC of it keyed
with Leza's ``secret_key``. A cross-site page can neither read the cookie nor
compute the HMAC, so it cannot forge the form field; a value planted in the
cookie (from a sibling subdomain) is useless without the key. Browsers that
say the request is cross-site (``Sec-Fetch-Site``) are refused outright.
Django's mount uses Django's own CSRF protection instead.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from ..sessions.cookies import Keyring

__all__ = ["COOKIE", "FIELD", "CsrfToken", "DoubleSubmit"]

COOKIE = "leza_dash_csrf"
FIELD = "csrf_token"


@dataclass(frozen=True)
class CsrfToken:
    """What a view needs: the form field, its value, whether a POST passed the check,
    and the Set-Cookie header to send (when the browser had no cookie yet)."""

    field: str
    value: str
    valid: bool
    set_cookie: str | None = None


class DoubleSubmit:
    def __init__(self, keyring: Keyring) -> None:
        self._key = keyring.subkey(b"dashboard-csrf")

    def _sign(self, value: str) -> str:
        return hmac.digest(self._key, value.encode("ascii", "replace"), "sha256").hex()

    def token(
        self,
        cookies: Mapping[str, str],
        form: Mapping[str, str],
        headers: Mapping[str, str],
        *,
        path: str,
        secure: bool,
    ) -> CsrfToken:
        """The token of this browser (a new cookie when it has none); ``valid``
        when ``form`` carries the right one and the browser does not call the
        request cross-site."""
        value = cookies.get(COOKIE, "")
        set_cookie = None
        if not (16 <= len(value) <= 128 and value.isascii()):
            value = secrets.token_urlsafe(24)
            set_cookie = f"{COOKIE}={value}; Path={path or '/'}; HttpOnly; SameSite=Strict" + (
                "; Secure" if secure else ""
            )
        expected = self._sign(value)
        sent = form.get(FIELD, "")
        valid = (
            set_cookie is None
            and headers.get("sec-fetch-site", "same-origin") != "cross-site"
            and hmac.compare_digest(expected.encode(), sent.encode("utf-8", "replace"))
        )
        return CsrfToken(FIELD, expected, valid, set_cookie)
