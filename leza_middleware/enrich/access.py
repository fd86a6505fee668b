"""Turn raw access records into :class:`AccessEvent` objects (recorder thread only).

Everything the request path deferred happens here: client IP through the
proxy chain, User-Agent → device, IP → geo, query redaction, control-character
stripping and size caps, outcome and reason.

The recorder thread shares the GIL with the app, so every µs of Python per
event here is a µs the app's event loop waits. Two rules keep it small:

* work is done per *distinct value*, not per event: each column of a batch
  (User-Agents, client addresses, statuses, hosts, routes…) is mapped through
  a bounded dict, and only values never seen before reach the parsers;
* the per-event steps are ``zip``/``map`` over whole columns, which run in C,
  instead of a Python loop body per event.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from http import HTTPStatus
from itertools import repeat
from operator import mul
from typing import Any, TypeVar

from ..events import AccessEvent, Device, Geo, encode_chain, performer_key
from ..ids import new_event_ids
from ..performer import Organization, Performer
from ..privacy import private_geo, stored_headers
from ..redact import Redactor
from .cache import bounded_put
from .clientip import ProxyTrust
from .geo import GeoResolver
from .text import UNSAFE, clean
from .useragent import RAW_LIMIT, UserAgentParser

__all__ = ["AccessEnricher", "derive_outcome", "stored_performer"]

MAX_PATH = 2048
MAX_HOST = 255
MAX_REASON = 512
_CACHE_SIZE = 4096
_MAX_KEY = 256  # longer client-controlled values are processed but not memoised
# Per-peer address memos (see AccessEnricher._address_column): a few proxies,
# each with a memo of its clients' X-Forwarded-For values.
_MAX_PEER_MEMOS = 4
_PEER_MEMO_SIZE = 2048

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_MISSING: Any = object()
# client ip, valid, peer ip, encoded proxy chain, ip to geolocate (None when invalid)
_Address = tuple[str, bool, str, str, str | None]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"


def derive_outcome(status: int, error: str | None = None) -> tuple[str, str, str]:
    """(action, outcome, reason) from the status, until a permission decision exists."""
    if status >= 500:
        detail = f" ({error})" if error else ""
        return "access", "error", f"Server error: {status} {_phrase(status)}{detail}"
    if error is not None:
        # The response had started when the app failed: the client got this
        # status and a cut-off body.
        return "access", "error", f"Response interrupted after {status} {_phrase(status)} ({error})"
    if status in (401, 403):
        return "denied", "denied", f"Access denied: {status} {_phrase(status)}"
    if status >= 400:
        return "access", "failure", f"Request failed: {status} {_phrase(status)}"
    return "access", "success", f"Request completed: {status} {_phrase(status)}"


class _Memo(dict[Any, Any]):
    """A bounded memo of one function, applied to a whole column at once."""

    def __init__(self, fn: Callable[[Any], Any], size: int = _CACHE_SIZE) -> None:
        super().__init__()
        self.fn = fn
        self.size = size

    def column(self, keys: Sequence[Any]) -> list[Any]:
        values = list(map(self.get, keys, repeat(_MISSING)))
        if _MISSING in values:  # only values never seen before reach ``fn``
            fn = self.fn
            for i, value in enumerate(values):
                if value is _MISSING:
                    key = keys[i]
                    values[i] = value = fn(key)
                    if _memoisable(key):
                        bounded_put(self, key, value, self.size)
        return values


def _memoisable(key: Any) -> bool:
    if isinstance(key, (str, bytes)):
        return len(key) <= _MAX_KEY
    if isinstance(key, tuple):
        return all(not isinstance(k, (str, bytes)) or len(k) <= _MAX_KEY for k in key)
    return True


# Control characters or lone surrogates: the path needs cleaning (one search per path).
_unsafe = UNSAFE.search
_OUTCOME_OF_ACTION = {"login_failed": "failure", "denied": "denied"}


def _clean_labels(labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(clean(str(label), MAX_REASON) for label in labels)


def _stored_organization(o: Organization) -> Organization:
    stored = Organization(
        id=clean(str(o.id), MAX_REASON),
        name=clean(str(o.name), MAX_REASON),
        type=clean(str(o.type), MAX_REASON),
        labels=_clean_labels(o.labels),
    )
    return o if stored == o else stored


def _clean_id(value: str) -> str:
    """An identifier as stored: unsafe characters replaced by U+FFFD, not dropped.

    Dropping would merge ids ("a\x00b" and "ab") and could leave an empty id
    ("\r\n"), which reads back as no performer at all and fails the read.
    """
    value = value[:MAX_REASON]
    return UNSAFE.sub("\ufffd", value) if _unsafe(value) is not None else value


def stored_performer(p: Performer) -> tuple[Performer | None, str | None, str | None]:
    """The performer as stored (every text field cleaned and capped), its id and key.

    The app builds it, but often from what the client sent (a user name, an
    organisation header): every field ends up in the stored JSON, so every one
    is cleaned. Without an id (``Performer(id="")``) the request is anonymous.
    Memoised per distinct performer.
    """
    pid = _clean_id(str(p.id))
    if not pid:
        return None, None, None
    fields: dict[str, Any] = {} if pid == p.id else {"id": pid}
    for name in ("name", "email", "picture_url", "organization_id",
                 "organization_name", "role_name", "clientid",
                 "organization_unit_id", "organization_unit_name"):  # fmt: skip
        value = getattr(p, name)
        if value is None:
            continue
        cleaned = clean(str(value), MAX_REASON)
        if cleaned != value:
            fields[name] = cleaned
    unit_labels = p.organization_unit_labels
    if unit_labels is not None:
        cleaned_labels = _clean_labels(unit_labels)
        if cleaned_labels != unit_labels:
            fields["organization_unit_labels"] = cleaned_labels
    if p.organizations:
        orgs = tuple(map(_stored_organization, p.organizations))
        if orgs != p.organizations:
            fields["organizations"] = orgs
    if fields:
        p = replace(p, **fields)
    return p, p.id, performer_key(p)


def _text(value: bytes | str | None) -> str | None:
    return value.decode("latin-1") if type(value) is bytes else value  # type: ignore[return-value]


def _text_column(values: Sequence[bytes | str | None]) -> list[str | None]:
    """``_text`` over a column, decoded in C when the column is all bytes (ASGI)."""
    try:
        return list(map(bytes.decode, values, repeat("latin-1")))  # type: ignore[arg-type]
    except TypeError:  # str (WSGI) or None among them
        return list(map(_text, values))


def _short_text(value: Any) -> str:
    """Method, scheme, host as stored: any type a malformed scope may hold."""
    if value is None:
        return ""
    text = _text(value)
    return clean(text if type(text) is str else str(text), MAX_HOST)


def _outcome(key: tuple[int, str | None]) -> tuple[str, str, str]:
    action, outcome, reason = derive_outcome(*key)
    # The error part is an exception class name: the app's, so cleaned as well.
    return action, outcome, clean(reason, MAX_REASON)


class AccessEnricher:
    def __init__(
        self,
        *,
        user_agents: UserAgentParser,
        geo: GeoResolver,
        proxies: ProxyTrust,
        redactor: Redactor,
        app_name: str,
        anonymize_ip: Callable[[str], str] | None = None,
    ) -> None:
        self.user_agents = user_agents
        self.geo = geo
        self.proxies = proxies
        self.redactor = redactor
        self.app_name = app_name
        # anonymize_ip (privacy/anonymize.py): applied per distinct address, after the real
        # IP was kept aside for geolocation, so it costs nothing per event.
        self.anonymize = anonymize_ip
        self._devices = _Memo(self._device)
        self._addresses = _Memo(self._address)
        # Behind one proxy (every record of a batch from the same peer, no
        # ``Forwarded``): the address keyed by the X-Forwarded-For value alone,
        # one memo per peer, so no key tuple is built and hashed per event.
        self._by_xff: dict[Any, _Memo] = {}
        # Without an error (nearly always): the outcome keyed by the status alone.
        self._outcome_of_status = _Memo(lambda status: _outcome((status, None)))
        self._geos = _Memo(self._geo)
        self._outcomes = _Memo(_outcome)
        self._short = _Memo(_short_text)  # method, scheme, host
        self._routes = _Memo(lambda r: None if r is None else clean(str(r), MAX_PATH))
        # Cleaned before redaction too, so that the key redaction matches is
        # the key as stored ("pass\x00word=..." is stored as "password=...").
        # Memoised per distinct query string: a query without a secret costs
        # one dict lookup per event (the memo is bounded, like every other).
        redact = redactor.redact_query
        self._paths = _Memo(lambda p: clean(redactor.redact_path(p), MAX_PATH))
        self._queries = _Memo(lambda q: clean(redact(clean(q, MAX_PATH)), MAX_PATH))
        # A reason given with the event (a permission's, a failed login's) is
        # text the app wrote: cleaned and scrubbed, per distinct reason.
        scrub = redactor.scrub_text
        self._reasons = _Memo(lambda r: clean(scrub(clean(r, MAX_REASON)), MAX_REASON))
        self._performers = _Memo(stored_performer)
        self._headers = _Memo(lambda raw: stored_headers(raw, redactor))

    # Memoised per distinct value; each returns what the batch's columns need.

    def _address(self, key: tuple[str | None, Any, Any]) -> _Address:
        peer, xff, fwd = key
        a = self.proxies.resolve(peer, _text(xff), _text(fwd))
        geo_ip = a.client_ip if a.ip_valid else None
        anon = self.anonymize
        if anon is None:
            return a.client_ip, a.ip_valid, a.peer_ip, encode_chain(a.chain), geo_ip
        chain = encode_chain([anon(hop) for hop in a.chain])
        return anon(a.client_ip), a.ip_valid, anon(a.peer_ip), chain, geo_ip

    def _device(self, ua: bytes | str | None) -> tuple[Device, str]:
        if (type(ua) is bytes or type(ua) is str) and len(ua) > RAW_LIMIT:
            ua = ua[:RAW_LIMIT]  # a 100 KB header: only what the parser looks at is decoded
        device = self.user_agents.parse(_text(ua) or "")
        return device, device.key

    def _geo(self, ip: str | None) -> tuple[Geo | None, str | None]:
        geo = None if ip is None else self.geo.lookup(ip)
        if geo is not None and self.anonymize is not None:
            geo = private_geo(geo)  # its network key would be finer than the stored IP
        return geo, None if geo is None else geo.key

    def __call__(self, raw: tuple[Any, ...]) -> AccessEvent:
        return self.batch([raw])[0]

    def batch(self, raws: Sequence[tuple[Any, ...]]) -> list[AccessEvent]:
        """Enrich a batch of raw access records (see ``request_path.RAW_FIELDS``)."""
        n = len(raws)
        (
            ts_s, durations, statuses, request_ids, methods, paths, queries, peers, schemes,
            routes, uas, xffs, fwds, hosts, performers, errors, actions, reasons,
            machine_ids, session_ids, headers,
        ) = zip(*raws, strict=True)  # fmt: skip
        # (Columns of one batch always have the same length; strict=True only
        # guards the transposition above against a malformed record.)
        client_ips, valids, peer_ips, chains, geo_ips = zip(
            *self._address_column(peers, xffs, fwds), strict=True
        )
        devices, device_keys = zip(*self._devices.column(uas), strict=True)
        geos, geo_keys = zip(*self._geos.column(geo_ips), strict=True)
        derived_actions, outcomes, derived_reasons = zip(
            *(
                self._outcomes.column(list(zip(statuses, errors, strict=True)))
                if errors.count(None) != n
                else self._outcome_of_status.column(statuses)
            ),
            strict=True,
        )
        ts_us = list(map(int, map(mul, ts_s, repeat(1_000_000))))

        endpoints = list(paths)
        # (lengths first: a 100 KB path is then cleaned, cut before it is scanned;
        # ";" is a path parameter such as ";jsessionid=…", filtered like a query's)
        if (
            any(queries)
            or max(map(len, paths)) > MAX_PATH
            or any(map(_unsafe, paths))
            or ";" in "".join(paths)
        ):
            for i, path in enumerate(paths):
                query = queries[i]
                endpoint = clean(path, MAX_PATH)
                if ";" in endpoint:
                    endpoint = self._paths.column([endpoint])[0]
                if query:
                    redacted = self._queries.column([_text(query)])[0]
                    endpoint = f"{endpoint}?{redacted}"[:MAX_PATH]
                endpoints[i] = endpoint

        # Rare per-event overrides: login/logout actions, permission reasons.
        final_actions: Sequence[str] = derived_actions
        final_reasons: Sequence[str] = derived_reasons
        if any(actions) or any(reasons):
            final_actions = [
                d if a is None else a for a, d in zip(actions, derived_actions, strict=True)
            ]
            # A failed login or a denial is not a success, whatever the status
            # (a login form answers 200 with its error).
            outcomes = tuple(
                _OUTCOME_OF_ACTION.get(a, o) if a is not None else o
                for a, o in zip(actions, outcomes, strict=True)
            )
            given = iter(self._reasons.column([r for r in reasons if r is not None]))
            final_reasons = [
                d if r is None else next(given)
                for r, d in zip(reasons, derived_reasons, strict=True)
            ]
        stored_performers: Sequence[Performer | None] = performers
        pids: Sequence[str | None] = repeat(None, n)  # type: ignore[assignment]
        pkeys: Sequence[str | None] = repeat(None, n)  # type: ignore[assignment]
        if any(performers):
            stored_performers, pids, pkeys = self._performer_columns(performers)
        header_texts: Sequence[str | None] = repeat(None, n)  # type: ignore[assignment]
        if any(headers):  # only with record_headers configured
            texts = iter(self._headers.column([h for h in headers if h is not None]))
            header_texts = [None if h is None else next(texts) for h in headers]

        rows = zip(  # noqa: B905 - every column has n items; repeat()s are bounded
            new_event_ids(ts_us),
            ts_us,
            final_actions,
            self._short.column(methods),
            endpoints,
            self._routes.column(routes),
            statuses,
            map(int, map(mul, durations, repeat(1_000_000))),
            outcomes,
            final_reasons,
            _text_column(request_ids),
            client_ips,
            valids,
            peer_ips,
            chains,
            self._short.column(schemes),
            self._short.column(hosts),
            repeat(self.app_name, n),
            device_keys,
            geo_keys,
            pids,
            pkeys,
            machine_ids,
            session_ids,
            header_texts,
        )
        return list(map(AccessEvent, rows, devices, geos, stored_performers))

    def _address_column(
        self, peers: Sequence[Any], xffs: Sequence[Any], fwds: Sequence[Any]
    ) -> list[_Address]:
        peer = peers[0]
        n = len(peers)
        if peers.count(peer) == n and fwds.count(None) == n:
            memo = self._by_xff.get(peer)
            if memo is None:
                if len(self._by_xff) >= _MAX_PEER_MEMOS:  # a direct deployment: peers vary
                    self._by_xff.clear()
                memo = self._by_xff[peer] = _Memo(
                    lambda xff: self._address((peer, xff, None)), _PEER_MEMO_SIZE
                )
            return memo.column(xffs)
        return self._addresses.column(list(zip(peers, xffs, fwds, strict=True)))

    def _performer_columns(
        self, performers: Sequence[Performer | None]
    ) -> tuple[list[Performer | None], list[str | None], list[str | None]]:
        known = iter(self._performers.column([p for p in performers if p is not None]))
        triples = [(None, None, None) if p is None else next(known) for p in performers]
        stored, pids, pkeys = (list(column) for column in zip(*triples, strict=True))
        return stored, pids, pkeys
