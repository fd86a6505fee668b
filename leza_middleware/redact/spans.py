"""The patterns of secrets in text, and where a secret value starts and ends
(``leza_middleware.redact``'s machinery; nothing here decides what is a secret)."""

from __future__ import annotations

import re
from urllib.parse import quote

from .names import AUTH_SCHEMES, FILTERED

__all__ = [
    "BASIC",
    "BEARER",
    "COLON_KEY_REVERSED",
    "ENCODED",
    "EQ_KEY_REVERSED",
    "ESCAPE",
    "JWT",
    "LINE",
    "OPENERS",
    "QUERY_GATE",
    "QUERY_VALUE_GATE",
    "QUOTED",
    "QUOTED_PAIR",
    "REVEALING",
    "SCHEME_CREDENTIAL",
    "TOKEN",
    "TRAILING",
    "TUPLE_PAIR",
    "URL_VALUE",
    "USERINFO",
    "XML_PAIR",
    "balanced_end",
    "filter_credential",
    "filter_userinfo",
    "quoted_end",
    "reencode",
    "text_value",
]

# The key before a "=" (``key=value``) or a ":" (``key: value``, YAML, header
# lines): the run of key characters that ends there, matched on the reversed
# text from the separator (one match per separator, whatever the text's length).
EQ_KEY_REVERSED = re.compile(r"[\w.\-\[\]+~%]+")
COLON_KEY_REVERSED = re.compile(r"[\w.\-\[\]%]+")
# ``"key": value``, ``'key': value``, ``"key" = value``, ``"key" => value`` (JSON, reprs).
QUOTED_PAIR = re.compile(r"""(?P<q>["'])(?P<k>[^"'\r\n\\]+)(?P=q)[ \t]*(?::|=>?)[ \t]*""")
# ``("key", "value")``, ``(b'key', b'value')``: header lists (ASGI scopes, WSGI environs).
TUPLE_PAIR = re.compile(r"""\(\s*[bBuU]?(?P<q>["'])(?P<k>[^"'\r\n\\]+)(?P=q)\s*,\s*""")
# ``<password>x</password>``
XML_PAIR = re.compile(r"<(?P<k>[A-Za-z_][\w.\-:]*)(?:\s[^<>]*)?>(?P<v>[^<]+)</(?P=k)\s*>")
# ``scheme://user:password@host``: the password.
USERINFO = re.compile(
    r"(?i)(?<![a-z0-9+.\-])[a-z][a-z0-9+.\-]*://[^\s/?#@:\"'<>]*:(?P<pw>[^\s/?#\"'<>]+)@"
)
BEARER = re.compile(r"(?i)\b(?P<s>bearer)\s+(?P<v>[A-Za-z0-9._~+/=\-]{6,})")
# Basic credentials: base64 with a capital or digit after its first character
# ("Basic information" is prose, "Basic dXNlcjpwYXNz" is not).
BASIC = re.compile(r"\b(?P<s>Basic)\s+(?P<v>(?=[A-Za-z0-9+/]+[A-Z0-9+/])[A-Za-z0-9+/]{8,}={0,2})")
# A JSON Web Token, whatever it is called: header and payload both start '{"'.
JWT = re.compile(r"(?<![\w-])eyJ[\w-]{4,}\.eyJ[\w-]{4,}\.[\w-]*")
# A run of text holding a %XX escape: the unit decoded and redacted as a whole.
# (It starts after a delimiter only: a failed attempt then costs its own run, once.)
ENCODED = re.compile(r"(?<![^\s\"'<>=&?#;,])[^\s\"'<>=&?#;,]*%[0-9A-Fa-f]{2}[^\s\"'<>=&?#;,]*")
ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# Escapes whose decoding can reveal something a rule looks for ("=", ":", "@",
# quotes, "<", a space after "Bearer", another level of encoding); a unit
# without one decodes to text no rule can match, and is left undecoded.
REVEALING = re.compile(r"%(?:3[dDaAcC]|40|2[27]|25|20|09)")

# Where a secret value ends.
TOKEN = re.compile(r"[^\s&\"'<>]+")
LINE = re.compile(r"[^\r\n\"']+")
URL_VALUE = re.compile(r"[^&#]*")
SCHEME_CREDENTIAL = re.compile(r"[ \t]+[^\s\"'<>,;]+")
TRAILING = ",;.)]}>"
QUOTED = {
    '"': re.compile(r'"(?:[^"\\]|\\.)*("|\Z)', re.DOTALL),
    "'": re.compile(r"'(?:[^'\\]|\\.)*('|\Z)", re.DOTALL),
}
OPENERS = {"{": "}", "[": "]", "(": ")"}
# Cheap tests of whether a rule can apply at all (most text has no pairs).
QUERY_VALUE_GATE = re.compile(r"""[%?#=@:"'<;]|eyJ|(?i:bearer|basic)""")
# The same for a whole query, where "=" only counts beyond one per parameter.
QUERY_GATE = re.compile(r"""[%?#@:"'<;]|eyJ|(?i:bearer|basic)""")


def quoted_end(text: str, start: int) -> tuple[int, int] | None:
    """(inner start, inner end) of the quoted string at ``start`` (a prefix such
    as ``b'…'`` allowed); an unterminated one runs to the end of the text."""
    i = start
    if text[i] in "bBrRuU" and i + 1 < len(text) and text[i + 1] in "\"'":
        i += 1
    pattern = QUOTED.get(text[i])
    if pattern is None:
        return None
    m = pattern.match(text, i)
    if m is None:  # pragma: no cover - the pattern always matches its opening quote
        return None
    return i + 1, m.end() - len(m.group(1))


def balanced_end(text: str, start: int) -> int:
    """End of the bracketed structure at ``start`` (quotes respected); the end of
    the text when it is not closed."""
    stack = [OPENERS[text[start]]]
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
        elif c in OPENERS:
            stack.append(OPENERS[c])
        elif c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    return n


def text_value(text: str, start: int, line_valued: bool) -> tuple[int, int] | None:
    """The span of a secret value that starts at ``start`` in free text."""
    if start >= len(text):
        return None
    c = text[start]
    if c in "\"'" or (c in "bBrRuU" and text[start + 1 : start + 2] in ("'", '"')):
        return quoted_end(text, start)
    if c in OPENERS:
        return start, balanced_end(text, start)
    if line_valued:
        m = LINE.match(text, start)
        if m is None:
            return None
        end = m.end()
        while end > start and text[end - 1] in " \t":
            end -= 1
        return (start, end) if end > start else None
    m = TOKEN.match(text, start)
    if m is None:
        return None
    end = m.end()
    while end > start + 1 and text[end - 1] in TRAILING:
        end -= 1
    if text[start:end].lower() in AUTH_SCHEMES:
        more = SCHEME_CREDENTIAL.match(text, end)
        if more is not None:
            end = more.end()
            while text[end - 1] in TRAILING:
                end -= 1
    return start, end


def reencode(decoded: str, like: str) -> str:
    """``decoded`` percent-encoded as ``like`` was: what ``like`` held unencoded
    stays unencoded, the rest is escaped; the filter mark stays readable."""
    safe = "".join(sorted({c for c in like if not c.isalnum() and c != "%"}))
    encoded = quote(decoded, safe=safe)
    mark = quote(FILTERED, safe=safe)
    return encoded.replace(mark, FILTERED) if mark != FILTERED else encoded


def filter_userinfo(m: re.Match[str]) -> str:
    if m.group("pw") == FILTERED:
        return m.group()
    whole = m.group()
    a = m.start("pw") - m.start()
    b = m.end("pw") - m.start()
    return whole[:a] + FILTERED + whole[b:]


def filter_credential(m: re.Match[str]) -> str:
    return f"{m.group('s')} {FILTERED}"
