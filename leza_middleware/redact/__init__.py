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
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from ..enrich.cache import bounded_put
from . import spans
from .names import (
    AUTH_SCHEMES,
    CONTAINS_NAMES,
    DENIED_HEADER_PARTS,
    DENIED_HEADERS,
    EXACT_NAMES,
    FILTERED,
    LINE_VALUED_NAMES,
    MAX_DECODE,
    SUFFIX_NAMES,
    URL_ONLY_NAMES,
    key_names,
    normalise_name,
)

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
    "looks_like_credential",
    "normalise_name",
]

_MEMO = 4096
_MAX_MEMO_KEY = 256
_MAX_DEPTH = 64  # nesting of a record beyond which a value is filtered whole


def header_refused(name: str) -> bool:
    """True for a header name whose value can carry a credential."""
    squashed = normalise_name(name)
    return (
        name.lower() in DENIED_HEADERS
        or any(part in squashed for part in DENIED_HEADER_PARTS)
        or DEFAULT.is_secret(name)
    )


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
        """True when a record's field ``name`` holds a secret, whatever its value
        (``code`` and ``key`` only by their value there: :data:`URL_ONLY_NAMES`)."""
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
        deep = spans.QUERY_GATE.search(text) is not None or text.count("=") > len(parts)
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
            elif deep and value and spans.QUERY_VALUE_GATE.search(value) is not None:
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
            out = self._pairs(out, spans.QUOTED_PAIR)
            if "(" in out:
                out = self._pairs(out, spans.TUPLE_PAIR)
        if "://" in out and "@" in out:
            out = spans.USERINFO.sub(spans.filter_userinfo, out)
        if "=" in out:
            out = self._separated(out, "=", url)
        if ":" in out:
            out = self._separated(out, ":", False)
        if "</" in out:
            out = spans.XML_PAIR.sub(self._filter_xml, out)
        if "earer" in out or "EARER" in out:
            out = spans.BEARER.sub(spans.filter_credential, out)
        if "Basic" in out:
            out = spans.BASIC.sub(spans.filter_credential, out)
        if "eyJ" in out:
            out = spans.JWT.sub(FILTERED, out)
        if "%" in out and depth < MAX_DECODE and spans.ESCAPE.search(out) is not None:
            out = spans.ENCODED.sub(lambda m: self._decoded(m.group(), depth), out)
        return text if out == text else out

    def _decoded(self, unit: str, depth: int) -> str:
        if spans.REVEALING.search(unit) is None:
            return unit
        decoded = unquote(unit, errors="replace")
        if decoded == unit:
            return unit
        redacted = self._scrub(decoded, True, depth + 1)
        if redacted is decoded:
            return unit
        return spans.reencode(redacted, unit)

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
            span = spans.text_value(text, m.end(), self._line_valued(m.group("k")))
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
        keys = spans.EQ_KEY_REVERSED if sep == "=" else spans.COLON_KEY_REVERSED
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
                v = spans.URL_VALUE.match(text, start)
                span = None if v is None or v.end() == start else (start, v.end())
            else:
                span = spans.text_value(text, start, self._line_valued(key))
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

    def mask(self, value: Any, ambiguous: bool = True, _depth: int = 0) -> Any:
        """A JSON-like value with each secret field's value ``[Filtered]`` at any
        depth and every string scrubbed; the same object when nothing changed.

        ``ambiguous``: a ``code`` or ``key`` field (an identifier in most records,
        a credential in some: an API token's key, an OAuth grant's code) is
        filtered when its value looks like a credential (see
        :func:`looks_like_credential`).
        """
        if isinstance(value, str):
            return self._scrub(value, False, 0) if value else value
        if _depth > _MAX_DEPTH and isinstance(value, (Mapping, list, tuple)):
            return FILTERED
        if isinstance(value, Mapping):
            changed = False
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if isinstance(k, str) and self._masked_field(k, ambiguous, (v,)):
                    new: Any = FILTERED
                else:
                    new = self.mask(v, ambiguous, _depth + 1)
                changed = changed or new is not v
                out[k] = new
            return out if changed else value
        if isinstance(value, (list, tuple)):
            items = [self.mask(v, ambiguous, _depth + 1) for v in value]
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
            sides = tuple(change.values()) if isinstance(change, Mapping) else (change,)
            if isinstance(name, str) and self._masked_field(name, True, sides):
                new: Any = (
                    dict.fromkeys(change, FILTERED) if isinstance(change, Mapping) else FILTERED
                )
            else:
                new = self.mask(change, True, 1)
            changed = changed or new is not change
            out[name] = new
        return out if changed else changes

    def _masked_field(self, name: str, ambiguous: bool, values: tuple[Any, ...]) -> bool:
        if self.is_secret_field(name):
            return True
        return (
            ambiguous
            and self.is_secret(name)  # a name secret in URLs only: code, key
            and any(looks_like_credential(v) for v in values)
        )


# 16 or more characters, no space, letters and digits both: a token's shape
# (a DRF token key, an OAuth code), not a country code, a SKU or a settings key.
_CREDENTIAL_SHAPE = re.compile(r"(?=\S*\d)(?=\S*[^\W\d_])\S{16,}")


def looks_like_credential(value: Any) -> bool:
    """True for a string shaped like a generated credential."""
    return isinstance(value, str) and _CREDENTIAL_SHAPE.fullmatch(value) is not None


#: The default rules, no names added.
DEFAULT = Redactor()
