"""Turn a :class:`RawAccess` into an :class:`AccessEvent` (recorder thread only).

Everything the request path deferred happens here: reading the request's
facts, client IP through the proxy chain, User-Agent → device, IP → geo,
query redaction, control-character stripping and size caps, outcome and
reason. The recorder thread shares the GIL with the app, so each step that
repeats across requests (same client, same route, same status) is a bounded
dict lookup after its first time.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from ..events import AccessEvent, encode_chain, performer_key
from ..ids import new_event_id
from ..performer import Performer
from .clientip import ProxyTrust
from .geo import GeoResolver
from .text import clean, redact_query
from .useragent import UserAgentParser

__all__ = ["AccessEnricher", "derive_outcome"]

MAX_PATH = 2048
MAX_HOST = 255
_CACHE_SIZE = 4096

K = TypeVar("K")
V = TypeVar("V")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"


def derive_outcome(status: int, error: str | None) -> tuple[str, str, str]:
    """(action, outcome, reason) from the status, until a permission decision exists."""
    if error is not None or status >= 500:
        detail = f" ({error})" if error else ""
        return "access", "error", f"Server error: {status} {_phrase(status)}{detail}"
    if status in (401, 403):
        return "denied", "denied", f"Access denied: {status} {_phrase(status)}"
    if status >= 400:
        return "access", "failure", f"Request failed: {status} {_phrase(status)}"
    return "access", "success", f"Request completed: {status} {_phrase(status)}"


def _cached(cache: dict[K, V], key: K, make: Callable[[K], V]) -> V:
    """Bounded memo: evict the oldest entry when full (no per-hit bookkeeping)."""
    value = cache.get(key)
    if value is None:
        value = make(key)
        if len(cache) >= _CACHE_SIZE:
            del cache[next(iter(cache))]
        cache[key] = value
    return value


def _cached_text(cache: dict[str, str], key: str, make: Callable[[str], str]) -> str:
    # Client-controlled text: only short values are memoised, so hostile
    # multi-kilobyte headers cannot make the cache large.
    if len(key) > _MAX_KEY:
        return make(key)
    return _cached(cache, key, make)


_MAX_KEY = 256
_Address = tuple[str, bool, str, str]


class AccessEnricher:
    def __init__(
        self,
        *,
        user_agents: UserAgentParser,
        geo: GeoResolver,
        proxies: ProxyTrust,
        redact_keys: frozenset[str],
        app_name: str,
    ) -> None:
        self.user_agents = user_agents
        self.geo = geo
        self.proxies = proxies
        self.redact_keys = redact_keys
        self.app_name = app_name
        # (peer, x-forwarded-for, forwarded) -> (client ip, valid, peer ip, chain text)
        self._addresses: dict[tuple[str | None, str | None, str | None], _Address] = {}
        self._performer_keys: dict[Performer, str] = {}
        self._outcomes: dict[tuple[int, str | None], tuple[str, str, str]] = {}
        self._short: dict[str, str] = {}  # method, scheme, host: few distinct values
        self._routes: dict[str, str] = {}
        self._queries: dict[str, str] = {}

    def _address(self, key: tuple[str | None, str | None, str | None]) -> _Address:
        a = self.proxies.resolve(*key)
        return a.client_ip, a.ip_valid, a.peer_ip, encode_chain(a.chain)

    @staticmethod
    def _outcome(key: tuple[int, str | None]) -> tuple[str, str, str]:
        return derive_outcome(*key)

    @staticmethod
    def _clean_short(value: str) -> str:
        return clean(value, MAX_HOST)

    @staticmethod
    def _clean_path(value: str) -> str:
        return clean(value, MAX_PATH)

    def _redact(self, query: str) -> str:
        return clean(redact_query(query, self.redact_keys), MAX_PATH)

    def __call__(self, raw: tuple[Any, ...]) -> AccessEvent:
        (
            ts_s, duration, status, request_id, method, path, query, peer, scheme, route,
            ua, xff, fwd, host, performer, error, action, reason,
        ) = raw  # fmt: skip
        if type(xff) is bytes:
            xff = xff.decode("latin-1")
        if type(fwd) is bytes:
            fwd = fwd.decode("latin-1")
        if (xff is None or len(xff) <= _MAX_KEY) and (fwd is None or len(fwd) <= _MAX_KEY):
            addr = _cached(self._addresses, (peer, xff, fwd), self._address)
        else:
            addr = self._address((peer, xff, fwd))
        client_ip, ip_valid, peer_ip, chain = addr
        derived_action, outcome, derived_reason = _cached(
            self._outcomes, (status, error), self._outcome
        )
        endpoint = clean(path, MAX_PATH)
        if query:
            if type(query) is bytes:
                query = query.decode("latin-1")
            endpoint = f"{endpoint}?{_cached_text(self._queries, query, self._redact)}"
            if len(endpoint) > MAX_PATH:
                endpoint = endpoint[:MAX_PATH]
        if route is not None:
            route = _cached_text(self._routes, route, self._clean_path)
        if type(host) is bytes:
            host = host.decode("latin-1")
        short = self._short
        device = self.user_agents.parse(ua.decode("latin-1") if type(ua) is bytes else ua)
        geo = self.geo.lookup(client_ip) if ip_valid else None
        pid = pkey = None
        if performer is not None:
            pid = performer.id
            pkey = _cached(self._performer_keys, performer, performer_key)
        ts = int(ts_s * 1_000_000)
        return AccessEvent(
            (
                new_event_id(ts),
                ts,
                derived_action if action is None else action,
                _cached_text(short, method, self._clean_short),
                endpoint,
                route,
                status,
                int(duration * 1_000_000),
                outcome,
                derived_reason if reason is None else clean(reason, 512),
                request_id,
                client_ip,
                ip_valid,
                peer_ip,
                chain,
                _cached_text(short, scheme, self._clean_short),
                _cached_text(short, host or "", self._clean_short),
                self.app_name,
                device.key,
                None if geo is None else geo.key,
                pid,
                pkey,
                None,  # machine id: set by the sessions layer
                None,  # session hash: set by the sessions layer
            ),
            device,
            geo,
            performer,
        )
