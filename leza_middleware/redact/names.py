"""The secret names, and how a key is normalised before it is looked up
(``leza_middleware.redact``'s rules; docs/privacy.md lists them)."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

__all__ = [
    "AUTH_SCHEMES",
    "CONTAINS_NAMES",
    "DENIED_HEADERS",
    "DENIED_HEADER_PARTS",
    "EXACT_NAMES",
    "FILTERED",
    "LINE_VALUED_NAMES",
    "MAX_DECODE",
    "SUFFIX_NAMES",
    "URL_ONLY_NAMES",
    "key_names",
    "normalise_case",
    "normalise_name",
]

FILTERED = "[Filtered]"

# --------------------------------------------------------------------------- the names
# Normalised: lower case, letters and digits only.

#: Matched only when a whole segment is the name: short or everyday words
#: (``pin`` must not catch ``spin`` or ``position``, ``key`` not ``keyboard``).
EXACT_NAMES = frozenset(
    {
        "pass", "pwd", "pw", "pin", "pincode", "sig", "sid", "session", "sessionkey",
        "key", "code", "authcode", "authorizationcode", "verificationcode", "mfacode",
        "recoverycode", "backupcode", "codeverifier", "idtokenhint", "bearer",
        "ssn", "cvv", "cvc", "creditcard", "cardnumber",
    }
)  # fmt: skip
#: Matched when a segment ends with the name, or with its plural
#: (``access_token``, ``x-api-key``, ``client_secret``, ``tokens``).
SUFFIX_NAMES = (
    "token", "secret", "apikey", "privatekey", "secretkey", "accesskey", "signingkey",
    "encryptionkey", "signature", "sessionid", "sessid", "credential", "authorization",
    "auth", "cookie", "jwt", "csrf", "xsrf", "otp", "hmac", "passcode",
)  # fmt: skip
#: Matched anywhere in a segment (``password_confirmation``, ``new_password1``).
CONTAINS_NAMES = ("password", "passwd", "passphrase")
#: Secret in URLs and text (``?code=`` is an OAuth code, ``?key=`` an API key).
#: As the field name of a stored record they are mostly identifiers (a country
#: code, a key/value table's key): there, only a value shaped like a generated
#: credential is filtered (``Redactor.mask``).
URL_ONLY_NAMES = frozenset({"code", "key"})
#: In free text, the value of these runs to the end of the line
#: (``Authorization: Digest a="1", b="2"``, ``Cookie: a=1; b=2``).
LINE_VALUED_NAMES = ("authorization", "cookie")
#: A secret value that is one of these words is followed by the credential.
AUTH_SCHEMES = frozenset(
    {"bearer", "basic", "token", "digest", "negotiate", "ntlm", "hoba", "mutual", "dpop",
     "apikey", "jwt", "hmac"}
)  # fmt: skip

#: Header names ``record_headers`` refuses (never stored, whatever is configured)…
DENIED_HEADERS = frozenset(
    {
        "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
        "x-auth-token", "x-csrf-token", "x-xsrf-token",
    }
)  # fmt: skip
#: … and any header name that holds one of these (lower-cased, separators removed),
#: or that :meth:`Redactor.is_secret` calls a secret.
DENIED_HEADER_PARTS = (
    "token", "secret", "password", "passwd", "session", "auth", "cookie", "apikey",
    "credential", "signature", "csrf", "xsrf", "jwt",
)  # fmt: skip

#: Percent-decoding rounds at most (a key, or a value nested in a value).
MAX_DECODE = 4

# --------------------------------------------------------------------------- normalisation

_STRUCTURE = re.compile(r"[?&#/:;,=]")
_SEGMENTS = re.compile(r"[\[\].]+")
_NOT_ALNUM = re.compile(r"[\W_]+")


def normalise_case(text: str) -> str:
    """Lower case; for non-ASCII text after NFKC (full-width letters, ligatures)."""
    return text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()


def normalise_name(name: str) -> str:
    """A name as listed: lower case, letters and digits only (``X-Api_Key`` → ``xapikey``)."""
    return _NOT_ALNUM.sub("", normalise_case(name))


def key_names(key: str) -> list[str]:
    """The normalised names a key stands for: one per segment of its path, then
    (for a path) all of them joined (``api.key`` → ``api``, ``key``, ``apikey``)."""
    text = key
    for _ in range(MAX_DECODE):
        if "%" not in text:
            break
        decoded = unquote(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    text = normalise_case(text)
    if _STRUCTURE.search(text) is not None:
        pieces = [p for p in _STRUCTURE.split(text) if _NOT_ALNUM.sub("", p)]
        text = pieces[-1] if pieces else ""
    names = []
    for segment in _SEGMENTS.split(text):
        name = _NOT_ALNUM.sub("", segment).rstrip("0123456789")
        if name:
            names.append(name)
    if len(names) > 1:
        joined = "".join(names)
        names.append(joined)
    return names
