"""The two cookies of the request path: the machine identifier and the session.

* ``leza_mid`` — a long-lived machine identifier, signed with ``secret_key``
  (HMAC-SHA256, domain-separated) so a forged or edited value is recognised,
  ignored and replaced, never trusted.
* ``leza_sid`` — set when a signed-in user is first seen without one: the key
  of that user's session in this browser. Only a keyed hash of it is stored
  (the session's public ``_id``); the raw value never leaves the browser.

Reading both costs one dict lookup per distinct ``Cookie`` header (a browser
sends the same header request after request). Machine ids are a per-process
random prefix plus a counter, MACed with keyed BLAKE2b; the recorder thread
keeps a pool of them minted ahead, so a first visit costs the request a deque
pop rather than a MAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import logging
import os
import re
from collections import deque
from collections.abc import Iterator

from ..enrich.cache import bounded_put

__all__ = ["CookieJar", "Keyring"]

log = logging.getLogger("leza_middleware")

_MEMO_SIZE = 8192
_MAX_HEADER = 8192  # longer Cookie headers are parsed, not memoised


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


class Keyring:
    """Keyed hashes with ``secret_key``, one domain per use."""

    def __init__(self, secret: str | None) -> None:
        self.ephemeral = secret is None
        if secret is None:
            # Works in one process until it exits; machine ids and session ids
            # then do not survive restarts, nor match across workers.
            self._key = os.urandom(32)
        else:
            self._key = hashlib.sha256(b"leza-middleware secret\0" + secret.encode()).digest()

    def mac(self, domain: bytes, value: bytes, size: int = 16) -> bytes:
        return hmac.digest(self._key, domain + b"\0" + value, "sha256")[:size]

    def subkey(self, domain: bytes) -> bytes:
        """A key for one use only (keyed BLAKE2b takes up to 64 bytes)."""
        return hmac.digest(self._key, b"subkey\0" + domain, "sha256")

    def session_id(self, session_key: bytes) -> str:
        """The public id of a session: a keyed hash of its key (never the key)."""
        return self.mac(b"session", session_key).hex()


class CookieJar:
    def __init__(
        self,
        keyring: Keyring,
        *,
        machine_cookie: str | None = "leza_mid",
        machine_max_age: int = 2 * 365 * 86400,
        session_cookie: str = "leza_sid",
    ) -> None:
        self.keyring = keyring
        self.machine_cookie = machine_cookie
        self.session_cookie = session_cookie
        self._mid_name = (machine_cookie or "").encode("latin-1")
        self._sid_name = session_cookie.encode("latin-1")
        self.machine_max_age = machine_max_age
        self._machine_tail = f"; Max-Age={machine_max_age}; Path=/; HttpOnly; SameSite=Lax".encode()
        self._memo: dict[bytes, tuple[str | None, str | None, bool]] = {}
        # Only our two cookies are looked at: a regex scan (in C) finds them, so a
        # huge Cookie header full of other cookies costs no Python loop over parts.
        names = b"|".join(re.escape(n) for n in (self._mid_name, self._sid_name) if n)
        self._ours = re.compile(rb"(?:^|;)[ \t]*(" + names + rb")=([^;]*)")
        self._machine_key = keyring.subkey(b"machine")
        self.rejected = 0  # machine-id cookies that failed their signature
        self._reseed()

    def _reseed(self) -> None:
        # 64 random bits per process + a counter: unique without urandom per id.
        self._prefix = os.urandom(8).hex().encode()
        self._counter: Iterator[int] = itertools.count()
        self._pool: deque[tuple[str, bytes]] = deque()
        self._taken = 0  # ids asked for since the last refill

    def after_fork(self) -> None:
        self._reseed()  # a child must not hand out its parent's pooled ids

    # -- reading (request path) ---------------------------------------------

    def read(self, header: bytes | None) -> tuple[str | None, str | None, bool]:
        """(machine id, session id, machine cookie was forged) from a Cookie header."""
        if not header:
            return None, None, False
        found = self._memo.get(header)
        if found is None:
            found = self._parse(header)
            if len(header) <= _MAX_HEADER:
                bounded_put(self._memo, header, found, _MEMO_SIZE)
        return found

    def _parse(self, header: bytes) -> tuple[str | None, str | None, bool]:
        mid = sid = None
        forged = False
        if self._sid_name not in header and not (self._mid_name and self._mid_name in header):
            return mid, sid, forged
        # A later duplicate wins: keep the last value of each name, then hash or
        # verify once (a header of 2,000 copies costs one hash, not 2,000).
        mid_value = sid_value = None
        for match in self._ours.finditer(header):
            name, value = match.group(1), match.group(2).strip()
            if name == self._mid_name:
                mid_value = value
            elif name == self._sid_name:
                sid_value = value
        if mid_value is not None and self.machine_cookie:
            mid = self._verify_machine(mid_value.strip(b'"'))
            if mid is None:
                forged = True
                self.rejected += 1
        if sid_value is not None and 16 <= len(sid_value) <= 128:
            sid = self.keyring.session_id(sid_value)
        return mid, sid, forged

    def _machine_mac(self, ident: bytes) -> bytes:
        return hashlib.blake2b(ident, key=self._machine_key, digest_size=12).hexdigest().encode()

    def _verify_machine(self, value: bytes) -> str | None:
        ident, dot, sig = value.rpartition(b".")
        if not dot or not ident or len(ident) > 64:
            return None
        if not hmac.compare_digest(self._machine_mac(ident), sig):
            return None
        try:
            return ident.decode("ascii")
        except UnicodeDecodeError:  # pragma: no cover - a valid MAC over non-ASCII
            return None

    # -- minting (request path, first visit) ---------------------------------

    def _mint(self) -> tuple[str, bytes]:
        ident = b"%s%012x" % (self._prefix, next(self._counter))
        cookie = self._mid_name + b"=" + ident + b"." + self._machine_mac(ident)
        return ident.decode("ascii"), cookie + self._machine_tail

    def new_machine(self, secure: bool) -> tuple[str, bytes]:
        """A fresh machine id and the Set-Cookie value that stores it."""
        self._taken += 1  # demand, whether the pool could serve it or not
        try:
            ident, cookie = self._pool.popleft()
        except IndexError:
            ident, cookie = self._mint()
        return ident, cookie + b"; Secure" if secure else cookie

    def new_machine_value(self) -> tuple[str, str]:
        """A fresh machine id and the bare cookie value, for frameworks that set
        cookies themselves (attributes: :attr:`machine_max_age`, HttpOnly, Lax)."""
        ident, cookie = self.new_machine(False)
        return ident, cookie.split(b";", 1)[0].partition(b"=")[2].decode("ascii")

    def refill(self) -> None:
        """Mint machine ids ahead (recorder thread), as many as were just used."""
        if not self.machine_cookie:
            return
        want = min(max(256, 2 * self._taken), 50_000)
        self._taken = 0
        pool = self._pool
        while len(pool) < want:
            pool.append(self._mint())

    def new_session(self, secure: bool) -> tuple[str, bytes]:
        """A fresh session key: (its public id, the Set-Cookie value)."""
        key = _b64(os.urandom(18))  # a credential: real randomness
        cookie = self._sid_name + b"=" + key + b"; Path=/; HttpOnly; SameSite=Lax"
        return self.keyring.session_id(key), cookie + b"; Secure" if secure else cookie

    def clear_session(self) -> bytes:
        """The Set-Cookie value that removes the session cookie (after logout)."""
        return self._sid_name + b"=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"
