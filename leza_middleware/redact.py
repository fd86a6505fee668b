"""What is a secret, and how its value is kept out of storage.

One list of secret names, one way of normalising a key before it is looked up,
and the redactions built on them, used wherever text is stored:

* :meth:`Redactor.redact_query`: the query string of an access event's
  endpoint (values of secret keys, and secrets inside URL-valued values);
* :meth:`Redactor.redact_url`: a URL (a recorded ``Referer`` / ``Origin``);
* :meth:`Redactor.scrub_text`: free text (log messages, exceptions, audit and
  advisory strings, check errors): ``key=value``, ``key: value``, JSON and
  Python-repr pairs, header lines, URLs, ``Bearer``/``Basic`` credentials;
* :meth:`Redactor.mask`: a record's values (audit states): a secret key's value
  at any depth, and every string through :meth:`Redactor.scrub_text`.

A key is a secret when any segment of its path is one: the key is
percent-decoded (repeatedly, bounded), cut to what follows its last ``?&#/:;,=``
(``https://a/b?code`` means ``code``), Unicode-normalised and lower-cased, and
split into segments at ``[``, ``]`` and ``.`` (``user[password]``,
``a.b.token``, ``password[]``, ``a[0][token]``); each segment keeps only letters
and digits (``Access-Token``, ``access_token`` and ``access token`` are all
``accesstoken``), trailing digits dropped (``password2``). A segment matches a
name exactly (short, ambiguous names: ``pin``, ``sig``, ``key``…), by its end
(distinctive names: ``…token``, ``…secret``, plural too), or anywhere
(``password``). docs/privacy.md lists every name and rule.

Secrets inside encoded values are found by decoding: a run of text holding a
``%XX`` escape is decoded once, redacted with the same rules (recursively, up
to :data:`MAX_DECODE` levels), and, only if something was filtered,
re-encoded the way it came (characters it held unencoded stay unencoded). Text
without a secret is returned as the very same string.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from .enrich.cache import bounded_put

__all__ = [
    "AUTH_SCHEMES",
    "CONTAINS_NAMES",
    "DEFAULT",
    "DENIED_HEADERS",
    "DENIED_HEADER_PARTS",
    "EXACT_NAMES",
    "FILTERED",
    "LINE_VALUED_NAMES",
    "MAX_DECODE",
    "SUFFIX_NAMES",
    "URL_ONLY_NAMES",
    "Redactor",
    "header_refused",
    "key_names",
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
#: Secret in URLs and text (``?code=`` is an OAuth code, ``?key=`` an API key),
#: but not as the field name of a stored record, where ``code`` and ``key`` are
#: overwhelmingly identifiers (a country code, a key/value table's key).
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
_MEMO = 4096
_MAX_MEMO_KEY = 256
_MAX_DEPTH = 64  # nesting of a record beyond which a value is filtered whole

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


def header_refused(name: str) -> bool:
    """True for a header name whose value can carry a credential."""
    squashed = normalise_name(name)
    return (
        name.lower() in DENIED_HEADERS
        or any(part in squashed for part in DENIED_HEADER_PARTS)
        or DEFAULT.is_secret(name)
    )


# --------------------------------------------------------------------------- text patterns

# The key before a "=" (``key=value``) or a ":" (``key: value``, YAML, header
# lines): the run of key characters that ends there, matched on the reversed
# text from the separator (one match per separator, whatever the text's length).
_EQ_KEY_REVERSED = re.compile(r"[\w.\-\[\]+~%]+")
_COLON_KEY_REVERSED = re.compile(r"[\w.\-\[\]%]+")
# ``"key": value``, ``'key': value``, ``"key" = value``, ``"key" => value`` (JSON, reprs).
_QUOTED_PAIR = re.compile(r"""(?P<q>["'])(?P<k>[^"'\r\n\\]+)(?P=q)[ \t]*(?::|=>?)[ \t]*""")
# ``("key", "value")``, ``(b'key', b'value')``: header lists (ASGI scopes, WSGI environs).
_TUPLE_PAIR = re.compile(r"""\(\s*[bBuU]?(?P<q>["'])(?P<k>[^"'\r\n\\]+)(?P=q)\s*,\s*""")
# ``<password>x</password>``
_XML_PAIR = re.compile(r"<(?P<k>[A-Za-z_][\w.\-:]*)(?:\s[^<>]*)?>(?P<v>[^<]+)</(?P=k)\s*>")
# ``scheme://user:password@host``: the password.
_USERINFO = re.compile(
    r"(?i)(?<![a-z0-9+.\-])[a-z][a-z0-9+.\-]*://[^\s/?#@:\"'<>]*:(?P<pw>[^\s/?#\"'<>]+)@"
)
_BEARER = re.compile(r"(?i)\b(?P<s>bearer)\s+(?P<v>[A-Za-z0-9._~+/=\-]{6,})")
# Basic credentials: base64 with a capital or digit after its first character
# ("Basic information" is prose, "Basic dXNlcjpwYXNz" is not).
_BASIC = re.compile(r"\b(?P<s>Basic)\s+(?P<v>(?=[A-Za-z0-9+/]+[A-Z0-9+/])[A-Za-z0-9+/]{8,}={0,2})")
# A JSON Web Token, whatever it is called: header and payload both start '{"'.
_JWT = re.compile(r"(?<![\w-])eyJ[\w-]{4,}\.eyJ[\w-]{4,}\.[\w-]*")
# A run of text holding a %XX escape: the unit decoded and redacted as a whole.
# (It starts after a delimiter only: a failed attempt then costs its own run, once.)
_ENCODED = re.compile(r"(?<![^\s\"'<>=&?#;,])[^\s\"'<>=&?#;,]*%[0-9A-Fa-f]{2}[^\s\"'<>=&?#;,]*")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# Escapes whose decoding can reveal something a rule looks for ("=", ":", "@",
# quotes, "<", a space after "Bearer", another level of encoding); a unit
# without one decodes to text no rule can match, and is left undecoded.
_REVEALING = re.compile(r"%(?:3[dDaAcC]|40|2[27]|25|20|09)")

# Where a secret value ends.
_TOKEN = re.compile(r"[^\s&\"'<>]+")
_LINE = re.compile(r"[^\r\n\"']+")
_URL_VALUE = re.compile(r"[^&#]*")
_SCHEME_CREDENTIAL = re.compile(r"[ \t]+[^\s\"'<>,;]+")
_TRAILING = ",;.)]}>"
_QUOTED = {
    '"': re.compile(r'"(?:[^"\\]|\\.)*("|\Z)', re.DOTALL),
    "'": re.compile(r"'(?:[^'\\]|\\.)*('|\Z)", re.DOTALL),
}
_OPENERS = {"{": "}", "[": "]", "(": ")"}
# Cheap tests of whether a rule can apply at all (most text has no pairs).
_QUERY_VALUE_GATE = re.compile(r"""[%?#=@:"'<;]|eyJ|(?i:bearer|basic)""")
# The same for a whole query, where "=" only counts beyond one per parameter.
_QUERY_GATE = re.compile(r"""[%?#@:"'<;]|eyJ|(?i:bearer|basic)""")


def _quoted_end(text: str, start: int) -> tuple[int, int] | None:
    """(inner start, inner end) of the quoted string at ``start`` (a prefix such
    as ``b'…'`` allowed); an unterminated one runs to the end of the text."""
    i = start
    if text[i] in "bBrRuU" and i + 1 < len(text) and text[i + 1] in "\"'":
        i += 1
    pattern = _QUOTED.get(text[i])
    if pattern is None:
        return None
    m = pattern.match(text, i)
    if m is None:  # pragma: no cover - the pattern always matches its opening quote
        return None
    return i + 1, m.end() - len(m.group(1))


def _balanced_end(text: str, start: int) -> int:
    """End of the bracketed structure at ``start`` (quotes respected); the end of
    the text when it is not closed."""
    stack = [_OPENERS[text[start]]]
    i = start + 1
    n = len(text)
    quote_char = ""
    while i < n:
        c = text[i]
        if quote_char:
            if c == "\\":
                i += 1
            elif c == quote_char:
                quote_char = ""
        elif c in "\"'":
            quote_char = c
        elif c in _OPENERS:
            stack.append(_OPENERS[c])
        elif c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    return n


def _text_value(text: str, start: int, line_valued: bool) -> tuple[int, int] | None:
    """The span of a secret value that starts at ``start`` in free text."""
    if start >= len(text):
        return None
    c = text[start]
    if c in "\"'" or (c in "bBrRuU" and text[start + 1 : start + 2] in ("'", '"')):
        return _quoted_end(text, start)
    if c in _OPENERS:
        return start, _balanced_end(text, start)
    if line_valued:
        m = _LINE.match(text, start)
        if m is None:
            return None
        end = m.end()
        while end > start and text[end - 1] in " \t":
            end -= 1
        return (start, end) if end > start else None
    m = _TOKEN.match(text, start)
    if m is None:
        return None
    end = m.end()
    while end > start + 1 and text[end - 1] in _TRAILING:
        end -= 1
    if text[start:end].lower() in AUTH_SCHEMES:
        more = _SCHEME_CREDENTIAL.match(text, end)
        if more is not None:
            end = more.end()
            while text[end - 1] in _TRAILING:
                end -= 1
    return start, end


def _reencode(decoded: str, like: str) -> str:
    """``decoded`` percent-encoded as ``like`` was: what ``like`` held unencoded
    stays unencoded, the rest is escaped; the filter mark stays readable."""
    safe = "".join(sorted({c for c in like if not c.isalnum() and c != "%"}))
    encoded = quote(decoded, safe=safe)
    mark = quote(FILTERED, safe=safe)
    return encoded.replace(mark, FILTERED) if mark != FILTERED else encoded


# --------------------------------------------------------------------------- the redactor


class Redactor:
    """The secret-name rules, with the names a deployment adds.

    ``extra``: more names (``redact_query_keys``, ``audit_mask``), matched as
    whole segments after normalisation, everywhere. Thread-safe; memoised per
    distinct key (bounded).
    """

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra = frozenset(filter(None, (normalise_name(str(n)) for n in extra)))
        self._exact = EXACT_NAMES | self.extra
        self._field_exact = (EXACT_NAMES - URL_ONLY_NAMES) | self.extra
        tails = "|".join(SUFFIX_NAMES)
        self._pattern = re.compile(rf"(?:{'|'.join(CONTAINS_NAMES)})|(?:{tails})s?\Z")
        self._keys: dict[str, bool] = {}
        self._fields: dict[str, bool] = {}

    # -- names ---------------------------------------------------------------

    def is_secret(self, key: str) -> bool:
        """True when ``key`` (a query key, a key in text) names a secret."""
        got = self._keys.get(key)
        if got is None:
            got = self._match(key, self._exact)
            if len(key) <= _MAX_MEMO_KEY:
                bounded_put(self._keys, key, got, _MEMO)
        return got

    def is_secret_field(self, name: str) -> bool:
        """True when a record's field ``name`` holds a secret (``code`` and ``key``
        are identifiers there, see :data:`URL_ONLY_NAMES`)."""
        got = self._fields.get(name)
        if got is None:
            got = self._match(name, self._field_exact)
            if len(name) <= _MAX_MEMO_KEY:
                bounded_put(self._fields, name, got, _MEMO)
        return got

    def _match(self, key: str, exact: frozenset[str]) -> bool:
        search = self._pattern.search
        return any(n in exact or search(n) is not None for n in key_names(key))

    def _line_valued(self, key: str) -> bool:
        return any(n.endswith(LINE_VALUED_NAMES) for n in key_names(key))

    # -- query strings and URLs ------------------------------------------------

    def redact_query(self, query: bytes | str) -> str:
        """A query string with the values of secret keys replaced by ``[Filtered]``,
        and secrets inside other values (a URL, a nested query, JSON) filtered;
        everything else kept byte for byte."""
        text = query.decode("latin-1") if isinstance(query, bytes) else query
        if not text:
            return text
        parts = text.split("&")
        deep = _QUERY_GATE.search(text) is not None or text.count("=") > len(parts)
        changed = False
        is_secret = self.is_secret
        for i, part in enumerate(parts):
            key, sep, value = part.partition("=")
            if not sep:
                # No value; but "token%3Dabc" is "token=abc" once decoded.
                if deep and "%" in part:
                    new = self._scrub(part, True, 0)
                    if new is not part:
                        parts[i] = new
                        changed = True
                continue
            if is_secret(key):
                if value != FILTERED:
                    parts[i] = f"{key}={FILTERED}"
                    changed = True
            elif deep and value and _QUERY_VALUE_GATE.search(value) is not None:
                new = self._scrub(value, True, 0)
                if new is not value:
                    parts[i] = f"{key}={new}"
                    changed = True
        return "&".join(parts) if changed else text

    def redact_path(self, path: str) -> str:
        """A path with the values of secret path parameters filtered
        (``/cart;jsessionid=…``, the servlet containers' URL rewriting); the
        rest of the path is kept as received."""
        if ";" not in path:
            return path
        segments = path.split("/")
        changed = False
        for i, segment in enumerate(segments):
            if ";" not in segment:
                continue
            head, *params = segment.split(";")
            for j, param in enumerate(params):
                key, sep, value = param.partition("=")
                if sep and value != FILTERED and self.is_secret(key):
                    params[j] = f"{key}={FILTERED}"
                    changed = True
            segments[i] = ";".join([head, *params])
        return "/".join(segments) if changed else path

    def redact_url(self, url: str) -> str:
        """A URL with its query redacted as :meth:`redact_query` does, its
        fragment's pairs too, and a password in its userinfo filtered."""
        head, qmark, rest = url.partition("?")
        if not qmark:
            head, hash_, fragment = url.partition("#")
            query = ""
        else:
            query, hash_, fragment = rest.partition("#")
        new_head = self.redact_path(self._scrub(head, True, 0)) if head else head
        new_query = self.redact_query(query) if query else query
        new_fragment = self._fragment(fragment) if fragment else fragment
        if new_head is head and new_query is query and new_fragment is fragment:
            return url
        return f"{new_head}{qmark}{new_query}{hash_}{new_fragment}"

    def _fragment(self, fragment: str) -> str:
        # An OAuth implicit-flow fragment is a query: #access_token=…&state=…
        return self.redact_query(fragment) if "=" in fragment else self._scrub(fragment, True, 0)

    def redact_header(self, value: str) -> str:
        """A recorded header's value: a URL (``Referer``, ``Origin``) as a URL,
        anything else as text."""
        if value.startswith("/") or "://" in value[:32]:
            return self.redact_url(value)
        return self.scrub_text(value)

    # -- free text ----------------------------------------------------------------

    def scrub_text(self, text: str) -> str:
        """Free text with secret values filtered (best effort; see docs/privacy.md)."""
        return self._scrub(text, False, 0)

    def _scrub(self, text: str, url: bool, depth: int) -> str:
        """``text`` with every rule applied; the same object when nothing changed.

        ``url``: the text is (part of) a URL or a query, so a ``key=value``
        value runs to the next ``&`` or ``#`` rather than to a space.
        """
        out = text
        if ('"' in out or "'" in out) and (":" in out or "=" in out or "," in out):
            out = self._pairs(out, _QUOTED_PAIR)
            if "(" in out:
                out = self._pairs(out, _TUPLE_PAIR)
        if "://" in out and "@" in out:
            out = _USERINFO.sub(_filter_userinfo, out)
        if "=" in out:
            out = self._separated(out, "=", url)
        if ":" in out:
            out = self._separated(out, ":", False)
        if "</" in out:
            out = _XML_PAIR.sub(self._filter_xml, out)
        if "earer" in out or "EARER" in out:
            out = _BEARER.sub(_filter_credential, out)
        if "Basic" in out:
            out = _BASIC.sub(_filter_credential, out)
        if "eyJ" in out:
            out = _JWT.sub(FILTERED, out)
        if "%" in out and depth < MAX_DECODE and _ESCAPE.search(out) is not None:
            out = _ENCODED.sub(lambda m: self._decoded(m.group(), depth), out)
        return text if out == text else out

    def _decoded(self, unit: str, depth: int) -> str:
        if _REVEALING.search(unit) is None:
            return unit
        decoded = unquote(unit, errors="replace")
        if decoded == unit:
            return unit
        redacted = self._scrub(decoded, True, depth + 1)
        if redacted is decoded:
            return unit
        return _reencode(redacted, unit)

    def _pairs(self, text: str, pattern: re.Pattern[str]) -> str:
        """Filter the value after each key ``pattern`` finds that is a secret
        (quoted keys: JSON, reprs, header tuples)."""
        out: list[str] = []
        last = pos = 0
        while True:
            m = pattern.search(text, pos)
            if m is None:
                break
            pos = m.end()
            if not self.is_secret(m.group("k")):
                continue
            span = _text_value(text, m.end(), self._line_valued(m.group("k")))
            if span is not None and text[span[0] : span[1]] != FILTERED:
                out += (text[last : span[0]], FILTERED)
                last = pos = span[1]
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _separated(self, text: str, sep: str, url: bool) -> str:
        """Filter the value after each ``key=value`` (``sep`` "=") or ``key: value``
        (``sep`` ":") whose key is a secret. ``url``: a "=" value runs to the
        next ``&`` or ``#`` rather than to a space."""
        out: list[str] = []
        last = pos = 0
        n = len(text)
        reversed_text = text[::-1]
        keys = _EQ_KEY_REVERSED if sep == "=" else _COLON_KEY_REVERSED
        while True:
            at = text.find(sep, pos)
            if at < 0:
                break
            pos = at + 1
            end = at
            while end > last and text[end - 1] in " \t":
                end -= 1
            m = keys.match(reversed_text, n - end)
            if m is None:
                continue
            key = text[max(last, end - (m.end() - m.start())) : end]
            start = at + 1
            if sep == ":":
                if text.startswith("//", start) or key[:1].isdigit():
                    continue  # a URL's scheme://, a time
            elif text.startswith(">", start):
                start += 1  # key => value
            while start < n and text[start] in " \t":
                start += 1
            if not key or not self.is_secret(key):
                continue
            if url and sep == "=":
                v = _URL_VALUE.match(text, start)
                span = None if v is None or v.end() == start else (start, v.end())
            else:
                span = _text_value(text, start, self._line_valued(key))
            if span is not None and text[span[0] : span[1]] != FILTERED:
                out += (text[last : span[0]], FILTERED)
                last = pos = span[1]
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _filter_xml(self, m: re.Match[str]) -> str:
        if not self.is_secret(m.group("k")) or m.group("v") == FILTERED:
            return m.group()
        a, b = m.span("v")
        base = m.start()
        whole = m.group()
        return whole[: a - base] + FILTERED + whole[b - base :]

    # -- records ------------------------------------------------------------------

    def mask(self, value: Any, _depth: int = 0) -> Any:
        """A JSON-like value with each secret field's value ``[Filtered]`` at any
        depth and every string scrubbed; the same object when nothing changed."""
        if isinstance(value, str):
            return self._scrub(value, False, 0) if value else value
        if _depth > _MAX_DEPTH and isinstance(value, (Mapping, list, tuple)):
            return FILTERED
        if isinstance(value, Mapping):
            changed = False
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if isinstance(k, str) and self.is_secret_field(k):
                    new: Any = FILTERED
                else:
                    new = self.mask(v, _depth + 1)
                changed = changed or new is not v
                out[k] = new
            return out if changed else value
        if isinstance(value, (list, tuple)):
            items = [self.mask(v, _depth + 1) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return items
        return value

    def mask_diff(self, changes: Mapping[str, Any]) -> Any:
        """A field-level diff (``{field: {"before": …, "after": …}}``) masked: a
        secret field keeps its shape (``{"before": "[Filtered]", …}``) so it still
        shows as changed; everything else as :meth:`mask`."""
        out: dict[str, Any] = {}
        changed = False
        for name, change in changes.items():
            if isinstance(name, str) and self.is_secret_field(name):
                new: Any = (
                    dict.fromkeys(change, FILTERED) if isinstance(change, Mapping) else FILTERED
                )
            else:
                new = self.mask(change, 1)
            changed = changed or new is not change
            out[name] = new
        return out if changed else changes


def _filter_userinfo(m: re.Match[str]) -> str:
    if m.group("pw") == FILTERED:
        return m.group()
    whole = m.group()
    a = m.start("pw") - m.start()
    b = m.end("pw") - m.start()
    return whole[:a] + FILTERED + whole[b:]


def _filter_credential(m: re.Match[str]) -> str:
    return f"{m.group('s')} {FILTERED}"


#: The default rules, no names added.
DEFAULT = Redactor()
