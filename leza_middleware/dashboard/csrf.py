"""CSRF protection of the dashboard's state-changing actions (revoking a session
today, and any POST action added later: the view applies it to all of them).

Two independent checks, both required (docs/dashboard.md, "CSRF"):

1. **Where the request comes from** (:func:`foreign_origin`, every mount). A
   browser that says the request is ``cross-site`` or ``same-site``
   (``Sec-Fetch-Site``), or whose ``Origin`` — or, without one, ``Referer`` —
   is another origin than the dashboard's own, is refused. A request with
   neither header (a script, ``curl``) is left to the token.
2. **A token only the dashboard's own page can hold** (:class:`SignedCsrf`,
   ASGI and WSGI mounts; Django's mount uses Django's CSRF check instead).
   The server issues an ``HttpOnly``, ``SameSite=Strict`` cookie holding a
   random nonce signed with a key derived from Leza's ``secret_key``; a value
   the client chose fails the signature and is replaced. The form's token is
   an HMAC, under another derived key, of that nonce, the admin identity the
   mount saw when it served the page and the time it did; it is refused for
   another cookie, another admin, or once it is older than :data:`TOKEN_TTL`.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import LezaConfigError
from ..sessions.cookies import Keyring

__all__ = [
    "COOKIE",
    "FIELD",
    "TOKEN_TTL",
    "CsrfToken",
    "OriginRule",
    "SignedCsrf",
    "foreign_origin",
    "origin_rules",
]

COOKIE = "leza_dash_csrf"
FIELD = "csrf_token"
#: A form's token is accepted this long (seconds) after its page was served.
TOKEN_TTL = 2 * 3600
#: How far in the future a token's time may be (clocks of several hosts differ).
_SKEW = 120
_NONCE_HEX = 32  # 128 random bits
_COOKIE_VALUE = re.compile(r"[0-9a-f]{64}")  # nonce + its signature
_TOKEN = re.compile(r"[0-9a-f]{64}")  # 12 hex digits of issue time + 26-byte HMAC
_TIME_HEX = 12
_MAX_COPIES = 4  # copies of the cookie looked at (a planted one may precede ours)
_MAX_IDENTITY = 256
_PATH_SAFE = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")  # a cookie Path: visible ASCII, no ';'
MISSING_COOKIE = "the CSRF cookie is missing or was not issued by this server"


@dataclass(frozen=True)
class CsrfToken:
    """What a view needs: the form field and its value for pages, the verdict
    on the token the request carried (``problem`` None: it passed; only
    consulted for state-changing requests), and the Set-Cookie header to send
    when the browser had no valid cookie."""

    field: str
    value: str
    problem: str | None
    set_cookie: str | None = None

    @property
    def valid(self) -> bool:
        return self.problem is None


class SignedCsrf:
    """The ASGI and WSGI mounts' token: see the module docstring."""

    def __init__(self, keyring: Keyring, *, ttl: float = TOKEN_TTL) -> None:
        self._cookie_key = keyring.subkey(b"dashboard-csrf-cookie")
        self._token_key = keyring.subkey(b"dashboard-csrf-token")
        self.ttl = ttl

    def _sign_nonce(self, nonce: str) -> str:
        return hmac.digest(self._cookie_key, nonce.encode("ascii"), "sha256")[:16].hex()

    def _mac(self, nonce: str, issued: int, identity: str) -> str:
        message = b"\0".join(
            (nonce.encode("ascii"), b"%d" % issued, identity.encode("utf-8", "surrogatepass"))
        )
        return hmac.digest(self._token_key, message, "sha256")[:26].hex()

    def nonces(self, cookie_header: str) -> list[str]:
        """The nonces of the validly signed copies of our cookie, first one first."""
        found = []
        for value in _cookie_values(cookie_header, COOKIE)[:_MAX_COPIES]:
            if _COOKIE_VALUE.fullmatch(value):
                nonce, signature = value[:_NONCE_HEX], value[_NONCE_HEX:]
                if hmac.compare_digest(self._sign_nonce(nonce), signature):
                    found.append(nonce)
        return found

    def issue(self, nonce: str, identity: str, now: float | None = None) -> str:
        """The token of a form served now to ``identity`` in the browser of ``nonce``."""
        issued = int(time.time() if now is None else now)
        return f"{issued:0{_TIME_HEX}x}{self._mac(nonce, issued, _bounded(identity))}"

    def check(
        self, nonces: Iterable[str], sent: str | None, identity: str, now: float | None = None
    ) -> str | None:
        """None when ``sent`` is a token this server issued to ``identity`` in this
        browser less than :attr:`ttl` seconds ago; else what is wrong with it."""
        if not sent:
            return "the CSRF token is missing"
        if not _TOKEN.fullmatch(sent):
            return "the CSRF token is malformed"
        issued = int(sent[:_TIME_HEX], 16)
        identity = _bounded(identity)
        if not any(
            hmac.compare_digest(self._mac(n, issued, identity), sent[_TIME_HEX:]) for n in nonces
        ):
            return "the CSRF token was not issued to this browser and admin"
        now = time.time() if now is None else now
        if issued > now + _SKEW:
            return "the CSRF token was issued in the future"
        if now - issued > self.ttl:
            return f"the CSRF token expired (older than {self.ttl / 3600:g} h)"
        return None

    def token(
        self,
        cookie_header: str,
        sent: str | None,
        identity: str,
        *,
        path: str,
        secure: bool,
        now: float | None = None,
    ) -> CsrfToken:
        """This request's :class:`CsrfToken`: a new signed cookie when the browser
        has none (a client-chosen value counts as none), the token for its
        pages, and the verdict on ``sent`` (the form's token)."""
        nonces = self.nonces(cookie_header)
        set_cookie = None
        if nonces:
            problem = self.check(nonces, sent, identity, now)
        else:
            nonce = secrets.token_hex(_NONCE_HEX // 2)
            nonces = [nonce]
            path = path if _PATH_SAFE.fullmatch(path) else "/"
            set_cookie = (
                f"{COOKIE}={nonce}{self._sign_nonce(nonce)}; Path={path}; HttpOnly; "
                "SameSite=Strict" + ("; Secure" if secure else "")
            )
            problem = MISSING_COOKIE
        return CsrfToken(FIELD, self.issue(nonces[0], identity, now), problem, set_cookie)


def _bounded(identity: str) -> str:
    return identity[:_MAX_IDENTITY]


def _cookie_values(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a ``Cookie`` header, in order."""
    if name not in header:
        return []
    values = []
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            values.append(value.strip().strip('"'))
    return values


# --------------------------------------------------------------------------- origins

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class OriginRule:
    """An origin a state-changing request may come from: ``https://admin.example.com``,
    or every subdomain with ``https://*.example.com``."""

    scheme: str
    host: str  # lower case; for a wildcard, the suffix after "*."
    port: int
    wildcard: bool = False

    def allows(self, scheme: str, host: str, port: int) -> bool:
        if (scheme, port) != (self.scheme, self.port):
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def _split_origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL or origin; None when it is not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower(), port or _DEFAULT_PORTS[scheme]


def origin_rules(values: Iterable[str] | str | None, setting: str) -> tuple[OriginRule, ...]:
    """``trusted_origins`` checked at configuration time (LezaConfigError naming ``setting``)."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = (values,)
    rules = []
    for value in values:
        if not isinstance(value, str):
            raise LezaConfigError(f"{setting}: each origin is a string, got {value!r:.60}")
        wildcard = "://*." in value
        split = _split_origin(value.replace("://*.", "://", 1))
        if split is None or any(c in value for c in "?#@") or urlsplit(value).path not in ("", "/"):
            raise LezaConfigError(
                f"{setting}: {value!r:.80} is not an origin such as https://admin.example.com "
                "or https://*.example.com"
            )
        rules.append(OriginRule(*split, wildcard=wildcard))
    return tuple(rules)


def _split_host(host: str) -> tuple[str, int | None] | None:
    """(host, port or None) of a ``Host`` header."""
    parts = _split_origin(f"http://{host}")
    if parts is None or any(c in host for c in "/?#@"):
        return None
    explicit = host.rsplit("]", 1)[-1]
    return parts[1], (parts[2] if ":" in explicit else None)


def foreign_origin(
    headers: Mapping[str, str],
    host: str | None,
    scheme: str,
    trusted: Iterable[OriginRule] = (),
) -> str | None:
    """Why a state-changing request must be refused as coming from another site, or None.

    ``headers``: the request's ``sec-fetch-site``, ``origin`` and ``referer``
    (lower-case names; absent when not sent). ``host`` and ``scheme``: the
    ``Host`` header and the scheme the request arrived with, which give the
    dashboard's own origin; ``trusted``: origins allowed besides it (a proxy
    that rewrites ``Host``). A page served over HTTPS by a proxy that speaks
    HTTP to the app is the same origin; an HTTP page posting to HTTPS is not.
    """
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site in ("cross-site", "same-site"):
        return f"the browser says the request is {site} (Sec-Fetch-Site)"
    if "origin" in headers:
        source, value = "Origin", headers["origin"]
    elif "referer" in headers:
        source, value = "Referer", headers["referer"]
    else:
        return None  # not a browser: the token alone decides
    them = _split_origin(value)
    if them is None:  # "null" (a sandboxed frame, a redirect), or junk
        return f"the {source} header is not an origin of this site"
    their_scheme, their_host, their_port = them
    if any(rule.allows(*them) for rule in trusted):
        return None
    own = None if host is None else _split_host(host)
    if own is not None:
        own_host, own_port = own
        same = (
            their_host == own_host
            and their_port == (own_port or _DEFAULT_PORTS[their_scheme])
            and not (scheme == "https" and their_scheme == "http")
        )
        if same:
            return None
    return f"the {source} header names another origin"
